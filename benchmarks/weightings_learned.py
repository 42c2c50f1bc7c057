"""PCGrad and FAMO as all-in-one weightings beside the committed learned-protocol comparison, paired by seed.

    .venv/bin/fedmas compare benchmarks/learned_protocol.yaml --seeds 0,1,2,3,4,5,6,7,8,9 --jobs 2 \\
        --out benchmarks/results/learned_protocol_weightings --methods all-in-one-pcgrad,all-in-one-famo
    .venv/bin/python benchmarks/weightings_learned.py

Reads the finished runs of ``results/learned_protocol_weightings`` and the committed ``results/learned_protocol``
(all-in-one, one-by-one, MAS-2) and writes ``results/weightings_learned.{json,md,png}``: per method the mean test
skill per task, the mean skill and training TFLOP; paired differences of mean skill (on the tasks both learned)
over the seeds both ran. Works on whatever seeds have finished (say how many).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _common import RESULTS
from learned_results import compare, figure, load_folder, per_task, table

from fedmas import stats
from fedmas.report import short

WEIGHTINGS = RESULTS / "learned_protocol_weightings"
BASE = ("all-in-one", "one-by-one", "mas:2")
NEW = ("all-in-one-pcgrad", "all-in-one-famo")


def load() -> dict[str, Any]:
    runs = {k: v for k, v in load_folder(RESULTS / "learned_protocol").items() if k in BASE}
    if WEIGHTINGS.exists():
        load_folder(WEIGHTINGS, "", runs)
    return runs


def build(runs: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"seeds": {k: sorted(v) for k, v in runs.items()}}
    if not any(k in runs for k in NEW):
        return doc
    tasks, rows = table(runs)
    doc["tasks"], doc["methods"] = tasks, rows
    doc["pairs"] = {f"{a} − {b}": compare(runs, a, b, +1) for a in NEW for b in BASE}
    doc["per_task"] = {f"{a} − all-in-one": per_task(runs, a, "all-in-one") for a in NEW}
    return doc


def markdown(doc: dict[str, Any]) -> str:
    out = ["# PCGrad and FAMO beside the learned-protocol comparison", ""]
    if "methods" not in doc:
        return "\n".join(out + ["No PCGrad or FAMO run has finished yet.", ""])
    tasks = doc["tasks"]
    out += ["| method | seeds | " + " | ".join(short(t) for t in tasks) + " | mean skill | train TFLOP |",
            "| --- | ---: | " + " | ".join("---" for _ in tasks) + " | --- | ---: |"]
    for r in doc["methods"]:
        out.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(stats.fmt(*r[t], 3) for t in tasks)
                   + f" | {stats.fmt(*r['mean_skill'], 3)} | {stats.fmt_g(*r['train_tflop'])} |")
    out += ["", "Paired differences of mean test skill (95% interval over the seeds both ran; tasks both learned):",
            "", "| difference | seeds | value | verdict |", "| --- | ---: | --- | --- |"]
    for name, d in doc["pairs"].items():
        if not d or d.get("diff") is None:
            out.append(f"| {name} | 0 | – | – |")
            continue
        verdict = {"holds": "higher", "refuted": "lower"}.get(d["finding"], d["finding"])
        out.append(f"| {name} | {d['seeds']} | {stats.fmt(d['diff'], d['ci'], 3)} | {verdict} |")
    out += ["", "Per task, paired differences of test skill against all-in-one (described, not ranked on):", "",
            "| difference | " + " | ".join(short(t) for t in tasks) + " |",
            "| --- | " + " | ".join("---" for _ in tasks) + " |"]
    for name, per in doc.get("per_task", {}).items():
        if per:
            out.append(f"| {name} | " + " | ".join(stats.fmt(per[t]["diff"], per[t]["ci"], 3) for t in tasks) + " |")
    return "\n".join(out + [""])


def main() -> int:
    runs = load()
    doc = build(runs)
    if "methods" in doc:
        figure(runs, RESULTS / "weightings_learned.png")
    (RESULTS / "weightings_learned.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (RESULTS / "weightings_learned.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
