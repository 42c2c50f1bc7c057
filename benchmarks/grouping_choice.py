"""The preregistered choice of fedmas's grouping default, from the validation data of seeds 0-2 alone.

    .venv/bin/python benchmarks/grouping_choice.py [--seeds 0,1,2]

Writes ``benchmarks/results/grouping_choice.json`` and ``.md``. The rule below was written before any run of
the confirmation (seeds 10-19, ``benchmarks/grouping_confirm.py``) and is not revised after them.

Design space (every setting a named option of ``method: mas``):

- where the groups start (``mas.start``): ``merged`` (from the merged model of R0 = 0.7 R, the reference,
  the schedule continued; truth: ``grouping_truth/merged-0.7``) or ``scratch`` (afresh for R rounds, the
  merged phase only measures, R0 = the signal's window; truth: ``grouping_truth/scratch``);
- the grouping signal and its window: ``lookahead`` (the reference's affinity), ``lookahead-self`` (each
  target's column divided by its own-step affinity) and ``cosine`` (gradient cosine on the shared encoder),
  each the mean over the first w·R merged rounds, w in {0.1, 0.2, 0.3} (from the ``record-0.7`` runs, which
  measured every merged round; w = 0.1 lookahead is also the reference's own matrix);
- at most 2 groups (3 from scratch cost ~0.61x one-by-one's FLOPs, over the target's 0.5x).

A design's value on a seed is the mean validation skill (1 - L_val / L_val of the constant predictor, per
task, each task in its group's reported model) of the partition the signal picks, read from the truth of its
start; its cost is that partition's training FLOPs plus, from scratch, the merged phase of its window.

Rule:

1. Feasible: mean cost over the seeds <= 0.5x one-by-one's mean training FLOPs over the same seeds.
2. Among the feasible, the highest mean value over the seeds wins; on an exact tie (the same partitions
   picked), the cheaper design, then the one listed first (signals in the order above, earlier windows first).
3. Simplicity on near-ties: if the design with the reference's signal (lookahead, w = 0.1) and the same start
   is within 0.005 of the winner's mean value, it is chosen instead.
4. ``mas.unsure`` for the chosen start: ``split`` if the mean value of all 2-group partitions (what an
   uninformed split gets on average) exceeds the single group's (what the ``merged`` fallback keeps), else
   ``merged``.

Test skill is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from _common import RESULTS
from grouping_signals import WINDOWS, _early, _scratch_early, score_seed
from grouping_truth_table import COMMITTED, OUT, _trivial, merged_subsets, partitions, scratch_subsets, skill

from fedmas import stats
from fedmas.report import short

CANDIDATE_WINDOWS = (0.1, 0.2, 0.3)
SIGNALS = ("lookahead", "lookahead-self", "cosine")
BUDGET = 0.5  # x one-by-one's training FLOPs
NEAR_TIE = 0.005
REFERENCE = ("lookahead", 0.1)


def _obo_tflop(seed: int) -> float:
    """One-by-one's training TFLOP on ``seed`` (the committed run)."""
    s = json.loads((COMMITTED / f"seed-{seed}" / "one-by-one" / "summary.json").read_text())
    return s["costs"]["train_flop"] / 1e12


def _value(subs, groups: list[list[str]], triv) -> float:
    vals = [skill(subs[frozenset(g)], t, triv, "val") for g in groups for t in g]
    return sum(vals) / len(vals)


