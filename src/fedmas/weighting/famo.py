"""FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023): task weights
z = softmax(ξ) chosen so that every task's loss falls at about the same rate, at the cost of one backward
pass per batch.

The step minimises Σ_i (z_i / c) · log L_i with c = Σ_i z_i / L_i, so the shared gradient is
Σ_i (z_i / (c·L_i)) ∇L_i. After the step the logits ξ follow the gradient Jᵀδ of the softmax
(J = diag(z) − z zᵀ) with δ_i = log L_i(before) − log L_i(after), by Adam (lr ``famo_lr``, weight decay
``famo_decay``). The paper measures L(after) with a second forward pass of the same batch; here it is the
next batch's loss (no extra forward pass): δ is noisier, its expectation the same up to the batch-to-batch
spread. The logits are the FL task's state between rounds, averaged by the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedmas.weighting.base import TaskGrads, Weighting, register

STATE = "famo.logits"
EPS = 1e-8


def logit_gradient(logits: Tensor, before: Tensor, after: Tensor) -> Tensor:
    """Jᵀδ: the gradient FAMO's logits follow, δ_i = log L_i(before) − log L_i(after)."""
    z = torch.softmax(logits, 0)
    delta = (before + EPS).log() - (after + EPS).log()
    return z * delta - z * (z * delta).sum()


class _Adam:
    """Adam on one small vector (its moments start afresh every round, as a client's optimiser does)."""

    def __init__(self, lr: float, decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.decay, self.betas, self.eps = lr, decay, betas, eps
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.t = 0

    def step(self, x: Tensor, grad: Tensor) -> Tensor:
        grad = grad + self.decay * x
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * grad if self.m is None else b1 * self.m + (1 - b1) * grad
        self.v = (1 - b2) * grad * grad if self.v is None else b2 * self.v + (1 - b2) * grad * grad
        m_hat, v_hat = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
        return x - self.lr * m_hat / (v_hat.sqrt() + self.eps)


@register
class FAMO(Weighting):
    name = "famo"
    supports_partial_labels = False  # the logits weigh every task of the model
    supports_arrivals = False  # an arriving task would change the logits' length mid-run

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        super().__init__(n_tasks, args, state, device)
        self.logits = (state[STATE].to(device, torch.float32, copy=True) if STATE in state
                       else torch.zeros(n_tasks, device=device))
        self.adam = _Adam(float(self.args.get("lr", 0.025)), float(self.args.get("decay", 1e-3)))
        self.previous: Tensor | None = None
        self.w = self._weights(None)

    @classmethod
    def local_args(cls, federation: Any) -> dict[str, Any]:
        return {"lr": 0.025, "decay": 1e-3}

    @classmethod
    def initial_state(cls, n_tasks: int) -> dict[str, Tensor]:
        return {STATE: torch.zeros(n_tasks)}

    def _weights(self, losses: Tensor | None) -> Tensor:
        """z_i / (c·L_i) for the losses given (before any: z · n, so that the first weights sum to n)."""
        z = torch.softmax(self.logits, 0)
        if losses is None:
            return z * self.n
        inv = z / (losses + EPS)
        return inv / inv.sum()

    def backward(self, batch: TaskGrads) -> None:
        self.w = self._weights(torch.stack([li.detach() for li in batch.losses]))
        super().backward(batch)

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(wi * li for wi, li in zip(self.w, losses))  # type: ignore[return-value]

    def after_step(self, losses: Tensor, initial: Tensor) -> None:
        if self.previous is not None:
            self.logits = self.adam.step(self.logits, logit_gradient(self.logits, self.previous, losses))
        self.previous = losses.clone()

    def state(self) -> dict[str, Tensor]:
        return {STATE: self.logits}
