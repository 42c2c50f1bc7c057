"""Grouping signals scored against the ground truth of ``benchmarks/grouping_truth.py``: for each signal, the
partition it picks for k ≤ 2 and k ≤ 3, its regret, its rank correlation with the true gains, and its extra
training cost.

    .venv/bin/python benchmarks/grouping_signals.py [--seeds 0,1,2] [--truth merged-0.7|scratch]
        [--signals-from merged-0.7] [--out grouping_signals]

The truth (``--truth``) is every subset from the merged model of round f·R (``merged-<f>``) or from scratch
for R rounds (``scratch``). The truth of a partition is its mean skill over the tasks, each task in its
group's reported model (validation skill decides, test skill is reported). Regret at k: the best partition's
validation skill among those into ≤ k groups − the chosen one's (and, beside it, the same difference in test
skill of the validation-best partition and the chosen one). A pair's true gain: the two tasks' summed
validation skill in the pair − in their single-task models (same start); a group's: its summed skill − its
members' alone. Every signal reads only what the merged phase (``--signals-from``) and the probes give on
validation data:

- ``lookahead-first``: the reference — MAS's affinity of the first 0.1 R merged rounds (that run's
  ``affinity.json``), MAS's objective;
- ``lookahead-self``: the same matrix, each target's column divided by its own-step affinity |Z(t→t)| (a slow
  task's small numbers count as much as a fast one's; fedmas's ``mas.signal: lookahead-self``);
- ``<signal>@w`` (where the ``record-<f>`` twin of ``--signals-from`` has run: MAS-2 measuring every merged
  round): ``lookahead``, ``lookahead-self`` and ``cosine`` (gradient cosine on the shared encoder) averaged
  over the first w·R merged rounds, w in 0.1, 0.2, 0.3, 0.5, 0.7 — the split time's effect on the signal;
- ``probe-p``: every subset's first p rounds under the truth's start (its validation skill then), the best
  partition of those — an exhaustive search on short probes;
- ``alone-p``: each task alone p rounds against all tasks together p rounds: the tasks that gain most by
  going alone leave the group (k − 1 of them, where the gain is positive);
- ``hoa-p``: singles and pairs after p rounds, HOA's higher-order estimate;
- ``linear-p``: a linear surrogate of each task's skill on group membership, fitted on 12 subsets sampled
  (seeded) besides the singles and the full set, after p rounds.

Extra cost: FL-task rounds of probes, in units of one round of the full model (the merged phase is shared).
Writes ``benchmarks/results/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS
from grouping_truth_table import COMMITTED, COMMITTED_HOA, OUT, _trivial, merged_subsets, partitions, scratch_subsets

from fedmas import grouping, stats
from fedmas.report import short

PROBE_ROUNDS = (1, 2, 3)
LINEAR_SAMPLES = 12


def _early(run: Path) -> dict[frozenset[str], dict[int, dict[str, float]]]:
    """Each subset FL task's validation losses after each of its rounds (from metrics.jsonl)."""
    out: dict[frozenset[str], dict[int, dict[str, float]]] = {}
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(ln)
        if r["fl_task"] != "merged" and "val_total_loss" in r:
            out.setdefault(frozenset(r["tasks"]), {})[r["fl_round"]] = {t: r[f"val_loss/{t}"] for t in r["tasks"]}
    return out


def _scratch_early(seed: int, tasks: list[str]) -> dict[frozenset[str], dict[int, dict[str, float]]]:
    """Each subset from scratch: its validation losses after each round, from the runs the scratch truth
    reads (one-by-one's singles, HOA's pair probes, the triples and quadruples, all-in-one)."""
    out: dict[frozenset[str], dict[int, dict[str, float]]] = {}
    runs = [(COMMITTED / f"seed-{seed}" / "one-by-one", "single-"),
            (COMMITTED_HOA / f"seed-{seed}" / "hoa-2", "probe-"),
            (COMMITTED / f"seed-{seed}" / "all-in-one", "all-in-one")]
    runs += [(p, "all-in-one") for p in sorted((OUT / "scratch" / f"seed-{seed}").glob("*"))]
    for run, prefix in runs:
        for ln in (run / "metrics.jsonl").read_text().splitlines():
            r = json.loads(ln)
            pair_ok = prefix != "probe-" or len(r["tasks"]) == 2
            if r["fl_task"].startswith(prefix) and "val_total_loss" in r and pair_ok:
                out.setdefault(frozenset(r["tasks"]), {})[r["fl_round"]] = {t: r[f"val_loss/{t}"]
                                                                            for t in r["tasks"]}
    return out


