"""Vectorised numpy ray caster for the built-in ``scenes`` dataset.

A *room* is an axis-aligned box (floor z=0, ceiling z=Lz) holding furniture-like
primitives (boxes rotated about the vertical axis, spheres, vertical cylinders).
``render_views`` casts one primary ray per pixel for several cameras in the same
room at once (so the numpy overhead is shared) and returns every label in
Taskonomy's raw on-disk encodings, all derived from the
same hit geometry:

===================  =========  ==================================================
label                dtype      meaning
===================  =========  ==================================================
rgb                  uint8 ×3   albedo × shading, sky through windows
depth_zbuffer        uint16     z-depth in 1/512 m; 65535 = no surface (window)
normal               uint8 ×3   camera-frame normal (x right, y up, z to camera),
                                (n + 1) / 2 · 255
segment_semantic     uint8      class index, 0 = unlabelled (windows)
edge_occlusion       uint16     depth discontinuity strength
edge_texture         uint16     gradient magnitude of the grey rgb image at the label
                                scale (Gaussian derivative, σ = resolution / 64 px)
keypoints2d          uint16     Harris corner response of the grey rgb image at the
                                label scale (window σ = 2 · resolution / 64 px)
reshading            uint8      Lambert shading without albedo
principal_curvature  uint8 ×3   0.5 + k/20 for (k1, k2); third channel 0
===================  =========  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASSES: tuple[str, ...] = (
    "unlabelled", "wall", "floor", "ceiling", "table", "chair", "sofa", "bed", "cabinet",
    "bookshelf", "tv", "lamp", "plant", "ball", "pillar", "stool", "vase", "rug",
)
EPS = 1e-4
DEPTH_UNITS_PER_M = 512.0
INVALID_DEPTH = 65535
# Encoding gains of the 2D labels, set so that Taskonomy's normalisation of each label ((x − 718) / 1070 for
# edge_texture, (x − 50) / 100 for keypoints2d) gives targets of about unit standard deviation, as it does
# for the other labels; measured on the default 8 buildings at 64×64 (raw std 75 and 8 at 1/14 and 1/12.5
# of these gains).
EDGE_TEXTURE_GAIN = 57000.0
KEYPOINTS_GAIN = 500000.0


@dataclass
class Primitive:
    kind: str  # "box" | "sphere" | "cylinder"
    cls: int
    center: np.ndarray  # box: centre of footprint at z0; sphere: centre; cylinder: axis foot
    size: np.ndarray  # box: (sx, sy, sz); sphere: (r,); cylinder: (r, height)
    angle: float = 0.0  # box rotation about z
    z0: float = 0.0  # box bottom height
    color: np.ndarray = field(default_factory=lambda: np.ones(3))
    pattern: float = 0.0  # texture amplitude
    freq: float = 4.0


@dataclass
class Room:
    size: np.ndarray  # (Lx, Ly, Lz)
    wall_color: np.ndarray
    floor_color: np.ndarray
    ceiling_color: np.ndarray
    wall_pattern: float
    wall_freq: float
    floor_pattern: float
    floor_freq: float
    lights: np.ndarray  # (L, 3) positions
    light_power: np.ndarray  # (L,)
    light_color: np.ndarray  # (3,)
    ambient: float
    objects: list[Primitive]
    window: tuple[int, float, float, float, float] | None  # (wall 0..3, u0, u1, z0, z1)
    sky: np.ndarray = field(default_factory=lambda: np.array([0.75, 0.85, 1.0]))


@dataclass
class Cameras:
    pos: np.ndarray  # (V, 3)
    yaw: np.ndarray  # (V,)
    pitch: np.ndarray  # (V,)
    fov: float  # horizontal field of view in radians


def camera_basis(cams: Cameras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cy, sy, cp, sp = np.cos(cams.yaw), np.sin(cams.yaw), np.cos(cams.pitch), np.sin(cams.pitch)
    fwd = np.stack([cy * cp, sy * cp, sp], -1)
    right = np.stack([sy, -cy, np.zeros_like(cy)], -1)
    up = np.cross(right, fwd)
    return fwd, right, up


def _rays(cams: Cameras, res: int) -> tuple[np.ndarray, np.ndarray]:
    fwd, right, up = camera_basis(cams)
    t = np.tan(cams.fov / 2)
    g = ((np.arange(res) + 0.5) / res * 2 - 1) * t
    u = g[None, None, :, None]  # columns → right
    v = -g[None, :, None, None]  # rows → down
    d = fwd[:, None, None, :] + u * right[:, None, None, :] + v * up[:, None, None, :]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(cams.pos[:, None, None, :], d.shape)
    return o.reshape(-1, 3), d.reshape(-1, 3)


def _safe_inv(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.where(np.abs(x) < 1e-12, 1e-12, x)


class _Hits:
    """Nearest-hit buffers, updated primitive by primitive."""

    def __init__(self, n: int):
        self.t = np.full(n, np.inf)
        self.normal = np.zeros((n, 3))
        self.cls = np.zeros(n, np.int64)
        self.sid = np.zeros(n, np.int64)  # surface id: 0 wall, 1 floor, 2 ceiling, 3.. objects
        self.k = np.zeros((n, 2))
        self.window = np.zeros(n, bool)

    def closer(self, hit: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Indices of rays where this primitive is hit in front of the current nearest."""
        return np.flatnonzero(hit & (t < self.t))

    def take(self, idx: np.ndarray, t: np.ndarray, normal: np.ndarray, cls: int, sid: int,
             k1: float = 0.0, k2: float = 0.0) -> None:
        self.t[idx] = t
        self.normal[idx] = normal
        self.cls[idx] = cls
        self.sid[idx] = sid
        self.k[idx, 0] = k1
        self.k[idx, 1] = k2
        self.window[idx] = False


