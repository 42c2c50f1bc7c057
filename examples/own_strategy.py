"""Your own task weighting in fedmas: Dynamic Weight Average (Liu et al., CVPR 2019) in one module.

Run it:  .venv/bin/python examples/own_strategy.py  [--rounds N] [--out DIR]

A task weighting subclasses ``fedmas.weighting.Weighting`` and is registered with ``fedmas.weighting.register``;
naming this module in the config's ``plugins`` makes ``federation.task_weighting: dwa`` valid. Local training
asks it, per batch, to set the gradients (``backward``: by default one backward pass of ``total``, the
weighted sum of the losses with the weights ``w``) and to update itself after the optimiser's step
(``after_step``). A weighting that needs each task's gradient separately (``EqualNorms`` below, PCGrad) takes
them from the batch in its own ``backward``. What it keeps between rounds is its ``state``: sent to each client
with the weights (never among them), sent back, and averaged by the server like weights. An aggregation is
written the same way (``fedmas.aggregation.Aggregation``: ``aggregate``, and optionally ``client_args`` and
``client_part``, the part of local training it owns, as FedProx's proximal gradient).

DWA here: w_i = n · softmax(r_i / T), r_i = L_i(now) / L_i(before), the losses being running means over the
client's batches (its state between rounds), so a task whose loss falls more slowly gets more weight.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedmas.weighting import TaskGrads, Weighting, grad_norm, register, weighted_sum

TEMPERATURE = 2.0


@register
class DynamicWeightAverage(Weighting):
    name = "dwa"

    def __init__(self, n_tasks: int, args: Mapping[str, Any], state: Mapping[str, Tensor], device: torch.device):
        super().__init__(n_tasks, args, state, device)
        self.before = state["dwa.losses"].to(device, copy=True) if "dwa.losses" in state else None
        self.now: Tensor | None = None

    @classmethod
    def initial_state(cls, n_tasks: int) -> dict[str, Tensor]:
        return {"dwa.losses": torch.ones(n_tasks)}

    def total(self, losses: Sequence[Tensor]) -> Tensor:
        return sum(wi * li for wi, li in zip(self.w, losses))  # type: ignore[return-value]

    def after_step(self, losses: Tensor, initial: Tensor) -> None:
        self.now = losses.clone() if self.now is None else 0.9 * self.now + 0.1 * losses
        if self.before is not None:
            ratio = self.now / self.before.clamp_min(1e-8)
            self.w = len(ratio) * torch.softmax(ratio / TEMPERATURE, dim=0)

    def state(self) -> dict[str, Tensor]:
        return {"dwa.losses": self.now if self.now is not None else torch.ones_like(self.w)}


@register
class EqualNorms(Weighting):
    """A weighting that needs each task's gradient on its own: every task's encoder gradient is rescaled to
    the mean of the tasks' gradient norms before they are summed, so no task's gradient dominates by size.
    ``batch.per_task()`` gives each task's gradients (one backward per task; on affinity lookahead batches
    they were computed already), ``set_shared``/``set_heads`` write the result."""

    name = "equal-norms"

    def full_gradients(self, encoder: Sequence[Tensor], last: Sequence[Tensor]) -> list[Tensor]:
        return list(encoder)  # the norms are taken over the whole encoder

    def backward(self, batch: TaskGrads) -> None:
        shared, heads = batch.per_task()
        norms = torch.stack([grad_norm(g, batch.losses[0].device) for g in shared])
        scale = norms.mean() / norms.clamp_min(1e-12)
        batch.set_shared(weighted_sum(shared, scale))
        batch.set_heads(heads)


def main(argv: list[str] | None = None) -> int:
    from fedmas.cli import main as fedmas

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="runs/own-strategy")
    a = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    return fedmas(["run", str(here.parent / "configs" / "quickstart.yaml"), "--out", a.out, "--force",
                   "--set", "method=all-in-one", "--set", "plugins=[own_strategy]",
                   "--set", "federation.task_weighting=dwa", "--set", f"federation.rounds={a.rounds}"])


if __name__ == "__main__":
    sys.exit(main())
