"""When to split: R0 in {0.1, 0.3, 0.5} R with the best and with the chosen partition, and ``merge_rounds: auto``.

    .venv/bin/python benchmarks/grouping_split_time.py run [--seeds 0] [--jobs 2]
    .venv/bin/python benchmarks/grouping_split_time.py table [--seeds 0]

Under ``benchmarks/learned_protocol.yaml`` (groups from the merged model of round R0, the schedule continued),
per seed:

- ``best-r<f>``: the best partition into ≤ 2 groups of that seed's ``scratch`` truth (every subset trained from
  scratch; validation skill), fixed with ``mas.groups``, split at R0 = f·R;
- ``chosen-r<f>``: the partition the reference's lookahead (first 0.1 R merged rounds) picks on that seed,
  fixed the same way (skipped where it is the best one);
- ``auto``: MAS-2 whose merged phase stops by ``merge_rounds: auto`` (validation data only), the lookahead
  choosing the groups.

R0 = 0.7 R comes from the ``merged-0.7`` truth (the same partitions, from one exhaustive run) and R0 = 0 (every
group from scratch) from the ``scratch`` truth; ``table`` puts them in the same rows. Resumable: a finished run
is read back, an interrupted one resumed. Writes ``results/grouping_split_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS
from grouping_truth_table import COMMITTED, _trivial, fl_records

HERE = Path(__file__).parent
PROTOCOL = HERE / "learned_protocol.yaml"
TRUTH = RESULTS / "grouping_truth.json"
CHOICE = RESULTS / "grouping_choice.json"
OUT = RESULTS / "grouping_split_time"
FRACTIONS = (0.1, 0.3, 0.5)
REFERENCE_DESIGN = "start scratch, lookahead@0.1"  # the reference's signal and window (the same matrix either start)


def partitions_of(seed: int) -> dict[str, list[list[str]]]:
    """The best ≤ 2 partition of the scratch truth and the reference signal's pick, for ``seed``."""
    truth = json.loads(TRUTH.read_text())["sources"]
    if str(seed) not in truth.get("scratch", {}):
        raise SystemExit(f"grouping_split_time: seed {seed} has no scratch truth in {TRUTH}; seeds with one: "
                         f"{', '.join(sorted(truth.get('scratch', {})))}")
    best = truth["scratch"][str(seed)]["best"]["2"]["groups"]
    chosen = json.loads(CHOICE.read_text())["designs"][REFERENCE_DESIGN]["per_seed"][str(seed)]["groups"]
    return {"best": best, "chosen": chosen}


def _same(a: list[list[str]], b: list[list[str]]) -> bool:
    return {frozenset(g) for g in a} == {frozenset(g) for g in b}


def queue(seeds: list[int]) -> list[tuple[str, int, Any, Path]]:
    from fedmas.checks import check_config
    from fedmas.config import Config, load_config

    base = load_config(PROTOCOL).model_dump()
    todo = []
    for seed in seeds:
        parts = partitions_of(seed)
        runs: list[tuple[str, dict[str, Any]]] = []
        for f in FRACTIONS:
            runs.append((f"best-r{f}", {"groups": parts["best"], "merge_rounds": f}))
            if not _same(parts["chosen"], parts["best"]):
                runs.append((f"chosen-r{f}", {"groups": parts["chosen"], "merge_rounds": f}))
        runs.append(("auto", {"merge_rounds": "auto", "splits": 2}))
        for key, mas in runs:
            raw = {**base, "seed": seed, "threads": 1, "method": "mas", "name": f"grouping-split-time-{key}",
                   "mas": {**base["mas"], "split_schedule": "continue", "start": "merged", **mas}}
            cfg = check_config(Config.model_validate(raw), key)
            todo.append((key, seed, cfg, OUT / f"seed-{seed}" / key))
    return todo


