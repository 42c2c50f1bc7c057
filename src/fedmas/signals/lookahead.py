"""The lookahead affinity (TAG, Fifty et al., NeurIPS 2021; as MAS uses it): Z(i→j) = 1 − L_j after a step on
task i's gradient alone / L_j before (:mod:`fedmas.affinity` holds its maths)."""

from __future__ import annotations

import numpy as np
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


@register
class LookaheadSelf(Signal):
    """The lookahead affinity with each target's column divided by its own-step affinity |Z(t→t)|: how much
    another task's step moves t's loss relative to t's own step, so that a slow-learning task's small numbers
    weigh as much as a fast one's. Reads the lookahead's matrices: it costs nothing more to measure."""

    name = "lookahead-self"
    reads = NAME

    @classmethod
    def decision_matrix(cls, z: np.ndarray) -> np.ndarray:
        own = np.abs(np.diag(z))
        return z / np.where(own > 1e-12, own, 1e-12)[None, :]
