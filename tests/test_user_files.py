"""fedmas writes only inside the folder it claimed, deletes only its own files, and claims a folder atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import fedmas.run
from fedmas.cli import main
from fedmas.config import Config, ConfigError
from fedmas.run import execute

pytestmark = pytest.mark.slow


def _small(tiny_raw: dict) -> dict:
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 2}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    return raw


def _refused(capsys, rc: int, *needles: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_force_never_touches_files_fedmas_did_not_write(tiny_raw, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "plugins").mkdir(parents=True)
    (out / "plugins" / "mine.py").write_text("# the user's\n")
    (out / "arrivals.json").write_text('{"mine": true}')
    cfg = out / "config.yaml"  # the user's commented config, in the folder they run in
    cfg.write_text("# my notes\n" + yaml.safe_dump(_small(tiny_raw)))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _refused(capsys, main(["run", str(cfg), "--out", str(out), "--force", "--quiet"]),
             "did not write", "config.yaml", "arrivals.json", "plugins")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a file of the user's named like fedmas's lock file gets no PID written into it
    lock = tmp_path / "l"
    lock.mkdir()
    (lock / ".fedmas.lock").write_text("mine")
    _refused(capsys, main(["run", str(cfg), "--out", str(lock), "--quiet"]), "not empty")
    _refused(capsys, main(["run", str(cfg), "--out", str(lock), "--force", "--quiet"]), ".fedmas.lock")
    assert (lock / ".fedmas.lock").read_text() == "mine"


def test_force_in_a_run_folder_keeps_other_files_in_plugins(tiny_raw, tmp_path):
    run = tmp_path / "r"
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False)
    (run / "plugins").mkdir(exist_ok=True)
    (run / "plugins" / "notes.py").write_text("# the user's\n")
    (run / "keep.txt").write_text("x")
    (run / "arrivals.json").write_text('{"mine": true}')  # named like fedmas's; this run had no arrivals
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False, force=True)
    assert (run / "plugins" / "notes.py").read_text() == "# the user's\n" and (run / "keep.txt").exists()
    assert (run / "summary.json").exists()
    assert (run / "arrivals.json").read_text() == '{"mine": true}'


def test_two_runs_started_on_one_folder_the_second_claimant_is_refused(tiny_raw, tmp_path, monkeypatch):
    run = tmp_path / "r"
    cfg_a = Config.model_validate({**_small(tiny_raw), "name": "first"})
    cfg_b = Config.model_validate({**_small(tiny_raw), "name": "second", "seed": 1})
    real = fedmas.run.load_data
    state = {"inside": False}

    def slow_load(cfg, data=None):  # while A loads its data, B claims the folder and runs to the end
        if cfg.name == "first" and not state["inside"]:
            state["inside"] = True
            execute(cfg_b, run, progress=False)
        return real(cfg, data)

    monkeypatch.setattr(fedmas.run, "load_data", slow_load)
    with pytest.raises(ConfigError, match="already holds a run"):
        execute(cfg_a, run, progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "second"
    assert json.loads((run / "summary.json").read_text())["name"] == "second"


def test_compare_refuses_a_folder_that_is_not_a_comparison(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small(tiny_raw)))
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.md").write_text("my own notes")
    _refused(capsys, main(["compare", str(cfg), "--methods", "all-in-one", "--out", str(out), "--quiet"]),
             "not a fedmas comparison folder", "comparison.md")
    assert (out / "comparison.md").read_text() == "my own notes"
    # a comparison's own folder is resumed
    ok = tmp_path / "ok"
    assert main(["compare", str(cfg), "--methods", "all-in-one", "--out", str(ok), "--quiet"]) == 0
    assert main(["compare", str(cfg), "--methods", "all-in-one", "--out", str(ok), "--quiet"]) == 0


def test_flower_submission_writes_nothing_beside_the_run_folder(tiny_raw, tmp_path, monkeypatch):
    import subprocess

    from fedmas.engines import flower_deploy

    seen = {}

    def fake_run(args, env, cwd, timeout):
        home = Path(env["FLWR_HOME"])
        seen["home"], seen["toml"] = home, (home / "config.toml").read_text()
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(flower_deploy.subprocess, "run", fake_run)
    parent = tmp_path / "home"
    parent.mkdir()
    cfg = Config.model_validate({**_small(tiny_raw), "engine": "flower"})
    assert flower_deploy.submit(cfg, parent / "run") == 0
    assert list(parent.iterdir()) == []  # no .flwr/ next to the run folder (a user's own Flower settings)
    assert not seen["home"].is_relative_to(parent) and not seen["home"].exists()  # a temporary folder, removed
    assert "[superlink.fedmas]" in seen["toml"]


def test_an_engine_that_cannot_run_is_refused_before_the_folder(tiny_raw, tmp_path, capsys, monkeypatch):
    import importlib.util
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "c.yaml"
    raw = {**_small(tiny_raw), "engine": "flower", "flower": {"superlink": f"127.0.0.1:{port}"}}
    cfg.write_text(yaml.safe_dump(raw))
    _refused(capsys, main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]), "no SuperLink answers")
    assert not (tmp_path / "r").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    cfg.write_text(yaml.safe_dump({**_small(tiny_raw), "engine": "flower-sim"}))
    _refused(capsys, main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]), "needs Ray")
    assert not (tmp_path / "r").exists()


def test_damaged_metric_lines_and_export_into_a_file(tiny_raw, tmp_path, capsys):
    run = tmp_path / "r"
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False, stop_after=1)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 1e400, "fl_task": "merged"}\n')  # a damaged line after the checkpoint
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(rounds)) == [0, 1]
    (tmp_path / "afile").write_text("x")
    _refused(capsys, main(["data", "export", "--format", "taskonomy", "--out", str(tmp_path / "afile")]),
             "is not a folder")
