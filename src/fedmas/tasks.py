"""What is learned: one small object per task (head size, loss, label decoding, metrics).

A task turns raw labels (Taskonomy's on-disk encodings) into
a training target, scores a prediction against it, and names its head size.
Add a task by subclassing :class:`Task` (or instantiating one of the generic
classes below) and calling :func:`register`; see ``examples/own_task.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedmas.constants import l1_median, log_frequencies, weighted_median  # noqa: F401 - importable from here

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

    def fit_trivial(self, data: Iterable[tuple[Tensor, Tensor | None]]) -> Tensor | None:
        """The trivial predictor's output for one sample, fitted on ``data`` (training batches of
        ``(target, mask)``): a constant that a model must beat before its loss means anything; skill
        is 1 − loss / (this constant's loss). None: no trivial predictor, so no skill is reported.
        Override it for a task whose loss calls for another constant (it is broadcast over the
        batch and, for a dense task, over the pixels)."""
        return None

    # what a decoded target must look like; checked on samples of every client before training
    integer_target = False

    def target_shape(self, hw: tuple[int, int]) -> tuple[int, ...]:
        """The shape of one sample's decoded target for an input of spatial size ``hw``."""
        return (self.channels, *hw) if self.dense else (self.channels,)

    def check_target(self, target: Tensor, hw: tuple[int, int]) -> str | None:
        """What is wrong with one sample's decoded target (shape, dtype, values), or None."""
        want, got = self.target_shape(hw), tuple(target.shape)
        if got != want:
            hint = ""
            if sorted(got) == sorted(want):
                hint = " (axes in another order: a channel-first label? raw labels are (N, H, W) or (N, H, W, C))"
            elif self.dense and len(got) == len(want) and got[1:] != want[1:]:
                hint = " (labels at another resolution than the images?)"
            elif self.dense and len(got) == len(want):
                hint = f" ({got[0]} channels, the task declares {self.channels})"
            return f"target of shape {got}, expected {want}{hint}"
        if self.integer_target != (not target.is_floating_point()):
            kind = "integer class ids" if self.integer_target else "floating point values"
            return (f"target of dtype {target.dtype}, expected {kind} (raw labels must go through the task's "
                    f"decode: MultiTaskArrays.from_raw)")
        if target.is_floating_point() and not bool(torch.isfinite(target).all()):
            return "target holds NaN or infinite values"
        return self.check_values(target)

    def check_values(self, target: Tensor) -> str | None:
        return None


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
    # a decoded target is (raw − offset) / scale, of order 1; far larger values mean offset/scale were not
    # applied (hand-built arrays that skipped decode). None: no range check
    target_range: tuple[float, float] | None = (-1000.0, 1000.0)

    def check_values(self, target):
        if self.target_range is None:
            return None
        lo, hi = float(target.min()), float(target.max())
        if lo < self.target_range[0] or hi > self.target_range[1]:
            return (f"target values in [{lo:.4g}, {hi:.4g}], outside the decoded range {list(self.target_range)}: "
                    f"were offset/scale applied (the task's decode, MultiTaskArrays.from_raw)? "
                    f"fedmas.tasks.fit_normalisation estimates them; target_range=None switches this check off")
        return None

    def decode(self, raw):
        r = raw[self.label or self.name]
        _check_raw(self.name, r, raw)
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

    def fit_trivial(self, data):
        return l1_median(data)

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
    """Per-pixel classification into ``channels`` classes. ``ignore_index``: a label value that marks
    unlabelled pixels (no loss, not in mIoU); the default None ignores nothing, so every class id
    0..channels−1 counts (the built-in ``segment_semantic`` uses Taskonomy's 0 = unlabelled)."""

    ignore_index: int | None = None
    label: str = ""
    integer_target = True

    def target_shape(self, hw):
        return tuple(hw)

    def check_values(self, target):
        valid = target if self.ignore_index is None else target[target != self.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.channels):
            ign = "" if self.ignore_index is None else f", or {self.ignore_index} (ignore_index)"
            return (f"class ids in [{int(valid.min())}, {int(valid.max())}], expected 0..{self.channels - 1}{ign}")
        return None

    def decode(self, raw):
        r = raw[self.label or self.name]
        _check_raw(self.name, r, raw, channels=False)
        return r.astype(np.int64), None

    def _valid(self, target: Tensor) -> Tensor:
        return torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index

    def fit_trivial(self, data):
        counts = torch.zeros(self.channels, dtype=torch.float64)
        for target, _ in data:
            valid = target[self._valid(target)]
            counts += torch.bincount(valid.reshape(-1), minlength=self.channels)[:self.channels].double()
        return log_frequencies(counts)

    def loss(self, pred, target, mask):
        if self.ignore_index is None:
            return F.cross_entropy(pred, target)
        if not bool(self._valid(target).any()):
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target, ignore_index=self.ignore_index)

    def metric_sums(self, pred, target, mask):
        c = self.channels
        p = pred.argmax(1)
        valid = self._valid(target)
        idx = target[valid] * c + p[valid]
        return {"confusion": torch.bincount(idx, minlength=c * c).reshape(c, c).double()}

    def finalize(self, sums):
        cm = sums["confusion"]
        keep = torch.ones(len(cm), dtype=torch.bool)
        if self.ignore_index is not None and 0 <= self.ignore_index < len(cm):
            keep[self.ignore_index] = False
        inter = cm.diag()[keep]
        union = (cm.sum(0) + cm.sum(1) - cm.diag())[keep]
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if bool(present.any()) else math.nan
        return {"miou": miou}


