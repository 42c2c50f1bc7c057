"""The lookahead affinity (TAG, Fifty et al., NeurIPS 2021; as MAS uses it): Z(i→j) = 1 − L_j after a step on
task i's gradient alone / L_j before (:mod:`fedmas.affinity` holds its maths)."""

from __future__ import annotations

from torch import Tensor

from fedmas.signals.base import LookaheadBatch, Signal, register

NAME = "lookahead"


@register
class LookaheadAffinity(Signal):
    name = NAME

    def measure(self, batch: LookaheadBatch) -> Tensor:
        from fedmas import affinity  # training code: imported where a client measures, never by the server

        shared, _ = batch.grads.per_task()
        return affinity.measure(batch.tasks, *batch.look, batch.x, batch.targets, batch.masks,
                                batch.opt, batch.losses, shared)  # type: ignore[arg-type]
