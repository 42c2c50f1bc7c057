"""Cost of measuring inter-task affinity on a client, ours against a straightforward implementation.

Setting of the reference measurement (issue 4): 5 tasks "sdnkt", ResNet-18-style
encoder, 64×64, batch 16, CPU, 2 threads. Prints, side by side in one process:
  (1) a lookahead batch ÷ a normal training batch   (target ≤ 3.0; reference 3.8)
  (2) a local epoch with affinity every 10 batches ÷ without (target ≤ 1.20; reference ≈ 1.28)
for fedmas's client and for the naive per-task loop (full backward + model copy + forward).

Every variant runs once per repeat, the repeats interleaved, so that the drift of a shared
machine hits all variants alike; ratios are the median over repeats of on ÷ off measured
next to each other (the ratio of the medians is printed beside it).

Usage: python benchmarks/affinity_cost.py [--encoder resnet18|small] [--batches 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, save  # noqa: E402

from fedmas import affinity, weighting  # noqa: E402
from fedmas.client import LocalConfig, train_local  # noqa: E402
from fedmas.data.federated import MultiTaskArrays  # noqa: E402
from fedmas.data.scenes import SceneSpec, load_or_render  # noqa: E402
from fedmas.models import ModelSpec, build_model  # noqa: E402
from fedmas.runtime import configure_cpu, keep_freed_memory  # noqa: E402
from fedmas.tasks import TASK_SETS  # noqa: E402
from fedmas.testing import naive_train_with_affinity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    configure_cpu(a.threads)  # as `fedmas run` does: threads and malloc keeping freed memory
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

    runs = [("ours_off", ours(0)), ("ours_every", ours(1)), ("ours_10", ours(10)),
            ("naive_off", naive(0)), ("naive_every", naive(1)), ("naive_10", naive(10))]
    ours(0)()  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(a.repeats):  # interleaved: drift of this shared machine hits every variant alike
        for name, fn in runs:
            times[name].append(median_time(fn, 1))
    t = {k: statistics.median(v) for k, v in times.items()}

    def ratio(on: str, off: str) -> tuple[float, float]:
        """(median of the ratios of runs measured next to each other, ratio of the medians)"""
        return statistics.median(x / y for x, y in zip(times[on], times[off])), t[on] / t[off]

    res = {
        "ours_lookahead_batch_ratio": ratio("ours_every", "ours_off"),
        "ours_epoch_ratio_step10": ratio("ours_10", "ours_off"),
        "naive_lookahead_batch_ratio": ratio("naive_every", "naive_off"),
        "naive_epoch_ratio_step10": ratio("naive_10", "naive_off"),
        "ours_vs_naive_off": ratio("ours_off", "naive_off"),
        "seconds": times, "batches": a.batches, "batch_size": a.batch_size, "encoder": a.encoder,
        "tasks": list(tasks), "threads": a.threads, "repeats": a.repeats, "malloc_keeps_freed": keep_freed_memory(),
    }
    print(f"{a.encoder}, 5 tasks, 64×64, batch {a.batch_size}, {a.batches} batches/epoch, {a.threads} threads, "
          f"{a.repeats} interleaved repeats, malloc keeps freed memory: {keep_freed_memory()}; "
          "ratios: median of paired runs (ratio of medians)")
    ms = {k: v / a.batches * 1000 for k, v in t.items()}
    print(f"  normal batch: ours {ms['ours_off']:.0f} ms, naive {ms['naive_off']:.0f} ms")

    def fmt(key: str, digits: int) -> str:
        paired, of_medians = res[key]
        return f"{paired:.{digits}f} ({of_medians:.{digits}f})"

    print(f"  lookahead batch ÷ normal batch:          ours {fmt('ours_lookahead_batch_ratio', 2)}   "
          f"naive {fmt('naive_lookahead_batch_ratio', 2)}   (target ≤ 3.0; reference 3.8)")
    print(f"  epoch, affinity every 10 batches ÷ off:  ours {fmt('ours_epoch_ratio_step10', 3)}  "
          f"naive {fmt('naive_epoch_ratio_step10', 3)}  (target ≤ 1.20; reference ≈ 1.28)")
    res["lookahead_batch_breakdown_ms"] = breakdown(ours(1), a.batches)
    b = res["lookahead_batch_breakdown_ms"]
    print(f"  where a lookahead batch's {b['total']:.0f} ms go: n per-task backwards {b['per_task_backward']:.0f}, "
          f"n lookahead forwards {b['lookahead_forwards']:.0f}, forward + step + rest {b['rest']:.0f}")
    save(f"affinity_cost_{a.encoder}", res)


def breakdown(run, batches: int) -> dict[str, float]:
    """Time of the phases of a lookahead batch (one extra run with a lookahead on every batch)."""
    acc = {"per_task_backward": 0.0, "lookahead_forwards": 0.0}
    originals = {"per_task": weighting.TaskGrads.per_task, "measure": affinity.measure}

    def timed(key: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            acc[key] += time.perf_counter() - t0
            return out
        return wrapper

    weighting.TaskGrads.per_task = timed("per_task_backward", originals["per_task"])  # type: ignore[method-assign]
    affinity.measure = timed("lookahead_forwards", originals["measure"])
    try:
        total = median_time(run, 1)
    finally:
        weighting.TaskGrads.per_task = originals["per_task"]  # type: ignore[method-assign]
        affinity.measure = originals["measure"]
    out = {k: v / batches * 1000 for k, v in acc.items()}
    out["total"] = total / batches * 1000
    out["rest"] = out["total"] - out["per_task_backward"] - out["lookahead_forwards"]
    return out


if __name__ == "__main__":
    main()
