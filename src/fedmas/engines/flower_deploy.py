"""``engine: flower``: submit a fedmas run to a SuperLink with ``flwr run`` (:func:`launch`, :func:`submit`).

Flower's settings for a submission live in a temporary folder; its ServerApp (``fedmas/flower_app/``) drives the run
folder. The loopback rehearsal of a whole deployment is :mod:`fedmas.engines.flower_rehearsal`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fedmas.config import Config
from fedmas.engines import Drive

APP_DIR = Path(__file__).parent.parent / "flower_app"  # the ServerApp sits above run.py, outside engines/


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def flower_env(home: Path) -> dict[str, str]:
    """Offline, self-contained Flower: no telemetry, no update check, no dependency install."""
    home.mkdir(parents=True, exist_ok=True)
    # Flower's processes start further Flower commands (flower-superexec, flwr-serverapp, ...) by
    # name: make sure the ones installed beside this Python are found even in an unactivated venv.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_TMPDIR": str(home / "ray"), "PYTHONUNBUFFERED": "1"}


def write_connection(home: Path, address: str, root_certificates: str | None) -> None:
    conn = f'address = "{address}"\n' + (f'root-certificates = "{root_certificates}"\n' if root_certificates
                                         else "insecure = true\n")
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fedmas"\n\n[superlink.fedmas]\n{conn}')


def submit(cfg: Config, run_dir: Path, home: Path | None = None, timeout_s: float | None = None) -> int:
    """``flwr run`` the fedmas app on the SuperLink named by ``cfg.flower``; streams its logs.

    The ServerApp continues the run folder ``run_dir`` (from its checkpoint, if any). A folder
    that ``fedmas run`` has not prepared is prepared there from ``cfg``."""
    run_dir = Path(run_dir).resolve()
    if home is None:  # Flower's settings for this submission live in a folder of its own, removed after it
        with tempfile.TemporaryDirectory(prefix="fedmas-flwr-") as tmp:
            return submit(cfg, run_dir, Path(tmp), timeout_s)
    env = flower_env(home)
    write_connection(home, cfg.flower.superlink, cfg.flower.root_certificates)
    rc = f'out="{run_dir}"'
    if not (run_dir / "config.yaml").exists():
        import yaml

        config_path = home / f"{run_dir.name}.config.yaml"
        config_path.write_text(yaml.safe_dump({**cfg.model_dump(), "engine": "flower"}))
        rc += f' config="{config_path}"'
    proc = subprocess.run([_bin("flwr"), "run", str(APP_DIR), "fedmas", "--stream", "--run-config", rc], env=env,
                          cwd=str(APP_DIR), timeout=timeout_s)
    return proc.returncode


def launch(cfg: Config, run_dir: Path, drive: Drive, device: str) -> None:
    """``engine: flower``: submit the prepared run folder to the SuperLink; its ServerApp drives the run."""
    rc = submit(cfg, run_dir)
    if rc != 0:
        print(f"[fedmas] flwr run exited with status {rc}; see its output above", file=sys.stderr)
