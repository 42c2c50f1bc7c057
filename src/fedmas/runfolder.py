"""The run folder: what fedmas writes there, how it is created, and who may write to it.

fedmas never deletes or overwrites anything it did not create. A new run needs a
folder that does not exist or is empty; ``force`` replaces fedmas's own files in
a folder (the names in :data:`RUN_FILES`) and leaves every other file alone.
One process at a time drives a folder (:class:`RunLock`, an exclusive ``flock``
released by the kernel when the holder dies, even by SIGKILL).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import site
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from fedmas.config import Config, ConfigError, add_import_path, load_config, read_yaml_mapping
from fedmas.server.state import atomic_write_text

LOCK = ".fedmas.lock"
PLUGINS = "plugins"  # copies of the config's single-file plugin modules, so that --resume finds them
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint", "affinity.json", "affinity.png", "split.json",
             "arrivals.json", "costs.json", "trivial.json", "losses.png", "summary.json", "run.log", PLUGINS, LOCK)


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "checkpoint" / "state.json").exists() or (run_dir / "summary.json").exists()


def check_new_run_dir(run_dir: Path, force: bool = False) -> None:
    """Refuse, before anything is written, a folder a new run must not use."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a folder")
    if force or not run_dir.exists():
        return
    if holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          f"choose another --out, or add --force to start it over")
    if any(run_dir.iterdir()):
        raise ConfigError(f"--out {run_dir} exists and is not empty; choose another --out, or add --force to "
                          f"replace fedmas's own files there (other files are kept)")


def prepare_run_dir(run_dir: Path, cfg: Config, force: bool = False) -> None:
    """Create the run folder and write config.yaml; with ``force``, first remove fedmas's own files there.
    Call :func:`check_new_run_dir` (and check the data) before: this one no longer refuses anything."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for name in RUN_FILES:
            p = run_dir / name
            if name == LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    _keep_plugins(run_dir, cfg.plugins)


def _keep_plugins(run_dir: Path, plugins: Sequence[str]) -> None:
    """Copy each plugin that is one .py file outside fedmas and the installed packages into
    ``run_dir/plugins``: ``--resume`` imports that copy, the code the run started with."""
    installed = _installed()
    for mod in plugins:
        m = sys.modules.get(mod)
        f = Path(getattr(m, "__file__", None) or "")
        if "." in mod or mod.split(".")[0] == "fedmas" or f.name != f"{mod}.py" or not f.is_file():
            continue
        if any(f.resolve().is_relative_to(d) for d in installed):
            continue
        (run_dir / PLUGINS).mkdir(exist_ok=True)
        shutil.copyfile(f, run_dir / PLUGINS / f.name)


def _installed() -> list[Path]:
    return [Path(x).resolve() for x in site.getsitepackages() + [site.getusersitepackages()]]


def resume_config(run_dir: Path, allow_plugins: Sequence[str] = ()) -> Config:
    """The saved config of ``run_dir``. Its ``plugins`` are imported (run) only when they are fedmas's,
    installed packages, modules inside the run folder, or named in ``allow_plugins``: a config.yaml
    edited by someone else must not make ``--resume`` run code from anywhere."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    p = run_dir / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a fedmas run folder (no config.yaml)")
    plugins = read_yaml_mapping(p, "run config").get("plugins") or []
    if (run_dir / PLUGINS).is_dir():
        add_import_path(run_dir / PLUGINS, first=True)
    if isinstance(plugins, list):
        for mod in plugins:
            if isinstance(mod, str) and mod not in allow_plugins:
                _check_plugin_origin(mod, run_dir, p)
    return load_config(p)


def _check_plugin_origin(mod: str, run_dir: Path, source: Path) -> None:
    if mod.split(".")[0] == "fedmas" or mod in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(mod.split(".")[0])
    except (ImportError, ValueError):
        spec = None
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    installed = _installed()
    if origin is not None and (origin.is_relative_to(run_dir.resolve()) or any(origin.is_relative_to(d)
                                                                               for d in installed)):
        return
    where = f" ({origin})" if origin else ""
    raise ConfigError(f"{source} names plugin module {mod!r}{where}, which is neither installed nor inside the run "
                      f"folder; resume with --allow-plugin {mod} to import it")


class RunLock:
    """Exclusive use of a run folder by this process; a second one is refused with the holder's PID."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.run_dir} is in use by another fedmas process (PID {holder}); "
                              f"wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
