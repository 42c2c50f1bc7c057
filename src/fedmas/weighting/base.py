"""The base class and registry of :mod:`fedmas.weighting`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedmas.messages import decode_args, encode_args  # noqa: F401 - importable from here as before

Grads = tuple[Tensor | None, ...]  # gradients aligned with a list of tensors (None: the tensor got none)


@dataclass
class TaskGrads:
    """One batch as a weighting's :meth:`Weighting.backward` sees it: each task's loss, the tensors its
    gradient reaches, and — on affinity lookahead batches — each task's gradients, computed already.

    ``shared`` are the shared encoder's tensors (on a lookahead batch, what the lookahead differentiates: an
    encoder parameter, or the output of a convolution whose weight gradient the lookahead forms later; the
    parameters a weighting names in :meth:`Weighting.full_gradients` are always parameters). ``set_shared``
    writes the encoder's gradient from a gradient per ``shared`` tensor. Heads get only their own task's
    gradient."""

    losses: list[Tensor]
    shared: list[Tensor]
    heads: list[list[Tensor]]
    set_shared: Callable[[Sequence[Tensor | None]], None]
    shared_grads: list[Grads] | None = None  # per task, at ``shared``
    head_grads: list[Grads] | None = None  # per task, at its head's parameters

    def per_task(self) -> tuple[list[Grads], list[Grads]]:
        """Each task's gradients at ``shared`` and at its head (computed once, one backward per task)."""
        if self.shared_grads is None or self.head_grads is None:
            self.shared_grads, self.head_grads = [], []
            n = len(self.losses)
            for i, (li, hp) in enumerate(zip(self.losses, self.heads)):
                g = torch.autograd.grad(li, self.shared + hp, retain_graph=i < n - 1, allow_unused=True)
                self.shared_grads.append(g[:len(self.shared)])
                self.head_grads.append(g[len(self.shared):])
        return self.shared_grads, self.head_grads

    def set_heads(self, grads: Sequence[Grads]) -> None:
        for hp, gh in zip(self.heads, grads):
            for p, gi in zip(hp, gh):
                p.grad = gi


def weighted_sum(grads: Sequence[Grads], w: Tensor) -> list[Tensor | None]:
    """Σ_i w_i g_i per tensor (the first contribution starts the sum: no zero-filled buffer)."""
    unit = bool((w == 1).all())
    acc: list[Tensor | None] = [None] * (len(grads[0]) if grads else 0)
    for i, gs in enumerate(grads):
        for k, gi in enumerate(gs):
            if gi is None:
                continue
            a = acc[k]
            if a is None:
                acc[k] = gi.clone() if unit else gi * w[i]
            else:
                a.add_(gi, alpha=float(w[i]))
    return acc


def grad_norm(grads: Sequence[Tensor | None], device: torch.device) -> Tensor:
    """‖g‖ over the tensors given (None: no gradient)."""
    sq = torch.zeros((), device=device)
    for gi in grads:
        if gi is not None:
            sq = sq + gi.pow(2).sum()
    return sq.sqrt()


class Weighting:
    """Equal weights: the total is Σ_i L_i (the base class, registered as ``equal``).

    Local training asks a weighting, per batch, to set the gradients (:meth:`backward`) and, after the
    optimiser's step, to update itself (:meth:`after_step`). A weighting that needs each task's gradient
    separately (PCGrad, CAGrad, ...) takes them from :meth:`TaskGrads.per_task` and names the encoder
    parameters it reads in :meth:`full_gradients`."""

    name: ClassVar[str] = "equal"
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

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        """Those of the ``encoder``'s parameters (``last``: its last layer's) whose per-task gradients
        :meth:`backward` reads: on affinity lookahead batches they are formed whole. None by default."""
        return []

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(losses)  # type: ignore[return-value]

    def backward(self, batch: TaskGrads) -> None:
        """Set the gradients of the batch: Σ_i w_i ∇L_i, by one backward pass of :meth:`total`, or from the
        per-task gradients where they were computed already."""
        if batch.shared_grads is None:
            self.total(batch.losses).backward()
            return
        batch.set_shared(weighted_sum(batch.shared_grads, self.w))
        unit = bool((self.w == 1).all())
        batch.set_heads([tuple(None if g is None else g if unit else g * self.w[i] for g in gh)
                         for i, gh in enumerate(batch.head_grads or [])])

    def after_step(self, losses: Tensor, initial: Tensor) -> None:
        """After the optimiser's step: ``losses`` this batch's and ``initial`` the first batch's per-task
        losses (detached)."""

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


def for_tasks(name: str, n_tasks: int) -> type[Weighting]:
    """The weighting a model of ``n_tasks`` tasks trains with: ``name``'s, or none (equal) for a single task."""
    return get(name) if n_tasks > 1 else Weighting


register(Weighting)