def _best(values: dict[frozenset[str], float], tasks: list[str], k: int) -> list[list[str]]:
    return max((p for p in partitions(tasks, k)), key=lambda p: sum(values[frozenset(g)] for g in p))


def _z_choice(z: np.ndarray, tasks: list[str], k: int) -> list[list[str]]:
    """MAS's rule: the best of the exactly-j optima of its objective, j ≤ k (fewest groups on ties)."""
    cands = [(g.score, -j, g.groups) for j, g in enumerate(grouping.partitions_up_to(z, k), start=1)]
    return [[tasks[i] for i in grp] for grp in max(cands, key=lambda c: (c[0], c[1]))[2]]


def _z_group_value(z: np.ndarray, tasks: list[str], g: frozenset[str]) -> float:
    idx = sorted(tasks.index(t) for t in g)
    return float(grouping.task_scores(z, [idx])[idx].sum()) if len(idx) > 1 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


WINDOWS = (0.1, 0.2, 0.3, 0.5, 0.7)  # merged-phase windows (fractions of R) scored from the record-<f> runs


def _matrix_signal(zz: np.ndarray, tasks: list[str], true_pair, true_group) -> dict[str, Any]:
    return {"choose": lambda k, zz=zz: _z_choice(zz, tasks, k), "cost": 0.0,
            "pair": {g: zz[tasks.index(a), tasks.index(b)] + zz[tasks.index(b), tasks.index(a)]
                     for g in true_pair for a, b in [sorted(g, key=tasks.index)]},
            "group": {g: _z_group_value(zz, tasks, g) for g in true_group}}


