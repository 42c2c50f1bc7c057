"""The run folder: what fedmas writes there, how it is created, and who may write to it.

fedmas never deletes or overwrites anything it did not create. A new run needs a
folder that does not exist or is empty; ``force`` replaces fedmas's own files in
a folder (the names in :data:`RUN_FILES`) and leaves every other file alone.
One process at a time uses a folder (:class:`RunLock`, an exclusive ``flock``
released by the kernel when the holder dies, even by SIGKILL), and one process at a
time runs its rounds (:class:`DriveLock`): with ``engine: flower`` those are two
processes, the ``fedmas run`` that submitted the run and the ServerApp that drives it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import site
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from fedmas.config import Config, ConfigError, add_import_path, load_config, read_yaml_mapping
from fedmas.server.state import atomic_write_text, verify_config

LOCK = ".fedmas.lock"
DRIVE_LOCK = ".fedmas-drive.lock"  # held by the process running the rounds (a ServerApp, with engine: flower)
PLUGINS = "plugins"  # copies of the config's single-file plugin modules, so that --resume finds them
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint", "affinity.json", "affinity.png", "split.json",
             "arrivals.json", "exhaustive.json", "costs.json", "trivial.json", "losses.png", "summary.json", "run.log",
             "tensorboard", PLUGINS, LOCK, DRIVE_LOCK)


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "checkpoint" / "state.json").exists() or (run_dir / "summary.json").exists()


MARKER = ".fedmas-run"  # written when fedmas claims a folder for a run: the RUN_FILES there are fedmas's


def _is_ours(run_dir: Path) -> bool:
    """Was this folder claimed by fedmas for a run (so the RUN_FILES names in it are fedmas's files)?"""
    return (run_dir / MARKER).is_file() or holds_run(run_dir)


def _present(run_dir: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]


def check_new_run_dir(run_dir: Path, force: bool = False, locked: bool = False) -> None:
    """Refuse a folder a new run must not use: called before anything is written, and again once the
    folder's lock is held (``locked``: the lock file is then fedmas's own), so that of two runs started on
    one folder at once, the one that claims it second is refused."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise ConfigError(f"--out {run_dir} is a symbolic link to {os.readlink(run_dir)}, which does not exist; "
                          f"create that folder, or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a folder")
    if not run_dir.exists():
        return
    skip = {LOCK, DRIVE_LOCK} if locked else set()
    if force:
        if _is_ours(run_dir):
            return
        theirs = [n for n in _present(run_dir, RUN_FILES) if n not in skip]
        if theirs:
            raise ConfigError(f"--out {run_dir} holds {', '.join(theirs)}, which fedmas did not write there "
                              f"(the folder never held a fedmas run); --force replaces only fedmas's own files: "
                              f"choose another --out")
        return
    if holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          f"choose another --out, or add --force to start it over")
    if (run_dir / MARKER).is_file() and not (run_dir / "config.yaml").exists():
        # claimed by a run killed before it wrote its config (perhaps halfway): it never started
        skip |= {MARKER, LOCK, DRIVE_LOCK, PLUGINS} | {p.name for p in run_dir.iterdir() if _partial(p)}
    if any(p.name not in skip for p in run_dir.iterdir()):
        raise ConfigError(f"--out {run_dir} exists and is not empty; choose another --out, or add --force to "
                          f"replace fedmas's own files there (other files are kept)")


def prepare_run_dir(run_dir: Path, cfg: Config, force: bool = False) -> None:
    """Claim the run folder (its lock held by the caller): check it again, then with ``force`` remove
    fedmas's own files there, mark it as fedmas's and write config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_new_run_dir(run_dir, force, locked=True)
    clean_partial_writes(run_dir)
    if force:
        old_plugins = _old_plugins(run_dir)
        theirs = _not_written_by_the_old_run(run_dir)
        for name in RUN_FILES:
            p = run_dir / name
            if name in (LOCK, DRIVE_LOCK, PLUGINS) or name in theirs:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        _remove_plugin_copies(run_dir, old_plugins)
    (run_dir / MARKER).write_text("this folder holds a fedmas run; fedmas may replace the files it wrote here\n")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    _keep_plugins(run_dir, cfg.plugins)


def _not_written_by_the_old_run(run_dir: Path) -> set[str]:
    """Files named like fedmas's that the run in this folder cannot have written (by its config: no task
    arrived, so no arrivals.json; no TensorBoard; not the exhaustive method): the user's, kept by --force."""
    try:
        old = read_yaml_mapping(run_dir / "config.yaml", "run config")
    except (ConfigError, OSError):
        return set()
    out = set()
    if not (old.get("arrival") or {}).get("tasks"):
        out.add("arrivals.json")
    if not old.get("tensorboard"):
        out.add("tensorboard")
    if old.get("method") != "exhaustive":
        out.add("exhaustive.json")
    return out


def _old_plugins(run_dir: Path) -> list[str]:
    try:
        mods = read_yaml_mapping(run_dir / "config.yaml", "run config").get("plugins") or []
    except (ConfigError, OSError):
        return []
    return [m for m in mods if isinstance(m, str)] if isinstance(mods, list) else []


def _remove_plugin_copies(run_dir: Path, modules: Sequence[str]) -> None:
    """Remove the copies of the old run's plugin modules fedmas kept in ``plugins/``; other files stay."""
    d = run_dir / PLUGINS
    if not d.is_dir() or d.is_symlink():
        return
    for mod in modules:
        (d / f"{mod}.py").unlink(missing_ok=True)
    shutil.rmtree(d / "__pycache__", ignore_errors=True)
    if not any(d.iterdir()):
        d.rmdir()


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


def clean_partial_writes(run_dir: Path) -> list[str]:
    """Remove what a kill during a write left behind in a run folder (called by the one process driving it):
    the temporary files of :func:`fedmas.files.atomic_write` (``.<name>.<random>.tmp``) and of a checkpoint's
    weights (``weights-*.safetensors.tmp``). Returns their names."""
    gone = []
    for folder in (run_dir, run_dir / "checkpoint"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _partial(p):
                p.unlink(missing_ok=True)
                gone.append(p.name)
    return gone


def _partial(p: Path) -> bool:
    """A temporary file of fedmas's atomic writes (``.<name>.<random>.tmp``, ``weights-*.safetensors.tmp``)."""
    return ((p.name.startswith(".") and p.name.endswith(".tmp")) or
            (p.name.startswith("weights-") and p.name.endswith(".safetensors.tmp"))) and p.is_file() \
        and not p.is_symlink()


def resume_config(run_dir: Path, allow_plugins: Sequence[str] = ()) -> Config:
    """The saved config of ``run_dir``. Its ``plugins`` are imported (run) only when they are fedmas's,
    installed packages, modules inside the run folder, or named in ``allow_plugins``: a config.yaml
    edited by someone else must not make ``--resume`` run code from anywhere."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    p = run_dir / "config.yaml"
    if not p.exists() and (run_dir / MARKER).is_file():
        raise ConfigError(f"{run_dir}: this run was stopped before it wrote its config.yaml, so it never started; "
                          f"start it again with the same fedmas run command (the folder is reused)")
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a fedmas run folder (no config.yaml)")
    verify_config(run_dir)  # an edited config.yaml is refused before any of its plugins is imported
    plugins = read_yaml_mapping(p, "run config").get("plugins") or []
    if (run_dir / PLUGINS).is_dir():
        add_import_path(run_dir / PLUGINS, first=True)
    if isinstance(plugins, list):
        for mod in plugins:
            if isinstance(mod, str) and mod not in allow_plugins:
                _check_plugin_origin(mod, run_dir, p)
    return load_config(p, saved=True)


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


class _FolderLock:
    """An exclusive ``flock`` on the file ``name`` of a run folder, holding the holder's PID."""

    name = LOCK

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.fd: int | None = None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return True

    @staticmethod
    def _holder(fd: int) -> str:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"

    def _open(self) -> int:
        return os.open(self.run_dir / self.name, os.O_RDWR | os.O_CREAT, 0o644)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunLock(_FolderLock):
    """Exclusive use of a run folder by this process; a second one is refused with the holder's PID."""

    def __enter__(self) -> RunLock:
        fd = self._open()
        if not self._try(fd):
            holder = self._holder(fd)
            os.close(fd)
            raise ConfigError(f"{self.run_dir} is in use by another fedmas process (PID {holder}); "
                              f"wait for it to finish or stop it first")
        return self


class DriveLock(_FolderLock):
    """The rounds of a run folder run in one process at a time. A process that finds them held waits for the
    holder to end, saying who it is (first at once, then every ``note_every_s``), and then continues from
    what the holder left: the holder drives the same run, e.g. the ServerApp of an earlier submission whose
    SuperLink went down and came back, or one still finishing. Two drivers at once would write the same
    checkpoint and metrics in turn."""

    name = DRIVE_LOCK

    def __init__(self, run_dir: Path, note_every_s: float = 60.0, poll_s: float = 0.5):
        super().__init__(run_dir)
        self.note_every_s, self.poll_s = note_every_s, poll_s

    def __enter__(self) -> DriveLock:
        fd = self._open()
        note_at = time.monotonic()
        try:
            while not self._try(fd):
                if time.monotonic() >= note_at:
                    print(f"[fedmas] {self.run_dir}: its rounds are being run by another fedmas process (PID "
                          f"{self._holder(fd)}, e.g. an earlier ServerApp of this run); waiting for it to end, "
                          f"then continuing from where it stops", file=sys.stderr, flush=True)
                    note_at = time.monotonic() + self.note_every_s
                time.sleep(self.poll_s)
        except BaseException:  # stopped while waiting (Ctrl-C, the ServerApp's exit): the file is let go
            os.close(fd)
            raise
        return self
