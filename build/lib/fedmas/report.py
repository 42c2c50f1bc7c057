"""Figures and tables: affinity heatmaps, loss curves, the comparison figure, energy bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
    if not path.exists():
        raise ValueError(f"affinity file not found: {path}")
    if not path.is_file():
        raise ValueError(f"affinity file {path} is not a regular file")
    if path.stat().st_size > MAX_AFFINITY_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_AFFINITY_FILE_BYTES >> 20} MiB; not an affinity file")
    try:
        doc = json.loads(path.read_text(), parse_int=_bounded_int)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
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
                raise ValueError(f"{path}: affinity[{s!r}][{t!r}] must be a number in "
                                 f"[-{MAX_AFFINITY_VALUE:g}, {MAX_AFFINITY_VALUE:g}], got {str(v)[:40]}")
            z[i, j] = v
    extra = set(doc["affinity"]) - set(tasks)
    if extra:
        raise ValueError(f"{path}: affinity rows for tasks not in 'tasks': {sorted(extra, key=str)[:3]}")
    return tasks, z


def _bounded_int(text: str) -> float:
    """JSON integers as floats; a huge one becomes inf and is refused by the range check."""
    return float(text) if len(text) <= 400 else float("inf")


def heatmap(tasks: list[str], z: np.ndarray, path: Path, title: str = "Inter-task affinity Z(i→j)",
            groups: list[list[str]] | None = None) -> None:
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 1.8), dpi=120)
    off = z - np.diag(np.diag(z))
    lim = max(float(np.abs(off).max()), 1e-9)
    im = ax.imshow(z, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), [short(t) for t in tasks], rotation=40, ha="right")
    ax.set_yticks(range(n), [short(t) for t in tasks])
    ax.set_xlabel("target task j (helped when positive)")
    ax.set_ylabel("source task i (step on its loss)")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{z[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(z[i, j]) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if groups:
        title += "\nsplit: " + "  |  ".join("{" + ", ".join(short(t) for t in g) + "}" for g in groups)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loss_curves(metrics_path: Path, path: Path) -> None:
    rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "total_loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name in dict.fromkeys(r["fl_task"] for r in rows):
        rr = [r for r in rows if r["fl_task"] == name]
        label = name if len(rr[0]["tasks"]) > 3 else f"{name}: " + ", ".join(short(t) for t in rr[0]["tasks"])
        ax.plot([r["round"] + 1 for r in rr], [r["total_loss"] for r in rr], marker=".", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test loss (sum over the FL task's tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def comparison_figure(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Total test loss against training compute (FLOPs), one marker per method (the paper's figure);
    error bars are 95% intervals over seeds where there are several. Labels are placed so that
    they never overlap (a label that would is moved down a line, in the legend's order)."""
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=130)
    families: dict[str, Any] = {}
    markers = {"mas": "*", "one-by-one": "s", "all-in-one": "o", "tag": "^", "hoa": "D", "random": "P"}
    cmap = plt.get_cmap("tab10")
    for r in results:
        fam = r["method"]
        color = families.setdefault(fam, cmap(len(families) % 10))
        x, y = r["train_tflop"], r["total_loss"]
        ax.errorbar(x, y, xerr=r.get("train_tflop_ci"), yerr=r.get("total_loss_ci"), fmt="none", ecolor=color,
                    elinewidth=1, capsize=3, zorder=2)
        ax.scatter(x, y, s=170 if fam == "mas" else 70, marker=markers.get(fam, "o"), color=color, zorder=3,
                   edgecolor="black", linewidth=0.5, label=r["label"])
    fig.canvas.draw()
    _place_labels(ax, [(r["train_tflop"], r["total_loss"], r["label"]) for r in results])
    ax.set_xlabel("training compute on clients (TFLOP, all phases; deterministic)")
    ax.set_ylabel("total test loss (sum over tasks, lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point; a label whose box would overlap one already placed moves down until it does not."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = []
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        for step in range(40):
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 4 - 11 * step), fontsize=8,
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if step else None)
            bb = ann.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(bb.overlaps(o) for o in boxes):
                boxes.append(bb)
                break
            ann.remove()


def energy_figure(results: list[dict[str, Any]], path: Path, source: str) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=130)
    labels = [r["label"] for r in results]
    vals = [r["energy_j"] / 1000 for r in results]
    colors = ["tab:red" if r["method"] == "mas" else "tab:gray" for r in results]
    ax.bar(range(len(vals)), vals, color=colors)
    ax.set_xticks(range(len(vals)), labels, rotation=35, ha="right")
    ax.set_ylabel(f"client energy (kJ, {source})")
    ax.set_title("Training energy per method (MAS in red)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])