def _hit_room(room: Room, o: np.ndarray, d: np.ndarray, h: _Hits) -> None:
    inv = _safe_inv(d)
    bound = np.where(d > 0, room.size, 0.0)
    ts = (bound - o) * inv
    axis = np.argmin(ts, axis=1)
    rows = np.arange(len(d))
    t = ts[rows, axis]
    sign = np.sign(d[rows, axis])
    normal = np.zeros_like(d)
    normal[rows, axis] = -sign
    h.t, h.normal = t, normal
    h.sid = np.where(axis == 2, np.where(sign < 0, 1, 2), 0)
    h.cls = np.where(axis == 2, np.where(sign < 0, 2, 3), 1)
    if room.window is not None:
        wall, u0, u1, z0, z1 = room.window
        p = o + t[:, None] * d
        ax = 0 if wall < 2 else 1
        side = 0.0 if wall % 2 == 0 else room.size[ax]
        on_wall = (axis == ax) & (np.abs(p[:, ax] - side) < 1e-3)
        u = p[:, 1 - ax]
        inside = on_wall & (u > u0) & (u < u1) & (p[:, 2] > z0) & (p[:, 2] < z1)
        h.window = inside
        h.cls = np.where(inside, 0, h.cls)


def _hit_box(ob: Primitive, o, d, h: _Hits, sid: int) -> None:
    c, s = np.cos(ob.angle), np.sin(ob.angle)
    rx, ry, rz = o[:, 0] - ob.center[0], o[:, 1] - ob.center[1], o[:, 2] - ob.z0
    lo = (c * rx + s * ry, -s * rx + c * ry, rz)
    ld = (c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2])
    bounds = ((-ob.size[0] / 2, ob.size[0] / 2), (-ob.size[1] / 2, ob.size[1] / 2), (0.0, ob.size[2]))
    tmins, tmax = [], None
    for a in range(3):
        inv = _safe_inv(ld[a])
        t1, t2 = (bounds[a][0] - lo[a]) * inv, (bounds[a][1] - lo[a]) * inv
        tmins.append(np.minimum(t1, t2))
        hi = np.maximum(t1, t2)
        tmax = hi if tmax is None else np.minimum(tmax, hi)
    tmin = np.maximum(np.maximum(tmins[0], tmins[1]), tmins[2])
    idx = h.closer((tmin > EPS) & (tmin <= tmax), tmin)
    if len(idx) == 0:
        return
    axis = np.argmax(np.stack([tm[idx] for tm in tmins], 1), axis=1)
    ldi = np.stack([x[idx] for x in ld], 1)
    ln = np.zeros((len(idx), 3))
    ln[np.arange(len(idx)), axis] = -np.sign(ldi[np.arange(len(idx)), axis])
    n = np.stack([c * ln[:, 0] - s * ln[:, 1], s * ln[:, 0] + c * ln[:, 1], ln[:, 2]], 1)
    h.take(idx, tmin[idx], n, ob.cls, sid)


def _hit_sphere(ob: Primitive, o, d, h: _Hits, sid: int) -> None:
    r = ob.size[0]
    oc = o - ob.center
    b = np.einsum("ij,ij->i", d, oc)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    idx = h.closer(hit & (t > EPS), t)
    if len(idx) == 0:
        return
    n = (o[idx] + t[idx, None] * d[idx] - ob.center) / r
    h.take(idx, t[idx], n, ob.cls, sid, 1.0 / r, 1.0 / r)


