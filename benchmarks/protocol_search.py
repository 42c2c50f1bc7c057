"""Choose the comparison protocol from the baselines' validation losses alone.

Candidates are tried cheapest first; each runs one-by-one and all-in-one (seed 0) and is scored on
**validation** data only (never test): one-by-one's skill per task (1 − L_val / L_val of the trivial
predictor, at its best-validation round) and whether either baseline's validation total was still
falling over its last quarter of rounds. The first candidate where one-by-one's skill is ≥ 0.25 on
every task and no validation total is still falling is chosen; the search stops there. No MAS, TAG, HOA
or random run is made here.

    .venv/bin/python benchmarks/protocol_search.py            # resumable: finished runs are reused

Writes ``benchmarks/results/protocol_search.json`` and the runs under ``benchmarks/results/protocol_search/``.
Two runs go side by side (one torch thread each) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import RESULTS

from fedmas import trivial
from fedmas.config import load_config
from fedmas.data import load_federated

BASE = Path(__file__).parent / "paper_protocol.yaml"
OUT = RESULTS / "protocol_search"
SKILL_GOAL = 0.25
BASELINES = ("one-by-one", "all-in-one")
# cheapest first: (name, overrides)
CANDIDATES: list[tuple[str, dict[str, object]]] = [
    ("e5-n48-r20", {"federation.local_epochs": 5, "data.train_images": 48, "federation.rounds": 20}),
    ("e5-n96-r30", {"federation.local_epochs": 5, "data.train_images": 96, "federation.rounds": 30}),
    ("e5-n192-r40", {"federation.local_epochs": 5, "data.train_images": 192, "federation.rounds": 40}),
]


def sets(over: dict[str, object]) -> list[str]:
    out = ["threads=1"]
    for k, v in over.items():
        out.append(f"{k}={v}")
    return out


def run_args(method: str, over: dict[str, object], run_dir: Path) -> list[str] | None:
    exe = str(Path(sys.executable).parent / "fedmas")
    if (run_dir / "summary.json").exists():
        return None
    if (run_dir / "checkpoint" / "state.json").exists():
        return [exe, "run", "--resume", str(run_dir), "--quiet"]
    args = [exe, "run", str(BASE), "--out", str(run_dir), "--quiet", "--set", f"method={method}"]
    for s in sets(over):
        args += ["--set", s]
    if run_dir.exists():
        args.append("--force")
    return args


def score(name: str, over: dict[str, object]) -> dict[str, object]:
    cfg = load_config(BASE, sets(over))
    data = load_federated(cfg.data, cfg.task_list)
    triv = trivial.fit(data, cfg.task_list, cfg.federation.eval_batch_size)
    out: dict[str, object] = {"candidate": name, "overrides": over, "trivial_val_loss": triv.val_loss}
    for method in BASELINES:
        rows = [json.loads(ln) for ln in (OUT / name / method / "metrics.jsonl").read_text().splitlines()]
        summ = json.loads((OUT / name / method / "summary.json").read_text())
        val: dict[str, float] = {}
        falling = []
        for fl in summ["fl_tasks"]:
            mine = [r for r in rows if r["fl_task"] == fl["name"] and "val_total_loss" in r]
            best = next(r for r in mine if r["fl_round"] == fl["selected_round"])
            val.update({t: best[f"val_loss/{t}"] for t in fl["tasks"]})
            if trivial.still_falling([r["val_total_loss"] for r in mine]):
                falling.append(fl["name"])
        sk = trivial.skills(val, triv.val_loss)
        out[method] = {"val_loss": val, "val_skill": sk, "mean_val_skill": trivial.mean_skill(sk),
                       "still_falling": falling}
    obo = out["one-by-one"]["val_skill"]  # type: ignore[index]
    out["passes"] = (all(v is not None and v >= SKILL_GOAL for v in obo.values())
                     and not any(out[m]["still_falling"] for m in BASELINES))  # type: ignore[index]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="score and run this candidate only")
    a = ap.parse_args()
    results = []
    for name, over in CANDIDATES:
        if a.only and name != a.only:
            continue
        procs = []
        for method in BASELINES:
            args = run_args(method, over, OUT / name / method)
            if args:
                (OUT / name).mkdir(parents=True, exist_ok=True)
                print(f"[protocol_search] {name}: {method}", flush=True)
                procs.append(subprocess.Popen(args))
        if any(p.wait() != 0 for p in procs):
            print(f"[protocol_search] {name}: a run failed", file=sys.stderr)
            return 1
        res = score(name, over)
        results.append(res)
        (RESULTS / "protocol_search.json").write_text(json.dumps({"skill_goal": SKILL_GOAL, "results": results},
                                                                 indent=1))
        obo = res["one-by-one"]
        print(f"[protocol_search] {name}: one-by-one validation skill "
              + ", ".join(f"{t} {v:.3f}" for t, v in obo["val_skill"].items())  # type: ignore[index]
              + f"; still falling: {[res[m]['still_falling'] for m in BASELINES]}; passes: {res['passes']}",
              flush=True)
        if res["passes"]:
            print(f"[protocol_search] chosen: {name}")
            return 0
    print("[protocol_search] no candidate passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
