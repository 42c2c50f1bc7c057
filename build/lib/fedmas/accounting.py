"""Cost accounting: compute seconds, samples, bytes and energy per FL task and per client.

Compute is counted two ways: measured seconds (which depend on the machine's load) and
floating-point operations (:mod:`fedmas.flops`; deterministic for a config). Energy is
*measured* where the hardware exposes a counter (NVML on NVIDIA GPUs, Intel RAPL under
/sys/class/powercap when readable) and otherwise *modelled* from the FLOP count as
FLOPs ÷ ``cost.device_flops_per_s`` × ``cost.device_power_w`` (an assumed device; the same
for every method, so it scales but never reorders a comparison). Every figure says which.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
KEYS = ("train_s", "eval_s", "train_flop", "eval_flop", "samples", "bytes_down", "bytes_up", "energy_j",
        "client_rounds", "rejected")


class EnergyMeter:
    """Reads a cumulative energy counter in joules, or ``None`` when no counter is readable."""

    def __init__(self, enabled: bool = True):
        self.source = "modelled"
        self._read = None
        if not enabled:
            return
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self._read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
            self.source = "measured (NVML)"
            return
        except Exception:  # noqa: BLE001 - no NVML, no GPU, or no permission
            pass
        try:
            int(_RAPL.read_text())
            self._read = lambda: int(_RAPL.read_text()) / 1e6
            self.source = "measured (RAPL)"
        except (OSError, ValueError):
            pass

    def read(self) -> float | None:
        return None if self._read is None else float(self._read())


def _zero() -> dict[str, float]:
    return {k: 0.0 for k in KEYS}


@dataclass
class CostLedger:
    device_power_w: float
    energy_source: str = "modelled"
    device_flops_per_s: float = 1e11
    per_task: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(_zero))
    per_client: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(_zero))
    sim_wallclock_s: float = 0.0
    rounds: int = 0

    def add_train(self, fl_task: str, client: str, seconds: float, samples: float, down: int, up: int,
                  measured_j: float | None = None, flop: float = 0.0) -> None:
        energy = measured_j if measured_j is not None else flop / self.device_flops_per_s * self.device_power_w
        for row in (self.per_task[fl_task], self.per_client[client]):
            row["train_s"] += seconds
            row["train_flop"] += flop
            row["samples"] += samples
            row["bytes_down"] += down
            row["bytes_up"] += up
            row["energy_j"] += energy
            row["client_rounds"] += 1

    def add_rejected(self, fl_task: str, client: str, down: int) -> None:
        for row in (self.per_task[fl_task], self.per_client[client]):
            row["rejected"] += 1
            row["bytes_down"] += down

    def add_eval(self, fl_task: str, seconds: float, flop: float = 0.0) -> None:
        self.per_task[fl_task]["eval_s"] += seconds
        self.per_task[fl_task]["eval_flop"] += flop

    def totals(self) -> dict[str, float]:
        out = _zero()
        for row in self.per_task.values():
            for k in KEYS:
                out[k] += row[k]
        out["sim_wallclock_s"] = self.sim_wallclock_s
        out["compute_h"] = out["train_s"] / 3600
        out["train_tflop"] = out["train_flop"] / 1e12
        return out

    def to_json(self) -> dict[str, Any]:
        return {"device_power_w": self.device_power_w, "energy_source": self.energy_source,
                "device_flops_per_s": self.device_flops_per_s,
                "per_task": dict(self.per_task), "per_client": dict(self.per_client),
                "sim_wallclock_s": self.sim_wallclock_s, "rounds": self.rounds, "totals": self.totals()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CostLedger:
        led = cls(d["device_power_w"], d["energy_source"], d.get("device_flops_per_s", 1e11))
        for name, row in d["per_task"].items():
            led.per_task[name].update(row)
        for name, row in d["per_client"].items():
            led.per_client[name].update(row)
        led.sim_wallclock_s, led.rounds = d["sim_wallclock_s"], d["rounds"]
        return led