def _hit_cylinder(ob: Primitive, o, d, h: _Hits, sid: int) -> None:
    r, height = ob.size[0], ob.size[1]
    ox, oy = o[:, 0] - ob.center[0], o[:, 1] - ob.center[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = d[:, 0] * ox + d[:, 1] * oy
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    ok = (disc > 0) & (a > 1e-12)
    t = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(a > 1e-12, a, 1.0)
    z = o[:, 2] + t * d[:, 2] - ob.center[2]
    idx = h.closer(ok & (t > EPS) & (z >= 0) & (z <= height), t)
    if len(idx):
        ti = t[idx]
        n = np.stack([ox[idx] + ti * d[idx, 0], oy[idx] + ti * d[idx, 1], np.zeros_like(ti)], 1) / r
        h.take(idx, ti, n, ob.cls, sid, 1.0 / r, 0.0)
    top = ob.center[2] + height
    tc = (top - o[:, 2]) * _safe_inv(d[:, 2])
    px, py = ox + tc * d[:, 0], oy + tc * d[:, 1]
    idx = h.closer((tc > EPS) & (px * px + py * py <= r * r) & (o[:, 2] > top), tc)
    if len(idx):
        h.take(idx, tc[idx], np.array([0.0, 0.0, 1.0]), ob.cls, sid)


_HIT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}


