"""GradNorm (Chen et al., ICML 2018): task weights that balance the tasks' gradient norms at the encoder's
last layer, updated after every step by the closed-form gradient for G_i = w_i·‖∇L_i‖."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedmas.weighting.base import TaskGrads, Weighting, grad_norm, register

STATE = "gradnorm.weights"  # the task weights, averaged by the server between rounds


@register
class GradNorm(Weighting):
    name = "gradnorm"
    supports_partial_labels = False  # a client holding some tasks' labels cannot weigh the others
    supports_arrivals = False  # an arriving task would change the weight vector's length mid-run

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        super().__init__(n_tasks, args, state, device)
        self.alpha, self.lr = float(self.args["alpha"]), float(self.args["lr"])
        if STATE in state:
            self.w = state[STATE].to(device, torch.float32, copy=True)
        self.last: list[Tensor] = []  # the encoder's last layer, where the norms are taken
        self.norms = torch.zeros(n_tasks, device=device)

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        self.last = list(last)
        return self.last

    @classmethod
    def local_args(cls, federation: Any) -> dict[str, Any]:
        return {"alpha": federation.gradnorm_alpha, "lr": 0.025}

    @classmethod
    def initial_state(cls, n_tasks: int) -> dict[str, Tensor]:
        return {STATE: torch.ones(n_tasks)}

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(wi * li for wi, li in zip(self.w, losses))  # type: ignore[return-value]

    def backward(self, batch: TaskGrads) -> None:
        """‖∇L_i‖ at the encoder's last layer for each task (from the per-task gradients where they were
        computed already), then the weighted backward."""
        dev = batch.losses[0].device
        if batch.shared_grads is None:
            self.norms = torch.stack([grad_norm(torch.autograd.grad(li, self.last, retain_graph=True,
                                                                    allow_unused=True), dev)
                                      for li in batch.losses])
        else:
            at = {id(p) for p in self.last}
            self.norms = torch.stack([grad_norm([g for p, g in zip(batch.shared, gs) if id(p) in at], dev)
                                      for gs in batch.shared_grads])
        super().backward(batch)

    def after_step(self, losses: Tensor, initial: Tensor) -> None:
        norms = self.norms
        g = self.w * norms
        ratio = losses / initial
        target = g.mean() * (ratio / ratio.mean()) ** self.alpha
        grad = torch.sign(g - target) * norms
        w = (self.w - self.lr * grad).clamp_min(1e-3)
        self.w = w * (len(w) / w.sum())

    def state(self) -> dict[str, Tensor]:
        return {STATE: self.w}
