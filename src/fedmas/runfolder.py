"""The run folder: what fedmas writes there, how it is created, and who may write to it.

fedmas never deletes or overwrites anything it did not create. A new run needs a
folder that does not exist or is empty; ``force`` replaces fedmas's own files in
a folder (the names in :data:`RUN_FILES`) and leaves every other file alone.
One process at a time drives a folder (:class:`RunLock`, an exclusive ``flock``
released by the kernel when the holder dies, even by SIGKILL).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import yaml

from fedmas.config import Config, ConfigError, load_config
from fedmas.server.state import atomic_write_text

LOCK = ".fedmas.lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint", "affinity.json", "affinity.png", "split.json",
             "costs.json", "losses.png", "summary.json", "run.log", LOCK)


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
    """Create the run folder (after :func:`check_new_run_dir` and the data checks) and write config.yaml."""
    check_new_run_dir(run_dir, force)
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


def resume_config(run_dir: Path) -> Config:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} is not a fedmas run folder (no config.yaml)")
    return load_config(run_dir / "config.yaml")


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
