"""Task weighting: how a multi-task model's per-task losses are combined in local training.

A weighting is a small class registered by name (``federation.task_weighting``); a new one is one module
that subclasses :class:`Weighting` and one ``register`` line. Local training asks it four things per batch:
the current task weights (:attr:`Weighting.w`), whether it needs the per-task gradient norms at the
encoder's last layer (:attr:`Weighting.uses_norms`), the total to back-propagate (:meth:`Weighting.total`),
and what to do after the optimiser's step (:meth:`Weighting.update`). What it keeps between rounds travels
as the reply's typed ``state`` (never among the model weights) and is averaged by the server like weights.
"""

from fedmas.weighting import gradnorm  # noqa: F401  (registers itself)
from fedmas.weighting.base import WEIGHTINGS, Weighting, decode_args, encode_args, get, register

__all__ = ['Weighting', 'WEIGHTINGS', 'decode_args', 'encode_args', 'get', 'register']
