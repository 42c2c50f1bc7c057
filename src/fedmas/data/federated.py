"""Federated datasets: one PyTorch ``Dataset`` per client plus held-out test data.

A sample is ``(x, targets, masks)``: ``x`` a float tensor (3, H, W), ``targets``
and ``masks`` dicts keyed by task name (a task without a mask is absent from
``masks``). Any ``Dataset`` yielding that triple works as a client's data; the
in-memory :class:`MultiTaskArrays` adds a fast batched path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fedmas.tasks import decode_input, get_task

Batch = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]


class MultiTaskArrays(Dataset):
    """Decoded samples held in memory as tensors."""

    def __init__(self, x: torch.Tensor, targets: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
        n = len(x)
        for name, t in {**targets, **masks}.items():
            if len(t) != n:
                raise ValueError(f"task {name!r} has {len(t)} labels for {n} images")
        self.x, self.targets, self.masks = x, targets, masks

    @classmethod
    def from_raw(cls, raw: dict[str, np.ndarray], tasks: Sequence[str]) -> MultiTaskArrays:
        """Decode raw Taskonomy-encoded labels (see :mod:`fedmas.tasks`) for ``tasks``."""
        targets, masks = {}, {}
        for name in tasks:
            target, mask = get_task(name).decode(raw)
            targets[name] = torch.from_numpy(target)
            if mask is not None:
                masks[name] = torch.from_numpy(mask)
        return cls(torch.from_numpy(decode_input(raw["rgb"])), targets, masks)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {k: v[i] for k, v in self.targets.items()}, {k: v[i] for k, v in self.masks.items()}

    def batch(self, idx: torch.Tensor) -> Batch:
        return self.x[idx], {k: v[idx] for k, v in self.targets.items()}, {k: v[idx] for k, v in self.masks.items()}


def concat(datasets: Sequence[MultiTaskArrays]) -> MultiTaskArrays:
    first = datasets[0]
    return MultiTaskArrays(torch.cat([d.x for d in datasets]),
                           {k: torch.cat([d.targets[k] for d in datasets]) for k in first.targets},
                           {k: torch.cat([d.masks[k] for d in datasets]) for k in first.masks})


def batches(ds: Dataset, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True) -> Iterator[Batch]:
    """Mini-batches of ``ds``; uses the dataset's ``batch(indices)`` when it has one."""
    n = len(ds)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    fast = getattr(ds, "batch", None)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if fast is not None:
            yield fast(idx)
        else:
            yield default_collate([ds[int(i)] for i in idx])


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A batch ``(x, targets, masks)`` on ``device``: nothing moves on the CPU; to a GPU from pinned memory
    without blocking (the copy overlaps the work already queued)."""
    if device.type == "cpu":
        return batch
    cuda = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        if cuda and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(device, non_blocking=cuda)

    x, targets, masks = batch
    return move(x), {k: move(v) for k, v in targets.items()}, {k: move(v) for k, v in masks.items()}


def select_tasks(batch: Batch, tasks: Sequence[str]) -> Batch:
    x, t, m = batch
    return x, {k: t[k] for k in tasks}, {k: m[k] for k in tasks if k in m}


class IndexView(Dataset):
    """The samples ``indices`` of ``ds`` (keeps a dataset's fast ``batch`` path)."""

    def __init__(self, ds: Dataset, indices: torch.Tensor):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.ds[int(self.indices[i])]

    def batch(self, idx: torch.Tensor) -> Batch:
        rows = self.indices[idx]
        fast = getattr(self.ds, "batch", None)
        return fast(rows) if fast is not None else default_collate([self.ds[int(i)] for i in rows])


def hold_out(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split a client's training data into (train, validation): a seeded random ``fraction`` of its
    samples (at least one when it has two or more) is held out for validation."""
    n = len(ds)  # type: ignore[arg-type]
    k = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, int(round(fraction * n))))
    if k == 0:
        return ds, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:k].sort().values, perm[k:].sort().values
    if isinstance(ds, MultiTaskArrays):
        return MultiTaskArrays(*ds.batch(train)), MultiTaskArrays(*ds.batch(val))
    return IndexView(ds, train), IndexView(ds, val)


@dataclass
class FederatedData:
    """Training data per client, held-out test data (pooled over clients), and optionally validation
    data (pooled; held out from the clients' training data, the only data decisions may read)."""

    clients: dict[str, Dataset]
    test: Dataset
    tasks: tuple[str, ...]
    validation: Dataset | None = None
    # which tasks' labels each client holds (a client not named holds all); None: every client holds all
    holds: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if not self.clients:
            raise ValueError("a federated dataset needs at least one client")
        for name, ds in self.clients.items():
            if len(ds) == 0:  # type: ignore[arg-type]
                raise ValueError(f"client {name!r} has no training samples")
        for name, held in (self.holds or {}).items():
            if name not in self.clients:
                raise ValueError(f"holds names client {name!r}, which is not in the dataset")
            bad = [t for t in held if t not in self.tasks]
            if bad or not held:
                raise ValueError(f"client {name!r} holds {list(held)}: each must be one of the run's tasks "
                                 f"{list(self.tasks)}, and at least one")

    def held(self, client: str) -> tuple[str, ...]:
        """The tasks whose labels ``client`` holds, in the run's task order."""
        h = (self.holds or {}).get(client)
        return self.tasks if h is None else tuple(t for t in self.tasks if t in h)

    @property
    def client_ids(self) -> list[str]:
        return list(self.clients)

    def num_samples(self, client: str) -> int:
        return len(self.clients[client])  # type: ignore[arg-type]
