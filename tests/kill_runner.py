"""Runs ``fedmas`` with every write boundary of fedmas's own files counted, and the process killed (exit 137,
no cleanup, as SIGKILL) at boundary ``FEDMAS_KILL_AT`` (0: never; each boundary is then named on stderr, and
their count last).

Boundaries: before and after each atomic rename (the temporary file written, then in place), after each
removal, and inside and after each append to metrics.jsonl (half a line written, then the rest). Used by
tests/test_kill_points.py: ``python tests/kill_runner.py run CONFIG --out DIR`` (any ``fedmas`` arguments).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

KILL_AT = int(os.environ.get("FEDMAS_KILL_AT", "0"))
SEEN = [0]


def boundary(what: str) -> None:
    SEEN[0] += 1
    if KILL_AT == 0:
        sys.stderr.write(f"BOUNDARY {SEEN[0]}: {what}\n")
    if SEEN[0] == KILL_AT:
        sys.stderr.write(f"KILLED at boundary {SEEN[0]}: {what}\n")
        sys.stderr.flush()
        os._exit(137)


def main() -> int:
    real_replace, real_unlink = os.replace, pathlib.Path.unlink

    def replace(src, dst, *a, **k):  # type: ignore[no-untyped-def]
        boundary(f"before rename to {dst}")
        real_replace(src, dst, *a, **k)
        boundary(f"after rename to {dst}")

    def unlink(self, missing_ok=False):  # type: ignore[no-untyped-def]
        existed = self.exists()
        real_unlink(self, missing_ok=missing_ok)
        if existed:
            boundary(f"after removing {self}")

    os.replace = replace  # type: ignore[assignment]
    pathlib.Path.unlink = unlink  # type: ignore[method-assign]

    from fedmas.server import bookkeeping, loop

    def append_metrics(run_dir, lines, seconds):  # type: ignore[no-untyped-def]
        text = "".join(json.dumps({**ln, "round_s": seconds}) + "\n" for ln in lines)
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(text[:len(text) // 2])
            fh.flush()
            boundary("inside an append to metrics.jsonl")
            fh.write(text[len(text) // 2:])
        boundary("after an append to metrics.jsonl")

    bookkeeping.append_metrics = append_metrics
    loop.append_metrics = append_metrics
    from fedmas.cli import main as fedmas

    rc = fedmas(sys.argv[1:])
    sys.stderr.write(f"BOUNDARIES {SEEN[0]}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