def score_seed(subs: dict[frozenset[str], dict[str, Any]], early: dict[frozenset[str], dict[int, dict[str, float]]],
               aff_run: Path, record_run: Path | None, tasks: list[str], triv: dict[str, dict[str, float]],
               rounds: int) -> dict[str, Any]:
    """Every signal's choice and regret against one seed's truth ``subs`` (each subset's reported losses);
    ``early``: each subset's validation losses after each of its first rounds (the probes); ``aff_run``: the
    run whose ``affinity.json`` is the reference's (the first 0.1 R merged rounds); ``record_run``: the
    MAS-2 run that measured every merged round (lookahead and cosine), where it has finished."""
    val = {g: sum(1 - r["val"][t] / triv["val"][t] for t in g) for g, r in subs.items()}
    test = {g: sum(1 - r["test"][t] / triv["test"][t] for t in g) for g, r in subs.items()}
    n = len(tasks)
    true_pair = {g: val[g] - sum(val[frozenset([t])] for t in g) for g in val if len(g) == 2}
    true_group = {g: val[g] - sum(val[frozenset([t])] for t in g) for g in val if len(g) >= 2}
    aff = json.loads((aff_run / "affinity.json").read_text())
    z = np.array([[aff["affinity"][a][b] for b in aff["tasks"]] for a in aff["tasks"]])
    assert aff["tasks"] == tasks
    zn = z / np.maximum(np.abs(np.diag(z)), 1e-12)[None, :]

    def skill_at(g: frozenset[str], p: int) -> float:
        return sum(1 - early[g][p][t] / triv["val"][t] for t in g)

    signals: dict[str, dict[str, Any]] = {}
    for name, zz in (("lookahead-first", z), ("lookahead-self", zn)):
        signals[name] = _matrix_signal(zz, tasks, true_pair, true_group)
    recorded = record_run / "affinity.json" if record_run is not None else None
    if recorded is not None and recorded.exists() and (record_run / "summary.json").exists():
        doc = json.loads(recorded.read_text())
        assert doc["tasks"] == tasks
        hists = {"lookahead": doc["history"], "cosine": doc["signals"]["cosine"]["history"]}
        for w in WINDOWS:
            upto = max(1, int(round(w * rounds)))
            for name, hist in hists.items():
                if upto > len(hist):
                    continue
                zz = np.nanmean(np.asarray([r["matrix"] for r in hist[:upto]], dtype=float), axis=0)
                signals[f"{name}@{w:g}"] = _matrix_signal(zz, tasks, true_pair, true_group)
                if name == "lookahead":
                    zs = zz / np.maximum(np.abs(np.diag(zz)), 1e-12)[None, :]
                    signals[f"lookahead-self@{w:g}"] = _matrix_signal(zs, tasks, true_pair, true_group)
    full = frozenset(tasks)
    for p in PROBE_ROUNDS:
        probe = {g: skill_at(g, p) for g in subs}
        signals[f"probe-{p}"] = {"choose": lambda k, probe=probe: _best(probe, tasks, k),
                                 "cost": p * (len(subs) - 1),
                                 "pair": {g: probe[g] - sum(probe[frozenset([t])] for t in g) for g in true_pair},
                                 "group": {g: probe[g] - sum(probe[frozenset([t])] for t in g) for g in true_group}}
        gain = {t: skill_at(frozenset([t]), p) - (1 - early[full][p][t] / triv["val"][t]) for t in tasks}

        def alone(k: int, gain=gain) -> list[list[str]]:
            out = [t for t in sorted(tasks, key=lambda t: -gain[t]) if gain[t] > 0][:k - 1]
            rest = [t for t in tasks if t not in out]
            return ([rest] if rest else []) + [[t] for t in out]
        signals[f"alone-{p}"] = {"choose": alone, "cost": p * n}
        single = {t: 1 - early[frozenset([t])][p][t] / triv["val"][t] for t in tasks}
        pair = {(a, b): 1 - early[frozenset([a, b])][p][a] / triv["val"][a] for a in tasks for b in tasks if a != b}
        hoa = {g: (single[next(iter(g))] if len(g) == 1 else sum(np.mean([pair[(t, o)] for o in g if o != t])
                                                                for t in g)) for g in subs}
        signals[f"hoa-{p}"] = {"choose": lambda k, hoa=hoa: _best(hoa, tasks, k), "cost": p * (n + n * (n - 1) // 2),
                               "pair": {g: hoa[g] - sum(hoa[frozenset([t])] for t in g) for g in true_pair},
                               "group": {g: hoa[g] - sum(hoa[frozenset([t])] for t in g) for g in true_group}}
        lin = _linear(early, triv, tasks, p)
        signals[f"linear-{p}"] = {"choose": lambda k, lin=lin: _best(lin, tasks, k),
                                  "cost": p * (n + 1 + LINEAR_SAMPLES),
                                  "pair": {g: lin[g] - sum(lin[frozenset([t])] for t in g) for g in true_pair},
                                  "group": {g: lin[g] - sum(lin[frozenset([t])] for t in g) for g in true_group}}
    out: dict[str, Any] = {}
    for name, sig in signals.items():
        row: dict[str, Any] = {"cost_rounds": sig["cost"]}
        for k in (2, 3):
            best = _best(val, tasks, k)
            chosen = sig["choose"](k)
            v = sum(val[frozenset(g)] for g in chosen) / n
            row[f"k{k}"] = {"chosen": chosen, "best": best,
                            "val_regret": sum(val[frozenset(g)] for g in best) / n - v,
                            "test_regret": (sum(test[frozenset(g)] for g in best) - sum(test[frozenset(g)]
                                                                                       for g in chosen)) / n}
        if "pair" in sig:
            row["pair_rho"] = _spearman([sig["pair"][g] for g in true_pair], list(true_pair.values()))
            row["group_rho"] = _spearman([sig["group"][g] for g in true_group], list(true_group.values()))
        out[name] = row
    return out


def _linear(early, triv, tasks: list[str], p: int) -> dict[frozenset[str], float]:
    """Each task's skill in a group ≈ a_t + Σ_{j in the group, j ≠ t} b_tj, fitted by least squares on the
    singles, the full set and LINEAR_SAMPLES other subsets drawn with a fixed seed; the predicted subset value."""
    rng = np.random.default_rng(0)
    others = [frozenset(c) for size in range(2, len(tasks)) for c in itertools.combinations(tasks, size)]
    picked = [others[i] for i in rng.choice(len(others), size=min(LINEAR_SAMPLES, len(others)), replace=False)]
    fit = [frozenset([t]) for t in tasks] + [frozenset(tasks)] + picked
    coef = {}
    for t in tasks:
        rows, ys = [], []
        for g in fit:
            if t in g:
                rows.append([1.0] + [float(o in g) for o in tasks if o != t])
                ys.append(1 - early[g][p][t] / triv["val"][t])
        coef[t] = np.linalg.lstsq(np.asarray(rows), np.asarray(ys), rcond=None)[0]
    pred = {}
    for size in range(1, len(tasks) + 1):
        for c in itertools.combinations(tasks, size):
            g = frozenset(c)
            pred[g] = sum(float(coef[t] @ np.asarray([1.0] + [float(o in g) for o in tasks if o != t])) for t in g)
    return pred


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--truth", default="merged-0.7",
                    help="the ground truth the signals are scored against: scratch or merged-<f>")
    ap.add_argument("--signals-from", default="merged-0.7",
                    help="the merged phase the signals come from (its record-<f> twin adds the windows)")
    ap.add_argument("--out", default="grouping_signals", help="file stem under benchmarks/results/")
    a = ap.parse_args(argv)
    tasks = yaml.safe_load((Path(__file__).parent / "learned_protocol.yaml").read_text())["tasks"]
    rounds = int(yaml.safe_load((Path(__file__).parent / "learned_protocol.yaml").read_text())["federation"]["rounds"])
    per_seed, missing = {}, []
    for s in (int(x) for x in a.seeds.split(",")):
        merged_run = OUT / a.signals_from / f"seed-{s}"
        record_run = OUT / a.signals_from.replace("merged-", "record-") / f"seed-{s}"
        if not (merged_run / "summary.json").exists():
            missing.append(s)
            continue
        if a.truth == "scratch":
            subs, _ = scratch_subsets(s, tasks)
            early = _scratch_early(s, tasks)
        else:
            got = merged_subsets(a.truth, s)
            subs, early = (got[0], _early(OUT / a.truth / f"seed-{s}")) if got is not None else (None, {})
        if subs is None:
            missing.append(s)
            continue
        per_seed[s] = score_seed(subs, early, merged_run, record_run, tasks, _trivial(merged_run), rounds)
    if not per_seed:
        print(f"no seed with both the truth ({a.truth}) and the signals ({a.signals_from}) finished", file=sys.stderr)
        return 1
    names = [n for n in next(iter(per_seed.values())) if all(n in per_seed[s] for s in per_seed)]
    summary = {}
    for name in names:
        rows = [per_seed[s][name] for s in per_seed]
        entry = {"cost_rounds": rows[0]["cost_rounds"]}
        for k in (2, 3):
            for key in ("val_regret", "test_regret"):
                entry[f"k{k}_{key}"] = stats.mean_ci([r[f"k{k}"][key] for r in rows])
            entry[f"k{k}_hits"] = sum(sorted(map(sorted, r[f"k{k}"]["chosen"]))
                                      == sorted(map(sorted, r[f"k{k}"]["best"])) for r in rows)
        for key in ("pair_rho", "group_rho"):
            if key in rows[0]:
                entry[key] = stats.mean_ci([r[key] for r in rows])
        summary[name] = entry
    doc = {"part": f"truth {a.truth}, signals from {a.signals_from}", "seeds": sorted(per_seed),
           "missing_seeds": missing, "per_seed": per_seed,
           "summary": summary}
    (RESULTS / f"{a.out}.json").write_text(json.dumps(doc, indent=1, default=list))
    md = _markdown(doc)
    (RESULTS / f"{a.out}.md").write_text(md)
    print(md)
    return 0


