"""A task that arrives mid-training: MAS's probe against the two alternatives a user has.

    .venv/bin/python benchmarks/arrivals.py [--newcomers edge_texture] [--at 0.5] [--seeds 0,1,2]
                                            [--config configs/quickstart.yaml] [--set KEY=VALUE ...]
                                            [--out benchmarks/results/arrivals] [--jobs N]

The config's tasks minus the newcomer start; the newcomer arrives at round ``at``·R. Per seed:

- ``probe``   MAS with ``arrival.policy: probe``: it is probed against the current groups and joins
              the one whose split objective it raises most, or opens its own (fedmas's answer);
- ``alone``   MAS with ``arrival.policy: alone``: the groups go on untouched, the newcomer trains by
              itself from scratch for R rounds (it ends R rounds after it arrived);
- ``restart`` the rounds trained before the arrival are thrown away and MAS starts again from scratch
              with every task for R rounds; its cost adds the rounds thrown away (measured by running
              the starting tasks up to the arrival).

It prints, per policy, the mean skill over every task and the total test loss (mean ± 95% interval over
seeds), the newcomer's own test loss and skill, the tasks not learned, training FLOPs, traffic and rounds,
and the paired differences of the probe against each alternative with a verdict (mean skill over the tasks
both policies learned — mean skill ≥ 0.05 — naming the others; each task's difference in the JSON); it
writes ``<out>.json`` and ``<out>.png``. Runs go to ``<out>/``: a finished one is reused, an interrupted one
resumed from its last checkpoint, so the command itself is resumable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from learned_results import NOT_LEARNED, per_task
from learned_results import compare as compare_learned

HERE = Path(__file__).parent
OUT = HERE / "results" / "arrivals"
POLICIES = ("probe", "alone", "restart")


def _run(cfg, out: Path, stop_after: int | None = None) -> dict[str, Any]:
    """The run's summary (or, with ``stop_after``, its costs so far): a finished run folder is reused and an
    interrupted one resumed; a folder holding a run of another config is refused."""
    from fedmas.run import execute
    from fedmas.server.state import load_checkpoint

    _check_same_config(cfg, out)
    ck = out / "checkpoint" / "state.json"
    done = json.loads(ck.read_text())["round"] if ck.exists() else None
    if stop_after is not None:
        if done != stop_after:  # stop_after counts the rounds of this call
            _say(out, done, stop_after)
            execute(None if done is not None else cfg, out, resume=done is not None, progress=False,
                    stop_after=stop_after - (done or 0), force=done is None)
        return {"costs": load_checkpoint(out).costs.totals(), "rounds": stop_after}
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    _say(out, done, None)
    summary = execute(None if done is not None else cfg, out, resume=done is not None, progress=False,
                      force=done is None)
    assert summary is not None
    return summary


def _say(out: Path, done: int | None, until: int | None) -> None:
    """One progress line per run started or resumed (the runs themselves are quiet)."""
    what = f"resuming after {done} rounds" if done else "starting"
    end = "to its end" if until is None else f"up to {until} rounds"
    print(f"[arrivals] {out}: {what}, {end} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)


def _check_same_config(cfg, out: Path) -> None:
    """Refuse ``out`` when it holds a run of another config (torch threads aside: they change float order only)."""
    from fedmas.compare import config_changes

    changed = sorted({d.split(":", 1)[0].split(".", 1)[0] for d in config_changes(out, cfg)})
    if changed:
        raise SystemExit(f"{out} holds a run of another config (differs in: {', '.join(changed)}); "
                         f"choose another --out")


def one(base: str, sets: list[str], newcomer: str, at: float, seed: int, root: Path = OUT) -> dict[str, dict[str, Any]]:
    from fedmas.config import load_config

    full = load_config(base, [*sets, f"seed={seed}", "method=mas"])
    start = [t for t in full.task_list if t != newcomer]
    if len(start) == len(full.task_list):
        raise SystemExit(f"--newcomers {newcomer}: not among the config's tasks {list(full.task_list)}")
    common = [*sets, f"seed={seed}", "method=mas", f"tasks={','.join(start)}", f"arrival.tasks.{newcomer}={at}"]
    where = root / newcomer / f"seed-{seed}"
    out: dict[str, dict[str, Any]] = {}
    for policy in ("probe", "alone"):
        cfg = load_config(base, [*common, f"arrival.policy={policy}"])
        s = _run(cfg, where / policy)
        out[policy] = {"summary": s, "costs": s["costs"], "rounds": s["rounds"]}
    cfg = load_config(base, [*common, "arrival.policy=probe"])
    r = cfg.arrival.round_of(newcomer, cfg.federation.rounds)
    before = _run(load_config(base, [*sets, f"seed={seed}", "method=mas", f"tasks={','.join(start)}"]),
                  where / "before-arrival", stop_after=r)
    again = _run(full, where / "restart")
    costs = {k: again["costs"].get(k, 0.0) + before["costs"].get(k, 0.0) for k in again["costs"]}
    out["restart"] = {"summary": again, "costs": costs, "rounds": r + again["rounds"]}
    for p in out.values():
        s = p["summary"]
        p.update(total_loss=s["total_test_loss"], newcomer_loss=s["test_loss"][newcomer],
                 start_loss=sum(v for t, v in s["test_loss"].items() if t != newcomer), groups=s["groups"],
                 owner=s["owner"][newcomer], mean_skill=s.get("mean_skill"),
                 newcomer_skill=(s.get("test_skill") or {}).get(newcomer), not_learned=s.get("not_learned", []))
    rec = json.loads((where / "probe" / "arrivals.json").read_text())[newcomer]
    out["probe"]["placed"] = rec["placed"]["how"] + " " + rec["placed"]["fl_task"]
    out["probe"]["gain"] = rec.get("gain")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--newcomers", default="edge_texture", help="comma list: each arrives in its own runs")
    ap.add_argument("--at", type=float, default=0.5, help="arrival round as a fraction of federation.rounds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the runs (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds at once, each in its own process with its share "
                                                       "of the cores (default 1)")
    a = ap.parse_args(argv)
    from fedmas import stats

    seeds = [int(s) for s in a.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    for newcomer in a.newcomers.split(","):
        runs = _all_seeds(a, newcomer, seeds)
        for seed in seeds:
            print(f"[arrivals] {newcomer} seed {seed}: " + " | ".join(
                f"{p} {runs[seed][p]['total_loss']:.4f} ({runs[seed][p]['newcomer_loss']:.4f})" for p in POLICIES)
                + f" | probe: {runs[seed]['probe']['placed']}", file=sys.stderr, flush=True)
        for policy in POLICIES:
            per = [runs[s][policy] for s in seeds]
            row: dict[str, Any] = {"newcomer": newcomer, "policy": policy}
            for key in ("total_loss", "newcomer_loss", "start_loss", "mean_skill", "newcomer_skill"):
                vals = [p[key] for p in per if p.get(key) is not None]
                row[key], row[key + "_ci"] = stats.mean_ci(vals) if vals else (None, None)
            row["not_learned"] = sorted({t for p in per for t in p["not_learned"]})
            for key in ("train_flop", "bytes_down", "bytes_up", "train_s", "energy_j"):
                row[key], row[key + "_ci"] = stats.mean_ci([p["costs"][key] for p in per])
            row["rounds"] = stats.mean_ci([p["rounds"] for p in per])[0]
            row["owners"] = [p["owner"] for p in per]
            if policy == "probe":
                row["placed"] = [p["placed"] for p in per]
                row["gain"] = [p["gain"] for p in per]
            else:
                row["probe_minus"] = {key: stats.paired([(runs[s]["probe"][key], runs[s][policy][key]) for s in seeds])
                                      for key in ("total_loss", "newcomer_loss", "start_loss")}
                by_policy = {p: {s: runs[s][p]["summary"] for s in seeds} for p in ("probe", policy)}
                if len(seeds) >= 2 and all("test_skill" in x for v in by_policy.values() for x in v.values()):
                    learned = compare_learned(by_policy, "probe", policy, +1)  # over the tasks both learned
                    if learned is not None:
                        row["probe_minus"]["mean_skill"] = learned
                        row["probe_minus_per_task"] = per_task(by_policy, "probe", policy)
                row["probe_minus"]["train_flop"] = stats.paired(
                    [(runs[s]["probe"]["costs"]["train_flop"], runs[s][policy]["costs"]["train_flop"]) for s in seeds])
            rows.append(row)
    _print(rows, a)
    _figure(rows, a.out.with_suffix(".png"))
    a.out.with_suffix(".json").write_text(json.dumps(
        {"config": a.config, "seeds": seeds, "at": a.at, "set": a.set, "rows": rows}, indent=1))
    return 0


def _all_seeds(a: argparse.Namespace, newcomer: str, seeds: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """Every seed's four runs: one seed after another, or ``--jobs`` seeds at a time in spawned processes."""
    if a.jobs <= 1:
        return {seed: one(a.config, a.set, newcomer, a.at, seed, a.out) for seed in seeds}
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, len(os.sched_getaffinity(0)) // a.jobs) if hasattr(os, "sched_getaffinity") else 1
    sets = [*a.set, f"threads={threads}"]
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {seed: pool.submit(one, a.config, sets, newcomer, a.at, seed, a.out) for seed in seeds}
        return {seed: f.result() for seed, f in futures.items()}


