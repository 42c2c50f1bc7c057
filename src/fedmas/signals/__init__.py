"""Grouping signals: what the merged phase measures to decide the split.

A signal is a small class registered by name (``mas.signal`` decides the split, ``mas.record`` names others
to measure beside it for study); a new one is one module that subclasses :class:`Signal` and one
``register`` line, a plugin's included. Its client part (:meth:`Signal.measure`) turns one lookahead
batch — the per-task losses and gradients local training has computed already — into an n×n matrix; the
server averages the matrices over the client's batches, the clients (by samples) and the measured rounds,
and its server part (:meth:`Signal.decision_matrix`) turns that into the split's input. Which rounds and
batches measure is decided in one place: :attr:`fedmas.server.state.FLTaskState.measuring` and
``mas.lookahead_step``.

- ``lookahead``  TAG's lookahead affinity (the reference's signal; always measured with the others)
- ``lookahead-self``  the same matrices, each target's column divided by its own-step affinity (no extra cost)
- ``cosine``     cosine similarity of the tasks' gradients on the shared encoder
"""

from fedmas.signals import cosine, lookahead  # noqa: F401  (each registers itself)
from fedmas.signals.base import SIGNALS, LookaheadBatch, Signal, get, measured_as, register
from fedmas.signals.lookahead import NAME as REFERENCE

__all__ = ["REFERENCE", "SIGNALS", "LookaheadBatch", "Signal", "get", "measured_as", "register"]
