"""Evaluation of a multi-task model on held-out data (no training code)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fedmas.data.federated import batches, select_tasks, to_device
from fedmas.flops import FlopCounter, counter_for
from fedmas.models import MultiTaskModel
from fedmas.tasks import get_task


@torch.no_grad()
def evaluate(model: MultiTaskModel, weights: Mapping[str, Tensor] | None, data: Dataset,
             batch_size: int = 64, flops: FlopCounter | None = None) -> dict[str, float]:
    """Mean test loss and task metrics of ``model`` on ``data``: keys ``loss/<task>``, ``<metric>/<task>``,
    and ``flop`` (the evaluation's floating-point operations, see :mod:`fedmas.flops`)."""
    flops = flops if flops is not None else counter_for(model)
    flop = 0
    if weights is not None:
        model.load_state_dict(weights)
    model.eval()
    sums: dict[str, dict[str, Tensor]] = {t: {} for t in model.tasks}
    loss = torch.zeros(len(model.tasks), dtype=torch.float64)
    count = 0
    device = next(iter(model.parameters()), torch.zeros(())).device
    for batch in batches(data, batch_size, shuffle=False):
        x, targets, masks = to_device(select_tasks(batch, model.tasks), device)
        key = ("eval", model.tasks, tuple(x.shape))
        with flops.count(key):
            preds = model(x)
        flop += flops[key]
        for i, t in enumerate(model.tasks):
            task = get_task(t)
            loss[i] += float(task.loss(preds[t], targets[t], masks.get(t))) * len(x)
            for k, v in task.metric_sums(preds[t], targets[t], masks.get(t)).items():
                v = v.cpu()
                sums[t][k] = sums[t][k] + v if k in sums[t] else v.clone()
        count += len(x)
    out = {f"loss/{t}": float(loss[i] / max(count, 1)) for i, t in enumerate(model.tasks)}
    for t in model.tasks:
        if sums[t]:
            out.update({f"{k}/{t}": v for k, v in get_task(t).finalize(sums[t]).items()})
    out["flop"] = float(flop)
    return out
