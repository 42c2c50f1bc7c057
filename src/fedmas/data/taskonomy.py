"""Taskonomy's on-disk layout: a writer (for ``scenes``) and a reader (for real data).

Layout: ``<root>/<label>/<building>/point_<p>_view_<v>_domain_<label>.png``
with Taskonomy's on-disk encodings (decoded by fedmas.tasks). The reader selects buildings with a
list file (one name per line), holds out whole points per building as test
data, and refuses a missing, truncated or corrupt file with an error naming it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from fedmas.data.federated import FederatedData
from fedmas.files import read_small_text
from fedmas.tasks import decode_input, get_task


class DataError(ValueError):
    """Bad data on disk; the message names the file."""


_NAME = re.compile(r"point_(\d+)_view_(\d+)_domain_([a-z0-9_]+)\.png$")


def png_path(root: Path, label: str, building: str, point: int, view: int) -> Path:
    return root / label / building / f"point_{point}_view_{view}_domain_{label}.png"


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise ValueError("16-bit labels must be single-channel")
    img = Image.fromarray(arr if arr.dtype == np.uint16 else arr.astype(np.uint8))
    img.save(path, format="PNG")


MAX_PIXELS = 8192 * 8192


def read_png(path: Path) -> np.ndarray:
    """Decode one label PNG, raising :class:`DataError` naming ``path`` if it is unusable."""
    if not path.exists():
        raise DataError(f"missing file: {path}")
    if not path.is_file():  # a FIFO would hang the reader, a device never end
        raise DataError(f"not a regular file: {path}")
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise DataError(f"image too large: {path} is {img.size[0]}×{img.size[1]} pixels "
                                f"(at most {MAX_PIXELS} accepted)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I"):
                return np.asarray(img, dtype=np.int64).astype(np.uint16)
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            arr = np.asarray(img)
            return arr[..., :3] if arr.ndim == 3 else arr
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode safely: {path} ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as e:
        raise DataError(f"corrupt or truncated image: {path} ({e})") from None


def export(raw_by_building: dict[str, dict[str, np.ndarray]], root: Path) -> int:
    """Write raw labels as Taskonomy PNGs; image i of a building becomes point i, view 0."""
    count = 0
    for building, raw in raw_by_building.items():
        for label, arr in raw.items():
            for i in range(len(arr)):
                write_png(png_path(root, label, building, i, 0), arr[i])
        count += len(raw["rgb"])
    return count


def list_points(root: Path, building: str) -> list[tuple[int, int]]:
    folder = root / "rgb" / building
    if not folder.is_dir():
        raise DataError(f"missing folder: {folder} (expected <root>/rgb/<building>/)")
    pts = []
    for f in sorted(folder.iterdir()):
        m = _NAME.search(f.name)
        if m:
            pts.append((int(m.group(1)), int(m.group(2))))
    if not pts:
        raise DataError(f"no images named point_<p>_view_<v>_domain_rgb.png in {folder}")
    return sorted(pts)


def _check_rgb_for_labels(root: Path, building: str, pts: list[tuple[int, int]], tasks: Sequence[str]) -> None:
    """A label image whose rgb image is missing stops the run naming that file (the point is not dropped)."""
    have = set(pts)
    for label in _labels_for(tasks):
        folder = root / label / building
        if label == "rgb" or not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            m = _NAME.search(f.name)
            if m and (int(m.group(1)), int(m.group(2))) not in have:
                missing = png_path(root, "rgb", building, int(m.group(1)), int(m.group(2)))
                raise DataError(f"missing file: {missing} (its {label} label {f} exists)")


MAX_BUILDINGS_FILE_BYTES = 4 << 20


def read_buildings_file(path: Path) -> list[str]:
    text = read_small_text(path, "buildings list (data.buildings_file)", MAX_BUILDINGS_FILE_BYTES, DataError)
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise DataError(f"buildings list {path} names no building")
    return names


def _labels_for(tasks: Sequence[str]) -> list[str]:
    labels = {"rgb"}
    for t in tasks:
        task = get_task(t)
        labels.add(getattr(task, "label", "") or t)
        if getattr(task, "mask_by_depth", False):
            labels.add("depth_zbuffer")
    return sorted(labels)


class TaskonomyImages(Dataset):
    """The images of one building, read lazily from disk and decoded per task."""

    def __init__(self, root: Path, building: str, points: list[tuple[int, int]], tasks: Sequence[str],
                 size: dict[str, tuple[int, ...]] | None = None):
        self.root, self.building, self.points, self.tasks = root, building, points, tuple(tasks)
        self.labels = _labels_for(tasks)
        self.size = {} if size is None else size  # "hw": (H, W) of every image, from the first one read

    def __len__(self) -> int:
        return len(self.points)

    def raw(self, i: int) -> dict[str, np.ndarray]:
        p, v = self.points[i]
        out = {}
        for lb in self.labels:
            path = png_path(self.root, lb, self.building, p, v)
            arr = read_png(path)
            hw = self.size.setdefault("hw", arr.shape[:2])
            if arr.shape[:2] != hw:
                raise DataError(f"{path} is {arr.shape[1]}×{arr.shape[0]} pixels; the other images are "
                                f"{hw[1]}×{hw[0]}")
            out[lb] = arr[None]
        return out

    def __getitem__(self, i: int):
        raw = self.raw(i)
        x = torch.from_numpy(decode_input(raw["rgb"])[0])
        targets, masks = {}, {}
        p, v = self.points[i]
        for t in self.tasks:
            task = get_task(t)
            target, mask = task.decode(raw)
            targets[t] = torch.from_numpy(target[0])
            why = task.check_target(targets[t], tuple(x.shape[-2:]))  # every sample, not only the first checked
            if why:
                label = getattr(task, "label", "") or t
                raise DataError(f"{png_path(self.root, label, self.building, p, v)}: task {t!r}: {why}")
            if mask is not None:
                masks[t] = torch.from_numpy(mask[0])
        return x, targets, masks


def read_taskonomy(root: Path, tasks: Sequence[str], buildings: Sequence[str] | None = None,
                   test_fraction: float = 0.2) -> FederatedData:
    """Clients = buildings; the last ``test_fraction`` of each building's points are held out."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"missing data directory: {root}")
    if buildings is None:
        rgb = root / "rgb"
        if not rgb.is_dir():
            raise DataError(f"missing folder: {rgb} (expected <root>/rgb/<building>/)")
        buildings = sorted(p.name for p in rgb.iterdir() if p.is_dir())
    clients: dict[str, Dataset] = {}
    tests: list[Dataset] = []
    size: dict[str, tuple[int, ...]] = {}  # every image must have the size of the first one read
    for b in buildings:
        pts = list_points(root, b)
        _check_rgb_for_labels(root, b, pts, tasks)
        point_ids = sorted({p for p, _ in pts})
        n_test = max(1, int(round(len(point_ids) * test_fraction))) if len(point_ids) > 1 else 0
        test_ids = set(point_ids[len(point_ids) - n_test:])
        clients[b] = TaskonomyImages(root, b, [pv for pv in pts if pv[0] not in test_ids], tasks, size)
        tests.append(TaskonomyImages(root, b, [pv for pv in pts if pv[0] in test_ids], tasks, size))
    return FederatedData(clients=clients, test=torch.utils.data.ConcatDataset(tests), tasks=tuple(tasks))