def _markdown(doc: dict[str, Any]) -> str:
    seeds = doc["seeds"]
    lines = [f"# Grouping signals against the ground truth ({doc['part']}, seeds {', '.join(map(str, seeds))})", "",
             "Regret: best partition's mean validation skill − the chosen one's (≤ k groups); test: the same "
             "difference in test skill. ρ: Spearman with the true gains of the 10 pairs / 26 groups. Cost: extra "
             "FL-task rounds of probes. Mean ± 95% interval over seeds.", "",
             "| signal | cost (rounds) | k≤2 regret val | k≤2 regret test | k≤2 best found | k≤3 regret val | "
             "k≤3 regret test | k≤3 best found | ρ pairs | ρ groups |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in doc["summary"].items():
        def f(key: str, e: dict[str, Any] = e) -> str:
            return stats.fmt(*e[key], 3) if key in e else ""
        lines.append(f"| {name} | {e['cost_rounds']} | {f('k2_val_regret')} | {f('k2_test_regret')} | "
                     f"{e['k2_hits']}/{len(seeds)} | {f('k3_val_regret')} | {f('k3_test_regret')} | "
                     f"{e['k3_hits']}/{len(seeds)} | {f('pair_rho')} | {f('group_rho')} |")
    lines += ["", "Chosen partitions (k ≤ 2) per seed:", ""]
    for s, per in doc["per_seed"].items():
        best = per["lookahead-first"]["k2"]["best"]
        lines.append(f"- seed {s}: best " + " | ".join("{" + ",".join(short(t) for t in g) + "}" for g in best)
                     + "; " + "; ".join(f"{n}: " + " | ".join("{" + ",".join(short(t) for t in g) + "}"
                                                             for g in r["k2"]["chosen"])
                                       for n, r in per.items() if n in ("lookahead-first", "probe-2", "alone-2")))
    if doc["missing_seeds"]:
        lines += ["", f"Seeds still running: {', '.join(map(str, doc['missing_seeds']))}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
