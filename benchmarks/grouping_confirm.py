"""The confirmation of the preregistered grouping default on fresh seeds (10-19), under the learned protocol.

    .venv/bin/python benchmarks/grouping_confirm.py run [--seeds 10,...,19] [--jobs 2]
    .venv/bin/python benchmarks/grouping_confirm.py table

``run`` reads the settings that ``benchmarks/grouping_choice.py`` chose from seeds 0-2's validation data
(``results/grouping_choice.json``, committed before this script first ran) and queues, seed by seed
(resumable: a finished run is read back, an interrupted one resumed):

- ``default:2``: MAS with the chosen settings (``mas.start``, ``mas.signal``, the window, ``mas.unsure``);
- ``random:2``: the same merged phase and group start with a seeded random partition (the control for the
  choice of groups);
- ``mas:2``: MAS as the reference runs it (``benchmarks/learned_protocol.yaml`` unchanged);
- ``all-in-one`` and ``one-by-one``.

``table`` writes ``results/grouping_confirm.json`` and ``.md``: per method the mean test skill, validation skill
and training TFLOP; the paired differences of the default against each other method over the seeds (on the
tasks both learned, as every comparison of the learned protocol), and the issue's target read off them:
default − one-by-one's interval's lower bound ≥ −0.01; default − all-in-one and default − random:2 intervals
above 0; training FLOPs ≤ 0.5x one-by-one's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS

HERE = Path(__file__).parent
PROTOCOL = HERE / "learned_protocol.yaml"
CHOICE = RESULTS / "grouping_choice.json"
OUT = RESULTS / "grouping_confirm"
SEEDS = tuple(range(10, 20))
METHODS = ("one-by-one", "default:2", "random:2", "mas:2", "all-in-one")


def chosen_mas() -> dict[str, Any]:
    """The ``mas`` section overrides of the preregistered default."""
    s = json.loads(CHOICE.read_text())["setting"]
    w = s["window (mas.affinity_rounds)"]
    return {"start": s["mas.start"], "signal": s["mas.signal"], "merge_rounds": s["mas.merge_rounds"],
            "affinity_rounds": w, "splits": int(s["mas.splits"]), "unsure": s["mas.unsure"],
            "split_schedule": "continue"}


def queue(seeds: list[int]) -> list[tuple[str, int, Any, Path]]:
    from fedmas.checks import check_config
    from fedmas.config import Config, load_config

    base = load_config(PROTOCOL).model_dump()
    mine = chosen_mas()
    todo = []
    for seed in seeds:
        for key in METHODS:
            raw = {**base, "seed": seed, "threads": 1, "name": f"grouping-confirm-{key.replace(':', '-')}"}
            if key == "default:2":
                raw["method"], raw["mas"] = "mas", {**raw["mas"], **mine}
            elif key == "random:2":
                raw["method"], raw["mas"] = "random", {**raw["mas"], **mine}
            elif key == "mas:2":
                raw["method"], raw["mas"] = "mas", {**raw["mas"], "splits": 2}
            else:
                raw["method"] = key
            cfg = check_config(Config.model_validate(raw), key)
            todo.append((key, seed, cfg, OUT / f"seed-{seed}" / key.replace(":", "-")))
    return todo


def table() -> dict[str, Any]:
    from learned_results import compare, load_folder
    from learned_results import table as method_table

    from fedmas import stats

    runs = load_folder(OUT)
    doc: dict[str, Any] = {"settings": chosen_mas(), "seeds": {k: sorted(v) for k, v in runs.items()}}
    if not runs:
        return doc
    tasks, rows = method_table(runs)
    for r in rows:
        r["val_skill"] = stats.mean_ci([sum(s["val_skill"].values()) / len(s["val_skill"])
                                        for s in runs[r["method"]].values()])
    doc["tasks"], doc["methods"] = tasks, rows
    doc["pairs"] = {b: compare(runs, "default:2", b, +1) for b in ("one-by-one", "all-in-one", "random:2", "mas:2")}
    ratio = None
    if "default:2" in runs and "one-by-one" in runs:
        seeds = sorted(set(runs["default:2"]) & set(runs["one-by-one"]))
        if seeds:
            ratio = stats.mean_ci([runs["default:2"][s]["costs"]["train_flop"] / runs["one-by-one"][s]["costs"]
                                   ["train_flop"] for s in seeds])
    doc["flop_ratio_vs_one_by_one"] = ratio
    p = doc["pairs"]

    def lo(d: dict[str, Any] | None) -> float | None:
        return None if not d or d.get("ci") is None else d["diff"] - d["ci"]
    doc["target"] = {
        "not below one-by-one by more than 0.01 (lower bound ≥ −0.01)":
            None if lo(p["one-by-one"]) is None else lo(p["one-by-one"]) >= -0.01,  # type: ignore[operator]
        "above all-in-one (lower bound > 0)": None if lo(p["all-in-one"]) is None else lo(p["all-in-one"]) > 0,
        "above random:2 (lower bound > 0)": None if lo(p["random:2"]) is None else lo(p["random:2"]) > 0,
        "≤ 0.5× one-by-one's training FLOPs": None if ratio is None else ratio[0] <= 0.5}
    groups: dict[str, int] = {}
    for s in runs.get("default:2", {}).values():
        key = " | ".join("{" + ",".join(g) + "}" for g in s.get("groups") or [])
        groups[key] = groups.get(key, 0) + 1
    doc["default_groups"] = groups
    return doc


def markdown(doc: dict[str, Any]) -> str:
    from fedmas import stats
    from fedmas.report import short

    out = ["# Confirmation of the grouping default (learned protocol, fresh seeds)", "",
           "Settings (chosen on seeds 0-2's validation data, results/grouping_choice.md): " +
           ", ".join(f"`mas.{k}: {v}`" for k, v in doc["settings"].items()) + ".", ""]
    if "methods" not in doc:
        return "\n".join(out + ["No finished run yet.", ""])
    out += ["| method | seeds | mean test skill | mean val skill | train TFLOP |", "| --- | --- | --- | --- | --- |"]
    for r in doc["methods"]:
        out.append(f"| {r['method']} | {r['seeds']} | {stats.fmt(*r['mean_skill'], 3)} | "
                   f"{stats.fmt(*r['val_skill'], 3)} | {stats.fmt(*r['train_tflop'], 3)} |")
    out += ["", "Paired differences of mean test skill, default:2 − other (95% interval over the seeds both ran; "
            "on the tasks both learned):", "", "| other | seeds | difference | default higher in | tasks left out |",
            "| --- | --- | --- | --- | --- |"]
    for b, d in doc["pairs"].items():
        if not d or d.get("diff") is None:
            out.append(f"| {b} | 0 | – | – | – |")
            continue
        higher = d["seeds"] - d["lower_in"] - d["tied_in"]
        out.append(f"| {b} | {d['seeds']} | {stats.fmt(d['diff'], d['ci'], 3)} | {higher} of {d['seeds']} | "
                   f"{', '.join(short(t) for t in d['excluded']) or 'none'} |")
    if doc["flop_ratio_vs_one_by_one"]:
        out += ["", f"Training FLOPs of default:2 / one-by-one: {stats.fmt(*doc['flop_ratio_vs_one_by_one'], 3)}."]
    out += ["", "Target:", ""] + [f"- {k}: {'met' if v else 'not met' if v is not None else 'not yet known'}"
                                  for k, v in doc["target"].items()]
    out += ["", "Groups the default chose: " + "; ".join(f"{k} ({n}×)" for k, n in doc["default_groups"].items()), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    if a.what == "run":
        from fedmas.compare import run_all

        todo = queue([int(s) for s in a.seeds.split(",")])
        print(f"[grouping_confirm] {len(todo)} runs, {a.jobs} at a time; settings {chosen_mas()}", file=sys.stderr,
              flush=True)
        run_all(todo, True, a.jobs)
        return 0
    doc = table()
    (RESULTS / "grouping_confirm.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (RESULTS / "grouping_confirm.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
