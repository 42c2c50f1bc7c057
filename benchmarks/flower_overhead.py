"""Flower's own cost and fedmas's cost above it: round times side by side, measured in one run.

Usage: python benchmarks/flower_overhead.py [--config benchmarks/small_quickstart.yaml] [--method all-in-one]
                                             [--rounds 5] [--nodes 2] [--repeats 3] [--node-threads N]

One config (its data; rounds cut to --rounds, merge rounds to half) runs four times. The method is
one whose jobs per round do not depend on what was learned (all-in-one or one-by-one): the floor
learns nothing, so under MAS it would split differently and send a different number of messages.

- in-process: the round's compute, with no transport;
- Flower floor: the same loopback deployment (same SuperLink, SuperNodes, rounds and message sizes)
  with ``flower.client_work: none``: each ClientApp replies at once with the weights it received,
  each changed in its last place, so that Flower moves as many new bytes up as after training;
- Flower floor, echo (``client_work: echo``): the very bytes received go back. Flower names objects
  by their content's hash and skips the ones it holds, so these replies move almost nothing: an
  optimistic floor, printed to show what the transfer of new weights costs;
- fedmas on Flower: ``client_work: train``, the thin ClientApp shim and the warm worker per node;
- fedmas on Flower, train-here: the ClientApp process trains itself (torch, data and model set up
  for every message), the way before the worker, for the breakdown.

It prints each one's mean round time (the first round apart: it pays one-off set-up, such as the
worker's start) and the ratio (fedmas on Flower − floor) ÷ in-process round time, whose goal is ≤ 1.5,
each as a mean with a 95% interval over ``--repeats`` repeats (every configuration once per repeat,
side by side, on a fresh deployment).
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
from fedmas.engines.flower_deploy import submit  # noqa: E402
from fedmas.engines.flower_rehearsal import Loopback  # noqa: E402
from fedmas.run import execute  # noqa: E402
from fedmas.stats import fmt, mean_ci  # noqa: E402


def round_times(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by_round = {r["round"]: r["round_s"] for r in rows}
    return [by_round[k] for k in sorted(by_round)]


FLOWER = [("Flower floor", "none"), ("Flower floor, echo", "echo"), ("fedmas on Flower", "train"),
          ("fedmas on Flower, train-here", "train-here")]


def one_repeat(cfg, a, tmp: Path) -> tuple[dict[str, list[float]], dict, dict]:
    """Every configuration once, side by side, on a fresh loopback deployment."""
    ref = execute(cfg.model_copy(deep=True), tmp / "inprocess", progress=False)
    times, summaries = {"in-process": round_times(tmp / "inprocess")}, {}
    with Loopback(tmp / "flower", nodes=a.nodes) as lb:
        fl = cfg.model_copy(deep=True)
        fl.engine, fl.flower.superlink, fl.flower.nodes = "flower", lb.address, a.nodes
        fl.flower.node_threads = a.node_threads
        for name, work in FLOWER:
            fl.flower.client_work = work
            out = tmp / work
            assert submit(fl, out, home=lb.root / "cli") == 0, f"{name}: flwr run failed"
            times[name] = round_times(out)
            summaries[name] = json.loads((out / "summary.json").read_text())
    return times, summaries, ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="benchmarks/small_quickstart.yaml")
    ap.add_argument("--method", default="all-in-one", choices=["all-in-one", "one-by-one"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="each repeat runs every configuration once, on a fresh "
                                                           "deployment; the ratio is reported with a 95%% interval")
    ap.add_argument("--node-threads", type=int, default=None,
                    help="flower.node_threads (default: the config's threads); the in-process run keeps threads")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"method={a.method}", f"federation.rounds={a.rounds}",
                                 f"mas.merge_rounds={max(1, a.rounds // 2)}"])
    tmp = Path(tempfile.mkdtemp())
    reps = []
    for r in range(a.repeats):
        times, summaries, ref = one_repeat(cfg, a, tmp / f"repeat{r}")
        later = {k: statistics.mean(v[1:] or v) for k, v in times.items()}
        above = lambda top, floor, t=later: (t[top] - t[floor]) / t["in-process"]  # noqa: E731
        reps.append({"round_s": times, "mean_after_first_s": later,
                     "ratio": above("fedmas on Flower", "Flower floor"),
                     "ratio_train_here": above("fedmas on Flower, train-here", "Flower floor"),
                     "ratio_above_echo": above("fedmas on Flower", "Flower floor, echo"),
                     "same_groups": summaries["fedmas on Flower"]["groups"] == ref["groups"],
                     "loss": [summaries["fedmas on Flower"]["total_test_loss"], ref["total_test_loss"]]})
        print(f"repeat {r + 1}/{a.repeats}: ratio {reps[-1]['ratio']:.2f}", flush=True)
    print(f"{a.config}, {a.method}, {a.rounds} rounds, {a.nodes} SuperNodes ({a.node_threads or cfg.threads} "
          f"threads each; in-process {cfg.threads}) on 127.0.0.1, {a.repeats} repeats; mean s/round after the "
          "first round (which pays one-off set-up), mean ± 95% interval over repeats")
    names = list(reps[0]["mean_after_first_s"])
    for k in names:
        m, h = mean_ci([x["mean_after_first_s"][k] for x in reps])
        firsts = ", ".join(f"{x['round_s'][k][0]:.1f}" for x in reps)
        print(f"  {k:<30} {fmt(m, h, 2):>14}   (first rounds: {firsts})")
    summary = {}
    for key, label in [("ratio", "(fedmas on Flower − floor) ÷ in-process"),
                       ("ratio_train_here", "the same with train-here"),
                       ("ratio_above_echo", "the same above the echo floor")]:
        m, h = mean_ci([x[key] for x in reps])
        summary[key] = [m, h]
        print(f"  {label:<42} {fmt(m, h, 2):>14}   (repeats: {', '.join(f'{x[key]:.2f}' for x in reps)})"
              + ("   goal ≤ 1.5" if key == "ratio" else ""))
    losses = ", ".join(f"{x['loss'][0]:.6f}" for x in reps)
    print(f"  fedmas on Flower: same split as in-process in every repeat: {all(x['same_groups'] for x in reps)}; "
          f"total test loss {losses} vs in-process {reps[0]['loss'][1]:.6f}")
    save("flower_overhead", {"repeats": reps, "ratio_mean_ci": summary, "nodes": a.nodes,
                             "node_threads": a.node_threads, "config": a.config, "method": a.method,
                             "rounds": a.rounds})


if __name__ == "__main__":
    main()
