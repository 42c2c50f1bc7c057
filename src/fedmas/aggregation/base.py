"""The base class and registry of :mod:`fedmas.aggregation`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

Update = tuple[Mapping[str, Tensor], float]  # a client's tensors and its sample count


class ClientPart:
    """What an aggregation adds to local training: told the round's starting parameters once, it adjusts
    the gradients of every batch after the backward pass, before the optimiser's step."""

    def start(self, params: Sequence[Tensor]) -> None:
        """The parameters as the round starts (the weights the server sent)."""

    def adjust(self, params: Sequence[Tensor]) -> None:
        """Change ``.grad`` of ``params`` in place."""


class Aggregation:
    """FedAvg (McMahan et al., 2017): the sample-weighted mean of the clients' weights (registered as ``fedavg``).

    An aggregation may own a part of local training: :meth:`client_args` (from the config, sent to each
    client as JSON) and :meth:`client_part` (built on the client from them; None: local training is plain)."""

    name: ClassVar[str] = "fedavg"

    @classmethod
    def client_args(cls, federation: Any) -> dict[str, Any]:
        return {}

    @classmethod
    def client_part(cls, args: Mapping[str, Any]) -> ClientPart | None:
        return None

    @classmethod
    def aggregate(cls, updates: Sequence[Update], previous: Mapping[str, Tensor], partial: bool,
                  device: str | None = None) -> dict[str, Tensor]:
        """The FL task's new tensors; ``partial``: clients may have sent different parts of the model."""
        return fedavg_partial(updates, previous, device) if partial else fedavg(updates, device)


AGGREGATIONS: dict[str, type[Aggregation]] = {}


def register(cls: type[Aggregation]) -> type[Aggregation]:
    """Register an aggregation under ``cls.name`` (usable as ``federation.aggregation``, plugins included)."""
    AGGREGATIONS[cls.name] = cls
    return cls


def get(name: str) -> type[Aggregation]:
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; accepted: {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[name]


def fedavg(updates: Sequence[Update], device: str | None = None) -> dict[str, Tensor]:
    """Σ_c (n_c / Σ n) · w_c for floating tensors; integer buffers take the maximum. ``device``: where the sums
    are accumulated (a GPU's, when training runs there); the result is on the CPU like the inputs."""
    if not updates:
        raise ValueError("nothing to aggregate")
    return {k: _weighted_mean([(u[k], n) for u, n in updates], v, device) for k, v in updates[0][0].items()}


def fedavg_partial(updates: Sequence[Update], previous: Mapping[str, Tensor],
                   device: str | None = None) -> dict[str, Tensor]:
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


register(Aggregation)
