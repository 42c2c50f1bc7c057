"""Engines carry jobs to clients and replies back; the round loop does not know which one runs.

Each engine is one module with ``launch(cfg, run_dir, drive)``: it starts whatever the
engine needs and calls ``drive(engine_factory)`` where the server side runs (the same
process for ``inprocess`` and ``flower-sim``; a Flower ServerApp process for
``flower``, which drives the run folder itself). Adding an engine is one module
plus one line in :data:`ENGINES`. This module imports nothing of fedmas at run time,
so the config can check ``engine:`` against :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmas.config import Config
    from fedmas.data.federated import FederatedData
    from fedmas.models import ModelSpec
    from fedmas.server.loop import Engine

EngineFactory = Callable[["Config", "FederatedData", "ModelSpec"], "Engine"]
Drive = Callable[[EngineFactory], Any]

ENGINES = {
    "inprocess": ("fedmas.engines.inprocess", None),
    "flower-sim": ("fedmas.engines.flower", "fedmas[flower-sim]"),
    "flower": ("fedmas.engines.flower_deploy", "fedmas[flower]"),
}


def engine_module(name: str):
    """The module of engine ``name``; a clear error when its optional extra is not installed."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; accepted: {', '.join(ENGINES)}")
    module, extra = ENGINES[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"engine {name} needs the optional extra: pip install '{extra}' ({e})") from None


def launch(cfg: Config, run_dir: Path, drive: Drive, device: str) -> None:
    """Run the prepared run folder ``run_dir`` on the engine ``cfg.engine`` names; ``device``: the torch device
    ``cfg.device`` resolves to in this process."""
    engine_module(cfg.engine).launch(cfg, run_dir, drive, device)


def preflight(cfg: Config) -> None:
    """Before a run folder exists: what the chosen engine needs is here (Ray for ``flower-sim``; a SuperLink that
    answers for ``flower``), else a ValueError saying what is missing."""
    import importlib.util

    engine_module(cfg.engine)
    if cfg.engine == "flower-sim" and importlib.util.find_spec("ray") is None:
        raise ValueError("engine flower-sim needs Ray, Flower's simulation extra: pip install 'fedmas[flower-sim]'")
    if cfg.engine == "flower":
        import socket

        host, _, port = cfg.flower.superlink.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10):
                pass
        except (OSError, ValueError) as e:
            raise ValueError(f"engine flower: no SuperLink answers at flower.superlink={cfg.flower.superlink} "
                             f"({e}); start it first (README: Distributed: Flower)") from None
