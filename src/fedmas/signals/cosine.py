"""Gradient cosine similarity on the shared encoder: C(i, j) = g_i · g_j / (‖g_i‖ ‖g_j‖), g_i task i's
gradient with respect to every encoder parameter on the batch (a signal of conflict, as used by PCGrad's
analysis and by gradient-similarity grouping). Symmetric, in [−1, 1]; its diagonal is 1.

It needs every task's encoder gradient formed whole on lookahead batches (no shortcut through a
convolution's output gradients), which costs some time there and changes the real step's rounding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedmas.signals.base import LookaheadBatch, Signal, register


def cosine_matrix(grads: Sequence[Sequence[Tensor | None]]) -> Tensor:
    """The n×n cosine similarity of per-task gradients (each a sequence of tensors; None: zero)."""
    n = len(grads)
    dev = next((g.device for gs in grads for g in gs if g is not None), torch.device("cpu"))
    gram = torch.zeros(n, n, dtype=torch.float64, device=dev)
    for i in range(n):
        for j in range(i, n):
            d = sum(((a.double() * b.double()).sum() for a, b in zip(grads[i], grads[j])
                     if a is not None and b is not None), torch.zeros((), dtype=torch.float64, device=dev))
            gram[i, j] = gram[j, i] = d
    norm = gram.diagonal().clamp_min(1e-30).sqrt()
    return (gram / (norm[:, None] * norm[None, :])).clamp(-1.0, 1.0).float()


@register
class GradientCosine(Signal):
    name = "cosine"
    bounds = (-1.0, 1.0)

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        return list(encoder)

    def measure(self, batch: LookaheadBatch) -> Tensor:
        shared, _ = batch.grads.per_task()
        return cosine_matrix(shared)
