"""The base class and registry of :mod:`fedmas.weighting`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor


class Weighting:
    """Equal weights: the total is Σ_i L_i (the base class, registered as ``equal``)."""

    name: ClassVar[str] = "equal"
    uses_norms: ClassVar[bool] = False  # needs ‖∇L_i‖ at the encoder's last layer each batch
    supports_partial_labels: ClassVar[bool] = True  # with clients that hold only some tasks' labels
    supports_arrivals: ClassVar[bool] = True  # with tasks that join a running federation

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        self.n, self.args = n_tasks, dict(args)
        self.w = torch.ones(n_tasks, device=device)

    @classmethod
    def local_args(cls, federation: Any) -> dict[str, Any]:
        """The parameters local training needs, from the config's ``federation`` section (sent as JSON)."""
        return {}

    @classmethod
    def initial_state(cls, n_tasks: int) -> dict[str, Tensor]:
        """What an FL task of ``n_tasks`` tasks starts with on the server (empty: nothing kept between rounds)."""
        return {}

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(losses)  # type: ignore[return-value]

    def update(self, norms: Tensor, losses: Tensor, initial: Tensor) -> None:
        """After a step: ``norms`` the per-task gradient norms (when :attr:`uses_norms`), ``losses`` this
        batch's and ``initial`` the first batch's per-task losses."""

    def state(self) -> dict[str, Tensor]:
        """What the client sends back to be averaged into the FL task's state."""
        return {}


WEIGHTINGS: dict[str, type[Weighting]] = {}


def register(cls: type[Weighting]) -> type[Weighting]:
    """Register a weighting under ``cls.name`` (usable as ``federation.task_weighting``, plugins included)."""
    WEIGHTINGS[cls.name] = cls
    return cls


def get(name: str) -> type[Weighting]:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown task weighting {name!r}; accepted: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[name]


def encode_args(args: Mapping[str, Any]) -> str:
    return json.dumps(dict(args), sort_keys=True) if args else ""


def decode_args(text: str) -> dict[str, Any]:
    if not text:
        return {}
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"weighting_args must be a JSON object, got {text[:40]!r}")
    return doc


register(Weighting)
