"""Contact sheet of the scenes dataset: images from several buildings with every label beside them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fedmas.data.render import CLASSES  # noqa: E402

PALETTE = (plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:, :3] * 255).astype(np.uint8)
PALETTE[0] = 0
COLUMNS = [("rgb", "rgb"), ("depth_zbuffer", "depth"), ("normal", "normal"), ("segment_semantic", "segment"),
           ("edge_occlusion", "occlusion edges"), ("edge_texture", "texture edges"), ("keypoints2d", "keypoints"),
           ("reshading", "reshading"), ("principal_curvature", "curvature")]


def label_image(label: str, a: np.ndarray) -> np.ndarray:
    """An RGB rendering of one raw label for display."""
    if label in ("rgb", "normal"):
        return a
    if label == "segment_semantic":
        return PALETTE[a % len(PALETTE)]
    if label == "depth_zbuffer":
        valid = a < 8192
        d = a.astype(float)
        lo, hi = (np.percentile(d[valid], [1, 99]) if valid.any() else (0, 1))
        g = 1 - np.clip((d - lo) / max(hi - lo, 1), 0, 1)
        img = (plt.get_cmap("magma")(g)[..., :3] * 255).astype(np.uint8)
        img[~valid] = (0, 90, 0)
        return img
    if label == "principal_curvature":
        return a
    v = a.astype(float)
    v = v / max(np.percentile(v, 99.5), 1e-6)
    return (np.clip(v, 0, 1)[..., None].repeat(3, -1) * 255).astype(np.uint8)


def contact_sheet(raw: dict[int, dict[str, np.ndarray]], path: Path, per_building: int = 2) -> None:
    """``raw[building] = {label: (N, H, W[, C])}``; draws ``per_building`` images of each building."""
    buildings = sorted(raw)
    rows = [(b, i) for b in buildings for i in range(min(per_building, len(raw[b]["rgb"])))]
    fig, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(1.6 * len(COLUMNS), 1.65 * len(rows) + 1.2), dpi=110)
    axes = np.atleast_2d(axes)
    present: set[int] = set()
    for r, (b, i) in enumerate(rows):
        for c, (label, title) in enumerate(COLUMNS):
            ax = axes[r, c]
            a = raw[b][label][i]
            if label == "segment_semantic":
                present |= set(np.unique(a).tolist())
            ax.imshow(label_image(label, a), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"building {b}", fontsize=8)
    handles = [Patch(color=PALETTE[k] / 255, label=CLASSES[k]) for k in sorted(present)]
    fig.legend(handles=handles, loc="lower center", ncol=min(9, len(handles)), fontsize=7,
               title="segment classes (black: unlabelled; depth: dark green = invalid)", title_fontsize=7)
    fig.suptitle("fedmas scenes: one row per image, every label from the same geometry", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
