"""The built-in scenes dataset: determinism, caching, disjoint splits, label consistency."""

from __future__ import annotations

import numpy as np
import pytest

from fedmas.data import scenes
from fedmas.data.render import CLASSES, Cameras, Primitive, Room, camera_basis, render_views
from fedmas.data.scenes import LABELS, SceneSpec, load_or_render, render_building


def test_deterministic_and_complete():
    spec = SceneSpec(buildings=2, train_images=6, test_images=3, resolution=32, views_per_room=3)
    a = render_building(spec, 1, "train")
    b = render_building(spec, 1, "train")
    assert set(a) == set(LABELS)
    for k in LABELS:
        assert a[k].shape[0] == 6
        np.testing.assert_array_equal(a[k], b[k])
    assert a["rgb"].shape == (6, 32, 32, 3) and a["rgb"].dtype == np.uint8
    assert a["depth_zbuffer"].dtype == np.uint16


@pytest.mark.parametrize("res", [128, 256])
def test_larger_resolutions(res):
    out = render_building(SceneSpec(train_images=2, resolution=res, views_per_room=2), 0, "train")
    assert out["normal"].shape == (2, res, res, 3)


def test_buildings_differ_and_splits_are_disjoint():
    spec = SceneSpec(buildings=2, train_images=16, test_images=8, resolution=32)
    b0 = render_building(spec, 0, "train")
    b1 = render_building(spec, 1, "train")
    assert abs(b0["rgb"].mean(axis=(0, 1, 2)) - b1["rgb"].mean(axis=(0, 1, 2))).max() > 3  # different palettes
    test = render_building(spec, 0, "test")
    train_set = {img.tobytes() for img in b0["rgb"]}
    assert not any(img.tobytes() in train_set for img in test["rgb"])


def test_cache_is_reused(monkeypatch, tmp_path):
    spec = SceneSpec(buildings=1, train_images=2, test_images=1, resolution=32)
    first = load_or_render(spec, tmp_path)
    monkeypatch.setattr(scenes, "render_building", lambda *a, **k: pytest.fail("rendered again"))
    second = load_or_render(spec, tmp_path)
    np.testing.assert_array_equal(first[0]["train"]["rgb"], second[0]["train"]["rgb"])


def test_two_writers_of_one_cache_both_finish(monkeypatch, tmp_path):
    """Two processes rendering the same data into one cache (two runs of ``compare --jobs 2`` on a fresh
    machine): the second writes its file while the first is between writing and renaming its own."""
    spec = SceneSpec(buildings=1, train_images=2, test_images=1, resolution=32)
    real_savez = np.savez
    inner: dict[str, object] = {}

    def savez_then_the_other_writer(f, **arrays):
        real_savez(f, **arrays)
        if not inner:
            inner["result"] = None  # the other writer runs once, while this one has not renamed its file
            inner["result"] = load_or_render(spec, tmp_path)

    monkeypatch.setattr(scenes.np, "savez", savez_then_the_other_writer)
    outer = load_or_render(spec, tmp_path)
    monkeypatch.undo()
    assert inner["result"] is not None
    again = load_or_render(spec, tmp_path)
    for split in ("train", "test"):
        for k in LABELS:
            np.testing.assert_array_equal(outer[0][split][k], again[0][split][k])
    assert sorted(p.name for p in (tmp_path / "scenes" / spec.key()).iterdir()) == [
        "building_000_test.npz", "building_000_train.npz", "spec.json"]