def evaluate(seeds: list[int], tasks: list[str], rounds: int) -> dict[str, Any]:
    designs: dict[str, dict[str, Any]] = {}
    context: dict[str, list[float]] = {"one-by-one tflop": [], "one-by-one val": [], "all-in-one val (scratch)": [],
                                       "random 2-group mean val (scratch)": [],
                                       "random 2-group mean val (merged)": [], "merged single group val": []}
    for seed in seeds:
        merged_run = OUT / "merged-0.7" / f"seed-{seed}"
        record_run = OUT / "record-0.7" / f"seed-{seed}"
        triv = _trivial(merged_run)
        got_m = merged_subsets("merged-0.7", seed)
        subs_s, missing = scratch_subsets(seed, tasks)
        if got_m is None or subs_s is None or not (record_run / "summary.json").exists():
            raise SystemExit(f"seed {seed}: the truth or the record run is unfinished ({missing or 'merged/record'})")
        subs_m, merged_tflop = got_m
        per_round = merged_tflop / round(0.7 * rounds)
        context["one-by-one tflop"].append(_obo_tflop(seed))
        context["one-by-one val"].append(_value(subs_s, [[t] for t in tasks], triv))  # its singles: the same runs
        context["all-in-one val (scratch)"].append(_value(subs_s, [tasks], triv))
        context["merged single group val"].append(_value(subs_m, [tasks], triv))
        twos = [p for p in partitions(tasks, 2) if len(p) == 2]
        context["random 2-group mean val (scratch)"].append(sum(_value(subs_s, p, triv) for p in twos) / len(twos))
        context["random 2-group mean val (merged)"].append(sum(_value(subs_m, p, triv) for p in twos) / len(twos))
        for start, subs, early in (("scratch", subs_s, _scratch_early(seed, tasks)),
                                   ("merged", subs_m, _early(merged_run))):
            scored = score_seed(subs, early, merged_run, record_run, tasks, triv, rounds)
            for sig in SIGNALS:
                for w in CANDIDATE_WINDOWS:
                    name = f"{sig}@{w:g}"
                    if name not in scored:
                        raise SystemExit(f"seed {seed}: signal {name} missing from the record run")
                    groups = scored[name]["k2"]["chosen"]
                    tflop = sum(subs[frozenset(g)]["tflop"] for g in groups)
                    tflop += round(w * rounds) * per_round if start == "scratch" else merged_tflop
                    d = designs.setdefault(f"start {start}, {name}", {"start": start, "signal": sig, "window": w,
                                                                       "per_seed": {}})
                    d["per_seed"][seed] = {"groups": groups, "val": _value(subs, groups, triv), "tflop": tflop}
    obo = sum(context["one-by-one tflop"]) / len(seeds)
    for d in designs.values():
        d["val"] = stats.mean_ci([p["val"] for p in d["per_seed"].values()])
        d["tflop"] = sum(p["tflop"] for p in d["per_seed"].values()) / len(seeds)
        d["ratio"] = d["tflop"] / obo
        d["feasible"] = d["ratio"] <= BUDGET
    feasible = {k: d for k, d in designs.items() if d["feasible"]}
    if not feasible:
        raise SystemExit("no design within the FLOPs budget")
    order = list(feasible)  # the listed order: signals as SIGNALS, windows ascending
    best = min(feasible, key=lambda k: (-round(feasible[k]["val"][0], 12), round(feasible[k]["tflop"], 9),
                                        order.index(k)))
    ref = f"start {feasible[best]['start']}, {REFERENCE[0]}@{REFERENCE[1]:g}"
    chosen, why = best, "highest mean validation skill within the budget (rule 2)"
    if ref in feasible and ref != best and feasible[best]["val"][0] - feasible[ref]["val"][0] <= NEAR_TIE:
        chosen, why = ref, (f"the reference's signal is within {NEAR_TIE} of the best ({best}) (rule 3)")
    start = designs[chosen]["start"]
    rnd = sum(context[f"random 2-group mean val ({start})"]) / len(seeds)
    single = sum(context["all-in-one val (scratch)" if start == "scratch" else "merged single group val"]) / len(seeds)
    unsure = "split" if rnd > single else "merged"
    return {"seeds": seeds, "designs": designs, "context": {k: stats.mean_ci(v) for k, v in context.items()},
            "chosen": chosen, "why": why,
            "setting": {"mas.start": start, "mas.signal": designs[chosen]["signal"],
                        "window (mas.affinity_rounds)": designs[chosen]["window"],
                        "mas.merge_rounds": designs[chosen]["window"] if start == "scratch" else 0.7,
                        "mas.splits": 2, "mas.unsure": unsure},
            "unsure_rule": f"mean 2-group partition {rnd:.4f} vs single group {single:.4f} (rule 4)"}


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# The grouping default, chosen on validation data (seeds {', '.join(map(str, doc['seeds']))})", "",
             "Each design: the mean validation skill of the 2-group partition its signal picks (± 95% interval over "
             "the seeds), its training TFLOP and their ratio to one-by-one's. Rule: benchmarks/grouping_choice.py.",
             "", "| design | val skill | TFLOP | × one-by-one | within budget | groups per seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, d in sorted(doc["designs"].items(), key=lambda kv: -kv[1]["val"][0]):
        groups = "; ".join(" / ".join("{" + ",".join(short(t) for t in g) + "}" for g in p["groups"])
                           for p in d["per_seed"].values())
        lines.append(f"| {name} | {stats.fmt(*d['val'], 3)} | {d['tflop']:.1f} | {d['ratio']:.2f} | "
                     f"{'yes' if d['feasible'] else 'no'} | {groups} |")
    lines += ["", "Context (validation skill, same seeds):", ""]
    lines += [f"- {k}: {stats.fmt(*v, 3)}" for k, v in doc["context"].items()]
    lines += ["", f"**Chosen:** {doc['chosen']} — {doc['why']}.", "",
              "Settings: " + ", ".join(f"`{k}: {v}`" for k, v in doc["setting"].items()) + ".", "",
              f"mas.unsure: {doc['setting']['mas.unsure']} — {doc['unsure_rule']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args(argv)
    proto = yaml.safe_load((Path(__file__).parent / "learned_protocol.yaml").read_text())
    assert set(CANDIDATE_WINDOWS) <= set(WINDOWS)
    doc = evaluate([int(s) for s in a.seeds.split(",")], proto["tasks"], int(proto["federation"]["rounds"]))
    (RESULTS / "grouping_choice.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (RESULTS / "grouping_choice.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
