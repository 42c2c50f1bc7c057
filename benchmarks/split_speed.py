"""Split search speed and quality against exhaustive enumeration (the reference's approach).

Prints, measured in one process on random affinity matrices:
  - 9 and 11 tasks, k=3: exhaustive enumeration of partitions vs the exact subset DP (target ≤ 0.1 s at 11)
  - 16 tasks, k=3 and k=4: the exact DP (target ≤ 5 s)
  - 30 tasks, k=3: the heuristic vs the best value a long search finds (target within 1%)

Usage: python benchmarks/split_speed.py [--long-restarts 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from fedmas.grouping import brute_force_partition, exact_partition, heuristic_partition  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long-restarts", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    res: dict[str, object] = {}
    for n in (9, 11):
        z = rng.normal(size=(n, n))
        bf, t_bf = timed(lambda z=z: brute_force_partition(z, 3))
        ex, t_ex = timed(lambda z=z: exact_partition(z, 3))
        assert abs(bf.score - ex.score) < 1e-9
        print(f"{n} tasks, k=3: exhaustive {t_bf:.2f} s, exact DP {t_ex * 1000:.1f} ms "
              f"(same optimum {ex.score:.5f}; {t_bf / t_ex:.0f}× faster)")
        res[f"n{n}_k3"] = {"exhaustive_s": t_bf, "exact_s": t_ex}
    for k in (3, 4):
        z = rng.normal(size=(16, 16))
        ex, t_ex = timed(lambda z=z, k=k: exact_partition(z, k))
        print(f"16 tasks, k={k}: exact DP {t_ex:.2f} s (target ≤ 5 s)")
        res[f"n16_k{k}"] = {"exact_s": t_ex}
    gaps = []
    for seed in range(a.seeds):
        z = np.random.default_rng(100 + seed).normal(size=(30, 30))
        h, t_h = timed(lambda z=z, seed=seed: heuristic_partition(z, 3, seed=seed))
        long, t_l = timed(lambda z=z, seed=seed: heuristic_partition(z, 3, restarts=a.long_restarts, seed=seed + 999))
        best = max(long.score, h.score)
        gap = (best - h.score) / abs(best)
        gaps.append(gap)
        print(f"30 tasks, k=3 (seed {seed}): heuristic {h.score:.5f} in {t_h:.1f} s; long search "
              f"({a.long_restarts} restarts) {long.score:.5f} in {t_l:.0f} s; gap {gap * 100:.2f}% (target ≤ 1%)")
    res["n30_k3_gap_max"] = max(gaps)
    save("split_speed", res)


if __name__ == "__main__":
    main()
