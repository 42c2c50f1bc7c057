"""Reading files a user names: bounded in size, regular files only (a FIFO, a device or a folder is refused at
once instead of hanging or filling memory), and every problem named with the file; and writing files whole
(:func:`atomic_write`), safe beside other processes writing the same file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def read_small_text(p: Path, what: str, limit: int, error: type[Exception] = ValueError) -> str:
    """The text of a regular file of at most ``limit`` bytes; ``error`` naming the file (as ``what``) and the
    problem otherwise: missing, not a regular file, too large, not text, unreadable."""
    p = Path(p)
    try:
        if not p.exists():
            raise error(f"{what} not found: {p}")
        if not p.is_file():
            raise error(f"{what} {p} is not a regular file")
        if p.stat().st_size > limit:
            raise error(f"{p}: {what} larger than {limit // 1024} KiB")
        return p.read_text()
    except UnicodeDecodeError:
        raise error(f"{p}: {what} is not text (UTF-8)") from None
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror or e})") from None


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the whole new one, never a
    part: the bytes go to a temporary file of a name no other writer uses, in the same folder, flushed to disk,
    then renamed over ``path``. Several processes may write the same file at once (two runs rendering one
    dataset into a shared cache): the last rename wins, and each rename is of a complete file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))
