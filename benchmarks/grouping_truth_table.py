"""The ground-truth table of ``benchmarks/grouping_truth.py``: every subset's skill, every partition's.

A subset's numbers are those of its reported model: the round with the lowest validation total (the runs'
``federation.select: best_val``; HOA's probes, which report their last round, are re-selected the same way
from their logged validation losses), or its starting weights where those were best (groups from the merged
model: round 0). Validation skill decides; test skill is reported beside it, never used.

Sources: ``scratch`` (every subset from scratch for R rounds: singles from one-by-one, pairs from HOA's
probes, triples and quadruples from ``grouping_truth/scratch``, all five from all-in-one), ``merged-<f>`` (every
subset from the merged model of round f·R for the rest, from one exhaustive run), and ``best-start`` (each
group from scratch or from the merged model of the committed R0, whichever its validation skill favours).
A partition's training FLOPs are its groups' plus, where a group starts from the merged model, the merged
phase once.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from _common import RESULTS

from fedmas import stats
from fedmas.report import short

OUT = RESULTS / "grouping_truth"
COMMITTED = RESULTS / "learned_protocol"
COMMITTED_HOA = RESULTS / "learned_protocol_hoa"
K_MAX = 3

Record = dict[str, Any]  # {"val": {task: loss}, "test": {task: loss}, "tflop": float}


def _lines(run: Path) -> list[dict[str, Any]]:
    p = run / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def fl_records(run: Path) -> dict[str, Record] | None:
    """Each FL task of a finished run (``summary.json``): its reported model's validation and test losses per
    task and its training TFLOP; None while the run is unfinished."""
    sp = run / "summary.json"
    if not sp.exists():
        return None
    summary = json.loads(sp.read_text())
    lines = _lines(run)
    merged_last = next((ln for ln in reversed(lines) if ln["fl_task"] == "merged"), None)
    out = {}
    for fl in summary["fl_tasks"]:
        mine = [ln for ln in lines if ln["fl_task"] == fl["name"] and "val_total_loss" in ln]
        if fl["name"] == "merged" or not mine:
            continue
        sel = fl["selected_round"] if fl["role"] == "final" else \
            min(mine, key=lambda ln: ln["val_total_loss"])["fl_round"]
        if sel == 0:  # its starting weights: the merged model's heads and encoder, as evaluated at its end
            assert merged_last is not None and fl.get("start_val_loss")
            val, test = dict(fl["start_val_loss"]), {t: merged_last[f"loss/{t}"] for t in fl["tasks"]}
        else:
            ln = next(x for x in mine if x["fl_round"] == sel)
            val, test = {t: ln[f"val_loss/{t}"] for t in fl["tasks"]}, {t: ln[f"loss/{t}"] for t in fl["tasks"]}
        out[fl["name"]] = {"tasks": fl["tasks"], "val": val, "test": test, "tflop": fl["costs"]["train_flop"] / 1e12,
                           "selected_round": sel}
    merged = next((f for f in summary["fl_tasks"] if f["name"] == "merged"), None)
    if merged is not None:
        out["merged"] = {"tasks": merged["tasks"], "tflop": merged["costs"]["train_flop"] / 1e12}
    return out


def _trivial(run: Path) -> dict[str, dict[str, float]]:
    doc = json.loads((run / "trivial.json").read_text())
    return {"val": doc["val_loss"], "test": doc["test_loss"]}


def scratch_subsets(seed: int, tasks: list[str]) -> tuple[dict[frozenset[str], Record], list[str]] | None:
    """Every subset from scratch for ``seed`` (None until every run is finished), and the runs missing."""
    got: dict[frozenset[str], Record] = {}
    missing = []
    obo = fl_records(COMMITTED / f"seed-{seed}" / "one-by-one")
    hoa = fl_records(COMMITTED_HOA / f"seed-{seed}" / "hoa-2")
    aio = fl_records(COMMITTED / f"seed-{seed}" / "all-in-one")
    for name, recs in (("one-by-one", obo), ("hoa-2", hoa), ("all-in-one", aio)):
        if recs is None:
            missing.append(f"{name} seed {seed}")
    for recs, prefix in ((obo, "single-"), (hoa, "probe-"), (aio, "all-in-one")):
        for name, r in (recs or {}).items():
            if name.startswith(prefix) and (prefix != "probe-" or len(r["tasks"]) == 2):
                got[frozenset(r["tasks"])] = r
    for size in range(3, len(tasks)):
        for g in itertools.combinations(tasks, size):
            recs = fl_records(OUT / "scratch" / f"seed-{seed}" / "+".join(short(t) for t in g))
            if recs is None:
                missing.append(f"scratch {'+'.join(short(t) for t in g)} seed {seed}")
            else:
                got[frozenset(g)] = recs["all-in-one"]
    return (got if not missing else None), missing


def merged_subsets(part: str, seed: int) -> tuple[dict[frozenset[str], Record], float] | None:
    """Every subset from the merged model (``grouping_truth/<part>``), and the merged phase's TFLOP."""
    recs = fl_records(OUT / part / f"seed-{seed}")
    if recs is None:
        return None
    return {frozenset(r["tasks"]): r for n, r in recs.items() if n != "merged"}, recs["merged"]["tflop"]


