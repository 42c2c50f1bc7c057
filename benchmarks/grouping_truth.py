"""Ground truth for grouping: every subset of the learned protocol's tasks trained, from scratch and from the
merged weights, so that any grouping signal (and MAS's choice) can be scored against the best partition.

    .venv/bin/python benchmarks/grouping_truth.py run [--seeds 0,1,2] [--jobs 2] [--parts scratch,merged-0.7,...]
    .venv/bin/python benchmarks/grouping_truth.py table [--seeds 0,1,2]

``run`` queues, under ``benchmarks/learned_protocol.yaml`` (resumable: a finished run is read back, an
interrupted one resumed, so the same command continues the queue):

- ``merged-<f>/seed-S``: the exhaustive method with ``exhaustive.start: merged`` and ``mas.merge_rounds: f``
  (the merged phase, then every non-empty subset from its weights for the remaining rounds, the schedule
  continued — fedmas's default — and the reference's affinity measured in the merged phase);
- ``record-<f>/seed-S``: MAS-2 whose merged phase (the same R0, seed and schedule) measures the lookahead
  affinity in every merged round and the gradient cosine beside it (``mas.record``), for the signals the
  first 0.1 R rounds do not show; keeping every encoder gradient whole for the cosine changes the rounding of
  the real step, so its merged weights differ from ``merged-<f>``'s in the last bits;
- ``scratch/seed-S/<subset>``: all-in-one on each subset of 3 or 4 tasks from scratch for R rounds. The
  other subsets from scratch are the committed runs of the same protocol and seed: each single task is
  one-by-one's FL task, each pair HOA's probe (``learned_protocol_hoa``), all five all-in-one.

``table`` writes ``grouping_truth.json`` and ``grouping_truth.md``: each subset's validation and test skill per
task (its best-validation model, as every run reports), each partition into at most 3 groups with its mean
skill and training FLOPs, and the best partition on validation data for k = 2 and 3.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PROTOCOL = HERE / "learned_protocol.yaml"
OUT = HERE / "results" / "grouping_truth"
COMMITTED = HERE / "results" / "learned_protocol"
COMMITTED_HOA = HERE / "results" / "learned_protocol_hoa"
PARTS = ("merged-0.7", "record-0.7", "scratch", "merged-0.2")


def _short(tasks: list[str]) -> str:
    from fedmas.report import short

    return "+".join(short(t) for t in tasks)


def queue(seeds: list[int], parts: list[str]) -> list[tuple[str, int, Any, Path]]:
    """The runs to do, in order: (label, seed, config, run folder)."""
    from fedmas.checks import check_config
    from fedmas.config import Config, load_config

    base = load_config(PROTOCOL).model_dump()
    tasks = list(base["tasks"])
    todo = []
    for part in parts:
        for seed in seeds:
            raw = {**base, "seed": seed, "threads": 1}
            if part.startswith("merged-"):
                frac = float(part.split("-", 1)[1])
                raw["method"], raw["name"] = "exhaustive", f"grouping-truth-{part}"
                raw["exhaustive"] = {"start": "merged"}
                raw["mas"] = {**raw["mas"], "merge_rounds": frac, "split_schedule": "continue", "splits": 3}
                todo.append((part, seed, check_config(Config.model_validate(raw), part), OUT / part / f"seed-{seed}"))
            elif part.startswith("record-"):  # MAS-2 recording every signal over its whole merged phase
                frac = float(part.split("-", 1)[1])
                raw["method"], raw["name"] = "mas", f"grouping-truth-{part}"
                raw["mas"] = {**raw["mas"], "merge_rounds": frac, "split_schedule": "continue", "splits": 2,
                              "affinity_rounds": "all", "record": ["cosine"]}
                todo.append((part, seed, check_config(Config.model_validate(raw), part), OUT / part / f"seed-{seed}"))
            elif part == "scratch":
                for size in range(3, len(tasks)):
                    for g in itertools.combinations(tasks, size):
                        sub = {**raw, "method": "all-in-one", "tasks": list(g), "name": "grouping-truth-scratch"}
                        todo.append((f"scratch {_short(list(g))}", seed,
                                     check_config(Config.model_validate(sub), part),
                                     OUT / "scratch" / f"seed-{seed}" / _short(list(g))))
            else:
                raise SystemExit(f"--parts: unknown part {part!r}; accepted: {', '.join(PARTS)}")
    return todo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS))
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.what == "run":
        from fedmas.compare import run_all

        todo = queue(seeds, [p.strip() for p in a.parts.split(",") if p.strip()])
        print(f"[grouping_truth] {len(todo)} runs, {a.jobs} at a time", file=sys.stderr, flush=True)
        run_all(todo, True, a.jobs)
        return 0
    from grouping_truth_table import write_table

    write_table(seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
