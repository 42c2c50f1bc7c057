"""When does a task's starvation in the shared model show? Each task's validation skill alone (one-by-one)
minus in the all-in-one model, round by round, over the committed learned-protocol seeds.

    .venv/bin/python benchmarks/grouping_starvation.py [--seeds 0,...,9]

Skill after round r is the best validation skill reached in rounds 1..r (what a model selected on validation
data by then would score); 1 − L_val / L_val of the constant predictor. Reads the committed
``results/learned_protocol/seed-S/{one-by-one,all-in-one}`` runs (validation losses only) and writes
``results/grouping_starvation.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS

from fedmas import stats
from fedmas.report import short

RUNS = RESULTS / "learned_protocol"
MARKS = (1, 2, 3, 6, 9, 15, 21, 30)


def _curves(run: Path, prefix: str | None, tasks: list[str], triv: dict[str, float]) -> dict[str, list[float]]:
    """Per task: the best validation skill reached by each of its rounds."""
    out: dict[str, list[float]] = {t: [] for t in tasks}
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(ln)
        for t in tasks:
            if f"val_loss/{t}" in r and (prefix is None or r["fl_task"] == f"{prefix}{t}"):
                s = 1 - r[f"val_loss/{t}"] / triv[t]
                out[t].append(max(s, out[t][-1]) if out[t] else s)
    return out


def gaps(seeds: list[int]) -> dict[str, Any]:
    per: dict[str, list[list[float]]] = {}
    tasks: list[str] = []
    for seed in seeds:
        base = RUNS / f"seed-{seed}"
        tasks = json.loads((base / "all-in-one" / "summary.json").read_text())["tasks"]
        triv = json.loads((base / "all-in-one" / "trivial.json").read_text())["val_loss"]
        shared = _curves(base / "all-in-one", None, tasks, triv)
        alone = _curves(base / "one-by-one", "single-", tasks, triv)
        for t in tasks:
            n = min(len(shared[t]), len(alone[t]))
            if n == 0:
                raise SystemExit(f"seed {seed}: no validation losses of {t} in {base}")
            per.setdefault(t, []).append([alone[t][i] - shared[t][i] for i in range(n)])
    rounds = min(len(c) for cs in per.values() for c in cs)
    doc: dict[str, Any] = {"seeds": seeds, "tasks": tasks, "rounds": rounds, "gap": {}}
    for t in tasks:
        doc["gap"][t] = [stats.mean_ci([c[i] for c in per[t]]) for i in range(rounds)]
    return doc


def figure(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = list(range(1, doc["rounds"] + 1))
    for t in doc["tasks"]:
        m = [g[0] for g in doc["gap"][t]]
        ci = [g[1] or 0.0 for g in doc["gap"][t]]
        ax.plot(x, m, label=short(t), lw=2 if t == max(doc["tasks"], key=lambda u: doc["gap"][u][-1][0]) else 1.2)
        ax.fill_between(x, [a - b for a, b in zip(m, ci, strict=True)], [a + b for a, b in zip(m, ci, strict=True)],
                        alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("round (of R = 30)")
    ax.set_ylabel("validation skill alone − in the all-in-one model")
    ax.set_title(f"When starvation shows: each task alone vs shared (mean ± 95% interval, {len(doc['seeds'])} "
                 "seeds)", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    a = ap.parse_args(argv)
    doc = gaps([int(s) for s in a.seeds.split(",")])
    (RESULTS / "grouping_starvation.json").write_text(json.dumps(doc, indent=1))
    figure(doc, RESULTS / "grouping_starvation.png")
    marks = [r for r in MARKS if r <= doc["rounds"]]
    print("| task | " + " | ".join(f"round {r}" for r in marks) + " |")
    print("| --- |" + " --- |" * len(marks))
    for t in doc["tasks"]:
        print(f"| {short(t)} | " + " | ".join(stats.fmt(*doc["gap"][t][r - 1], 3) for r in marks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
