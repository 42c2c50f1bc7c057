"""FedProx (Li et al., MLSys 2020): FedAvg's aggregation, with a proximal term μ/2·‖w − w_round‖² added to
every client's local objective (``federation.prox_mu``), applied by local training."""

from __future__ import annotations

from typing import Any

from fedmas.aggregation.base import Aggregation, register


@register
class FedProx(Aggregation):
    name = "fedprox"

    @classmethod
    def prox_mu(cls, federation: Any) -> float:
        return float(federation.prox_mu)
