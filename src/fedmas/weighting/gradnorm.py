"""GradNorm (Chen et al., ICML 2018): task weights that balance the tasks' gradient norms at the encoder's
last layer, updated after every step by the closed-form gradient for G_i = w_i·‖∇L_i‖."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedmas.weighting.base import Weighting, register

STATE = "gradnorm.weights"  # the task weights, averaged by the server between rounds


@register
class GradNorm(Weighting):
    name = "gradnorm"
    uses_norms = True
    supports_partial_labels = False  # a client holding some tasks' labels cannot weigh the others
    supports_arrivals = False  # an arriving task would change the weight vector's length mid-run

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        super().__init__(n_tasks, args, state, device)
        self.alpha, self.lr = float(self.args["alpha"]), float(self.args["lr"])
        if STATE in state:
            self.w = state[STATE].to(device, torch.float32, copy=True)

    @classmethod
    def local_args(cls, federation: Any) -> dict[str, Any]:
        return {"alpha": federation.gradnorm_alpha, "lr": 0.025}

    @classmethod
    def initial_state(cls, n_tasks: int) -> dict[str, Tensor]:
        return {STATE: torch.ones(n_tasks)}

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(wi * li for wi, li in zip(self.w, losses))  # type: ignore[return-value]

    def update(self, norms: Tensor, losses: Tensor, initial: Tensor) -> None:
        g = self.w * norms
        ratio = losses / initial
        target = g.mean() * (ratio / ratio.mean()) ** self.alpha
        grad = torch.sign(g - target) * norms
        w = (self.w - self.lr * grad).clamp_min(1e-3)
        self.w = w * (len(w) / w.sum())

    def state(self) -> dict[str, Tensor]:
        return {STATE: self.w}
