"""Aggregation (FedAvg weighted by sample count; FedProx aggregates the same way,
its proximal term lives in local training) and validation of client replies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedmas.messages import Reply


def fedavg(updates: Sequence[tuple[Mapping[str, Tensor], float]], device: str | None = None) -> dict[str, Tensor]:
    """Σ_c (n_c / Σ n) · w_c for floating tensors; integer buffers take the maximum. ``device``: where the sums
    are accumulated (a GPU's, when training runs there); the result is on the CPU like the inputs."""
    if not updates:
        raise ValueError("nothing to aggregate")
    return {k: _weighted_mean([(u[k], n) for u, n in updates], v, device) for k, v in updates[0][0].items()}


def _weighted_mean(have: Sequence[tuple[Tensor, float]], like: Tensor, device: str | None = None) -> Tensor:
    """Σ (n / Σ n) · t over ``have`` in ``like``'s dtype (accumulated in float32 or float64, on ``device`` when
    one is given that is not the CPU); the maximum for integer buffers."""
    total = float(sum(n for _, n in have))
    if not total > 0:
        raise ValueError("sample counts must sum to a positive number")
    if not like.is_floating_point():
        return torch.stack([t for t, _ in have]).amax(0)
    on = device if device is not None and not device.startswith("cpu") else None
    acc = torch.zeros_like(like, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32, device=on)
    for t, n in have:
        acc.add_(t if on is None else t.to(on, non_blocking=True), alpha=n / total)
    return acc.to(like.dtype) if on is None else acc.to("cpu", like.dtype)


def fedavg_partial(updates: Sequence[tuple[Mapping[str, Tensor], float]],
                   previous: Mapping[str, Tensor], device: str | None = None) -> dict[str, Tensor]:
    """FedAvg where clients sent different parts of the model (partial labels): each tensor is the
    sample-weighted mean over the clients that sent it (the encoder over all, a head over the clients
    that hold its task's labels); a tensor no client sent keeps its ``previous`` value."""
    if not updates:
        raise ValueError("nothing to aggregate")
    out: dict[str, Tensor] = {}
    for k, v in previous.items():
        have = [(u[k], n) for u, n in updates if k in u]
        out[k] = _weighted_mean(have, v, device) if have else v.clone()
    return out


MAX_AFFINITY_MAGNITUDE = 1e3  # Z(i→j) = 1 − L_after/L_before ≤ 1 for non-negative losses; far below −1e3 is absurd
MAX_COMPUTE_S = 1e7
MAX_FLOP = 1e21


def check_reply(reply: Reply, expected: Mapping[str, Tensor], n_tasks: int, want_affinity: bool,
                max_samples: float = 1e9) -> str | None:
    """Why a reply must be rejected, or ``None`` when it is usable. Every reply is untrusted: names,
    shapes, dtypes and layout exactly as sent, finite values, a sample count in [1, ``max_samples``]
    (what the client holds times its local epochs), a finite non-negative compute time, and an
    affinity matrix (when one is due) of the right shape with values in [−1e3, 1]."""
    if reply.error is not None:
        return f"client error: {reply.error}"
    msg = reply.message
    if msg is None:
        return "no reply"
    metrics = msg.metrics if isinstance(msg.metrics, Mapping) else {}
    samples = metrics.get("samples")
    if not _number(samples) or not math.isfinite(samples) or samples < 1 or samples != int(samples):
        return f"bad sample count: {_short(samples)}"
    if samples > max_samples:
        return f"bad sample count: {_short(samples)} (the client holds at most {max_samples:g})"
    compute = metrics.get("compute_s")
    if not _number(compute) or not math.isfinite(compute) or not 0 <= compute <= MAX_COMPUTE_S:
        return f"bad compute time: {_short(compute)}"
    flop = metrics.get("flop")
    if not _number(flop) or not math.isfinite(flop) or not 0 <= flop <= MAX_FLOP:
        return f"bad FLOP count: {_short(flop)}"
    if not isinstance(msg.arrays, Mapping):
        return "malformed reply: no named arrays"
    arrays = dict(msg.arrays)
    aff = arrays.pop("affinity", None)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        return f"wrong tensor names: (missing {missing[:3]}, unexpected {[_short(x) for x in extra[:3]]})"
    for k, ref in expected.items():
        v = arrays[k]
        why = _bad_tensor(v, tuple(ref.shape), ref.dtype)
        if why is not None:
            return f"bad tensor: {why} for {k}"
    if aff is None:
        return "bad affinity: missing" if want_affinity else None
    why = _bad_tensor(aff, (n_tasks, n_tasks), None)
    if why is not None:
        return f"bad affinity: {why}"
    if not aff.is_floating_point():
        return f"bad affinity: dtype {aff.dtype}"
    if bool((aff > 1 + 1e-6).any()) or bool((aff < -MAX_AFFINITY_MAGNITUDE).any()):
        return f"bad affinity: values out of [-{MAX_AFFINITY_MAGNITUDE:g}, 1]"
    return None


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:40] + "…"


def _bad_tensor(v: object, shape: tuple[int, ...], dtype: torch.dtype | None) -> str | None:
    if not isinstance(v, Tensor):
        return f"not a tensor ({type(v).__name__})"
    if v.layout != torch.strided:
        return f"{v.layout} layout"
    if dtype is not None and v.dtype != dtype:
        return f"dtype {v.dtype} instead of {dtype}"
    if tuple(v.shape) != shape:
        return f"wrong shape {tuple(v.shape)} instead of {shape}"
    if v.is_complex():
        return "complex values"
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        return "non-finite values"
    return None
