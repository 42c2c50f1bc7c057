"""The constants a trivial predictor fits (the skill baseline of every task): the masked per-channel
median for an L1 loss, the class frequencies for a cross-entropy loss."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def weighted_median(values: Tensor, weights: Tensor) -> Tensor:
    """Per-row weighted median of ``values`` (C, n) with non-negative ``weights`` (n,): the smallest value
    whose cumulative weight reaches half the total (the lower median for equal weights); NaN without weight."""
    if values.shape[1] == 0 or float(weights.sum()) <= 0:
        return torch.full((values.shape[0],), math.nan)
    order = values.argsort(dim=1)
    v = values.gather(1, order)
    cw = weights[order].cumsum(1)
    idx = (cw < 0.5 * cw[:, -1:]).sum(1).clamp_max(values.shape[1] - 1)
    return v.gather(1, idx[:, None])[:, 0]


def l1_median(data: Iterable[tuple[Tensor, Tensor | None]]) -> Tensor | None:
    """Per-channel median of targets (N, C[, H, W]), each value weighted by its mask as the L1 loss weights
    it (the constant that minimises a masked L1 loss over these targets)."""
    vals, wts = [], []
    for target, mask in data:
        t = target.double()
        c = t.shape[1]
        w = torch.ones_like(t[:, :1]) if mask is None else mask.double()
        w = w.expand(t.shape[0], c, *t.shape[2:])[:, 0] if t.ndim > 2 else w.reshape(len(t), -1)[:, 0]
        vals.append(t.transpose(0, 1).reshape(c, -1))
        wts.append(w.reshape(-1))
    if not vals:
        return None
    return weighted_median(torch.cat(vals, 1), torch.cat(wts)).float()


def log_frequencies(counts: Tensor, floor: float = 1e-6) -> Tensor | None:
    """Logits whose softmax is the class frequencies of ``counts``, each at least ``floor`` (so a class
    never seen in training costs a large but finite loss)."""
    if float(counts.sum()) <= 0:
        return None
    p = (counts.double() / counts.sum()).clamp_min(floor)
    return (p / p.sum()).log().float()
