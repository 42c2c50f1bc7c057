"""Reading a run's ``summary.json`` back, checked (no torch: ``fedmas show`` starts fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmas.yamlio import ConfigError

MAX_SUMMARY_BYTES = 64 << 20


def read_summary(p: Path) -> dict[str, Any]:
    """A run's summary.json, checked to be one (ConfigError naming the file otherwise)."""
    if not p.is_file():
        raise ConfigError(f"{p} is not a regular file")
    if p.stat().st_size > MAX_SUMMARY_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_SUMMARY_BYTES >> 20} MiB; not a fedmas summary")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{p}: not a fedmas summary (not valid JSON: {e})") from None
    ok = (isinstance(doc, dict) and isinstance(doc.get("test_loss"), dict) and isinstance(doc.get("owner"), dict)
          and isinstance(doc.get("total_test_loss"), (int, float)) and isinstance(doc.get("costs"), dict)
          and isinstance(doc.get("tasks"), list))
    if not ok:
        raise ConfigError(f"{p}: not a fedmas summary (expected an object with tasks, test_loss, owner, "
                          f"total_test_loss and costs)")
    numbers = {"total_test_loss": doc["total_test_loss"], **{f"test_loss.{t}": v for t, v in doc["test_loss"].items()},
               **{f"test_skill.{t}": v for t, v in (doc.get("test_skill") or {}).items() if v is not None},
               **({"mean_skill": doc["mean_skill"]} if doc.get("mean_skill") is not None else {})}
    bad = [k for k, v in numbers.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or (not math.isfinite(v) and not doc.get("failed"))]
    if bad:
        raise ConfigError(f"{p}: not a valid fedmas summary: {', '.join(bad[:4])} "
                          f"{'is' if len(bad) == 1 else 'are'} not a finite number (edited or damaged?)")
    return doc
