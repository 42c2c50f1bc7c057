"""Taskonomy layout: export → read round trip, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmas.cli import main
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.scenes import SceneSpec, render_building
from fedmas.data.taskonomy import DataError, export, png_path, read_png, read_taskonomy
from fedmas.tasks import TASK_SETS

ALL = list(TASK_SETS["all9"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("taskonomy")
    spec = SceneSpec(buildings=2, train_images=5, test_images=0, resolution=32)
    raw = {f"b{i}": render_building(spec, i, "train") for i in range(2)}
    export(raw, root)
    return root, raw


def test_round_trip_equals_original(exported):
    root, raw = exported
    for b, arrays in raw.items():
        for label, arr in arrays.items():
            for i in range(len(arr)):
                back = read_png(png_path(root, label, b, i, 0))
                np.testing.assert_array_equal(back, arr[i], err_msg=f"{label} {b} {i}")


def test_reader_decodes_like_in_memory(exported):
    root, raw = exported
    fed = read_taskonomy(root, ALL, test_fraction=0.4)
    assert set(fed.clients) == {"b0", "b1"}
    assert len(fed.clients["b0"]) == 3 and len(fed.test) == 4  # 2 of 5 points held out per building
    ref = MultiTaskArrays.from_raw(raw["b0"], ALL)
    x, targets, masks = fed.clients["b0"][1]
    torch.testing.assert_close(x, ref.x[1])
    for t in ALL:
        torch.testing.assert_close(targets[t], ref.targets[t][1])
    torch.testing.assert_close(masks["depth_zbuffer"], ref.masks["depth_zbuffer"][1])


def test_buildings_file_selects_clients(exported, tmp_path):
    root, _ = exported
    lst = tmp_path / "buildings.txt"
    lst.write_text("# train buildings\nb1\n")
    from fedmas.data.taskonomy import read_buildings_file

    fed = read_taskonomy(root, ["depth_zbuffer"], read_buildings_file(lst))
    assert list(fed.clients) == ["b1"]


def test_truncated_and_corrupt_files_are_named(exported, tmp_path):
    root, raw = exported
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    p = png_path(bad, "depth_zbuffer", "b0", 2, 0)
    p.write_bytes(p.read_bytes()[:40])
    fed = read_taskonomy(bad, ["depth_zbuffer"])
    with pytest.raises(DataError, match=str(p)):
        _ = [fed.clients["b0"][i] for i in range(len(fed.clients["b0"]))]
    q = png_path(bad, "normal", "b1", 0, 0)
    q.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="corrupt or truncated image: .*normal"):
        read_png(q)
    missing = png_path(bad, "normal", "b1", 1, 0)
    missing.unlink()
    with pytest.raises(DataError, match="missing file: .*point_1_view_0_domain_normal.png"):
        read_png(missing)


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "tx"
    rc = main(["data", "export", "--format", "taskonomy", "--out", str(out), "--set", "data.buildings=1",
               "--set", "data.train_images=2", "--set", "data.test_images=1", "--set", "data.resolution=32",
               "--set", "federation.clients_per_round=1"])
    assert rc == 0
    files = sorted((out / "rgb" / "building_000").iterdir())
    assert [f.name for f in files] == [f"point_{i}_view_0_domain_rgb.png" for i in range(3)]
    assert (out / "depth_zbuffer" / "building_000" / "point_0_view_0_domain_depth_zbuffer.png").exists()