def _filter3(img: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Separable 3×3 filter over the last two axes with edge padding."""
    p = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = ky[0] * p[..., :-2, :] + ky[1] * p[..., 1:-1, :] + ky[2] * p[..., 2:, :]
    return kx[0] * rows[..., :-2] + kx[1] * rows[..., 1:-1] + kx[2] * rows[..., 2:]


_SMOOTH = np.array([1.0, 2.0, 1.0])
_DIFF = np.array([-1.0, 0.0, 1.0])
_BOX = np.array([1.0, 1.0, 1.0]) / 3


def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _filter3(gray, _DIFF, _SMOOTH) / 8, _filter3(gray, _SMOOTH, _DIFF) / 8


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels over the last two axes (edge padding)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(r, r), (r, r)], mode="edge")
    n, m = img.shape[-2], img.shape[-1]
    rows = sum(k[i] * p[..., i:i + n, :] for i in range(2 * r + 1))
    return sum(k[i] * rows[..., i:i + m] for i in range(2 * r + 1))


def label_scale(res: int) -> float:
    """The 2D labels' scale in pixels: one pixel at 64×64, growing with the resolution, so that a label
    describes the same structure of the scene whatever the size it is rendered at."""
    return res / 64.0


def texture_edges_and_corners(gray: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude (Gaussian derivative at :func:`label_scale`) and the Harris corner response
    (structure tensor over a Gaussian window of twice that scale) of grey images (N, H, W)."""
    s = label_scale(res)
    gx, gy = sobel(gaussian_blur(gray, s))
    sxx, syy, sxy = (gaussian_blur(a, 2 * s) for a in (gx * gx, gy * gy, gx * gy))
    harris = np.clip(sxx * syy - sxy * sxy - 0.05 * (sxx + syy) ** 2, 0, None)
    return np.hypot(gx, gy), harris


def occlusion_edges(depth_m: np.ndarray, surface: np.ndarray, abs_thr: float = 0.05,
                    rel_thr: float = 0.04) -> np.ndarray:
    """Depth jump (metres) to the farthest-apart 4-neighbour on a *different surface*,
    where the jump exceeds ``max(abs_thr, rel_thr·depth)``; zero elsewhere.

    Creases (a wall meeting the floor) are continuous in depth and give no edge; a
    grazing plane has large depth steps between pixels but no change of surface.
    """
    pd = np.pad(depth_m, [(0, 0), (1, 1), (1, 1)], mode="edge")
    ps = np.pad(surface, [(0, 0), (1, 1), (1, 1)], mode="edge")
    c, cs = pd[:, 1:-1, 1:-1], ps[:, 1:-1, 1:-1]
    out = np.zeros_like(depth_m)
    for sl in ((slice(None), slice(0, -2), slice(1, -1)), (slice(None), slice(2, None), slice(1, -1)),
               (slice(None), slice(1, -1), slice(0, -2)), (slice(None), slice(1, -1), slice(2, None))):
        jump = np.abs(c - pd[sl])
        edge = (ps[sl] != cs) & (jump > np.maximum(abs_thr, rel_thr * np.minimum(c, pd[sl])))
        out = np.maximum(out, np.where(edge, jump, 0.0))
    return out


def _albedo(room: Room, h: _Hits, p: np.ndarray) -> np.ndarray:
    objs = room.objects
    colors = np.stack([room.wall_color, room.floor_color, room.ceiling_color] + [ob.color for ob in objs])
    amp = np.array([room.wall_pattern, room.floor_pattern, 0.0] + [ob.pattern for ob in objs])
    freq = np.array([room.wall_freq, room.floor_freq, 1.0] + [ob.freq for ob in objs])
    an = np.abs(h.normal)
    u = np.where(an[:, 2] > 0.5, p[:, 0], np.where(an[:, 0] > 0.5, p[:, 1], p[:, 0]))
    v = np.where(an[:, 2] > 0.5, p[:, 1], p[:, 2])
    f = freq[h.sid]
    floorish = h.sid == 1
    pat = np.where(floorish, np.sign(np.sin(f * u) * np.sin(f * v)), np.sign(np.sin(f * u)))
    return colors[h.sid] * (1.0 + amp[h.sid] * 0.5 * pat)[:, None]


def render_views(room: Room, cams: Cameras, res: int) -> dict[str, np.ndarray]:
    """Render every label for each camera in ``cams``; arrays have a leading view axis."""
    nv = len(cams.pos)
    o, d = _rays(cams, res)
    h = _Hits(len(o))
    _hit_room(room, o, d, h)
    for i, ob in enumerate(room.objects):
        _HIT[ob.kind](ob, o, d, h, 3 + i)
    p = o + h.t[:, None] * d
    shade = np.full(len(o), room.ambient)
    for lp, pw in zip(room.lights, room.light_power):
        lv = lp - p
        dist2 = np.einsum("ij,ij->i", lv, lv)
        cos = np.einsum("ij,ij->i", h.normal, lv) / np.sqrt(dist2)
        shade += pw * np.clip(cos, 0, None) / (1.0 + 0.15 * dist2)
    shade = np.where(h.window, 1.0, shade)
    rgb = _albedo(room, h, p) * shade[:, None] * room.light_color
    rgb = np.where(h.window[:, None], room.sky, rgb)
    rgb = np.clip(rgb, 0, 1) ** (1 / 2.2)

    fwd, right, up = camera_basis(cams)
    rep = lambda a: np.repeat(a, res * res, axis=0)  # noqa: E731
    zdist = h.t * np.einsum("ij,ij->i", d, rep(fwd))
    nc = np.stack([np.einsum("ij,ij->i", h.normal, rep(right)),
                   np.einsum("ij,ij->i", h.normal, rep(up)),
                   -np.einsum("ij,ij->i", h.normal, rep(fwd))], 1)
    nc = np.where(h.window[:, None], 0.0, nc)

    shp = (nv, res, res)
    rgb = rgb.reshape(*shp, 3)
    depth_m = zdist.reshape(shp)
    window = h.window.reshape(shp)
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    tex, harris = texture_edges_and_corners(gray, res)
    # The room is a convex box seen from inside: its walls, floor and ceiling never occlude each other.
    surface = np.where(h.sid < 3, 0, h.sid).reshape(shp)
    occ = occlusion_edges(np.where(window, 20.0, depth_m), np.where(window, -1, surface))
    depth_raw = np.where(window, INVALID_DEPTH, np.clip(depth_m * DEPTH_UNITS_PER_M, 0, 65534))
    curv = np.clip(0.5 + h.k / 20.0, 0, 1).reshape(*shp, 2)
    return {
        "rgb": _u8(rgb),
        "depth_zbuffer": depth_raw.astype(np.uint16),
        "normal": _u8((nc.reshape(*shp, 3) + 1) / 2),
        "segment_semantic": h.cls.reshape(shp).astype(np.uint8),
        "edge_occlusion": np.clip(occ * 1000, 0, 65535).astype(np.uint16),
        "edge_texture": np.clip(tex * EDGE_TEXTURE_GAIN, 0, 65535).astype(np.uint16),
        "keypoints2d": np.clip(np.sqrt(harris) * KEYPOINTS_GAIN, 0, 65535).astype(np.uint16),
        "reshading": _u8(np.clip(shade, 0, 1).reshape(shp)),
        "principal_curvature": _u8(np.concatenate([curv, np.zeros((*shp, 1))], -1)),
    }


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
