"""How a round's time and the process's memory grow with the number of clients in the federation.

    .venv/bin/python benchmarks/scale.py                       # 20, 100, 1000 clients; 20 and 50 per round
    .venv/bin/python benchmarks/scale.py --clients 20,200 --rounds 3
    .venv/bin/python benchmarks/scale.py --engines inprocess,flower-sim --clients 10,100,1000 --per-round 10

MAS on 3 tasks, a tiny model (width 8) and tiny data per client (4 images of 16×16, synthetic, built
in memory by ``fedmas.testing.synthetic_federation``, a plugin dataset), in-process engine. Every
configuration runs in its own process (peak RSS is that process's; with ``flower-sim`` it is the
ServerApp's process, Ray's workers are separate). With ``flower-sim`` every client is its own simulated
SuperNode. A round's time should grow with
the clients per round, not with the clients in the federation; memory grows with the data only (no
model is kept per client).
Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
TASKS = ["segment_semantic", "depth_zbuffer", "normal"]


def config(clients: int, per_round: int, rounds: int, engine: str = "inprocess") -> dict:
    return {"name": f"scale-{clients}", "method": "mas", "tasks": TASKS, "threads": 1, "engine": engine,
            "flower": {"nodes": clients},
            "data": {"dataset": "python:fedmas.testing:synthetic_federation", "resolution": 16,
                     "options": {"clients": clients}},
            "model": {"width": 8},
            "federation": {"rounds": rounds, "clients_per_round": per_round, "batch_size": 4},
            "mas": {"splits": 2, "merge_rounds": max(1, rounds // 2), "affinity_rounds": 1, "lookahead_step": 1}}


CHILD = """
import json, resource, sys, time
from pathlib import Path
from fedmas.config import Config
from fedmas.run import execute
cfg = Config.model_validate(json.loads({cfg!r}))
t0 = time.perf_counter()
execute(cfg, Path({out!r}), progress=False)
rows = [json.loads(x) for x in Path({out!r}, "metrics.jsonl").read_text().splitlines()]
per_round = {{}}
for r in rows:
    per_round[r["round"]] = max(per_round.get(r["round"], 0.0), r["round_s"])
print(json.dumps({{"total_s": time.perf_counter() - t0, "round_s": [per_round[k] for k in sorted(per_round)],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(clients: int, per_round: int, rounds: int, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(cfg=json.dumps(config(clients, per_round, rounds, engine)),
                            out=str(Path(tmp) / "run"))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    later = doc["round_s"][1:] or doc["round_s"]  # the first round pays one-off set-up
    return {"engine": engine, "clients": clients, "per_round": per_round, "rounds": rounds,
            "median_round_s": float(np.median(later)), "peak_rss_mb": doc["peak_rss_mb"], "total_s": doc["total_s"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="20,100,1000")
    ap.add_argument("--per-round", default="20,50")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--engines", default="inprocess", help="comma-separated: inprocess, flower-sim")
    a = ap.parse_args(argv)
    rows = []
    for engine in a.engines.split(","):
        for per in (int(x) for x in a.per_round.split(",")):
            for n in (int(x) for x in a.clients.split(",")):
                if per > n:
                    continue
                rows.append(measure(n, per, a.rounds, engine))
                r = rows[-1]
                print(f"{engine:>10} {n:>6} clients, {per:>3} per round: {r['median_round_s']:.2f} s/round (median "
                      f"after the first), peak RSS {r['peak_rss_mb']:.0f} MB, {r['total_s']:.0f} s in all", flush=True)
    for engine, per in sorted({(r["engine"], r["per_round"]) for r in rows}):
        same = [r for r in rows if r["per_round"] == per and r["engine"] == engine]
        if len(same) > 1:
            lo, hi = same[0], same[-1]
            print(f"{engine}, {per} per round: {hi['clients'] // lo['clients']}× the clients → "
                  f"{hi['median_round_s'] / lo['median_round_s']:.2f}× the round time, "
                  f"{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}× the peak memory")
    sys.path.insert(0, str(HERE))
    from _common import save

    save("scale", {"command": "benchmarks/scale.py " + " ".join(argv or sys.argv[1:]), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
