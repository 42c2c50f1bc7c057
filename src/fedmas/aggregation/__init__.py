"""Aggregation: how the server combines the clients' updates of an FL task (and what, if anything, local
training adds for it).

An aggregation is a small class registered by name (``federation.aggregation``); a new one is one module that
subclasses :class:`Aggregation` and one ``register`` line. A round asks it two things: the proximal weight
local training adds towards the round's starting weights (:meth:`Aggregation.prox_mu`, 0 for none), and the
new weights from the accepted replies (:meth:`Aggregation.aggregate`). With partial labels a client sends only
the encoder and the heads of the tasks it holds; the base class (FedAvg) then averages each tensor over the
clients that sent it (:func:`fedavg_partial`).
"""

from fedmas.aggregation import fedprox  # noqa: F401  (registers itself)
from fedmas.aggregation.base import AGGREGATIONS, Aggregation, Update, fedavg, fedavg_partial, get, register

__all__ = ['AGGREGATIONS', 'Aggregation', 'Update', 'fedavg', 'fedavg_partial', 'get', 'register']
