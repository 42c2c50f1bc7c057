"""Skill for finished runs made before fedmas reported it: each run's test losses beside the trivial predictor
fitted on that run's own training data (its config.yaml), per method, mean over seeds.

    .venv/bin/python benchmarks/skill_of_results.py benchmarks/results/paper_protocol [--render-version 1]

``--render-version 1`` scores runs made with the built-in scenes data before its 2D labels were redefined
(version 2): the cached renders of version 1 are used (they must be in the cache; they are not re-rendered).
Writes <folder>/skill.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedmas import trivial
from fedmas.config import load_config
from fedmas.data import load_federated, scenes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--render-version", type=int, default=scenes.RENDER_VERSION)
    a = ap.parse_args()
    if a.render_version != scenes.RENDER_VERSION:
        scenes.RENDER_VERSION = a.render_version
        real = scenes.render_building
        scenes.render_building = lambda *x, **k: sys.exit(f"version {a.render_version} renders are not cached; "
                                                            f"they cannot be rendered by this version") or real
    by_method: dict[str, list[dict]] = defaultdict(list)
    fits: dict[str, trivial.Trivial] = {}
    for summ in sorted(a.folder.glob("**/summary.json")):
        run = summ.parent
        cfg = load_config(run / "config.yaml")
        key = json.dumps([cfg.data.model_dump(), list(cfg.task_list)], sort_keys=True)
        if key not in fits:
            fits[key] = trivial.fit(load_federated(cfg.data, cfg.task_list), cfg.task_list)
        s = json.loads(summ.read_text())
        sk = trivial.skills(s["test_loss"], fits[key].test_loss)
        by_method[run.name].append({"run": str(run), "skill": sk, "mean_skill": trivial.mean_skill(sk)})
    tasks = list(next(iter(fits.values())).test_loss)
    table = {m: {t: float(np.mean([r["skill"][t] for r in rs])) for t in tasks} | {
        "mean": float(np.mean([r["mean_skill"] for r in rs])), "runs": len(rs)} for m, rs in by_method.items()}
    doc = {"render_version": a.render_version, "trivial_test_loss": {k: f.test_loss for k, f in fits.items()},
           "mean_over_seeds": table, "runs": by_method}
    (a.folder / "skill.json").write_text(json.dumps(doc, indent=1))
    print("| method | " + " | ".join(tasks) + " | mean skill | runs |")
    print("|---" * (len(tasks) + 3) + "|")
    for m, row in table.items():
        print(f"| {m} | " + " | ".join(f"{row[t]:.3f}" for t in tasks) + f" | {row['mean']:.3f} | {row['runs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
