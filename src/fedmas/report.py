"""Figures and tables: affinity heatmaps, loss curves, the comparison figure, energy bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedmas.text import (  # noqa: E402, F401 - importable from fedmas.report as before
    MAX_AFFINITY_TASKS,
    SHORT,
    read_affinity,
    short,
    table,
)


def heatmap(tasks: list[str], z: np.ndarray, path: Path, title: str = "Inter-task affinity Z(i→j)",
            groups: list[list[str]] | None = None) -> None:
    """The affinity matrix with the tasks ordered by group and each chosen group outlined. Only the
    off-diagonal cells (one task's step on another) are coloured, on a scale centred on zero that
    reaches the largest of them, so nothing is clipped; the diagonal (a task on itself) is printed in grey."""
    order = [t for g in (groups or []) for t in g if t in tasks]
    order += [t for t in tasks if t not in order]
    idx = [tasks.index(t) for t in order]
    z = np.asarray(z, float)[np.ix_(idx, idx)]
    n = len(order)
    off = np.where(np.eye(n, dtype=bool), np.nan, z)
    lim = max(float(np.nanmax(np.abs(off))) if n > 1 and not np.isnan(off).all() else 0.0, 1e-12)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.8, 1.0 * n + 2.2), dpi=120)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(off), cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), [short(t) for t in order], rotation=40, ha="right")
    ax.set_yticks(range(n), [short(t) for t in order])
    ax.set_xlabel("target task j (helped when positive)")
    ax.set_ylabel("source task i (a step on its loss)")
    for i in range(n):
        for j in range(n):
            v = z[i, j]
            if np.isnan(v):  # partial labels: no client held both tasks
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="#777777")
                continue
            colour = "#777777" if i == j else ("white" if abs(v) > 0.6 * lim else "black")
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8, color=colour,
                    style="italic" if i == j else "normal")
    at = 0
    for g in groups or []:
        k = sum(t in tasks for t in g)
        ax.add_patch(plt.Rectangle((at - 0.5, at - 0.5), k, k, fill=False, edgecolor="black", linewidth=2.2))
        at += k
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="affinity (off-diagonal; scale centred on 0)")
    if groups:
        title += "\noutlined: the chosen groups " + "  |  ".join("{" + ", ".join(short(t) for t in g) + "}"
                                                              for g in groups)
    ax.set_title(title + "\ngrey: a task on itself (not coloured)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loss_curves(metrics_path: Path, path: Path, constant: dict[str, float | None] | None = None,
                reported: dict[str, int | None] | None = None) -> None:
    """Each task's test loss per round (one panel per task, one line per FL task that trains it, rounds
    numbered from 0 as in metrics.jsonl); a dashed line marks where the tasks were split or regrouped.
    ``constant``: each task's test loss of the constant predictor, drawn as a grey dotted line (a curve
    above it has skill below 0). ``reported``: each final FL task's reported round, counted in its own rounds
    as ``fl_round`` (with ``select: best_val`` its best-validation round; 0: the weights it started from, such
    as the merged model at the split, circled where the previous curve ends), circled in its colour."""
    constant, reported = constant or {}, reported or {}
    rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "total_loss" in r]
    if not rows:
        return
    tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    fl_tasks = list(dict.fromkeys(r["fl_task"] for r in rows))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(fl_tasks)}
    cols = min(3, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.9 * nrows + 0.8), dpi=110, squeeze=False)
    firsts = sorted({min(r["round"] for r in rows if r["fl_task"] == f) for f in fl_tasks} - {rows[0]["round"]})
    for ax, t in zip(axes.flat, tasks):
        for f in fl_tasks:
            rr = [r for r in rows if r["fl_task"] == f and f"loss/{t}" in r]
            if rr:
                ax.plot([r["round"] for r in rr], [r[f"loss/{t}"] for r in rr], marker=".", color=colours[f],
                        label=f)
                k = reported.get(f)
                if k == 0:  # its starting weights: the last point just before its first round
                    at = [r for r in rows if r["round"] == rr[0]["round"] - 1 and f"loss/{t}" in r][-1:]
                else:
                    at = [r for r in rr if k is not None and r.get("fl_round") == k]
                if at:
                    ax.plot([at[0]["round"]], [at[0][f"loss/{t}"]], "o", markersize=9, markerfacecolor="none",
                            markeredgecolor=colours[f], markeredgewidth=1.4)
        if constant.get(t) is not None:
            ax.axhline(constant[t], color="grey", linestyle=":", linewidth=1.3)
        for x in firsts:
            ax.axvline(x - 0.5, color="black", linestyle="--", linewidth=0.9)
        ax.set_title(short(t), fontsize=10)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_xlabel("round")
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[f], marker=".", label=_fl_label(f, rows)) for f in fl_tasks]
    if firsts:
        handles.append(plt.Line2D([], [], color="black", linestyle="--", label="split / new FL tasks start"))
    if any(constant.get(t) is not None for t in tasks):
        handles.append(plt.Line2D([], [], color="grey", linestyle=":", label="constant predictor (skill 0)"))
    if reported:
        handles.append(plt.Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                                  label="reported model's round"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Test loss per task (each line: the FL task that trains it)", fontsize=10)
    fig.tight_layout(rect=(0, min(0.45, (0.3 + 0.28 * -(-len(handles) // 4)) / fig.get_figheight()), 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _fl_label(name: str, rows: list[dict[str, Any]]) -> str:
    ts = next(r["tasks"] for r in rows if r["fl_task"] == name)
    return name if len(ts) > 3 else f"{name}: " + ", ".join(short(t) for t in ts)


def comparison_figure(results: list[dict[str, Any]], path: Path, title: str,
                      not_learned: list[str] | None = None) -> None:
    """Total test loss (left) and mean skill (right, where the runs report it) against training compute
    (FLOPs), one marker per method (the paper's figure); error bars are 95% intervals over seeds where there
    are several. Each method has its own colour (its family's marker shape) and is named in a legend beside
    the plots, so no label can cover another; methods at the same point are named together there. Tasks
    not learned by some method are named under the plots: a ranking over them is noise."""
    with_skill = all(r.get("mean_skill") is not None for r in results)
    fig, axes = plt.subplots(1, 2 if with_skill else 1, figsize=(15 if with_skill else 10, 5.4), dpi=130,
                             squeeze=False)
    panels = [("total_loss", "total test loss (sum over tasks, lower is better)")]
    if with_skill:
        panels.append(("mean_skill", "mean skill over tasks (1 − loss / constant's loss; higher is better)"))
    markers = {"mas": "*", "one-by-one": "s", "all-in-one": "o", "tag": "^", "hoa": "D", "random": "P"}
    cmap = plt.get_cmap("tab20" if len(results) > 10 else "tab10")
    xs = [r["train_tflop"] for r in results if r["train_tflop"] > 0]
    log = bool(xs) and max(xs) > 8 * min(xs)  # costs an order of magnitude apart (HOA): a log axis
    for ax, (key, ylabel) in zip(axes[0], panels):
        seen: list[tuple[float, float, str]] = []
        for i, r in enumerate(results):
            fam = r["method"]
            color = cmap(i % cmap.N)
            x, y = r["train_tflop"], r[key]
            same = next((lab for sx, sy, lab in seen if abs(sx - x) <= 1e-9 * max(1.0, abs(x))
                         and abs(sy - y) <= 1e-9 * max(1.0, abs(y))), None)
            seen.append((x, y, r["label"]))
            ax.errorbar(x, y, xerr=r.get("train_tflop_ci"), yerr=r.get(f"{key}_ci"), fmt="none", ecolor=color,
                        elinewidth=1, capsize=3, zorder=2, alpha=0.8)
            ax.scatter(x, y, s=170 if fam == "mas" else 70, marker=markers.get(fam, "o"), color=color, zorder=3,
                       edgecolor="black", linewidth=0.5,
                       label=r["label"] + (f" (same point as {same})" if same else ""))
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("training compute on clients (TFLOP, all phases; deterministic"
                      + (", log scale)" if log else ")"))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0)
    fig.suptitle(title, fontsize=10)
    if not_learned:
        fig.text(0.01, 0.01, f"Not learned (skill < 0.05) by some method: {', '.join(not_learned)} — a ranking "
                             f"over these tasks is noise", fontsize=8, color="darkred")
    fig.tight_layout(rect=(0, 0.03 if not_learned else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


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