def _skills(run: Path, triv: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """A finished run's mean validation and test skill over the tasks (each in its group's reported model),
    its training TFLOP, its split round and groups."""
    recs = fl_records(run)
    if recs is None:
        return None
    summary = json.loads((run / "summary.json").read_text())
    val, test, groups = [], [], []
    for rec in recs.values():
        if "val" not in rec:  # the merged phase: its FLOPs are in the total, its tasks reported by the groups
            continue
        tasks = list(rec["val"])
        groups.append(tasks)
        val += [1 - rec["val"][t] / triv["val"][t] for t in tasks]
        test += [1 - rec["test"][t] / triv["test"][t] for t in tasks]
    split = json.loads((run / "split.json").read_text()) if (run / "split.json").exists() else {}
    return {"val_skill": sum(val) / len(val), "test_skill": sum(test) / len(test),
            "tflop": summary["costs"]["train_flop"] / 1e12, "groups": groups, "split_round": split.get("round")}


def _truth_row(source: str, seed: int, groups: list[list[str]]) -> dict[str, Any] | None:
    src = json.loads(TRUTH.read_text())["sources"].get(source, {}).get(str(seed))
    if src is None:
        return None
    want = {frozenset(g) for g in groups}
    for r in src["partitions"]:
        if {frozenset(g) for g in r["groups"]} == want:
            return {"val_skill": r["val_skill"], "test_skill": r["test_skill"], "tflop": r["tflop"], "groups": groups}
    return None


def table(seeds: list[int]) -> dict[str, Any]:
    doc: dict[str, Any] = {"seeds": {}}
    for seed in seeds:
        triv = _trivial(COMMITTED / f"seed-{seed}" / "all-in-one")
        parts = partitions_of(seed)
        rows: dict[str, Any] = {}
        for which, groups in parts.items():
            if which == "chosen" and _same(groups, parts["best"]):
                continue
            rows[f"{which}-r0 (scratch)"] = _truth_row("scratch", seed, groups)
            for f in FRACTIONS:
                rows[f"{which}-r{f}"] = _skills(OUT / f"seed-{seed}" / f"{which}-r{f}", triv)
            rows[f"{which}-r0.7"] = _truth_row("merged-0.7", seed, groups)
        rows["auto"] = _skills(OUT / f"seed-{seed}" / "auto", triv)
        doc["seeds"][str(seed)] = {"partitions": parts, "runs": rows}
    return doc


def markdown(doc: dict[str, Any]) -> str:
    from fedmas.report import short

    def g(groups: list[list[str]]) -> str:
        return " / ".join("{" + ",".join(short(t) for t in x) + "}" for x in groups)

    out = ["# When to split (learned protocol, groups from the merged model of R0, schedule continued)", "",
           "Mean skill over the 5 tasks, validation (decides) and test (reported); training TFLOP. r0 (scratch): "
           "every group from scratch for R rounds (the scratch truth); r0.7: from the merged-0.7 truth.", ""]
    for seed, entry in doc["seeds"].items():
        out += [f"## seed {seed}", "", f"- best (scratch truth, ≤ 2 groups): {g(entry['partitions']['best'])}",
                f"- chosen (the reference's lookahead, first 0.1 R): {g(entry['partitions']['chosen'])}", "",
                "| run | val skill | test skill | TFLOP | split round | groups |",
                "| --- | --- | --- | --- | --- | --- |"]
        for key, r in entry["runs"].items():
            if r is None:
                out.append(f"| {key} | – | – | – | – | not run yet |")
                continue
            out.append(f"| {key} | {r['val_skill']:.3f} | {r['test_skill']:.3f} | {r['tflop']:.1f} | "
                       f"{r.get('split_round', '') if r.get('split_round') is not None else ''} | {g(r['groups'])} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.what == "run":
        from fedmas.compare import run_all

        todo = queue(seeds)
        print(f"[grouping_split_time] {len(todo)} runs, {a.jobs} at a time", file=sys.stderr, flush=True)
        run_all(todo, True, a.jobs)
        return 0
    doc = table(seeds)
    (RESULTS / "grouping_split_time.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (RESULTS / "grouping_split_time.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
