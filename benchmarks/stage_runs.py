"""Stage a long benchmark's run folders for a commit while it runs, so that a fresh clone resumes it.

    .venv/bin/python benchmarks/stage_runs.py benchmarks/results/learned_protocol [more folders]

Checkpoints are ignored by git (.gitignore). A finished run (it has ``summary.json``) keeps none in git: what a
resumed comparison reuses is its summary. An unfinished run keeps its latest checkpoint — ``state.json`` and
the weights file it names, force-added — but only when the weights' sha256 matches the one ``state.json``
records (a checkpoint being written at that moment is skipped; run this again). Everything else in the
folders is staged with ``git add``. Nothing is committed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def stage(folder: Path) -> tuple[int, int, list[str]]:
    """(finished, unfinished staged, unfinished skipped) for the run folders under ``folder``."""
    finished = staged = 0
    skipped: list[str] = []
    for config in sorted(folder.rglob("config.yaml")):
        run = config.parent
        ckpt = run / "checkpoint"
        if (run / "summary.json").exists():
            finished += 1
            if ckpt.exists():
                git("rm", "-r", "-q", "--cached", "--ignore-unmatch", str(ckpt))
            continue
        state_file = ckpt / "state.json"
        if not state_file.exists():
            skipped.append(f"{run}: no checkpoint yet")
            continue
        state = json.loads(state_file.read_text())
        weights = ckpt / state["weights_file"]
        if not weights.exists() or hashlib.sha256(weights.read_bytes()).hexdigest() != state["weights_sha256"]:
            skipped.append(f"{run}: checkpoint being written")
            continue
        tracked = [p for p in git("ls-files", str(ckpt)).split() if Path(p).name not in
                   ("state.json", weights.name)]
        if tracked:  # an older weights file of this run
            git("rm", "-q", "--cached", *tracked)
        git("add", "-f", str(state_file), str(weights))
        staged += 1
    git("add", str(folder))
    return finished, staged, skipped


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv:
        folder = Path(name)
        if not folder.is_dir():  # a glob that matched files too, or nothing yet
            print(f"{name}: not a folder, skipped")
            continue
        finished, staged, skipped = stage(folder)
        print(f"{name}: {finished} finished, {staged} unfinished with their checkpoint"
              + "".join(f"\n  skipped {s}" for s in skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
