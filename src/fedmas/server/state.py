"""Explicit server state and its crash-safe checkpoint (safetensors + JSON, never pickle).

Layout inside ``<run>/checkpoint/``: ``weights-<round>.safetensors`` holds every
FL task's weights (keys ``<fl task>/<param>``) and the torch RNG state;
``state.json`` holds everything else and names the weights file it belongs to.
Both are written to a temporary file and renamed, and ``state.json`` is renamed
last, so a SIGKILL at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedmas.accounting import CostLedger


@dataclass
class FLTaskState:
    """One federated learning task in flight (a model over a group of tasks)."""

    name: str
    tasks: list[str]
    rounds: int  # rounds this FL task trains
    role: str = "final"  # "final": its losses are reported; "merged", "probe": intermediate phases
    measure_affinity: bool = False
    schedule_offset: int = 0  # poly schedule position of its first round
    schedule_total: int = 0  # R of the poly schedule
    done_rounds: int = 0
    started_round: int = 0
    finished_round: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)


@dataclass
class ServerState:
    round: int = 0
    active: list[FLTaskState] = field(default_factory=list)
    finished: list[FLTaskState] = field(default_factory=list)
    weights: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    affinity: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    costs: CostLedger = field(default_factory=lambda: CostLedger(15.0))
    rng: dict[str, Any] = field(default_factory=dict)
    torch_rng: Tensor | None = None

    def task(self, name: str) -> FLTaskState:
        for t in self.active + self.finished:
            if t.name == name:
                return t
        raise KeyError(name)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def save_checkpoint(run_dir: Path, state: ServerState) -> None:
    ck = run_dir / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    tensors = {f"{fl}/{k}": v.contiguous() for fl, w in state.weights.items() for k, v in w.items()}
    tensors["__rng__/torch"] = torch.get_rng_state()
    wname = f"weights-{state.round:05d}.safetensors"
    tmp = ck / (wname + ".tmp")
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ck / wname)
    doc = {
        "format": 1, "weights_file": wname, "round": state.round,
        "active": [asdict(t) for t in state.active], "finished": [asdict(t) for t in state.finished],
        "plan": state.plan, "affinity": state.affinity, "faults": state.faults,
        "costs": state.costs.to_json(), "rng": state.rng,
    }
    atomic_write_text(ck / "state.json", json.dumps(doc))
    for old in ck.glob("weights-*.safetensors"):
        if old.name != wname:
            old.unlink(missing_ok=True)


class CheckpointError(ValueError):
    pass


def load_checkpoint(run_dir: Path) -> ServerState:
    ck = run_dir / "checkpoint"
    sp = ck / "state.json"
    if not sp.exists():
        raise CheckpointError(f"no checkpoint in {run_dir} (missing {sp})")
    try:
        doc = json.loads(sp.read_text())
        wpath = ck / doc["weights_file"]
        if "/" in doc["weights_file"] or not wpath.exists():
            raise CheckpointError(f"checkpoint weights file missing: {wpath}")
        flat = load_file(str(wpath))  # safetensors: plain tensors only, no code
    except (json.JSONDecodeError, KeyError, OSError) as e:
        raise CheckpointError(f"unreadable checkpoint in {ck}: {e}") from e
    except Exception as e:  # safetensors raises its own error type for malformed files
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"unreadable checkpoint weights in {ck}: {e}") from e
    weights: dict[str, dict[str, Tensor]] = {}
    torch_rng = flat.pop("__rng__/torch", None)
    for key, v in flat.items():
        fl, name = key.split("/", 1)
        weights.setdefault(fl, {})[name] = v
    return ServerState(
        round=doc["round"], active=[FLTaskState(**t) for t in doc["active"]],
        finished=[FLTaskState(**t) for t in doc["finished"]], weights=weights, plan=doc["plan"],
        affinity=doc["affinity"], faults=doc.get("faults", {}), costs=CostLedger.from_json(doc["costs"]),
        rng=doc["rng"], torch_rng=torch_rng)
