"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020): each task's gradient on the
shared encoder is projected off the normal plane of every other task's gradient it conflicts with (negative
inner product), the others taken in a random order; the encoder's gradient is the sum of the projected
gradients. Heads get their own task's gradient unchanged.

It needs each task's encoder gradient separately: one backward pass per task on every batch (on affinity
lookahead batches they are computed for the lookahead anyway and reused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedmas.weighting.base import Grads, TaskGrads, Weighting, register


def _dot(a: Sequence[Tensor | None], b: Sequence[Tensor | None]) -> float:
    return float(sum(((x * y).sum() for x, y in zip(a, b) if x is not None and y is not None),
                     torch.zeros((), dtype=torch.float64)))


def project(grads: Sequence[Grads], orders: Sequence[Sequence[int]]) -> list[Tensor | None]:
    """Σ_i g_i^PC: each task i's gradient, projected in ``orders[i]``'s order onto the normal plane of each
    other task's gradient g_j it conflicts with (g_i^PC · g_j < 0: g_i^PC −= (g_i^PC · g_j / ‖g_j‖²) g_j)."""
    out: list[Tensor | None] = [None] * (len(grads[0]) if grads else 0)
    sq = [_dot(g, g) for g in grads]
    for i, gi in enumerate(grads):
        pc: list[Tensor | None] = [None if g is None else g.clone() for g in gi]
        for j in orders[i]:
            if j == i or sq[j] <= 0:
                continue
            d = _dot(pc, grads[j])
            if d < 0:
                for k, gj in enumerate(grads[j]):
                    if gj is not None:
                        pc[k] = gj * (-d / sq[j]) if pc[k] is None else pc[k].sub_(gj, alpha=d / sq[j])  # type: ignore[union-attr]
        for k, g in enumerate(pc):
            if g is not None:
                out[k] = g if out[k] is None else out[k].add_(g)  # type: ignore[union-attr]
    return out


@register
class PCGrad(Weighting):
    name = "pcgrad"

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        super().__init__(n_tasks, args, state, device)
        self.gen = torch.Generator().manual_seed(int(self.args.get("seed", 0)))

    @classmethod
    def local_args(cls, federation: Any) -> dict[str, Any]:
        return {"seed": 0}

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        return list(encoder)

    def backward(self, batch: TaskGrads) -> None:
        shared, heads = batch.per_task()
        orders = [torch.randperm(self.n, generator=self.gen).tolist() for _ in range(self.n)]
        batch.set_shared(project(shared, orders))
        batch.set_heads(heads)
