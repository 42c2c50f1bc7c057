"""Per-round time on a Flower loopback deployment ÷ in-process, same config, measured in one run.

Usage: python benchmarks/flower_overhead.py [--config configs/quickstart.yaml] [--rounds 4] [--nodes 2]
The config's method and data are kept; rounds are cut to --rounds (merge rounds to half).
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=2)
    a = ap.parse_args()
    cfg = load_config(a.config, [f"federation.rounds={a.rounds}", f"mas.merge_rounds={max(1, a.rounds // 2)}"])
    tmp = Path(tempfile.mkdtemp())
    ref = execute(cfg, tmp / "inprocess", progress=False)
    with Loopback(tmp / "flower", nodes=a.nodes) as lb:
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, a.nodes
        assert submit(cfg, tmp / "fl", home=lb.root / "cli") == 0
    got = json.loads((tmp / "fl" / "summary.json").read_text())
    t_in, t_fl = round_times(tmp / "inprocess"), round_times(tmp / "fl")
    mean_in, mean_fl = sum(t_in) / len(t_in), sum(t_fl) / len(t_fl)
    ratio = mean_fl / mean_in
    print(f"{a.config}, {a.rounds} rounds, {a.nodes} SuperNodes on 127.0.0.1")
    print(f"  in-process  {mean_in:6.2f} s/round   (rounds: {', '.join(f'{t:.1f}' for t in t_in)})")
    print(f"  Flower      {mean_fl:6.2f} s/round   (rounds: {', '.join(f'{t:.1f}' for t in t_fl)})")
    print(f"  ratio Flower ÷ in-process: {ratio:.2f}")
    print(f"  same split: {got['groups'] == ref['groups']}; total test loss {got['total_test_loss']:.6f} vs "
          f"{ref['total_test_loss']:.6f}")
    save("flower_overhead", {"inprocess_round_s": t_in, "flower_round_s": t_fl, "ratio": ratio,
                             "same_groups": got["groups"] == ref["groups"],
                             "loss": [got["total_test_loss"], ref["total_test_loss"]], "nodes": a.nodes,
                             "config": a.config, "rounds": a.rounds})


if __name__ == "__main__":
    main()
