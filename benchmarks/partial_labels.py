"""MAS against all-in-one and one-by-one when clients hold labels for only some tasks.

    .venv/bin/python benchmarks/partial_labels.py [--coverages 1.0,0.7,0.4] [--seeds 0,1,2] [--jobs N]
                                                  [--config configs/quickstart.yaml] [--set KEY=VALUE ...]
                                                  [--out benchmarks/results/partial_labels] [--reuse DIR]

For each coverage c, ``fedmas compare`` runs the three methods over the seeds with
``data.label_coverage = c`` (each client holds each task's labels with probability c, drawn once per
client from the data seed) into ``<out>/coverage-<c>/`` (resumable). Then it prints, per coverage, each
method's mean skill and total test loss (mean ± 95% interval), the tasks not learned, training FLOPs, and
MAS's paired differences (on the total, and on the mean skill over the tasks both methods learned — mean
skill ≥ 0.05 — naming the others, with each task's difference in the JSON) with a verdict, and writes
``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from learned_results import NOT_LEARNED, load_folder, per_task
from learned_results import compare as compare_learned

HERE = Path(__file__).parent
OUT = HERE / "results" / "partial_labels"
METHODS = "mas:2,all-in-one,one-by-one"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coverages", default="1.0,0.7,0.4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the comparisons (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (fedmas compare --jobs)")
    ap.add_argument("--reuse", type=Path, help="a comparison of the same config at full coverage (fedmas compare "
                                               "--out DIR): its finished runs of these methods and seeds are "
                                               "copied in as coverage 1.0's instead of being run again")
    a = ap.parse_args(argv)
    from fedmas import stats

    table, curves = [], {}
    for cov in (float(x) for x in a.coverages.split(",")):
        out = a.out / f"coverage-{cov:g}"
        if cov == 1.0 and a.reuse is not None:
            _reuse(a.reuse, out, [int(x) for x in a.seeds.split(",")])
        cmd = [sys.executable, "-m", "fedmas.cli", "compare", a.config, "--methods", METHODS, "--seeds", a.seeds,
               "--out", str(out), "--quiet", "--jobs", str(a.jobs), "--set", f"data.label_coverage={cov}"]
        for s in a.set:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True)
        doc = json.loads((out / "comparison.json").read_text())
        res = {r["key"]: r for r in doc["results"]}
        runs = load_folder(out)  # {method key: {seed: summary}} (several seeds: seed-N folders)
        mas = {r["seed"]: r["total_loss"] for r in res["mas:2"]["runs"]}
        for key, r in res.items():
            line = {"coverage": cov, "method": key, "total_loss": r["total_loss"], "ci": r["total_loss_ci"],
                    "mean_skill": r.get("mean_skill"), "mean_skill_ci": r.get("mean_skill_ci"),
                    "skill": r.get("skill", {}), "train_tflop": r["train_tflop"], "groups": r["groups"],
                    "not_learned": sorted(t for t, v in r.get("skill", {}).items()
                                          if v is not None and v < NOT_LEARNED)}
            if key != "mas:2":
                other = {x["seed"]: x["total_loss"] for x in r["runs"]}
                seeds = sorted(set(mas) & set(other))
                d = stats.paired([(mas[s], other[s]) for s in seeds])
                line["mas_minus"] = d
                learned = compare_learned(runs, "mas:2", key, +1) if len(seeds) >= 2 else None
                if learned is not None:  # mean skill over the tasks both learned (or: none was)
                    line["mas_minus_skill"] = learned
                    line["mas_minus_skill_per_task"] = per_task(runs, "mas:2", key)
            table.append(line)
            if r.get("mean_skill") is not None:  # skill where the runs report it (higher is better)
                curves.setdefault(key, []).append((cov, r["mean_skill"], r.get("mean_skill_ci") or 0.0))
            else:
                curves.setdefault(key, []).append((cov, r["total_loss"], r["total_loss_ci"]))
    print(f"{a.config}, seeds {a.seeds}; mean skill and total test loss (mean ± 95% CI), training TFLOP")
    for ln in table:
        extra = ""
        if "mas_minus" in ln:
            d = ln["mas_minus"]
            extra = (f" | MAS-2 − this {d['diff']:+.3f} ± {d['ci']:.3f}: {d['verdict']}" if d["ci"] is not None
                     else f" | {d['verdict']}")
        if "mas_minus_skill" in ln and not ln["mas_minus_skill"]["tasks"]:
            extra += f" | mean skill: {ln['mas_minus_skill']['verdict']}"
        elif "mas_minus_skill" in ln:
            d = ln["mas_minus_skill"]
            extra += f" | mean skill MAS-2 − this {d['diff']:+.3f}" + (f" ± {d['ci']:.3f}" if d["ci"] else "") \
                + f": {d['verdict']}" + (f" (not compared on {', '.join(d['excluded'])}: not learned by both)"
                                        if d["excluded"] else "")
        skill = "" if ln["mean_skill"] is None else \
            f"skill {ln['mean_skill']:.3f} ± {ln['mean_skill_ci'] or 0:.3f}  "
        print(f"  coverage {ln['coverage']:.1f}  {ln['method']:<11} {skill}{ln['total_loss']:.4f} ± {ln['ci']:.4f}  "
              f"{ln['train_tflop']:.3f} TFLOP{extra}")
        if ln["not_learned"]:
            print(f"      not learned (mean skill < {NOT_LEARNED:g}): {', '.join(ln['not_learned'])} — "
                  f"a ranking on them is noise")
    _figure(curves, a.out.with_suffix(".png"), all(ln["mean_skill"] is not None for ln in table))
    a.out.with_suffix(".json").write_text(json.dumps({"config": a.config, "seeds": a.seeds,
                                                      "set": a.set, "rows": table}, indent=1))
    return 0


def _reuse(src: Path, out: Path, seeds: list[int]) -> None:
    """Copy ``src``'s finished runs of ``METHODS`` under ``seeds`` into ``out`` (a comparison folder: compare
    reuses a finished run whose config is the one it would run, and refuses one that differs)."""
    import shutil

    for seed in seeds:
        for method in METHODS.split(","):
            run = src / f"seed-{seed}" / method.replace(":", "-")
            dst = out / f"seed-{seed}" / method.replace(":", "-")
            if (run / "summary.json").is_file() and not dst.exists():
                shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoint", "*.lock", "tensorboard"))


def _figure(curves: dict[str, list[tuple[float, float, float]]], path: Path, skill: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=130)
    for k, (key, pts) in enumerate(sorted(curves.items())):
        x = [p[0] + (k - 1) * 0.012 for p in pts]  # a small offset so the intervals do not hide each other
        ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=key)
    ax.set_xlabel("label coverage (probability a client holds a task's labels)")
    if skill:
        ax.axhline(0.05, color="k", lw=0.8, ls=":")
    ax.set_ylabel("mean test skill, mean ± 95% CI" if skill else "total test loss (Σ tasks), mean ± 95% CI")
    if skill:
        ax.set_title("dotted: the not-learned line (skill 0.05)", fontsize=8)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
