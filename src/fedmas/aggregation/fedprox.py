"""FedProx (Li et al., MLSys 2020): FedAvg's aggregation, with a proximal term μ/2·‖w − w_round‖² added to
every client's local objective (``federation.prox_mu``): its gradient μ·(w − w_round) is added to every
batch's gradient on the client (:class:`Proximal`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from fedmas.aggregation.base import Aggregation, ClientPart, register


class Proximal(ClientPart):
    """The proximal term's gradient μ·(w − w_round), added to each parameter's gradient."""

    def __init__(self, mu: float):
        self.mu = mu
        self.ref: list[Tensor] = []

    def start(self, params: Sequence[Tensor]) -> None:
        self.ref = [p.detach().clone() for p in params]

    def adjust(self, params: Sequence[Tensor]) -> None:
        for p, g in zip(params, self.ref):
            if p.grad is not None:
                p.grad.add_(p.detach() - g, alpha=self.mu)


@register
class FedProx(Aggregation):
    name = "fedprox"

    @classmethod
    def client_args(cls, federation: Any) -> dict[str, Any]:
        return {"mu": float(federation.prox_mu)}

    @classmethod
    def client_part(cls, args: Mapping[str, Any]) -> ClientPart | None:
        mu = float(args["mu"])
        return Proximal(mu) if mu > 0 else None
