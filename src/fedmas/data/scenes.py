"""The built-in ``scenes`` dataset: procedurally rendered Taskonomy-style buildings.

Each client is a *building* with its own style: room proportions, palette,
wall/floor textures, lighting, camera height and pitch, and mix of object
classes, so clients are non-IID the way Taskonomy buildings are. A building has
rooms ("points"); each room is photographed from several cameras ("views").
Train and test images of a building come from different rooms, so they never
share a view or a layout. Everything is deterministic from ``(seed, building)``.

Rendered buildings are cached on disk as ``.npz`` files of raw Taskonomy
encodings; a second run loads them instead of rendering again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedmas.data.render import CLASSES, Cameras, Primitive, Room, render_views
from fedmas.files import atomic_write, atomic_write_bytes

RENDER_VERSION = 2
LABELS = ("rgb", "depth_zbuffer", "normal", "segment_semantic", "edge_occlusion",
          "edge_texture", "keypoints2d", "reshading", "principal_curvature")
_FURNITURE = tuple(range(4, len(CLASSES)))


@dataclass(frozen=True)
class SceneSpec:
    """What to render. Validated by the config layer before it gets here."""

    buildings: int = 8
    train_images: int = 64  # per building
    test_images: int = 16  # per building
    resolution: int = 64
    views_per_room: int = 8
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": RENDER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class BuildingStyle:
    size_mean: np.ndarray
    wall_hue: np.ndarray
    floor_hue: np.ndarray
    wall_pattern: float
    wall_freq: float
    floor_pattern: float
    floor_freq: float
    n_lights: int
    light_power: float
    ambient: float
    light_color: np.ndarray
    cam_height: float
    pitch: float
    class_mix: np.ndarray
    n_objects: tuple[int, int]
    window_p: float
    fov: float


def building_style(seed: int, building: int) -> BuildingStyle:
    rng = np.random.default_rng([seed, building, 1])
    warm = rng.uniform(0.85, 1.0)
    return BuildingStyle(
        size_mean=np.array([rng.uniform(3.5, 7.5), rng.uniform(3.5, 7.5), rng.uniform(2.5, 3.4)]),
        wall_hue=rng.uniform(0.35, 0.95, 3),
        floor_hue=rng.uniform(0.15, 0.7, 3),
        wall_pattern=float(rng.choice([0.0, 0.0, rng.uniform(0.1, 0.4)])),
        wall_freq=float(rng.uniform(3, 12)),
        floor_pattern=float(rng.choice([0.0, rng.uniform(0.1, 0.5)])),
        floor_freq=float(rng.uniform(2, 8)),
        n_lights=int(rng.integers(1, 4)),
        light_power=float(rng.uniform(1.2, 2.2)),  # split over the lights
        ambient=float(rng.uniform(0.1, 0.3)),
        light_color=np.array([1.0, rng.uniform(0.9, 1.0), warm]),
        cam_height=float(rng.uniform(1.0, 1.8)),
        pitch=float(rng.uniform(-0.45, -0.05)),
        class_mix=rng.dirichlet(np.full(len(_FURNITURE), 0.6)),
        n_objects=(int(rng.integers(2, 5)), int(rng.integers(5, 10))),
        window_p=float(rng.uniform(0.0, 0.8)),
        fov=float(np.deg2rad(rng.uniform(55, 75))),
    )


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.1, 0.95, 3)


def _furniture(cls: int, rng: np.random.Generator, lz: float) -> list[tuple[str, np.ndarray, float, float]]:
    """Primitive shapes for one object: (kind, size, z offset, radius on floor)."""
    u = rng.uniform
    name = CLASSES[cls]
    boxes = {
        "table": (u(0.8, 1.6), u(0.6, 1.0), u(0.7, 0.8), 0.0),
        "chair": (0.45, 0.45, u(0.8, 1.0), 0.0),
        "sofa": (u(1.6, 2.2), u(0.8, 0.95), u(0.7, 0.9), 0.0),
        "bed": (u(1.4, 2.0), u(1.9, 2.1), u(0.45, 0.6), 0.0),
        "cabinet": (u(0.6, 1.2), u(0.45, 0.6), u(1.2, 2.0), 0.0),
        "bookshelf": (u(0.8, 1.2), u(0.3, 0.4), u(1.8, 2.2), 0.0),
        "tv": (u(0.9, 1.4), 0.1, u(0.5, 0.8), u(0.5, 0.9)),
        "rug": (u(1.2, 2.5), u(1.0, 2.0), 0.02, 0.0),
    }
    if name in boxes:
        sx, sy, sz, z0 = boxes[name]
        return [("box", np.array([sx, sy, sz]), z0, 0.5 * float(np.hypot(sx, sy)))]
    if name == "lamp":
        h = u(1.2, 1.7)
        return [("cylinder", np.array([0.04, h]), 0.0, 0.3), ("sphere", np.array([u(0.15, 0.25)]), h, 0.3)]
    if name == "plant":
        pot = u(0.3, 0.5)
        return [("cylinder", np.array([u(0.15, 0.25), pot]), 0.0, 0.4),
                ("sphere", np.array([u(0.25, 0.4)]), pot + 0.25, 0.4)]
    if name == "ball":
        r = u(0.15, 0.35)
        return [("sphere", np.array([r]), r, r)]
    if name == "pillar":
        r = u(0.15, 0.35)
        return [("cylinder", np.array([r, lz]), 0.0, r)]
    if name == "stool":
        r = u(0.15, 0.25)
        return [("cylinder", np.array([r, u(0.4, 0.7)]), 0.0, r)]
    if name == "vase":
        r = u(0.08, 0.15)
        return [("cylinder", np.array([r, u(0.3, 0.6)]), 0.0, r)]
    raise ValueError(f"no geometry for class {name!r}")


def sample_room(style: BuildingStyle, rng: np.random.Generator) -> Room:
    size = np.clip(style.size_mean * rng.uniform(0.8, 1.2, 3), [2.5, 2.5, 2.3], [10, 10, 4])
    objects: list[Primitive] = []
    placed: list[tuple[float, float, float]] = []  # footprint circles
    n = int(rng.integers(style.n_objects[0], style.n_objects[1] + 1))
    for _ in range(n):
        cls = _FURNITURE[int(rng.choice(len(_FURNITURE), p=style.class_mix))]
        parts = _furniture(cls, rng, size[2])
        radius = max(p[3] for p in parts)
        for _try in range(20):
            x = rng.uniform(radius + 0.05, size[0] - radius - 0.05)
            y = rng.uniform(radius + 0.05, size[1] - radius - 0.05)
            if CLASSES[cls] == "rug" or all(np.hypot(x - a, y - b) > radius + r for a, b, r in placed):
                break
        else:
            continue
        if CLASSES[cls] != "rug":
            placed.append((x, y, radius))
        color, pattern, freq = _color(rng), float(rng.choice([0.0, rng.uniform(0.1, 0.4)])), float(rng.uniform(4, 20))
        angle = float(rng.uniform(0, np.pi))
        for kind, psize, z, _ in parts:
            center = np.array([x, y, z]) if kind != "box" else np.array([x, y, 0.0])
            objects.append(Primitive(kind, cls, center, psize, angle, z if kind == "box" else 0.0,
                                     color, pattern, freq))
    lights = np.stack([rng.uniform(0.2, 0.8, style.n_lights) * size[0],
                       rng.uniform(0.2, 0.8, style.n_lights) * size[1],
                       np.full(style.n_lights, size[2] - 0.2)], 1)
    window = None
    if rng.random() < style.window_p:
        wall = int(rng.integers(0, 4))
        span = size[1] if wall < 2 else size[0]
        w = rng.uniform(0.8, min(2.5, span - 0.6))
        u0 = rng.uniform(0.3, span - w - 0.3)
        window = (wall, float(u0), float(u0 + w), float(rng.uniform(0.8, 1.1)), float(rng.uniform(1.8, 2.2)))
    jitter = lambda c: np.clip(c * rng.uniform(0.9, 1.1, 3), 0, 1)  # noqa: E731
    return Room(size=size, wall_color=jitter(style.wall_hue), floor_color=jitter(style.floor_hue),
                ceiling_color=np.full(3, 0.92), wall_pattern=style.wall_pattern, wall_freq=style.wall_freq,
                floor_pattern=style.floor_pattern, floor_freq=style.floor_freq, lights=lights,
                light_power=np.full(style.n_lights, style.light_power / style.n_lights), light_color=style.light_color,
                ambient=style.ambient, objects=objects, window=window)


def sample_cameras(style: BuildingStyle, room: Room, views: int, rng: np.random.Generator) -> Cameras:
    pos = np.zeros((views, 3))
    for v in range(views):
        for _try in range(50):
            p = np.array([rng.uniform(0.4, room.size[0] - 0.4), rng.uniform(0.4, room.size[1] - 0.4),
                          float(np.clip(style.cam_height + rng.normal(0, 0.1), 0.6, room.size[2] - 0.3))])
            if all(not _inside(ob, p, 0.3) for ob in room.objects):
                break
        pos[v] = p
    # Look roughly across the room, as a photographer would, not into the nearest wall.
    to_centre = room.size[:2] / 2 - pos[:, :2]
    yaw = np.arctan2(to_centre[:, 1], to_centre[:, 0]) + rng.normal(0, 0.7, views)
    pitch = np.clip(style.pitch + rng.normal(0, 0.1, views), -0.8, 0.3)
    return Cameras(pos=pos, yaw=yaw, pitch=pitch, fov=style.fov)


def _inside(ob: Primitive, p: np.ndarray, margin: float) -> bool:
    if ob.kind == "sphere":
        return bool(np.linalg.norm(p - ob.center) < ob.size[0] + margin)
    if ob.kind == "cylinder":
        near = np.hypot(*(p[:2] - ob.center[:2])) < ob.size[0] + margin
        return bool(near and p[2] < ob.center[2] + ob.size[1] + margin)
    top = ob.z0 + ob.size[2]
    return bool(np.hypot(*(p[:2] - ob.center[:2])) < 0.5 * np.hypot(ob.size[0], ob.size[1]) + margin
                and p[2] < top + margin)


def render_building(spec: SceneSpec, building: int, split: str) -> dict[str, np.ndarray]:
    """Render the ``split`` ('train' or 'test') images of one building."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    count = spec.train_images if split == "train" else spec.test_images
    style = building_style(spec.seed, building)
    # Disjoint streams: train rooms and test rooms never coincide.
    rng = np.random.default_rng([spec.seed, building, 2 if split == "train" else 3])
    out: dict[str, list[np.ndarray]] = {k: [] for k in LABELS}
    done = 0
    while done < count:
        views = min(spec.views_per_room, count - done)
        room = sample_room(style, rng)
        cams = sample_cameras(style, room, views, rng)
        for k, v in render_views(room, cams, spec.resolution).items():
            out[k].append(v)
        done += views
    return {k: np.concatenate(v) for k, v in out.items()}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDMAS_CACHE", Path.home() / ".cache" / "fedmas"))


def load_or_render(spec: SceneSpec, cache_dir: Path | None = None,
                   only: list[int] | None = None) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Raw labels for every building and split, rendering only what is not cached.

    Returns ``{building: {"train": {label: array}, "test": {...}}}``.
    """
    root = (cache_dir or default_cache_dir()) / "scenes" / spec.key()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "spec.json").exists():
        atomic_write_bytes(root / "spec.json", json.dumps(asdict(spec), indent=1).encode())
    result: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for b in (range(spec.buildings) if only is None else only):
        result[b] = {}
        for split in ("train", "test"):
            path = root / f"building_{b:03d}_{split}.npz"
            arrays = _read_cache(path)
            if arrays is None:
                arrays = render_building(spec, b, split)
                # another process may render the same building into the same cache at the same time (two
                # runs of a comparison, two nodes on one machine): each writes its own temporary file
                atomic_write(path, lambda f, a=arrays: np.savez(f, **a))
            result[b][split] = arrays
    return result


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache entry is rendered again
    return arrays if set(arrays) == set(LABELS) else None