def partitions(items: list[str], k_max: int) -> list[list[list[str]]]:
    """Every partition of ``items`` into at most ``k_max`` groups."""
    def rec(rest: list[str]) -> list[list[list[str]]]:
        if not rest:
            return [[]]
        first, out = rest[0], []
        for p in rec(rest[1:]):
            for i in range(len(p)):
                out.append(p[:i] + [[first] + p[i]] + p[i + 1:])
            out.append([[first]] + p)
        return out
    return [sorted((sorted(g, key=items.index) for g in p), key=lambda g: items.index(g[0]))
            for p in rec(items) if len(p) <= k_max]


def skill(rec: Record, t: str, triv: dict[str, dict[str, float]], split: str) -> float:
    return 1.0 - rec[split][t] / triv[split][t]


def score_partitions(subs: dict[frozenset[str], Record], tasks: list[str], triv, merged_tflop: float,
                     merged_of: dict[frozenset[str], bool] | None = None) -> list[dict[str, Any]]:
    """Each partition's mean validation and test skill and training TFLOP."""
    rows = []
    for p in partitions(tasks, K_MAX):
        val = [skill(subs[frozenset(g)], t, triv, "val") for g in p for t in g]
        test = [skill(subs[frozenset(g)], t, triv, "test") for g in p for t in g]
        uses_merged = merged_tflop > 0 if merged_of is None else any(merged_of[frozenset(g)] for g in p)
        tflop = sum(subs[frozenset(g)]["tflop"] for g in p) + (merged_tflop if uses_merged else 0.0)
        rows.append({"groups": p, "k": len(p), "val_skill": sum(val) / len(val), "test_skill": sum(test) / len(test),
                     "tflop": tflop})
    return rows


