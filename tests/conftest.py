from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch


def _pin_xdist_worker() -> int:
    """Under ``pytest -n N`` (as ``./test`` runs), worker i keeps to its own share of this process's cores, so N
    workers never oversubscribe them: runs with ``threads: auto`` and torch see that share. The threads torch
    uses: that share (2 without workers)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return 2
    cpus, i, n = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    if len(cpus) < n:
        return max(1, len(cpus) // n)
    mine = cpus[i::n]
    os.sched_setaffinity(0, mine)
    return len(mine)


torch.set_num_threads(_pin_xdist_worker())

LONGEST = ("test_flower.py", "test_scale.py")  # real Flower processes: a minute or two each


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (Flower's, then the other end-to-end ones), the quick ones last: with one worker
    per core the quick tests fill in at the end instead of one long test running alone."""
    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST:
            return 0
        return 1 if item.get_closest_marker("slow") is not None else 2

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fedmas-cache")
    os.environ["FEDMAS_CACHE"] = str(d)
    return d


TINY = {
    "name": "tiny",
    "seed": 0,
    "tasks": ["segment_semantic", "depth_zbuffer", "normal"],
    "data": {"buildings": 4, "train_images": 8, "test_images": 4, "resolution": 32, "views_per_room": 4},
    "model": {"width": 8},
    "federation": {"rounds": 4, "clients_per_round": 2, "batch_size": 4},
    "mas": {"splits": 2, "merge_rounds": 2, "lookahead_step": 1, "start": "merged"},
}  # the MAS reference's start (groups continue the merged model); tests of fedmas's default set start: scratch


@pytest.fixture
def tiny_raw() -> dict:
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def flower_identity(monkeypatch):
    """Flower's Message needs the run's identity, which a ServerApp or ClientApp process has set: for tests
    that build Flower messages in this process."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(scope="session")
def benchmark() -> Iterator[Callable[[str], ModuleType]]:
    """Imports a script of benchmarks/ as a module, ``benchmark("arrivals")``: the folder is on sys.path for the
    session, as it is when a script runs."""
    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(folder)
