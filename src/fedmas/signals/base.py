"""The base class and registry of :mod:`fedmas.signals`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from fedmas.weighting.base import TaskGrads


@dataclass
class LookaheadBatch:
    """One lookahead batch as a signal's client part sees it: the data, the per-task losses before the step
    (detached), each task's gradients (``grads.per_task()``: computed already), the optimiser (not stepped yet)
    and the lookahead parts (:class:`fedmas.affinity.Lookahead`, :class:`fedmas.affinity.HeadMirror`)."""

    tasks: Sequence[str]
    x: Tensor
    targets: Any
    masks: Any
    losses: Tensor
    grads: TaskGrads
    opt: torch.optim.Optimizer
    look: Any


class Signal:
    """A grouping signal: what a client measures on each lookahead batch (an n×n matrix, averaged over the
    client's lookahead batches, then by the server over clients by samples and over rounds) and how the server
    turns the averaged matrix into the split's input (:meth:`decision_matrix`: row = source task, column =
    target, higher = the source helps the target, as MAS's affinity)."""

    name: ClassVar[str]
    bounds: ClassVar[tuple[float, float]] = (-1e3, 1.0)  # a reply's values outside are rejected
    # the name of another signal whose measured matrices this one decides from (only its decision_matrix
    # differs): nothing more is measured for it
    reads: ClassVar[str | None] = None

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        """The encoder parameters whose per-task gradients :meth:`measure` reads (formed whole)."""
        return []

    def measure(self, batch: LookaheadBatch) -> Tensor:
        raise NotImplementedError

    @classmethod
    def decision_matrix(cls, z: np.ndarray) -> np.ndarray:
        return z


SIGNALS: dict[str, type[Signal]] = {}


def register(cls: type[Signal]) -> type[Signal]:
    """Register a signal under ``cls.name`` (usable in ``mas.signal`` and ``mas.record``, plugins included)."""
    old = SIGNALS.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"grouping signal {cls.name!r} is already registered ({old.__qualname__})")
    SIGNALS[cls.name] = cls
    return cls


def measured_as(name: str) -> str:
    """The signal whose matrices the clients measure for ``name`` (itself, or the one it reads)."""
    return get(name).reads or name


def get(name: str) -> type[Signal]:
    if name not in SIGNALS:
        raise ValueError(f"unknown grouping signal {name!r}; accepted: {', '.join(SIGNALS)}")
    return SIGNALS[name]
