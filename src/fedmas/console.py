"""What a run prints: the header, the final table (losses, skill, metrics, costs, files), the round timer for the
ETA, the split line, and the copy of everything printed kept in the run folder's ``run.log``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmas.text import short, table

if TYPE_CHECKING:
    from fedmas.config import Config
    from fedmas.data import FederatedData
    from fedmas.server.federation import Server


class ConsoleLog:
    """While a run executes, what fedmas prints (stdout and stderr) is also appended to ``run.log``."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.log"

    def __enter__(self) -> ConsoleLog:
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.file), _Tee(sys.stderr, self.file)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self.saved
        self.file.close()


class _Tee:
    def __init__(self, stream: Any, log: Any):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        try:
            self.log.write(text)
        except (OSError, ValueError):  # a full disk or a closed log never stops the run
            pass
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        try:
            self.log.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def header(cfg: Config, run_dir: Path, data: FederatedData, device: str) -> str:
    """What is about to run (on ``device``, as the run resolved it), in two lines."""
    from fedmas.models import encoder_share, model_spec  # torch: only where a run starts

    f, spec = cfg.federation, model_spec(cfg)
    share = encoder_share(cfg.task_list, spec)
    if cfg.model.network:
        what = f"{cfg.model.network}, whose encoder holds"
    elif spec.encoder.startswith("python:"):
        what = f"{cfg.model.encoder} encoder holding"
    else:
        what = f"{cfg.model.encoder} encoder (width {cfg.model.width}) holding"
    return (f"[fedmas] {cfg.method} on {len(cfg.task_list)} tasks ({', '.join(short(t) for t in cfg.task_list)}), "
            f"{len(data.clients)} clients, {f.clients_per_round} per round, R={f.rounds}, engine {cfg.engine} "
            f"on {device} → {run_dir}\n[fedmas] model: {what} "
            f"{share:.0%} of the {len(cfg.task_list)}-task model's parameters" + _names_line(cfg.task_list))


def _names_line(tasks: list[str]) -> str:
    """The console's short task names against the names in the files, where they differ."""
    pairs = [f"{short(t)} = {t}" for t in tasks if short(t) != t]
    return f"\n[fedmas] short names: {', '.join(pairs)}" if pairs else ""


def _headline(metrics: dict[str, float]) -> str:
    """A task's first reported metric (mIoU, depth error in m, normal angle, accuracy, L1), as text."""
    if not metrics:
        return ""
    k, v = next(iter(metrics.items()))
    return f"{k} {v:.4g}"


def render_summary(s: dict[str, Any], run_dir: Path | None = None) -> str:
    """The final table: each task's test loss, its headline metric and the FL task that reports it;
    the groups, the costs and the files written."""
    metrics = s.get("test_metrics", {})
    sk, low = s.get("test_skill", {}), set(s.get("not_learned", []))
    rows = [[short(t), f"{v:.4f}", _skill_cell(sk.get(t), t in low), _headline(metrics.get(t, {})), s["owner"][t]]
            for t, v in s["test_loss"].items()]
    rows.append(["TOTAL", f"{s['total_test_loss']:.4f}",
                 f"mean {s['mean_skill']:.3f}" if s.get("mean_skill") is not None else "", "", ""])
    c = s["costs"]
    sel = " (each FL task's best-validation round)" if s.get("select") == "best_val" else ""
    lines = [f"\n{s['method']} on {len(s['tasks'])} tasks, {s['rounds']} rounds; test loss and metric{sel}"]
    if s.get("groups"):
        lines.append("groups: " + "  |  ".join("{" + ", ".join(short(t) for t in g) + "}" for g in s["groups"]))
    lines.append(table(rows, ["task", "test loss", "skill", "test metric", "FL task"]))
    lines += learned_lines(s)
    lines.append(f"client compute {c['train_s']:.1f} s, {c.get('train_flop', 0.0) / 1e12:.3g} TFLOP | "
                 f"energy {c['energy_j'] / 1000:.2f} kJ ({s['energy_source']}) "
                 f"| traffic {(c['bytes_down'] + c['bytes_up']) / 1e6:.1f} MB | simulated wall-clock "
                 f"{c['sim_wallclock_s']:.1f} s")
    if run_dir is not None:
        files = [f for f in ("summary.json", "metrics.jsonl", "costs.json", "trivial.json", "losses.png",
                             "affinity.json", "affinity.png", "split.json", "arrivals.json", "run.log")
                 if (run_dir / f).exists()]
        lines.append(f"files in {run_dir}: {', '.join(files)}")
    return "\n".join(lines)


def _skill_cell(v: float | None, low: bool) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" + (" NOT LEARNED" if low else "")


def learned_lines(s: dict[str, Any]) -> list[str]:
    """What the table's skill column means, and the warnings: tasks not learned, runs not converged."""
    if "test_skill" not in s:
        return []
    out = [f"skill = 1 − test loss / test loss of a constant fitted on the training data (median per channel "
           f"for L1 tasks, class frequencies for classification); below {s['not_learned_below']:g}: not learned"]
    if s.get("not_learned"):
        out.append(f"WARNING: not learned: {', '.join(short(t) for t in s['not_learned'])} — no better than the "
                   f"constant; a comparison of methods on these tasks is noise")
    if s.get("not_converged"):
        out.append(f"WARNING: not converged: the validation total of {', '.join(s['not_converged'])} was still "
                   f"falling over its last quarter of rounds; more rounds would change these numbers")
    return out


class RoundTimer:
    """Seconds per round for the ETA: an exponential average of the last rounds (the first round, which
    pays start-up costs, is left out once a second one is known), so the estimate moves smoothly."""

    def __init__(self, weight: float = 0.3):
        self.weight, self.last, self.mean, self.n = weight, time.perf_counter(), None, 0

    def tick(self) -> float | None:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        self.n += 1
        if self.mean is None or self.n == 2:
            self.mean = dt
        else:
            self.mean = (1 - self.weight) * self.mean + self.weight * dt
        return self.mean


def split_line(server: Server) -> str:
    """The console line when the tasks are split: the groups and how they were chosen."""
    st = server.state
    groups = "  |  ".join("{" + ", ".join(short(t) for t in g) + "}" for g in st.plan.groups or [])
    split = st.plan.split or {}
    why = ""
    if split.get("rule"):
        why = f"; {split['rule']}"
        if split.get("affinity_rounds_rule"):
            why += f", from the mean affinity of {split['affinity_rounds_rule']}"
    elif getattr(st.plan, "estimate", None):
        why = f"; estimated mean validation loss {st.plan.estimate['estimated_mean_loss']:.4f}"  # type: ignore
    conf = split.get("confidence")
    if conf:
        why += f"; {confidence_words(conf)}"
    return f"[fedmas] split after round {st.round - 2}: {groups}{why}"


def confidence_words(conf: dict[str, Any]) -> str:
    """How sure a split is, in words: the share of resamples of the client replies its groups win again."""
    text = (f"confidence {conf['confidence']:.0%} (these groups win again in {conf['confidence']:.0%} of "
            f"{conf['draws']} resamples of the {conf['replies']} client replies the affinity was measured on)")
    if conf.get("sure") is False:
        text += ": NOT SURE, the affinity cannot tell these groups from others"
    return text