def truth(seeds: list[int], tasks: list[str], r0: str = "0.7") -> dict[str, Any]:
    """Per source and seed: every subset's skills and every partition's; the best partition by validation
    skill for k ≤ 2 and k ≤ 3; and what is still missing."""
    doc: dict[str, Any] = {"sources": {}, "missing": []}
    for seed in seeds:
        triv = _trivial(COMMITTED / f"seed-{seed}" / "all-in-one")
        scratch, miss = scratch_subsets(seed, tasks)
        doc["missing"] += miss
        merged = {}
        for part in sorted(p.name for p in OUT.glob("merged-*")) if OUT.exists() else []:
            got = merged_subsets(part, seed)
            if got is None:
                doc["missing"].append(f"{part} seed {seed}")
            else:
                merged[part] = got
        sources: dict[str, tuple[dict[frozenset[str], Record], float, dict[frozenset[str], bool] | None]] = {}
        if scratch is not None:
            sources["scratch"] = (scratch, 0.0, None)
        for part, (subs, mt) in merged.items():
            sources[part] = (subs, mt, None)
        if scratch is not None and f"merged-{r0}" in merged:
            subs_m, mt = merged[f"merged-{r0}"]
            best, from_m = {}, {}
            for g in scratch:
                vs = sum(skill(scratch[g], t, triv, "val") for t in g)
                vm = sum(skill(subs_m[g], t, triv, "val") for t in g)
                best[g], from_m[g] = (subs_m[g], True) if vm >= vs else (scratch[g], False)
            sources["best-start"] = (best, mt, from_m)
        for name, (subs, mt, from_m) in sources.items():
            rows = score_partitions(subs, tasks, triv, mt, from_m)
            entry = {"subsets": [{"tasks": sorted(g, key=tasks.index), **{k: v for k, v in r.items() if k != "tasks"},
                                  "val_skill": {t: skill(r, t, triv, "val") for t in g},
                                  "test_skill": {t: skill(r, t, triv, "test") for t in g},
                                  **({"start": "merged" if from_m[g] else "scratch"} if from_m else {})}
                                 for g, r in subs.items()],
                     "partitions": rows,
                     "best": {str(k): max((r for r in rows if r["k"] <= k), key=lambda r: r["val_skill"])
                              for k in (2, K_MAX)}}
            doc["sources"].setdefault(name, {})[str(seed)] = entry
    return doc


def _g(groups: list[list[str]]) -> str:
    return " / ".join("{" + ",".join(short(t) for t in g) + "}" for g in groups)  # no "|": a table cell


def markdown(doc: dict[str, Any], tasks: list[str]) -> str:
    out = ["# Ground truth for grouping (learned protocol)", "",
           "Mean skill over the 5 tasks of each partition, validation (decides) and test (reported), training "
           "TFLOP; mean ± 95% interval over the seeds where every seed has the source. Best: the partition "
           "with the highest mean validation skill among those into at most k groups, per seed.", ""]
    for name, by_seed in doc["sources"].items():
        seeds = sorted(by_seed, key=int)
        out += [f"## {name} (seeds {', '.join(seeds)})", "",
                "| partition | k | val skill | test skill | TFLOP | best (val) for k≤2 in | k≤3 in |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        first = by_seed[seeds[0]]["partitions"]
        rows = []
        for i, p in enumerate(first):
            v = [by_seed[s]["partitions"][i]["val_skill"] for s in seeds]
            te = [by_seed[s]["partitions"][i]["test_skill"] for s in seeds]
            fl = [by_seed[s]["partitions"][i]["tflop"] for s in seeds]
            wins = {k: sum(by_seed[s]["best"][str(k)]["groups"] == p["groups"] for s in seeds) for k in (2, 3)}
            rows.append((stats.mean_ci(v)[0], f"| {_g(p['groups'])} | {p['k']} | {stats.fmt(*stats.mean_ci(v), 3)} | "
                         f"{stats.fmt(*stats.mean_ci(te), 3)} | {stats.mean_ci(fl)[0]:.1f} | {wins[2]} | {wins[3]} |"))
        out += [r for _, r in sorted(rows, key=lambda x: -x[0])] + [""]
    if doc["missing"]:
        out += ["Still to run: " + ", ".join(doc["missing"]) + ".", ""]
    return "\n".join(out)


def write_table(seeds: list[int]) -> None:
    import yaml

    tasks = yaml.safe_load((Path(__file__).parent / "learned_protocol.yaml").read_text())["tasks"]
    doc = truth(seeds, tasks)
    (RESULTS / "grouping_truth.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "grouping_truth.md").write_text(markdown(doc, tasks))
    print(markdown(doc, tasks))