@dataclass(frozen=True)
class ImageClassificationTask(Task):
    """Image-level classification; ``label_fn`` maps raw labels to (N,) class indices."""

    label_fn: object = None
    dense: bool = False
    integer_target = True

    def target_shape(self, hw):
        return ()

    def check_values(self, target):
        if int(target.min()) < 0 or int(target.max()) >= self.channels:
            return f"class id {int(target.max()) if int(target.max()) >= self.channels else int(target.min())}, " \
                   f"expected 0..{self.channels - 1}"
        return None

    def decode(self, raw):
        return np.asarray(self.label_fn(raw), np.int64), None  # type: ignore[misc]

    def fit_trivial(self, data):
        counts = torch.zeros(self.channels, dtype=torch.float64)
        for target, _ in data:
            counts += torch.bincount(target.reshape(-1), minlength=self.channels)[:self.channels].double()
        return log_frequencies(counts)

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

    def fit_trivial(self, data):
        return l1_median(data)


TASKS: dict[str, Task] = {}


def register(task: Task, replace: bool = False) -> Task:
    """Make ``task`` available by name to configs and the CLI. A name already registered for another task
    (a built-in one, say) is refused unless ``replace``: a plugin never silently changes what a name means."""
    if not task.name.replace("_", "").isalnum():
        raise ValueError(f"task name {task.name!r} must be letters, digits and underscores")
    old = TASKS.get(task.name)
    if old is not None and old != task and not replace:
        raise ValueError(f"task {task.name!r} is already registered ({type(old).__name__}); choose another name, "
                         f"or call register(task, replace=True) to replace it on purpose")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def task_losses(heads, tasks, feats: Tensor, targets, masks) -> list[Tensor]:
    """Each task's loss of its head (``heads[t]``, a module) on the shared features."""
    return [get_task(t).loss(heads[t](feats), targets[t], masks.get(t)) for t in tasks]


def _check_raw(name: str, r: np.ndarray, raw: dict[str, np.ndarray], channels: bool = True) -> None:
    """A raw dense label must be (N, H, W) or, with ``channels``, (N, H, W, C), at the images' size."""
    rgb = raw.get("rgb")
    ok = r.ndim == 3 or (channels and r.ndim == 4)
    if ok and rgb is not None and rgb.ndim == 4:
        ok = tuple(r.shape[:3]) == tuple(rgb.shape[:3])
    if not ok:
        want = "(N, H, W) or (N, H, W, C)" if channels else "(N, H, W) of class ids"
        at = f" with N, H, W = {tuple(rgb.shape[:3])} as the rgb images" if rgb is not None and rgb.ndim == 4 else ""
        hint = " (channel-first? put channels last)" if r.ndim == 4 and r.shape[1] in (1, 2, 3) else ""
        raise ValueError(f"task {name!r}: raw label of shape {tuple(r.shape)}, expected {want}{at}{hint}")


def fit_normalisation(task: L1Task, raw: dict[str, np.ndarray], mask: np.ndarray | None = None) -> L1Task:
    """``task`` with ``offset``/``scale`` set to the per-channel mean and standard deviation of its
    labels in ``raw`` (one client's raw labels, e.g.), so that its decoded targets are standardised.
    Where the task masks by depth, only valid pixels count; ``mask`` (N, H, W) restricts further."""
    import dataclasses

    plain = dataclasses.replace(task, offset=(0.0,), scale=(1.0,))
    x, m = plain.decode(raw)  # (N, C, H, W)
    keep = np.ones((x.shape[0], 1, *x.shape[2:]), bool) if m is None else m > 0
    if mask is not None:
        keep = keep & (np.asarray(mask, bool)[:, None])
    vals = x.transpose(1, 0, 2, 3)[:, keep.transpose(1, 0, 2, 3)[0]]  # (C, valid pixels)
    if vals.shape[1] == 0:
        raise ValueError(f"task {task.name!r}: no valid pixels to estimate its normalisation from")
    mean, std = vals.mean(1), vals.std(1)
    std = np.where(std > 1e-8, std, 1.0)
    return dataclasses.replace(task, offset=tuple(float(v) for v in mean), scale=tuple(float(v) for v in std))


for _t in (
    SegmentationTask("segment_semantic", 18, ignore_index=0),
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
    if rgb.dtype != np.uint8:
        lo, hi = (float(rgb.min()), float(rgb.max())) if rgb.size else (0.0, 0.0)
        hint = " — multiply by 255 and convert with .astype(np.uint8)" if 0 <= lo and hi <= 1.0 else ""
        raise ValueError(f"rgb images of dtype {rgb.dtype} with values in [{lo:.4g}, {hi:.4g}], expected uint8 "
                         f"0..255{hint}")
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        hint = " (channel-first? put channels last)" if rgb.ndim == 4 and rgb.shape[1] == 3 else ""
        raise ValueError(f"rgb images of shape {tuple(rgb.shape)}, expected (N, H, W, 3){hint}")
    return np.ascontiguousarray((rgb.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))
