"""Own data that cannot go silently wrong: every malformed target or input is refused before training
with one message naming the client, the task, what was found and what is expected (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from fedmas.cli import main
from fedmas.tasks import L1Task, SegmentationTask, fit_normalisation

# A plugin dataset beside its config (no PYTHONPATH): data.options.fault chooses what goes wrong.
PLUGIN = textwrap.dedent('''
    import numpy as np
    import torch

    from fedmas.data.federated import FederatedData, MultiTaskArrays, concat
    from fedmas.tasks import TASKS, L1Task, SegmentationTask, register

    if "od_depth" not in TASKS:
        register(L1Task("od_depth", 1, offset=(2000.0,), scale=(1000.0,)))
        register(SegmentationTask("od_seg", 5))

    def _raw(rng, n, fault):
        rgb = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        depth = rng.uniform(500, 4000, (n, 32, 32)).astype(np.float32)
        seg = rng.integers(0, 5, (n, 32, 32))
        if fault == "channels":
            depth = np.repeat(depth[..., None], 3, -1)  # an RGB-encoded depth for a 1-channel task
        if fault == "channel_first":
            depth = depth[:, None]
        if fault == "float_rgb":
            rgb = rgb.astype(np.float32) / 255.0
        if fault == "class_id":
            seg[:, 0, 0] = 7
        return {"rgb": rgb, "od_depth": depth, "od_seg": seg}

    def make(cfg, tasks):
        fault = cfg.options.get("fault", "")
        rng = np.random.default_rng(0)
        clients = {}
        for c in range(cfg.options.get("clients", 3)):
            raw = _raw(rng, 8, fault)
            if fault == "no_decode" and c == 1:  # built by hand: raw depth, offset/scale never applied
                x = torch.from_numpy(raw["rgb"].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
                clients[f"site{c}"] = MultiTaskArrays(x, {"od_depth": torch.from_numpy(raw["od_depth"])[:, None],
                                                          "od_seg": torch.from_numpy(raw["od_seg"])}, {})
            elif fault == "constant_input" and c == 2:  # float rgb in [0, 1] decoded as if 0..255, by hand
                x = torch.from_numpy((raw["rgb"] / 255.0 / 127.5 - 1).astype(np.float32)).permute(0, 3, 1, 2)
                good = MultiTaskArrays.from_raw(raw, tasks)
                clients[f"site{c}"] = MultiTaskArrays(x, good.targets, good.masks)
            else:
                clients[f"site{c}"] = MultiTaskArrays.from_raw(raw, tasks)
        test = concat([MultiTaskArrays.from_raw(_raw(rng, 4, ""), tasks)])
        return FederatedData(clients=clients, test=test, tasks=tuple(tasks))
''')


def _config(tmp_path, **options) -> str:
    (tmp_path / "owndata_plugin.py").write_text(PLUGIN)
    cfg = {"name": "own", "plugins": ["owndata_plugin"], "tasks": ["od_depth", "od_seg"], "method": "all-in-one",
           "data": {"dataset": "python:owndata_plugin:make", "options": options, "resolution": 32},
           "model": {"width": 8}, "federation": {"rounds": 1, "clients_per_round": 2, "batch_size": 4}}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("fault, message", [
    ("channels", "client 'site0', task 'od_depth': target of shape (3, 32, 32), expected (1, 32, 32) "
                 "(3 channels, the task declares 1)"),
    ("channel_first", "task 'od_depth': raw label of shape (8, 1, 32, 32), expected (N, H, W) or (N, H, W, C) "
                      "with N, H, W = (8, 32, 32) as the rgb images (channel-first? put channels last)"),
    ("float_rgb", "rgb images of dtype float32 with values in [0, 1], expected uint8 0..255 — multiply by 255"),
    ("class_id", "client 'site0', task 'od_seg': class ids in [0, 7], expected 0..4"),
    ("no_decode", "client 'site1', task 'od_depth': target values in ["),
    ("constant_input", "client 'site2': model input is nearly constant"),
])
def test_each_own_data_error_is_one_clear_message_and_exit_2(tmp_path, capsys, fault, message):
    rc = main(["run", _config(tmp_path, fault=fault), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder exists
    if fault == "no_decode":
        assert "were offset/scale applied" in err and "fit_normalisation" in err


def test_good_own_data_runs_from_the_config_folder_and_checks_clients_per_round(tmp_path, capsys):
    cfg = _config(tmp_path, clients=3)  # importable from the config's folder: no PYTHONPATH
    assert main(["run", cfg, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["test_loss"]) == {"od_depth", "od_seg"}
    assert (tmp_path / "run" / "plugins" / "owndata_plugin.py").exists()  # kept for --resume
    elsewhere = tmp_path / "elsewhere"  # a fresh process, another folder, no PYTHONPATH: --resume finds it
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", "--resume", str(tmp_path / "run")], cwd=elsewhere,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "TOTAL" in r.stderr + r.stdout  # a finished run's table, printed again
    capsys.readouterr()
    assert main(["run", cfg, "--set", "data.options.clients=1", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "federation.clients_per_round=2 exceeds the 1 clients" in capsys.readouterr().err
    assert main(["run", cfg, "--set", "data.dataset=scenes", "--out", str(tmp_path / "r3"), "--quiet"]) == 2
    assert "data.options is for a plugin dataset" in capsys.readouterr().err


def test_segmentation_ignore_index():
    pred = torch.zeros(1, 3, 2, 2)
    pred[:, 1] = 5.0  # predicts class 1 everywhere
    target = torch.tensor([[[0, 1], [1, 1]]])
    every = SegmentationTask("s", 3)  # default: no class ignored, class 0 counts
    taskonomy = SegmentationTask("s", 3, ignore_index=0)
    assert float(every.loss(pred, target, None)) > float(taskonomy.loss(pred, target, None))
    assert every.finalize(every.metric_sums(pred, target, None))["miou"] == pytest.approx((0 + 0.75) / 2)
    assert taskonomy.finalize(taskonomy.metric_sums(pred, target, None))["miou"] == pytest.approx(1.0)
    only_ignored = torch.zeros(1, 2, 2, dtype=torch.long)
    assert float(taskonomy.loss(pred, only_ignored, None)) == 0.0
    assert "expected 0..2, or 0 (ignore_index)" in taskonomy.check_values(torch.tensor([[0, 3]]))


def test_fit_normalisation_standardises_a_clients_labels():
    rng = np.random.default_rng(0)
    raw = {"d": np.stack([rng.normal(300, 20, (4, 8, 8)), rng.normal(-5, 2, (4, 8, 8))], -1)}
    task = fit_normalisation(L1Task("d", 2, select=(0, 1)), raw)
    y, _ = task.decode(raw)
    assert y.mean(axis=(0, 2, 3)) == pytest.approx([0, 0], abs=1e-4)
    assert y.std(axis=(0, 2, 3)) == pytest.approx([1, 1], abs=1e-4)
    assert task.offset[0] == pytest.approx(300, rel=0.02) and task.scale[1] == pytest.approx(2, rel=0.1)


# A Dataset of the user's own class (read sample by sample, not in memory), with data.options.fault.
LAZY = textwrap.dedent('''
    import torch
    from torch.utils.data import Dataset

    from fedmas.data.federated import FederatedData, MultiTaskArrays

    class Rooms(Dataset):
        def __init__(self, arrays, fault, n_claimed=None):
            self.a, self.fault, self.n = arrays, fault, n_claimed or len(arrays)

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            if self.fault == "oserror" and i >= 8:
                raise OSError(f"cannot read room {i}")
            x, t, m = self.a[i]
            if self.fault == "late_shape" and i == 9:
                x = x[:, :16, :16]
            return x, t, m

    def make(cfg, tasks):
        fault = cfg.options.get("fault", "")
        clients = {}
        for c in range(2):
            res = 16 if fault == "mixed" and c == 1 else 32
            arr = MultiTaskArrays(torch.rand(12, 3, res, res) * 2 - 1, {"depth_zbuffer": torch.rand(12, 1, res, res)},
                                  {})
            claimed = 15 if fault == "len_lies" and c == 1 else None
            clients[f"site{c}"] = Rooms(arr, fault if c == 1 else "", claimed)
        test = MultiTaskArrays(torch.rand(4, 3, 32, 32) * 2 - 1, {"depth_zbuffer": torch.rand(4, 1, 32, 32)}, {})
        return FederatedData(clients=clients, test=test, tasks=tuple(tasks))
''')


@pytest.mark.parametrize("fault, message", [
    ("oserror", "client 'site1': sample 8: Rooms.__getitem__ raised OSError: cannot read room 8"),
    ("late_shape", "client 'site1': sample 9: Rooms.__getitem__ gave input shape (3, 16, 16), but"),
    ("len_lies", "client 'site1': sample 12: Rooms.__getitem__ raised IndexError (__len__ says more samples"),
    ("mixed", "client 'site1': sample 0: Rooms.__getitem__ gave input shape (3, 16, 16)"),
])
def test_a_users_dataset_failing_late_is_exit_2_naming_client_sample_and_function(tmp_path, capsys, fault, message):
    (tmp_path / "lazy_plugin.py").write_text(LAZY)
    cfg = {"name": "lazy", "plugins": ["lazy_plugin"], "tasks": ["depth_zbuffer"], "method": "all-in-one",
           "data": {"dataset": "python:lazy_plugin:make", "options": {"fault": fault}, "resolution": 32},
           "model": {"width": 8}, "federation": {"rounds": 1, "clients_per_round": 2, "batch_size": 4}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder exists
