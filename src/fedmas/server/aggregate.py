"""Aggregation (FedAvg weighted by sample count; FedProx aggregates the same way,
its proximal term lives in local training) and validation of client replies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedmas.messages import Reply


def fedavg(updates: Sequence[tuple[Mapping[str, Tensor], float]]) -> dict[str, Tensor]:
    """Σ_c (n_c / Σ n) · w_c for floating tensors; integer buffers take the maximum."""
    if not updates:
        raise ValueError("nothing to aggregate")
    total = float(sum(n for _, n in updates))
    if not total > 0:
        raise ValueError("sample counts must sum to a positive number")
    first = updates[0][0]
    out: dict[str, Tensor] = {}
    for k, v in first.items():
        if v.is_floating_point():
            acc = torch.zeros_like(v, dtype=torch.float64 if v.dtype == torch.float64 else torch.float32)
            for u, n in updates:
                acc.add_(u[k], alpha=n / total)
            out[k] = acc.to(v.dtype)
        else:
            out[k] = torch.stack([u[k] for u, _ in updates]).amax(0)
    return out


def check_reply(reply: Reply, expected: Mapping[str, Tensor], n_tasks: int, want_affinity: bool) -> str | None:
    """Why a reply must be rejected, or ``None`` when it is usable."""
    if reply.error is not None:
        return f"client error: {reply.error}"
    msg = reply.message
    if msg is None:
        return "no reply"
    samples = msg.metrics.get("samples")
    if not isinstance(samples, (int, float)) or not math.isfinite(samples) or samples <= 0:
        return f"invalid sample count {samples!r}"
    arrays = dict(msg.arrays)
    aff = arrays.pop("affinity", None)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        return f"wrong tensor names (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, ref in expected.items():
        v = arrays[k]
        if tuple(v.shape) != tuple(ref.shape):
            return f"wrong shape for {k}: {tuple(v.shape)} instead of {tuple(ref.shape)}"
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"non-finite values in {k}"
    if want_affinity:
        if aff is None:
            return "missing affinity matrix"
        if tuple(aff.shape) != (n_tasks, n_tasks):
            return f"malformed affinity matrix of shape {tuple(aff.shape)} (expected {n_tasks}×{n_tasks})"
        if not bool(torch.isfinite(aff).all()):
            return "non-finite values in affinity matrix"
    elif aff is not None and tuple(aff.shape) != (n_tasks, n_tasks):
        return f"malformed affinity matrix of shape {tuple(aff.shape)}"
    return None
