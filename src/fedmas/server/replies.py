"""Validation of client replies: every reply is untrusted until :func:`check_reply` accepts it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fedmas.messages import Reply

MAX_AFFINITY_MAGNITUDE = 1e3  # Z(i→j) = 1 − L_after/L_before ≤ 1 for non-negative losses; far below −1e3 is absurd
MAX_COMPUTE_S = 1e7
MAX_FLOP = 1e21


def check_reply(reply: Reply, expected: Mapping[str, Tensor], n_tasks: int, want_affinity: bool,
                max_samples: float = 1e9, expected_state: Mapping[str, Tensor] | None = None,
                want_signals: Mapping[str, tuple[float, float]] | None = None) -> str | None:
    """Why a reply must be rejected, or ``None`` when it is usable. Every reply is untrusted: names,
    shapes, dtypes and layout exactly as sent, finite values, a sample count in [1, ``max_samples``]
    (what the client holds times its local epochs), a finite non-negative compute time, and an
    affinity matrix (when one is due) of the right shape with values in [−1e3, 1], each other grouping signal
    due (``want_signals``: name → its value bounds) likewise, and the strategies' state with exactly the names,
    shapes and dtypes it was sent (``expected_state``)."""
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
    why = _bad_names(msg.arrays, expected, "tensor")
    if why is None:
        state = msg.state if isinstance(msg.state, Mapping) else {None: None}
        why = _bad_names(state, expected_state or {}, "state")
    if why is not None:
        return why
    sigs = msg.signals if isinstance(msg.signals, Mapping) else {None: None}
    due = dict(want_signals or {}) if want_affinity else {}
    if set(sigs) - set(due):
        return f"unexpected grouping signals: {sorted(map(_short, set(sigs) - set(due)))[:3]}"
    for name, got, (lo, hi) in [("affinity", msg.affinity, (-MAX_AFFINITY_MAGNITUDE, 1.0)),
                                *((k, sigs.get(k), b) for k, b in due.items())]:
        if got is None:
            if want_affinity:
                return f"bad {name}: missing"
            continue
        why = _bad_tensor(got, (n_tasks, n_tasks), None)
        if why is None and not got.is_floating_point():
            why = f"dtype {got.dtype}"
        if why is None and (bool((got > hi + 1e-6).any()) or bool((got < lo).any())):
            why = f"values out of [{lo:g}, {hi:g}]"
        if why is not None:
            return f"bad {name}: {why}"
    return None


def _bad_names(arrays: Mapping, expected: Mapping[str, Tensor], what: str) -> str | None:
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected), key=repr)
    if missing or extra:
        return f"wrong {what} names: (missing {missing[:3]}, unexpected {[_short(x) for x in extra[:3]]})"
    for k, ref in expected.items():
        why = _bad_tensor(arrays[k], tuple(ref.shape), ref.dtype)
        if why is not None:
            return f"bad {what}: {why} for {k}"
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
