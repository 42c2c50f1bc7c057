"""How much of each dense label a coarse prediction can capture: the L1 of the per-block median of the target
itself (s×s blocks, s = 2, 4, 8 — a bound for any prediction constant over such blocks) as a fraction of the
L1 of the constant fitted on the training data; and the share of pixels within 0.02 of that constant. Measured
on the clients' training data (a property of the labels; no test data is read).

    .venv/bin/python benchmarks/label_learnability.py [CONFIG] [--set KEY=VALUE ...]

A label whose 8×8 fraction is near 1 holds its signal below the stride of an 8-stride encoder: a model can
beat the constant on it only through its decoder's fine detail. Writes benchmarks/results/label_learnability.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import save  # noqa: E402

from fedmas import trivial  # noqa: E402
from fedmas.config import load_config  # noqa: E402
from fedmas.data import load_federated  # noqa: E402
from fedmas.data.federated import batches  # noqa: E402
from fedmas.tasks import L1Task, get_task  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=str(Path(__file__).parent / "paper_protocol.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--render-version", type=int, default=None,
                    help="measure the cached renders of an earlier version of the built-in labels (never rendered)")
    a = ap.parse_args()
    if a.render_version is not None:
        from fedmas.data import scenes

        scenes.RENDER_VERSION = a.render_version
        scenes.render_building = lambda *x, **k: sys.exit(f"version {a.render_version} renders are not cached")
    cfg = load_config(a.config, a.set)
    tasks = [t for t in cfg.task_list if isinstance(get_task(t), L1Task)]
    data = load_federated(cfg.data, tasks)
    consts = trivial.fit(data, tasks).constants
    tgt: dict[str, list] = {t: [] for t in tasks}
    msk: dict[str, list] = {t: [] for t in tasks}
    for ds in data.clients.values():
        for _, t_, m_ in batches(ds, 64, shuffle=False):
            for t in tasks:
                tgt[t].append(t_[t])
                msk[t].append(m_.get(t))
    out = {}
    for t in tasks:
        task, y = get_task(t), torch.cat(tgt[t])
        m = torch.cat(msk[t]) if msk[t][0] is not None else None
        c = torch.tensor(consts[t]).view(1, -1, 1, 1)
        base = float(task.loss(c.expand_as(y), y, m))
        row = {"constant_l1": base}
        for s in (2, 4, 8):
            b, ch, h, w = y.shape
            blocks = y.reshape(b, ch, h // s, s, w // s, s).permute(0, 1, 2, 4, 3, 5).reshape(b, ch, h // s, w // s, -1)
            pred = blocks.median(-1).values.repeat_interleave(s, 2).repeat_interleave(s, 3)
            row[f"block{s}_fraction"] = float(task.loss(pred, y, m)) / base
        row["share_within_0.02_of_constant"] = float(((y - c).abs() < 0.02).float().mean())
        row["decoded_std"] = float(y.std())
        out[t] = row
        print(f"{t:20s} constant {base:.4f}  2×2 {row['block2_fraction']:.3f}  4×4 {row['block4_fraction']:.3f}  "
              f"8×8 {row['block8_fraction']:.3f}  near constant {row['share_within_0.02_of_constant']:.2f}  "
              f"std {row['decoded_std']:.3f}")
    name = "label_learnability" + (f"_v{a.render_version}" if a.render_version is not None else "")
    save(name, {"config": a.config, "overrides": a.set, "render_version": a.render_version, "labels": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
