"""Plain text the commands share and that needs neither torch nor matplotlib: the tasks' short names,
markdown tables, and reading an affinity file (``fedmas split``, ``fedmas show`` and ``--help`` start fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedmas.files import read_small_text

SHORT = {"segment_semantic": "seg", "depth_zbuffer": "depth", "normal": "normal", "keypoints2d": "kpt2d",
         "edge_texture": "edge2d", "edge_occlusion": "edge3d", "principal_curvature": "curv",
         "reshading": "reshade", "rgb": "rgb"}


def short(t: str) -> str:
    return SHORT.get(t, t)


MAX_AFFINITY_TASKS = 64
MAX_AFFINITY_FILE_BYTES = 16 << 20
MAX_AFFINITY_VALUE = 1e6


def read_affinity(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse an affinity file (``{"tasks": [...], "affinity": {source: {target: Z}}}``, extra top-level
    fields allowed); raises ValueError naming the file and what is wrong."""
    path = Path(path)
    text = read_small_text(path, "affinity file", MAX_AFFINITY_FILE_BYTES, ValueError)
    try:
        doc = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be an affinity file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not isinstance(doc.get("affinity"), dict):
        raise ValueError(f'{path}: expected {{"tasks": [...], "affinity": {{source: {{target: value}}}}}}')
    tasks = doc["tasks"]
    if not tasks or not all(isinstance(t, str) and t for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"{path}: 'tasks' must be a non-empty list of distinct names")
    if len(tasks) > MAX_AFFINITY_TASKS:
        raise ValueError(f"{path}: {len(tasks)} tasks; at most {MAX_AFFINITY_TASKS} are accepted")
    z = np.zeros((len(tasks), len(tasks)))
    for i, s in enumerate(tasks):
        row = doc["affinity"].get(s)
        if not isinstance(row, dict):
            raise ValueError(f"{path}: affinity has no row for task {s!r} (needs an n×n matrix over 'tasks')")
        extra = sorted(set(row) - set(tasks), key=str)
        if extra:
            raise ValueError(f"{path}: affinity[{s!r}] has columns for tasks not in 'tasks': {extra[:3]}")
        for j, t in enumerate(tasks):
            v = row.get(t)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= MAX_AFFINITY_VALUE:
                got = str(v)[:40] if isinstance(v, (int, float)) and not isinstance(v, bool) else \
                    f"{type(v).__name__} {str(v)[:40]!r}" + (" (a string: write the number without quotes)"
                                                              if isinstance(v, str) else "")
                raise ValueError(f"{path}: affinity[{s!r}][{t!r}] must be a number in "
                                 f"[-{MAX_AFFINITY_VALUE:g}, {MAX_AFFINITY_VALUE:g}], got {got}")
            z[i, j] = v
    extra = set(doc["affinity"]) - set(tasks)
    if extra:
        raise ValueError(f"{path}: affinity rows for tasks not in 'tasks': {sorted(extra, key=str)[:3]}")
    return tasks, z


def _bounded_int(text: str) -> float:
    """JSON integers as floats; a huge one becomes inf and is refused by the range check."""
    return float(text) if len(text) <= 400 else float("inf")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])
