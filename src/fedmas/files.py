"""Reading files a user names: bounded in size, regular files only (a FIFO, a device or a folder is refused at
once instead of hanging or filling memory), and every problem named with the file."""

from __future__ import annotations

from pathlib import Path


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