def _print(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    from fedmas.stats import fmt

    print(f"{a.config}, newcomer arrives at {a.at}·R, seeds {a.seeds}; mean ± 95% CI")
    for r in rows:
        print(f"  {r['newcomer']:<16} {r['policy']:<8} total {fmt(r['total_loss'], r['total_loss_ci'], 3)}  "
              f"newcomer {fmt(r['newcomer_loss'], r['newcomer_loss_ci'], 3)}  "
              f"start tasks {fmt(r['start_loss'], r['start_loss_ci'], 3)}  "
              f"{r['train_flop'] / 1e12:.3f} TFLOP  {(r['bytes_down'] + r['bytes_up']) / 1e6:.0f} MB  "
              f"{r['rounds']:.0f} rounds")
        if r.get("mean_skill") is not None and r.get("newcomer_skill") is not None:
            print(f"      mean skill {fmt(r['mean_skill'], r['mean_skill_ci'], 3)}, newcomer's skill "
                  f"{fmt(r['newcomer_skill'], r['newcomer_skill_ci'], 3)}")
        if r["not_learned"]:
            print(f"      not learned in some seed: {', '.join(r['not_learned'])} — comparisons on them are noise")
        if "placed" in r:
            print(f"      placed: {', '.join(r['placed'])}")
        for key, d in r.get("probe_minus", {}).items():
            if d.get("diff") is None:  # no task learned by both
                print(f"      probe − {r['policy']} on {key}: {d['verdict']}")
                continue
            half = "" if d["ci"] is None else f" ± {d['ci']:.3g}"
            excl = f" (not compared on {', '.join(d['excluded'])}: not learned by both)" if d.get("excluded") else ""
            print(f"      probe − {r['policy']} on {key}: {d['diff']:+.3g}{half}: {d['verdict']}{excl}")


def _figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    newcomers = sorted({r["newcomer"] for r in rows})
    fig, axes = plt.subplots(len(newcomers), 3, figsize=(10.5, 3.3 * len(newcomers)), dpi=130, squeeze=False)
    colors = {"probe": "#1f77b4", "alone": "#ff7f0e", "restart": "#2ca02c"}
    for i, n in enumerate(newcomers):
        mine = [r for r in rows if r["newcomer"] == n]
        skill = all(r.get("mean_skill") is not None and r.get("newcomer_skill") is not None for r in mine)
        keys = (("mean_skill", "newcomer_skill", "train_flop") if skill
                else ("total_loss", "newcomer_loss", "train_flop"))
        labels = (("mean test skill over all tasks", f"test skill of {n}", "training TFLOP")
                  if skill else ("total test loss (Σ tasks)", f"test loss of {n}", "training TFLOP"))
        for ax, key, label in zip(axes[i], keys, labels):
            scale = 1e12 if key == "train_flop" else 1.0
            for k, r in enumerate(mine):
                if key == "train_flop":  # a bar from 0: amounts
                    ax.bar(k, r[key] / scale, yerr=(r[key + "_ci"] or 0) / scale, capsize=4,
                           color=colors[r["policy"]])
                else:  # a point: losses on an axis that does not start at 0
                    ax.errorbar(k, r[key], yerr=r[key + "_ci"] or 0, fmt="o", capsize=5, ms=7,
                                color=colors[r["policy"]])
            ax.set_xticks(range(len(mine)), [r["policy"] for r in mine])
            ax.set_xlim(-0.6, len(mine) - 0.4)
            ax.grid(axis="y", alpha=0.3)
            if key != "train_flop":
                lo = min(r[key] - (r[key + "_ci"] or 0) for r in mine)
                hi = max(r[key] + (r[key + "_ci"] or 0) for r in mine)
                ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
                if key.endswith("skill") and lo <= NOT_LEARNED:  # the line is in view: draw it
                    ax.axhline(NOT_LEARNED, color="k", lw=0.8, ls=":")
                    label += " (dotted: not learned below)"
                elif key.endswith("skill"):
                    label += f" (all above {NOT_LEARNED:g}: learned)"
            ax.set_title(label, fontsize=9)
        axes[i][0].set_ylabel(f"{n} arrives")
    fig.suptitle("A task arriving mid-training: mean ± 95% CI over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
