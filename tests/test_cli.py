"""Bad input anywhere a user types or points: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmas.cli import main


@pytest.fixture
def cfg_file(tmp_path, tiny_raw):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tiny_raw))
    return p


@pytest.mark.parametrize("override,needles", [
    ("federation.roundz=3", ["federation.roundz", "unknown key", "accepted keys here", "rounds"]),
    ("colour=red", ["colour", "unknown key"]),
    ("federation.lr=-0.1", ["federation.lr", "greater than 0", "-0.1"]),
    ("federation.clients_per_round=0", ["federation.clients_per_round", "greater than or equal to 1"]),
    ("federation.rounds=many", ["federation.rounds", "integer", "many"]),
    ("mas.splits=7", ["mas.splits=7", "larger than the number of tasks (3)"]),
    ("tasks=[depth_zbuffer,colour]", ["unknown task", "colour", "segment_semantic"]),
    ("method=magic", ["unknown method", "magic", "one-by-one"]),
    ("federation.schedule=cosine", ["federation.schedule", "poly", "constant"]),
    ("data.resolution=50", ["multiple of 16"]),
    ("data.dataset=taskonomy", ["data.root is required"]),
])
def test_bad_config_values(cfg_file, tmp_path, capsys, override, needles):
    out = tmp_path / "run"
    rc = main(["run", str(cfg_file), "--set", override, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_files_and_folders(cfg_file, tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    rc = main(["run", str(cfg_file), "--set", "data.dataset=taskonomy", "--set", f"data.root={tmp_path / 'none'}",
               "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "missing data directory" in capsys.readouterr().err
    assert not (tmp_path / "r" / "summary.json").exists()
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a fedmas run folder" in capsys.readouterr().err


def test_not_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    assert main(["run", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_real_process_no_traceback(cfg_file):
    r = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", str(cfg_file), "--set", "federation.momentum=2"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "federation.momentum" in r.stderr and "less than 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_refuses_to_overwrite_a_run(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.json").write_text("{}")
    assert main(["run", str(cfg_file), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


SHIPPED = sorted(p for d in ("configs", "benchmarks") for p in (Path(__file__).parent.parent / d).glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_are_valid(path):
    from fedmas.checks import check_config
    from fedmas.config import load_config

    cfg = check_config(load_config(path), str(path))
    assert cfg.tasks and cfg.federation.rounds >= 1
