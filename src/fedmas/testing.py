"""Deliberately simple reference implementations, for tests and benchmarks only.

:func:`naive_train_with_affinity` computes TAG/MAS affinity the straightforward
way: for every task, copy the model, run a full backward pass of that task's
loss, apply the optimiser's update rule by hand to the copy's encoder, and run a
forward pass of every task. Slow, obviously correct, and a yardstick.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fedmas.client import LocalConfig
from fedmas.data.federated import batches, select_tasks, to_device
from fedmas.messages import autocast
from fedmas.models import MultiTaskModel
from fedmas.tasks import get_task

_PRECISION = {"value": "fp32"}  # the precision of naive_train_with_affinity's forward passes


def _losses(model: MultiTaskModel, x, targets, masks) -> list[Tensor]:
    with autocast(_PRECISION["value"], x.device):
        preds = model(x)
        return [get_task(t).loss(preds[t], targets[t], masks.get(t)) for t in model.tasks]


def naive_affinity(model: MultiTaskModel, opt: torch.optim.SGD, x, targets, masks, grad_scale: float = 1.0
                   ) -> Tensor:
    n = len(model.tasks)
    lr, mom, wd = (opt.param_groups[0][k] for k in ("lr", "momentum", "weight_decay"))
    with torch.no_grad():  # on a copy: BatchNorm's running statistics of the model must not see this pass
        base = torch.stack(_losses(copy.deepcopy(model), x, targets, masks))
    z = torch.zeros(n, n, device=base.device)
    for i in range(n):
        probe = copy.deepcopy(model)
        probe.zero_grad()
        _losses(probe, x, targets, masks)[i].backward()
        with torch.no_grad():
            for p, orig in zip(probe.encoder.parameters(), model.encoder.parameters()):
                d = grad_scale * (p.grad if p.grad is not None else torch.zeros_like(p)) + wd * p
                buf = opt.state.get(orig, {}).get("momentum_buffer")
                u = d if buf is None or not mom else mom * buf + d
                p.sub_(lr * u)
            after = torch.stack(_losses(probe, x, targets, masks))
        z[i] = 1 - after / base
    return z


def naive_train_with_affinity(model: MultiTaskModel, weights: Mapping[str, Tensor], data: Dataset,
                              cfg: LocalConfig) -> tuple[dict[str, Tensor], Tensor | None]:
    """Local training with a lookahead every ``cfg.lookahead_step`` batches (equal task weights, no prox)."""
    model.load_state_dict(weights)
    model.train()
    _PRECISION["value"] = cfg.precision
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = next(model.parameters()).device
    acc, count, nb = torch.zeros(len(model.tasks), len(model.tasks), device=dev), 0, 0
    for _ in range(cfg.local_epochs):
        for batch in batches(data, cfg.batch_size, gen):
            x, targets, masks = to_device(select_tasks(batch, model.tasks), dev)
            if cfg.lookahead_step and nb % cfg.lookahead_step == 0:
                acc += naive_affinity(model, opt, x, targets, masks, cfg.encoder_grad_scale)
                count += 1
            opt.zero_grad()
            sum(_losses(model, x, targets, masks)).backward()  # type: ignore[union-attr]
            for p in model.encoder.parameters():
                if p.grad is not None:
                    p.grad.mul_(cfg.encoder_grad_scale)
            opt.step()
            nb += 1
    return ({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            ((acc / count).cpu() if count else None))


def synthetic_federation(cfg, tasks):
    """A plugin dataset of ``data.options.clients`` clients holding ``data.options.images`` (default 4)
    random images each, with random raw labels in Taskonomy's encodings (for scale tests and benchmarks)."""
    from fedmas.data.federated import FederatedData, MultiTaskArrays

    n, k, r = int(cfg.options["clients"]), int(cfg.options.get("images", 4)), cfg.resolution
    rng = np.random.default_rng(cfg.seed)

    def raw(m: int) -> dict[str, np.ndarray]:
        return {"rgb": rng.integers(0, 256, (m, r, r, 3), dtype=np.uint8),
                "depth_zbuffer": rng.integers(500, 6000, (m, r, r)).astype(np.uint16),
                "normal": rng.integers(0, 256, (m, r, r, 3), dtype=np.uint8),
                "segment_semantic": rng.integers(0, 18, (m, r, r)),
                "keypoints2d": rng.integers(0, 256, (m, r, r), dtype=np.uint8).astype(np.uint16),
                "edge_texture": rng.integers(0, 2000, (m, r, r)).astype(np.uint16)}

    clients = {f"c{i:05d}": MultiTaskArrays.from_raw(raw(k), tasks) for i in range(n)}
    return FederatedData(clients=clients, test=MultiTaskArrays.from_raw(raw(32), tasks), tasks=tuple(tasks))


class Float64:
    """A dataset's batches in float64 (inputs and float targets): exactness tests of the lookahead, where float32
    rounding alone (per-task gradients summed in another order) would hide a real difference."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, idx):
        x, t, m = self.ds.batch(idx)
        return x.double(), {k: v.double() if v.is_floating_point() else v for k, v in t.items()}, m
