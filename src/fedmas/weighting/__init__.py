"""Task weighting: how a multi-task model's per-task losses are combined in local training.

A weighting is a small class registered by name (``federation.task_weighting``); a new one is one module
that subclasses :class:`Weighting` and one ``register`` line. Local training asks it two things per batch:
to set the gradients from the per-task losses (:meth:`Weighting.backward`, which may ask the batch's
:class:`TaskGrads` for each task's gradients — given already on affinity lookahead batches), and to update
itself after the optimiser's step (:meth:`Weighting.after_step`). What it keeps between rounds travels
as the reply's typed ``state`` (never among the model weights) and is averaged by the server like weights.
"""

from fedmas.weighting import famo, gradnorm, pcgrad  # noqa: F401  (each registers itself)
from fedmas.weighting.base import (
                                   WEIGHTINGS,
                                   TaskGrads,
                                   Weighting,
                                   decode_args,
                                   encode_args,
                                   for_tasks,
                                   get,
                                   grad_norm,
                                   register,
                                   weighted_sum,
)

__all__ = ['TaskGrads', 'Weighting', 'WEIGHTINGS', 'decode_args', 'encode_args', 'for_tasks', 'get', 'grad_norm',
           'register', 'weighted_sum']
