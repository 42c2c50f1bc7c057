"""Flower's own cost and fedmas's cost above it: round times side by side, measured in one run.

Usage: python benchmarks/flower_overhead.py [--config configs/quickstart.yaml] [--method all-in-one]
                                             [--rounds 5] [--nodes 2]

One config (its data; rounds cut to --rounds, merge rounds to half) runs four times. The method is
one whose jobs per round do not depend on what was learned (all-in-one or one-by-one): the floor
learns nothing, so under MAS it would split differently and send a different number of messages.

- in-process: the round's compute, with no transport;
- Flower floor: the same loopback deployment (same SuperLink, SuperNodes, rounds and message sizes)
  with ``flower.client_work: none``: each ClientApp replies at once with the weights it received;
- fedmas on Flower: ``client_work: train``, the thin ClientApp shim and the warm worker per node;
- fedmas on Flower, train-here: the ClientApp process trains itself (torch, data and model set up
  for every message), the way before the worker, for the breakdown.

It prints each one's mean round time (the first round apart: it pays one-off set-up, such as the
worker's start) and the ratio (fedmas on Flower − floor) ÷ in-process round time, whose goal is ≤ 1.5.
Writes ``benchmarks/results/flower_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from fedmas.config import load_config  # noqa: E402
from fedmas.engines.flower_deploy import Loopback, submit  # noqa: E402
from fedmas.run import execute  # noqa: E402


def round_times(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by_round = {r["round"]: r["round_s"] for r in rows}
    return [by_round[k] for k in sorted(by_round)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--method", default="all-in-one", choices=["all-in-one", "one-by-one"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--node-threads", type=int, default=None,
                    help="flower.node_threads (default: the config's threads); the in-process run keeps threads")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"method={a.method}", f"federation.rounds={a.rounds}",
                                 f"mas.merge_rounds={max(1, a.rounds // 2)}"])
    tmp = Path(tempfile.mkdtemp())
    ref = execute(cfg, tmp / "inprocess", progress=False)
    times = {"in-process": round_times(tmp / "inprocess")}
    summaries = {}
    with Loopback(tmp / "flower", nodes=a.nodes) as lb:
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, a.nodes
        cfg.flower.node_threads = a.node_threads
        for name, work in [("Flower floor", "none"), ("fedmas on Flower", "train"),
                           ("fedmas on Flower, train-here", "train-here")]:
            cfg.flower.client_work = work
            out = tmp / work
            assert submit(cfg, out, home=lb.root / "cli") == 0, f"{name}: flwr run failed"
            times[name] = round_times(out)
            summaries[name] = json.loads((out / "summary.json").read_text())
    later = {k: statistics.mean(v[1:] or v) for k, v in times.items()}
    ratio = (later["fedmas on Flower"] - later["Flower floor"]) / later["in-process"]
    ratio_here = (later["fedmas on Flower, train-here"] - later["Flower floor"]) / later["in-process"]
    print(f"{a.config}, {a.method}, {a.rounds} rounds, {a.nodes} SuperNodes ({a.node_threads or cfg.threads} "
          f"threads each; in-process {cfg.threads}) on 127.0.0.1; mean s/round after the first "
          "(first round in brackets)")
    for k, v in times.items():
        print(f"  {k:<30} {later[k]:6.2f}   ({v[0]:.1f}; rounds: {', '.join(f'{t:.1f}' for t in v)})")
    print(f"  (fedmas on Flower − floor) ÷ in-process: {ratio:.2f}   (goal ≤ 1.5)")
    print(f"  the same with train-here:                {ratio_here:.2f}")
    got = summaries["fedmas on Flower"]
    print(f"  fedmas on Flower: same split as in-process: {got['groups'] == ref['groups']}; total test loss "
          f"{got['total_test_loss']:.6f} vs {ref['total_test_loss']:.6f}")
    save("flower_overhead", {"round_s": times, "mean_after_first_s": later, "ratio": ratio,
                             "ratio_train_here": ratio_here, "same_groups": got["groups"] == ref["groups"],
                             "loss": [got["total_test_loss"], ref["total_test_loss"]], "nodes": a.nodes,
                             "node_threads": a.node_threads, "config": a.config, "method": a.method,
                             "rounds": a.rounds})


if __name__ == "__main__":
    main()
