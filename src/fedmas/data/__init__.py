"""Federated datasets: built-in ``scenes``, Taskonomy on disk, or your own."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from fedmas.data.federated import FederatedData, MultiTaskArrays, batches, concat, hold_out
from fedmas.data.scenes import SceneSpec, load_or_render
from fedmas.data.taskonomy import DataError, read_buildings_file, read_taskonomy
from fedmas.plugins import PluginError, call_plugin, import_plugin
from fedmas.tasks import get_task

__all__ = ["DataError", "FederatedData", "MultiTaskArrays", "check_samples", "load_federated", "scenes_federated"]

SAMPLES_CHECKED = 8  # per client, and of the test set


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
    return _federated_in_this_process(cfg, tasks).clients[client]


_LOADED: dict[str, FederatedData] = {}  # the last federation another source loaded, by its data config


def _federated_in_this_process(cfg, tasks: Sequence[str]) -> FederatedData:
    """A source that cannot load one client alone is loaded once per process (a Flower node serves
    many of its clients from it), not once per client asked for."""
    key = cfg.model_dump_json() + "|" + ",".join(tasks)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_federated(cfg, tasks)
    return _LOADED[key]


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


def load_federated(cfg, tasks: Sequence[str], late: Sequence[str] = ()) -> FederatedData:
    """Build the federated dataset a :class:`~fedmas.config.DataConfig` describes, and check it:
    at least one client, every client with training data, a non-empty test set. ``late``: the tasks
    among ``tasks`` (at its end) that arrive mid-training; they leave the starting tasks' label draws
    as they would be without them."""
    if cfg.cache_dir and Path(cfg.cache_dir).exists() and not Path(cfg.cache_dir).is_dir():
        raise DataError(f"data.cache_dir {cfg.cache_dir} exists and is not a folder")
    if cfg.dataset == "scenes":
        data = scenes_federated(_scene_spec(cfg), tasks, Path(cfg.cache_dir) if cfg.cache_dir else None)
    elif cfg.dataset == "taskonomy":
        buildings = read_buildings_file(Path(cfg.buildings_file)) if cfg.buildings_file else None
        data = read_taskonomy(Path(cfg.root), tasks, buildings, cfg.test_fraction)
    else:
        data = _plugin_data(cfg, tasks)
    data = with_validation(check_samples(check_federated(data, cfg.dataset), cfg.dataset, tasks), cfg)
    return with_label_coverage(data, cfg, late)


def with_label_coverage(data: FederatedData, cfg, late: Sequence[str] = ()) -> FederatedData:
    """Apply ``data.label_coverage``: each client keeps each task's labels with that task's probability
    (seeded by ``data.seed`` and the client's name, so every process draws the same), intersected with
    what the dataset itself declared; a client left with none keeps one task drawn at random.
    The tasks in ``late`` (arriving mid-training) are drawn after the others and after that rule, so
    the starting tasks' labels are the same with or without them."""
    cov = cfg.label_coverage
    if not isinstance(cov, dict) and cov >= 1:
        return data
    unknown = sorted(set(cov) - set(data.tasks)) if isinstance(cov, dict) else []
    if unknown:
        raise DataError(f"data.label_coverage names {unknown}, which are not among the run's tasks "
                        f"{list(data.tasks)}")
    holds = {}
    early = [t for t in data.tasks if t not in late]
    later = [t for t in data.tasks if t in late]
    for c in data.clients:
        rng = np.random.default_rng(zlib.crc32(f"{cfg.seed}/labels/{c}".encode()))
        declared = data.held(c)
        keep = _draw(early, rng, declared, cov)
        if not keep:
            first = [t for t in declared if t in early] or list(declared)
            keep = (first[int(rng.integers(len(first)))],)
        holds[c] = keep + _draw(later, rng, declared, cov)
    data.holds = holds
    return data


def _draw(tasks: list[str], rng: np.random.Generator, declared: Sequence[str],
          cov: float | dict[str, float]) -> tuple[str, ...]:
    """The ``tasks`` (of those ``declared``) whose labels a client keeps: one uniform draw per task."""
    return tuple(t for t, u in zip(tasks, rng.random(len(tasks)))
                 if t in declared and u < (cov.get(t, 1.0) if isinstance(cov, dict) else cov))


def _plugin_data(cfg, tasks: Sequence[str]) -> FederatedData:
    _, module, func = cfg.dataset.split(":")
    try:
        fn = getattr(import_plugin(module), func)
    except (PluginError, AttributeError) as e:
        raise DataError(f"data.dataset {cfg.dataset!r}: cannot import {module}.{func} ({e})") from None
    if not callable(fn):
        raise DataError(f"data.dataset {cfg.dataset!r}: {module}.{func} is not a function")
    try:
        data = call_plugin(fn, f"data.dataset {cfg.dataset!r}: {module}.{func}(data_config, tasks)", cfg, tasks,
                           passthrough=(DataError,))
    except PluginError as e:
        raise DataError(str(e)) from None
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


def check_samples(data: FederatedData, source: str, tasks: Sequence[str]) -> FederatedData:
    """Check the first samples of every client and of the test set against what each task declares
    (target shape, dtype and value range; mask shape and range; a float input of 3 channels that is not
    constant); raises :class:`DataError` naming the client, the task, what was found and what is expected."""
    parts = [(f"client {c!r}", ds) for c, ds in data.clients.items()] + [("the test set", data.test)]
    for where, ds in parts:
        at = f"data.dataset {source!r}, {where}"
        try:
            x, targets, masks = next(batches(ds, SAMPLES_CHECKED, shuffle=False))
        except Exception as e:  # noqa: BLE001 - the user's Dataset failed: say where, no traceback
            raise DataError(f"{at}: reading its first samples raised "
                            f"{type(e).__name__}: {e}") from None
        why = _check_input(x)
        if why:
            raise DataError(f"{at}: model input {why}")
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        for t in tasks:
            if t not in targets:
                raise DataError(f"{at}: no target for task {t!r} "
                                f"(targets hold {sorted(targets)})")
            task = get_task(t)
            target, mask = targets[t], masks.get(t)
            if not isinstance(target, torch.Tensor):
                raise DataError(f"{at}, task {t!r}: target is a "
                                f"{type(target).__name__}, expected a tensor")
            why = next((w for w in (task.check_target(target[i], hw) for i in range(len(target))) if w), None) \
                or (_check_mask(mask, task.target_shape(hw), task.dense) if mask is not None else None)
            if why:
                raise DataError(f"{at}, task {t!r}: {why}")
    shapes: dict[str, Any] = {}
    for where, ds in parts:  # in memory: then every sample, at once (the first ones passed the checks above)
        if isinstance(ds, MultiTaskArrays):
            _check_all(ds, f"data.dataset {source!r}, {where}", tasks)
        elif source.startswith("python:"):  # a user's Dataset: every sample read once, here, before any folder
            _check_each(ds, f"data.dataset {source!r}, {where}", tasks, shapes)
    return data


def _check_each(ds, at: str, tasks: Sequence[str], shapes: dict[str, Any]) -> None:
    """Every sample of a user's Dataset read once through its ``__getitem__``: an exception, a sample
    ``__len__`` promised that is not there, or a shape that differs from the data's first sample (another
    resolution, another client's) is the user's DataError naming the sample and the function."""
    name = f"{type(ds).__name__}.__getitem__"
    for i in range(len(ds)):
        try:
            x, targets, masks = ds[i]
        except Exception as e:  # noqa: BLE001 - the user's code failed: say where, no traceback
            said = "IndexError (__len__ says more samples than there are?)" if isinstance(e, IndexError) \
                else type(e).__name__
            raise DataError(f"{at}: sample {i}: {name} raised {said}: {e}") from None
        got = {"input": tuple(getattr(x, "shape", ())),
               **{f"target of {t!r}": tuple(getattr(targets.get(t), "shape", ())) for t in tasks if t in targets},
               **{f"mask of {t!r}": tuple(getattr(masks.get(t), "shape", ())) for t in tasks if t in masks}}
        for key, shape in got.items():
            ref = shapes.setdefault(key, (shape, f"{at}, sample {i}"))
            if ref[0] != shape:
                raise DataError(f"{at}: sample {i}: {name} gave {key} shape {shape}, but {ref[1]} has {ref[0]}: "
                                f"every sample of every client must have the same shape (one resolution)")


def _check_all(ds: MultiTaskArrays, at: str, tasks: Sequence[str]) -> None:
    """Every sample of an in-memory dataset: finite inputs, targets of the values each task accepts, and masks
    finite and in [0, 1];
    :class:`DataError` naming the first bad sample (its index in that client's data)."""
    bad = ~torch.isfinite(ds.x.reshape(len(ds.x), -1)).all(1) if ds.x.is_floating_point() else None
    if bad is not None and bool(bad.any()):
        raise DataError(f"{at}: sample {int(bad.nonzero()[0])}: model input holds NaN or infinite values")
    for t in tasks:
        target = ds.targets.get(t)
        if target is None:
            continue
        task = get_task(t)
        flat = target.reshape(len(target), -1)
        if target.is_floating_point():
            bad = ~torch.isfinite(flat).all(1)
            if bool(bad.any()):
                raise DataError(f"{at}, task {t!r}: sample {int(bad.nonzero()[0])}: target holds NaN or infinite "
                                f"values")
        if task.check_values(target) is not None:  # find the first sample it refuses
            i = next(i for i in range(len(target)) if task.check_values(target[i]) is not None)
            raise DataError(f"{at}, task {t!r}: sample {i}: {task.check_values(target[i])}")
        mask = ds.masks.get(t)
        if mask is not None and _bad_mask_values(mask) is not None:  # the first sample whose mask is refused
            i = next(i for i in range(len(mask)) if _bad_mask_values(mask[i]) is not None)
            raise DataError(f"{at}, task {t!r}: sample {i}: {_bad_mask_values(mask[i])}")


def _check_input(x) -> str | None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return f"of type {getattr(x, 'dtype', type(x).__name__)}, expected float images (decode_input of uint8 rgb)"
    if x.ndim != 4 or x.shape[1] != 3:
        hint = " (channels last? a sample must be (3, H, W))" if x.ndim == 4 and x.shape[-1] == 3 else ""
        return f"samples of shape {tuple(x.shape[1:])}, expected (3, H, W){hint}"
    if not bool(torch.isfinite(x).all()):
        return "holds NaN or infinite values"
    if float(x.max() - x.min()) < 0.05:  # decode_input spreads 8-bit images over [−1, 1]
        return (f"is nearly constant (values in [{float(x.min()):.4g}, {float(x.max()):.4g}] over the first "
                f"{len(x)} samples): float rgb in [0, 1] decoded as if 0..255? decode_input expects uint8")
    return None


def _check_mask(mask, want: tuple[int, ...], dense: bool) -> str | None:
    got = tuple(mask.shape[1:])
    ok = (len(got) == len(want) and got[1:] == want[1:] and got[0] in (1, want[0])) if dense else got in ((), want)
    if not ok:
        return f"mask of shape {got}, expected {(1, *want[1:]) if dense else want}"
    return _bad_mask_values(mask)


def _bad_mask_values(mask: torch.Tensor) -> str | None:
    if not mask.is_floating_point():
        return f"mask of dtype {mask.dtype}, expected a float validity mask in [0, 1]"
    if not bool(torch.isfinite(mask).all()):
        return "mask holds NaN or infinite values, expected a float validity mask in [0, 1]"
    if float(mask.min()) < 0 or float(mask.max()) > 1:
        return (f"mask with values outside [0, 1] (from {float(mask.min()):.4g} to {float(mask.max()):.4g}), "
                f"expected a float validity mask in [0, 1]")
    return None
