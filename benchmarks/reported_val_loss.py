"""The validation loss per task of each run's reported model, for runs made before ``summary.json`` recorded it.

    .venv/bin/python benchmarks/reported_val_loss.py benchmarks/results/learned_protocol \
        benchmarks/results/learned_protocol_continue

Until ``summary.json`` gained ``val_loss`` (the validation loss per task of the model a run reports), a run's
files held it only when the reported model was the last round's. With ``federation.select: best_val`` the
reported model is the best-validation round's, whose per-task validation losses are in ``metrics.jsonl``
(the line of that FL task and round), or — for a group that reported the weights it started from (round 0,
the merged model at the split) — nowhere: only their total was kept (``start_val_total_loss``).

This script recovers them without changing any run's files:

* a reported round ≥ 1 (or the last): the validation losses ``metrics.jsonl`` logged for that round;
* round 0: the run's own ``config.yaml`` is run again into a scratch folder until its groups have made their
  start evaluation (the first round after the merge), which now records ``start_val_loss`` per task. The
  re-run must reproduce the original: its merged rounds' training and test losses in ``metrics.jsonl`` and
  each group's start total (``start_val_total_loss``) must equal the original's exactly, or the script stops.
  MAS-K runs of one seed share their merged phase: one re-run serves every run of that folder whose merged
  phase it reproduces, checked the same way. A run is reproduced bit for bit only on a machine like the one
  that made it (another CPU model gives other float sums): elsewhere the check fails and nothing is written.

Writes ``<results folder>/reported_val_loss.json`` beside the runs: ``{"seed-S/method": {"val_loss": {task:
loss}, "source": {task: how}}}``, resumable (runs already recovered are kept). Reads no test data to decide
anything: the test losses are compared only to check the re-run is the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedmas.config import Config, read_yaml_mapping
from fedmas.run import execute

OUT = "reported_val_loss.json"


class NotTheSameRun(Exception):
    """A re-run that does not reproduce the original run (another machine, another code): nothing is recovered."""


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _merged_part(lines: list[dict[str, Any]], before: int) -> list[dict[str, Any]]:
    """The lines of rounds before ``before`` (the merged phase), without their timings."""
    return [{k: v for k, v in ln.items() if k not in ("round_s",)} for ln in lines if ln["round"] < before]


def _rerun_start(run: Path, scratch: Path) -> dict[str, Any]:
    """Run ``run``'s config again until its groups' start evaluation; their FL task entries and the lines."""
    summary = json.loads((run / "summary.json").read_text())
    groups = [f for f in summary["fl_tasks"] if f["role"] == "final" and f.get("start_val_total_loss") is not None]
    first = min(f["started_round"] for f in groups)
    cfg = Config.model_validate(read_yaml_mapping(run / "config.yaml", "run config"))
    out = scratch / run.parent.name / run.name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[reported_val_loss] re-running {run} to round {first + 1} in {out}", file=sys.stderr, flush=True)
    execute(cfg, out, progress=False, stop_after=first + 1)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    entries = {f["name"]: f for f in state["active"] + state["finished"]}
    return {"first": first, "groups": entries, "lines": _lines(out)}


def _check_same_run(run: Path, rerun: dict[str, Any]) -> None:
    """The re-run is the run: same merged-phase lines, and each group's start total equal to the original's."""
    first = rerun["first"]
    mine, theirs = _merged_part(_lines(run), first), _merged_part(rerun["lines"], first)
    if mine != theirs:
        raise NotTheSameRun(f"{run}: the re-run's merged rounds differ from the original's; nothing recovered")
    summary = json.loads((run / "summary.json").read_text())
    for f in summary["fl_tasks"]:
        if f["role"] != "final" or f.get("start_val_total_loss") is None:
            continue
        if not set(f["tasks"]) <= set(rerun["start"]):
            raise NotTheSameRun(f"{run}: the re-run's groups do not evaluate {f['name']}'s tasks at the start")
        start = {t: rerun["start"][t] for t in f["tasks"]}
        total, original = sum(start.values()), f["start_val_total_loss"]
        if abs(total - original) > 1e-9 * max(1.0, abs(original)):
            raise NotTheSameRun(f"{run}: {f['name']}'s start evaluation re-run gives a total of {total!r}, "
                                f"the original {original!r}; nothing recovered")


def _start_of(run: Path, key: str, reruns: list[dict[str, Any]], scratch: Path) -> dict[str, Any]:
    """A re-run of this seed whose merged phase is ``run``'s (made now if none of ``reruns`` is)."""
    for r in reruns:
        try:
            _check_same_run(run, r)
            return r
        except NotTheSameRun:
            continue
    r = _rerun_start(run, scratch)
    r["start"] = {t: v for g in r["groups"].values() if g.get("started_from") for t, v in
                  (g.get("start_val_loss") or {}).items()}
    r["from"] = key
    _check_same_run(run, r)
    reruns.append(r)
    return r


def recover(folder: Path, scratch: Path) -> dict[str, Any]:
    path = folder / OUT
    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    reruns: dict[str, list[dict[str, Any]]] = {}  # seed folder → its re-runs' start evaluations
    for sfile in sorted(folder.glob("seed-*/*/summary.json")):
        run = sfile.parent
        key = f"{run.parent.name}/{run.name}"
        summary = json.loads(sfile.read_text())
        if key in done or ("val_loss" in summary and None not in summary["val_loss"].values()):
            continue  # recovered before, or recorded by fedmas
        lines = _lines(run)
        val: dict[str, float] = {}
        source: dict[str, str] = {}
        for f in summary["fl_tasks"]:
            if f["role"] != "final":
                continue
            for t in f["tasks"]:
                if summary["owner"].get(t) != f["name"]:
                    continue
                if f["selected_round"] and f["selected_round"] > 0:
                    ln = next(x for x in lines if x["fl_task"] == f["name"] and x["fl_round"] == f["selected_round"])
                    val[t], source[t] = ln[f"val_loss/{t}"], f"metrics.jsonl, {f['name']} round {f['selected_round']}"
                else:
                    r = _start_of(run, key, reruns.setdefault(run.parent.name, []), scratch)
                    val[t] = r["start"][t]
                    source[t] = (f"start evaluation of {f['name']} (round 0: the merged model at the split), "
                                 f"re-run of {r['from']} to round {r['first'] + 1}, checked identical")
        done[key] = {"val_loss": val, "source": source}
        path.write_text(json.dumps(done, indent=1, sort_keys=True))
        print(f"[reported_val_loss] {key}: {len(val)} tasks", file=sys.stderr, flush=True)
    return done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="results folders holding seed-*/<method>/ runs")
    p.add_argument("--scratch", type=Path, help="where the re-runs go (default: a temporary folder)")
    a = p.parse_args()
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="fedmas-reported-val-"))
    try:
        for folder in a.folders:
            recover(folder, scratch)
    except NotTheSameRun as e:
        print(f"[reported_val_loss] {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
