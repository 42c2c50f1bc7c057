"""Aggregation: how the server combines the clients' updates of an FL task (and what, if anything, local
training adds for it).

An aggregation is a small class registered by name (``federation.aggregation``); a new one is one module that
subclasses :class:`Aggregation` and one ``register`` line. A round asks it for the new weights from the
accepted replies (:meth:`Aggregation.aggregate`); local training asks its client part, if it has one
(:meth:`Aggregation.client_part`: FedProx's proximal gradient), to adjust every batch's gradients. With
partial labels a client sends only
the encoder and the heads of the tasks it holds; the base class (FedAvg) then averages each tensor over the
clients that sent it (:func:`fedavg_partial`).
"""

from fedmas.aggregation import fedprox  # noqa: F401  (registers itself)
from fedmas.aggregation.base import AGGREGATIONS, Aggregation, ClientPart, Update, fedavg, fedavg_partial, get, register

__all__ = ['AGGREGATIONS', 'Aggregation', 'ClientPart', 'Update', 'fedavg', 'fedavg_partial', 'get', 'register']
