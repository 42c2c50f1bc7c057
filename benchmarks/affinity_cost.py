"""Cost of measuring inter-task affinity on a client, ours against a straightforward implementation.

Setting of the reference measurement (issue 4): 5 tasks "sdnkt", ResNet-18-style
encoder, 64×64, batch 16, CPU, 2 threads. Prints, side by side in one process:
  (1) a lookahead batch ÷ a normal training batch   (target ≤ 3.0; reference 3.8)
  (2) a local epoch with affinity every 10 batches ÷ without (target ≤ 1.20; reference ≈ 1.28)
for fedmas's client and for the naive per-task loop (full backward + model copy + forward).

Usage: python benchmarks/affinity_cost.py [--encoder resnet18|small] [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, save  # noqa: E402

from fedmas.client import LocalConfig, train_local  # noqa: E402
from fedmas.data.federated import MultiTaskArrays  # noqa: E402
from fedmas.data.scenes import SceneSpec, load_or_render  # noqa: E402
from fedmas.models import ModelSpec, build_model  # noqa: E402
from fedmas.tasks import TASK_SETS  # noqa: E402
from fedmas.testing import naive_train_with_affinity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tasks = TASK_SETS["sdnkt"]
    n_img = a.batches * a.batch_size
    raw = load_or_render(SceneSpec(buildings=1, train_images=n_img, test_images=1, resolution=64))[0]["train"]
    data = MultiTaskArrays.from_raw(raw, tasks)
    spec = ModelSpec(encoder=a.encoder)
    model = build_model(tasks, spec, seed=0)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}

    def ours(step: int):
        return lambda: train_local(model, w0, data, LocalConfig(batch_size=a.batch_size, lookahead_step=step))

    def naive(step: int):
        return lambda: naive_train_with_affinity(model, w0, data, LocalConfig(batch_size=a.batch_size,
                                                                               lookahead_step=step))

    ours(0)()  # warm-up
    t = {name: median_time(fn, a.repeats) for name, fn in [
        ("ours_off", ours(0)), ("ours_every", ours(1)), ("ours_10", ours(10)),
        ("naive_off", naive(0)), ("naive_every", naive(1)), ("naive_10", naive(10))]}
    res = {
        "ours_lookahead_batch_ratio": t["ours_every"] / t["ours_off"],
        "ours_epoch_ratio_step10": t["ours_10"] / t["ours_off"],
        "naive_lookahead_batch_ratio": t["naive_every"] / t["naive_off"],
        "naive_epoch_ratio_step10": t["naive_10"] / t["naive_off"],
        "ours_vs_naive_off": t["ours_off"] / t["naive_off"],
        "seconds": t, "batches": a.batches, "batch_size": a.batch_size, "encoder": a.encoder, "tasks": list(tasks),
    }
    print(f"{a.encoder}, 5 tasks, 64×64, batch {a.batch_size}, {a.batches} batches/epoch, {a.threads} threads, "
          f"median of {a.repeats}")
    ms = {k: v / a.batches * 1000 for k, v in t.items()}
    print(f"  normal batch: ours {ms['ours_off']:.0f} ms, naive {ms['naive_off']:.0f} ms")
    print(f"  lookahead batch ÷ normal batch:          ours {res['ours_lookahead_batch_ratio']:.2f}   "
          f"naive {res['naive_lookahead_batch_ratio']:.2f}   (target ≤ 3.0; reference 3.8)")
    print(f"  epoch, affinity every 10 batches ÷ off:  ours {res['ours_epoch_ratio_step10']:.3f}  "
          f"naive {res['naive_epoch_ratio_step10']:.3f}  (target ≤ 1.20; reference ≈ 1.28)")
    save(f"affinity_cost_{a.encoder}", res)


if __name__ == "__main__":
    main()
