"""Renderer speed of the built-in scenes dataset on one core.

Usage: python benchmarks/render_speed.py [--images 512] [--resolution 64]
Target (issue 2): ≥ 200 images per second at 64×64 on one core.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from fedmas.data.scenes import SceneSpec, render_building  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=64)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows = []
    for b in range(4):
        spec = SceneSpec(buildings=4, train_images=a.images // 4, resolution=a.resolution)
        t0 = time.perf_counter()
        render_building(spec, b, "train")
        dt = time.perf_counter() - t0
        rows.append((a.images // 4, dt))
    n = sum(r[0] for r in rows)
    t = sum(r[1] for r in rows)
    rate = n / t
    print(f"rendered {n} images at {a.resolution}×{a.resolution} (all 9 labels) in {t:.2f} s on one core: "
          f"{rate:.0f} images/s (target ≥ 200 at 64×64)")
    save(f"render_{a.resolution}", {"images": n, "seconds": t, "images_per_s": rate, "resolution": a.resolution})


if __name__ == "__main__":
    main()
