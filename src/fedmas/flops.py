"""Deterministic cost: floating-point operations, counted by torch's ``FlopCounterMode``.

Measured seconds depend on what else the machine is doing (the same run reported 55 s
and 611 s of client compute on a quiet and a busy machine); a FLOP count does not. The
count covers matrix multiplications and convolutions, forward and backward (torch's
convention: 2 FLOPs per multiply-add; element-wise operations are not counted). Each
kind of work — a normal training batch, a lookahead batch, an evaluation batch — is
counted once per (model tasks, batch size, ...) while it really runs, then reused.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Hashable, Iterator

from torch.utils.flop_counter import FlopCounterMode


class FlopCounter:
    """FLOPs per kind of batch, counted the first time such a batch runs."""

    def __init__(self) -> None:
        self.per_batch: dict[Hashable, int] = {}

    @contextlib.contextmanager
    def count(self, key: Hashable) -> Iterator[None]:
        """Run the block; count its FLOPs under ``key`` unless that kind of batch was counted already."""
        if key in self.per_batch:
            yield
            return
        mode = FlopCounterMode(display=False)
        with mode:
            yield
        self.per_batch[key] = int(mode.get_total_flops())

    def __getitem__(self, key: Hashable) -> int:
        return self.per_batch[key]


_PER_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def counter_for(model: object) -> FlopCounter:
    """The FLOP counter kept for ``model`` while it lives in this process: callers that pass no counter of their
    own (the Python API's ``train_local``, ``evaluate``) count each kind of batch once per model, not per call."""
    c = _PER_MODEL.get(model)
    if c is None:
        c = _PER_MODEL[model] = FlopCounter()
    return c
