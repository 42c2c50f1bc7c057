"""How much was learned: each task's trivial predictor, skill, and the "not learned" / "not converged" marks.

A loss means something only beside what the simplest predictor scores on the same data. For every task
that has one (:meth:`fedmas.tasks.Task.fit_trivial`: the per-channel median for an L1 task, masked as its
loss masks; the class frequencies for classification and segmentation, ``ignore_index`` respected), the
constant is fitted on the clients' training data only (never validation or test data) and scored by the
same evaluation as the models (:func:`fedmas.evaluate.evaluate`). ``skill = 1 − L / L_trivial``: 0 for a
model no better than the constant, 1 for a perfect one, negative for one worse than the constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedmas.data.federated import FederatedData, batches
from fedmas.evaluate import evaluate
from fedmas.tasks import get_task

NOT_LEARNED_BELOW = 0.05  # a task whose skill is below this was not learned
MAX_FIT_SAMPLES = 4096  # the trivial predictor is fitted on at most this many training samples (evenly spaced)
FIT_BATCH = 64


class ConstantModel(nn.Module):
    """Predicts the same output for every input: each task's trivial constant."""

    def __init__(self, constants: dict[str, Tensor], dense: dict[str, bool]):
        super().__init__()
        self.tasks = tuple(constants)
        self.constants, self.dense = constants, dense

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        n, hw = len(x), tuple(x.shape[-2:])
        out = {}
        for t, c in self.constants.items():
            shape = (n, len(c), *hw) if self.dense[t] else (n, len(c))
            out[t] = c.view(1, -1, *([1] * (len(shape) - 2))).expand(shape).to(x.dtype)
        return out


@dataclass
class Trivial:
    """The trivial predictor of a run's data: constants (per task) and their losses on test and validation data."""

    constants: dict[str, list[float]] = field(default_factory=dict)
    test_loss: dict[str, float] = field(default_factory=dict)
    val_loss: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"fitted_on": "the clients' training data (validation and test data held out)",
                "constants": self.constants, "test_loss": self.test_loss, "val_loss": self.val_loss,
                "not_learned_below": NOT_LEARNED_BELOW}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Trivial:
        return cls(dict(doc.get("constants", {})), dict(doc.get("test_loss", {})), dict(doc.get("val_loss", {})))


def _holders(data: FederatedData, task: str) -> list[str]:
    return [c for c in data.clients if task in data.held(c)]


def _training_targets(data: FederatedData, task: str) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Batches of ``(target, mask)`` of ``task`` from the training data of the clients that hold its labels;
    at most :data:`MAX_FIT_SAMPLES` samples in all, evenly spaced over every client's data."""
    sizes = {c: len(data.clients[c]) for c in _holders(data, task)}  # type: ignore[arg-type]
    step = max(1, math.ceil(sum(sizes.values()) / MAX_FIT_SAMPLES))
    for c, n in sizes.items():
        ds = data.clients[c]
        idx = torch.arange(0, n, step)
        fast = getattr(ds, "batch", None)
        for start in range(0, len(idx), FIT_BATCH):
            chunk = idx[start:start + FIT_BATCH]
            if fast is not None:
                _, targets, masks = fast(chunk)
            else:
                _, targets, masks = next(batches(torch.utils.data.Subset(ds, chunk.tolist()), len(chunk),
                                                 shuffle=False))
            yield targets[task], masks.get(task)


def fit(data: FederatedData, tasks: Sequence[str], eval_batch_size: int = 64) -> Trivial:
    """Fit every task's trivial predictor on the training data and score it on test and validation data.
    The result is kept with ``data``, so a dataset shared by several runs is fitted once."""
    memo = data.__dict__.setdefault("_trivial", {})
    key = (tuple(tasks), eval_batch_size)
    if key in memo:
        return memo[key]
    constants: dict[str, Tensor] = {}
    for t in tasks:
        c = get_task(t).fit_trivial(_training_targets(data, t))
        if c is not None and bool(torch.isfinite(c).all()):
            constants[t] = c.detach().float().reshape(-1)
    out = Trivial(constants={t: [float(v) for v in c] for t, c in constants.items()})
    if constants:
        model = ConstantModel(constants, {t: get_task(t).dense for t in constants})
        ev = evaluate(model, None, data.test, eval_batch_size)  # type: ignore[arg-type]
        out.test_loss = {t: ev[f"loss/{t}"] for t in constants}
        if data.validation is not None:
            ev = evaluate(model, None, data.validation, eval_batch_size)  # type: ignore[arg-type]
            out.val_loss = {t: ev[f"loss/{t}"] for t in constants}
    memo[key] = out
    return out


def skill(loss: float, trivial_loss: float | None) -> float | None:
    """1 − loss / trivial_loss; None where there is no trivial loss (or it is 0 or not finite)."""
    if trivial_loss is None or not math.isfinite(trivial_loss) or trivial_loss <= 0 or not math.isfinite(loss):
        return None
    return 1.0 - loss / trivial_loss


def skills(losses: dict[str, float], trivial_losses: dict[str, float]) -> dict[str, float | None]:
    return {t: skill(v, trivial_losses.get(t)) for t, v in losses.items()}


def mean_skill(sk: dict[str, float | None]) -> float | None:
    vals = [v for v in sk.values() if v is not None]
    return float(np.mean(vals)) if vals else None


def not_learned(sk: dict[str, float | None], below: float = NOT_LEARNED_BELOW) -> list[str]:
    return [t for t, v in sk.items() if v is not None and v < below]


def still_falling(values: Sequence[float], min_points: int = 4, min_drop: float = 0.01) -> bool:
    """Was a loss curve still falling clearly over its last quarter? True when the least-squares slope over
    the last quarter of the points (at least ``min_points``) is negative with a t statistic below −2 and
    the fitted fall over that stretch exceeds ``min_drop`` of its mean level. Too short a curve: False."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    k = max(min_points, math.ceil(len(v) / 4))
    if len(v) < min_points:
        return False
    y = v[-k:]
    x = np.arange(len(y), dtype=float)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    se = math.sqrt(float((resid ** 2).sum()) / max(len(y) - 2, 1) / float((x * x).sum()))
    fall = -slope * (len(y) - 1)
    t = slope / se if se > 0 else (-math.inf if slope < 0 else 0.0)
    return slope < 0 and t < -2 and fall > min_drop * abs(float(y.mean()))