def _room_with_box() -> tuple[Room, Cameras]:
    box = Primitive("box", CLASSES.index("cabinet"), np.array([3.0, 2.0, 0.0]), np.array([1.0, 0.6, 1.5]),
                    angle=0.4, color=np.array([0.6, 0.3, 0.2]))
    ball = Primitive("sphere", CLASSES.index("ball"), np.array([1.8, 2.8, 0.3]), np.array([0.3]))
    room = Room(size=np.array([5.0, 4.5, 2.8]), wall_color=np.full(3, 0.8), floor_color=np.full(3, 0.4),
                ceiling_color=np.full(3, 0.9), wall_pattern=0.2, wall_freq=6, floor_pattern=0.3, floor_freq=4,
                lights=np.array([[2.5, 2.2, 2.6]]), light_power=np.array([1.5]), light_color=np.ones(3),
                ambient=0.2, objects=[box, ball], window=None)
    cams = Cameras(pos=np.array([[0.6, 0.7, 1.4], [4.3, 3.8, 1.2]]), yaw=np.array([0.5, -2.4]),
                   pitch=np.array([-0.3, -0.2]), fov=np.deg2rad(65))
    return room, cams


def test_normals_from_depth_agree_with_normal_label_on_planes():
    room, cams = _room_with_box()
    res = 96
    out = render_views(room, cams, res)
    t = np.tan(cams.fov / 2)
    g = ((np.arange(res) + 0.5) / res * 2 - 1) * t
    for v in range(len(cams.pos)):
        z = out["depth_zbuffer"][v].astype(float) / 512
        # back-project to camera coordinates (x right, y up, z toward the camera)
        pts = np.stack([g[None, :] * z, -g[:, None] * z, -z], -1)
        du = pts[1:-1, 2:] - pts[1:-1, :-2]
        dv = pts[:-2, 1:-1] - pts[2:, 1:-1]
        n = np.cross(du, dv)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        label = out["normal"][v, 1:-1, 1:-1].astype(float) / 255 * 2 - 1
        seg = out["segment_semantic"][v]
        # interior of planar surfaces: 3×3 neighbourhood with one class and no occlusion edge
        same = np.ones_like(seg[1:-1, 1:-1], bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                same &= seg[1 + dy:res - 1 + dy, 1 + dx:res - 1 + dx] == seg[1:-1, 1:-1]
        planar = same & np.isin(seg[1:-1, 1:-1], [1, 2, 3, CLASSES.index("cabinet")])
        planar &= out["edge_occlusion"][v, 1:-1, 1:-1] == 0
        cos = (n * label).sum(-1)[planar]
        assert planar.sum() > 1000
        assert np.median(cos) > 0.995
        assert np.mean(cos > 0.95) > 0.9


def test_object_wall_boundaries_are_occlusion_edges():
    room, cams = _room_with_box()
    out = render_views(room, cams, 96)
    seg, occ = out["segment_semantic"], out["edge_occlusion"] > 0
    wall, objects = 1, (seg >= 4)
    horiz = (objects[:, :, :-1] & (seg[:, :, 1:] == wall)) | ((seg[:, :, :-1] == wall) & objects[:, :, 1:])
    hits = occ[:, :, :-1] | occ[:, :, 1:]
    assert horiz.sum() > 20
    assert hits[horiz].mean() > 0.95
    # and creases between walls and floor are not occlusion edges
    crease = (seg[:, :-1, :] == wall) & (seg[:, 1:, :] == 2)
    assert crease.sum() > 20
    assert (occ[:, :-1, :] | occ[:, 1:, :])[crease].mean() < 0.2


def test_depth_holes_are_invalid_and_unlabelled():
    room, cams = _room_with_box()
    room.window = (0, 1.0, 3.0, 0.9, 2.1)
    cams = Cameras(pos=np.array([[4.0, 2.2, 1.5]]), yaw=np.array([np.pi]), pitch=np.array([0.0]), fov=1.2)
    out = render_views(room, cams, 64)
    hole = out["depth_zbuffer"] == 65535
    assert hole.sum() > 50
    assert (out["segment_semantic"][hole] == 0).all()


def test_camera_basis_is_orthonormal():
    cams = Cameras(pos=np.zeros((3, 3)), yaw=np.array([0.0, 1.0, -2.0]), pitch=np.array([0.0, -0.4, 0.3]), fov=1.0)
    f, r, u = camera_basis(cams)
    for a, b in ((f, r), (f, u), (r, u)):
        np.testing.assert_allclose((a * b).sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1)
