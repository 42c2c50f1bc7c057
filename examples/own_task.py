"""Your own tasks and your own federated data, in one small file.

Run it:  .venv/bin/python examples/own_task.py  [--rounds N] [--out DIR]

1. A task is one small object: head size, loss, label decoding (see fedmas.tasks).
   Here an image-level classification task ("which furniture class covers most of
   the image?") and a dense one (depth in metres, decoded from the depth label).
2. A federated dataset is one PyTorch Dataset per client plus held-out test data,
   returned by a function ``(data_config, task_names) -> FederatedData``; the config
   names it as ``data.dataset: "python:<module>:<function>"`` and lists the module
   under ``plugins`` so its tasks are registered before the config is checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fedmas.data.federated import FederatedData, MultiTaskArrays, concat
from fedmas.data.scenes import SceneSpec, load_or_render
from fedmas.tasks import TASKS, ImageClassificationTask, L1Task, register


def dominant_object(raw: dict[str, np.ndarray]) -> np.ndarray:
    """Per image: the furniture class (≥ 4) with the most pixels, or 0 when there is none."""
    seg = raw["segment_semantic"].reshape(len(raw["segment_semantic"]), -1)
    counts = np.stack([(seg == c).sum(1) for c in range(18)], 1)
    counts[:, :4] = 0
    return np.where(counts.max(1) > 0, counts.argmax(1), 0)


if "dominant_object" not in TASKS:
    register(ImageClassificationTask("dominant_object", 18, label_fn=dominant_object))
    register(L1Task("depth_m", 1, label="depth_zbuffer", offset=(0.0,), scale=(512.0,), mask_by_depth=True))


def make_data(cfg, tasks) -> FederatedData:
    """Own data: here each client is a *pair* of scene buildings, built as plain tensors."""
    raw = load_or_render(SceneSpec(buildings=2 * cfg.buildings, train_images=cfg.train_images,
                                   test_images=cfg.test_images, resolution=cfg.resolution))
    clients, tests = {}, []
    for c in range(cfg.buildings):
        parts = [MultiTaskArrays.from_raw(raw[b]["train"], tasks) for b in (2 * c, 2 * c + 1)]
        clients[f"site{c}"] = concat(parts)  # any torch Dataset yielding (x, targets, masks) works
        tests += [MultiTaskArrays.from_raw(raw[b]["test"], tasks) for b in (2 * c, 2 * c + 1)]
    return FederatedData(clients=clients, test=concat(tests), tasks=tuple(tasks))


def main(argv: list[str] | None = None) -> dict | None:
    from fedmas.config import ConfigError
    from fedmas.data import DataError
    from fedmas.run import execute
    from fedmas.runfolder import holds_run

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="runs/own-task")
    ap.add_argument("--force", action="store_true", help="start over in --out (by default a run there is resumed)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    out = Path(a.out)
    try:
        if holds_run(out) and not a.force:  # run again: finish (or just re-print) the run that is there
            print(f"[own_task] {out} holds a run: resuming it (--force starts over)", file=sys.stderr)
            return execute(None, out, resume=True)
        return execute(_config(a.rounds), out, force=a.force)
    except (ConfigError, DataError) as e:
        print(f"own_task: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _config(rounds: int):
    from fedmas.config import Config

    return Config.model_validate({
        "name": "own-task", "method": "mas", "plugins": ["own_task"],
        "tasks": ["dominant_object", "depth_m", "normal"],
        "data": {"dataset": "python:own_task:make_data", "buildings": 3, "train_images": 8, "test_images": 4,
                 "resolution": 32},
        "model": {"width": 8},
        "federation": {"rounds": rounds, "clients_per_round": 2, "batch_size": 8},
        "mas": {"splits": 2, "lookahead_step": 1},  # fedmas's default: measure 0.1·R rounds, groups afresh
    })


if __name__ == "__main__":
    main()
