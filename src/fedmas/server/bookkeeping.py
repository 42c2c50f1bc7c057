"""Run bookkeeping of the round loop: the metrics file (one line per FL task per round, cut back to the
checkpoint on resume) and the console's progress line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmas.server.state import atomic_write_text
from fedmas.text import short as _short

if TYPE_CHECKING:
    from fedmas.server.federation import Server


def append_metrics(run_dir: Path, lines: list[dict[str, Any]], seconds: float) -> None:
    with open(run_dir / "metrics.jsonl", "a") as fh:
        for ln in lines:
            fh.write(json.dumps({**ln, "round_s": seconds}) + "\n")


def truncate_metrics(run_dir: Path, completed_rounds: int) -> None:
    """Drop metric lines of rounds the checkpoint does not contain (a crash after logging)."""
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return
    keep = [ln for ln in p.read_text().splitlines() if ln.strip() and round_of(ln) < completed_rounds]
    atomic_write_text(p, "".join(k + "\n" for k in keep))


TORN = 1 << 30  # round_of's answer for a line that is not a whole metrics line


def round_of(line: str) -> int:
    try:
        return int(json.loads(line)["round"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return TORN  # a torn or damaged line is dropped (the checkpoint's rounds are rewritten from it)


def progress_line(server: Server, total: int | None = None) -> str:
    """Round index as in the files (from 0), and each FL task's test loss summed over its tasks."""
    st = server.state
    parts = []
    for fl in st.active + [t for t in st.finished if t.finished_round == st.round - 1]:
        if fl.last_eval:
            tasks = "" if len(fl.tasks) == len(server.tasks) and len(fl.tasks) > 1 else \
                "{" + ",".join(_short(t) for t in fl.tasks) + "}"
            parts.append(f"{fl.name}{tasks} {fl.last_eval['total_loss']:.3f}")
    done = f"{st.round}/{total}" if total else f"{st.round}"
    return f"round {st.round - 1:>3} ({done} done) | test loss Σ tasks: " + " | ".join(parts)


def print_progress(server: Server, total: int | None = None, s_per_round: float | None = None) -> None:
    """One line per round: its index, rounds done of total, each FL task's test loss, and an ETA."""
    line = progress_line(server, total)
    if total and s_per_round:
        line += f" | eta {s_per_round * max(total - server.state.round, 0):.0f} s"
    print(f"[fedmas] {line}", file=sys.stderr, flush=True)
