"""What is learned: one small object per task (head size, loss, label decoding, metrics).

A task turns raw labels (Taskonomy's on-disk encodings, ../shared/MAS.md §7) into
a training target, scores a prediction against it, and names its head size.
Add a task by subclassing :class:`Task` (or instantiating one of the generic
classes below) and calling :func:`register`; see ``examples/own_task.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEPTH_VALID_BELOW = 8192  # raw depth units (1/512 m); Taskonomy's holes are ≥ 2^13


@dataclass(frozen=True)
class Task:
    """Base class. ``dense`` tasks predict ``channels`` maps at input resolution;
    image-level tasks predict a vector of ``channels`` numbers."""

    name: str
    channels: int
    dense: bool = True

    def decode(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Target (and optional validity mask) for a batch of raw labels ``raw[label] → (N, H, W[, C])``."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def metric_sums(self, pred: Tensor, target: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        """Additive statistics over a batch; :meth:`finalize` turns their totals into metrics."""
        return {}

    def finalize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        return {}


def _depth_mask(raw: dict[str, np.ndarray]) -> np.ndarray | None:
    d = raw.get("depth_zbuffer")
    return None if d is None else (d < DEPTH_VALID_BELOW)[:, None].astype(np.float32)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    m = mask.expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


@dataclass(frozen=True)
class L1Task(Task):
    """Dense regression with L1 loss: target = (raw[label][..., channels] − offset) / scale."""

    label: str = ""
    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    select: tuple[int, ...] | None = None  # channels of the raw image to keep
    mean_channels: bool = False  # average the raw channels first (reshading)
    mask_by_depth: bool = False

    def decode(self, raw):
        r = raw[self.label or self.name]
        x = r.astype(np.float32) / (255.0 if r.dtype == np.uint8 else 1.0)
        x = x[..., None] if x.ndim == 3 else x
        if self.mean_channels:
            x = x.mean(-1, keepdims=True)
        if self.select is not None:
            x = x[..., list(self.select)]
        x = (x - np.asarray(self.offset, np.float32)) / np.asarray(self.scale, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), (_depth_mask(raw) if self.mask_by_depth else None)

    def loss(self, pred, target, mask):
        return masked_l1(pred, target, mask)

    def metric_sums(self, pred, target, mask):
        err = (pred - target).abs()
        m = torch.ones_like(err) if mask is None else mask.expand_as(err)
        return {"abs_err": (err * m).sum(), "n": m.sum()}

    def finalize(self, sums):
        return {"l1": float(sums["abs_err"] / sums["n"].clamp_min(1))}


@dataclass(frozen=True)
class DepthTask(L1Task):
    """Depth in Taskonomy units; also reports the absolute error in metres."""

    def finalize(self, sums):
        return {"abs_err_m": float(sums["abs_err"] / sums["n"].clamp_min(1)) * self.scale[0] / 512.0}


@dataclass(frozen=True)
class NormalTask(L1Task):
    """Surface normals in [−1, 1]; also reports the mean angular error in degrees."""

    def metric_sums(self, pred, target, mask):
        cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6).clamp(-1, 1)
        ang = torch.rad2deg(torch.acos(cos))
        valid = (target.abs().sum(1) > 0.1).float()
        if mask is not None:
            valid = valid * mask[:, 0]
        return {"ang": (ang * valid).sum(), "n": valid.sum()}

    def finalize(self, sums):
        return {"angular_err_deg": float(sums["ang"] / sums["n"].clamp_min(1))}


@dataclass(frozen=True)
class SegmentationTask(Task):
    """Per-pixel classification; class 0 is unlabelled and ignored."""

    def decode(self, raw):
        return raw[self.name].astype(np.int64), None

    def loss(self, pred, target, mask):
        valid = target > 0
        if not bool(valid.any()):
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target, ignore_index=0)

    def metric_sums(self, pred, target, mask):
        c = self.channels
        p = pred.argmax(1)
        valid = target > 0
        idx = target[valid] * c + p[valid]
        return {"confusion": torch.bincount(idx, minlength=c * c).reshape(c, c).double()}

    def finalize(self, sums):
        cm = sums["confusion"]
        inter = cm.diag()[1:]
        union = (cm.sum(0) + cm.sum(1) - cm.diag())[1:]
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if bool(present.any()) else math.nan
        return {"miou": miou}


@dataclass(frozen=True)
class ImageClassificationTask(Task):
    """Image-level classification; ``label_fn`` maps raw labels to (N,) class indices."""

    label_fn: object = None
    dense: bool = False

    def decode(self, raw):
        return np.asarray(self.label_fn(raw), np.int64), None  # type: ignore[misc]

    def loss(self, pred, target, mask):
        return F.cross_entropy(pred, target)

    def metric_sums(self, pred, target, mask):
        return {"correct": (pred.argmax(1) == target).sum().double(), "n": torch.tensor(float(len(target)))}

    def finalize(self, sums):
        return {"accuracy": float(sums["correct"] / sums["n"].clamp_min(1))}


@dataclass(frozen=True)
class ImageRegressionTask(Task):
    """Image-level regression with L1 loss; ``label_fn`` maps raw labels to (N, channels) floats."""

    label_fn: object = None
    dense: bool = False

    def decode(self, raw):
        y = np.asarray(self.label_fn(raw), np.float32)  # type: ignore[misc]
        return y.reshape(len(y), self.channels), None

    def loss(self, pred, target, mask):
        return (pred - target).abs().mean()


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make ``task`` available by name to configs and the CLI."""
    if not task.name.replace("_", "").isalnum():
        raise ValueError(f"task name {task.name!r} must be letters, digits and underscores")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def task_losses(heads, tasks, feats: Tensor, targets, masks) -> list[Tensor]:
    """Each task's loss of its head (``heads[t]``, a module) on the shared features."""
    return [get_task(t).loss(heads[t](feats), targets[t], masks.get(t)) for t in tasks]


for _t in (
    SegmentationTask("segment_semantic", 18),
    DepthTask("depth_zbuffer", 1, offset=(1500.0,), scale=(1000.0,), mask_by_depth=True),
    NormalTask("normal", 3, offset=(0.5,), scale=(0.5,), mask_by_depth=True),
    L1Task("edge_occlusion", 1, offset=(56.0248,), scale=(239.1265,)),
    L1Task("reshading", 1, offset=(0.4962,), scale=(0.2846,), mean_channels=True),
    L1Task("keypoints2d", 1, offset=(50.0,), scale=(100.0,)),
    L1Task("edge_texture", 1, offset=(718.0,), scale=(1070.0,)),
    L1Task("principal_curvature", 2, offset=(0.5175, 0.4987), scale=(0.1373, 0.0359), select=(0, 1)),
    L1Task("rgb", 3),
):
    register(_t)

TASK_SETS = {
    "sdnkt": ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture"),
    "all9": ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture",
             "edge_occlusion", "principal_curvature", "reshading", "rgb"),
}


def decode_input(rgb: np.ndarray) -> np.ndarray:
    """Model input from raw 8-bit rgb (N, H, W, 3) → float (N, 3, H, W) in [−1, 1]."""
    return np.ascontiguousarray((rgb.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))
