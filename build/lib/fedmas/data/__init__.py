"""Federated datasets: built-in ``scenes``, Taskonomy on disk, or your own."""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset

from fedmas.data.federated import FederatedData, MultiTaskArrays, concat, hold_out
from fedmas.data.scenes import SceneSpec, load_or_render
from fedmas.data.taskonomy import DataError, read_buildings_file, read_taskonomy

__all__ = ["DataError", "FederatedData", "MultiTaskArrays", "load_federated", "scenes_federated"]


def scenes_federated(spec: SceneSpec, tasks: Sequence[str], cache_dir: Path | None = None) -> FederatedData:
    raw = load_or_render(spec, cache_dir)
    clients = {f"building_{b:03d}": MultiTaskArrays.from_raw(raw[b]["train"], tasks) for b in raw}
    test = concat([MultiTaskArrays.from_raw(raw[b]["test"], tasks) for b in raw])
    return FederatedData(clients=clients, test=test, tasks=tuple(tasks))


def load_client(cfg, tasks: Sequence[str], client: str):
    """One client's training data only (what a Flower node needs); the whole set for other sources.
    The same samples as :func:`load_federated` gives that client (validation held out)."""
    if cfg.dataset == "scenes" and client.startswith("building_"):
        spec = _scene_spec(cfg)
        b = int(client.split("_")[1])
        raw = load_or_render(spec, Path(cfg.cache_dir) if cfg.cache_dir else None, only=[b])
        return hold_out(MultiTaskArrays.from_raw(raw[b]["train"], tasks), cfg.validation_fraction,
                        _holdout_seed(cfg, client))[0]
    return load_federated(cfg, tasks).clients[client]


def _holdout_seed(cfg, client: str) -> int:
    return zlib.crc32(f"{cfg.seed}/validation/{client}".encode()) & 0x7FFFFFFF


def with_validation(data: FederatedData, cfg) -> FederatedData:
    """Hold out ``cfg.validation_fraction`` of every client's training data as pooled validation data."""
    if cfg.validation_fraction <= 0:
        return data
    clients, vals = {}, []
    for c, ds in data.clients.items():
        clients[c], val = hold_out(ds, cfg.validation_fraction, _holdout_seed(cfg, c))
        if val is not None:
            vals.append(val)
    if not vals:
        return FederatedData(clients=clients, test=data.test, tasks=data.tasks)
    pooled = concat(vals) if all(isinstance(v, MultiTaskArrays) for v in vals) else ConcatDataset(vals)
    return FederatedData(clients=clients, test=data.test, tasks=data.tasks, validation=pooled)


def _scene_spec(cfg) -> SceneSpec:
    return SceneSpec(buildings=cfg.buildings, train_images=cfg.train_images, test_images=cfg.test_images,
                     resolution=cfg.resolution, views_per_room=cfg.views_per_room, seed=cfg.seed)


def load_federated(cfg, tasks: Sequence[str]) -> FederatedData:  # cfg: fedmas.config.DataConfig
    """Build the federated dataset a :class:`~fedmas.config.DataConfig` describes, and check it:
    at least one client, every client with training data, a non-empty test set."""
    if cfg.cache_dir and Path(cfg.cache_dir).exists() and not Path(cfg.cache_dir).is_dir():
        raise DataError(f"data.cache_dir {cfg.cache_dir} exists and is not a folder")
    if cfg.dataset == "scenes":
        data = scenes_federated(_scene_spec(cfg), tasks, Path(cfg.cache_dir) if cfg.cache_dir else None)
    elif cfg.dataset == "taskonomy":
        buildings = read_buildings_file(Path(cfg.buildings_file)) if cfg.buildings_file else None
        data = read_taskonomy(Path(cfg.root), tasks, buildings, cfg.test_fraction)
    else:
        data = _plugin_data(cfg, tasks)
    return with_validation(check_federated(data, cfg.dataset), cfg)


def _plugin_data(cfg, tasks: Sequence[str]) -> FederatedData:
    _, module, func = cfg.dataset.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise DataError(f"data.dataset {cfg.dataset!r}: cannot import {module}.{func} ({e})") from None
    if not callable(fn):
        raise DataError(f"data.dataset {cfg.dataset!r}: {module}.{func} is not a function")
    try:
        data = fn(cfg, tasks)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's function failed: say which and how, no traceback
        raise DataError(f"data.dataset {cfg.dataset!r}: {module}.{func}(data_config, tasks) raised "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(data, FederatedData):
        raise DataError(f"{module}.{func} must return a fedmas.data.FederatedData, got {type(data).__name__}")
    return data


def check_federated(data: FederatedData, source: str) -> FederatedData:
    if not data.clients:
        raise DataError(f"data.dataset {source!r} has no clients")
    empty = [c for c, ds in data.clients.items() if len(ds) == 0]  # type: ignore[arg-type]
    if empty:
        raise DataError(f"data.dataset {source!r}: client(s) without training data: {empty[:5]}")
    if len(data.test) == 0:  # type: ignore[arg-type]
        raise DataError(f"data.dataset {source!r}: the test set is empty (a total test loss of 0 would mean nothing)")
    return data
