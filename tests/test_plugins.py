"""A user's plugin code: registered methods and tasks work, its failures are the user's (exit 2, one line)."""

from __future__ import annotations

import sys

import pytest
import yaml

from fedmas.cli import main
from fedmas.config import Config
from fedmas.tasks import L1Task, register


def _plugin(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


@pytest.mark.slow
def test_a_plugin_method_is_accepted_and_runs(tiny_raw, tmp_path, monkeypatch):
    from fedmas import methods

    mod = _plugin(tmp_path, monkeypatch, "myplan", "from fedmas.methods import AllInOne, register\n\n"
                  "@register\nclass Mine(AllInOne):\n    name, label = 'mine', 'mine'\n")
    try:
        raw = {**tiny_raw, "method": "mine", "plugins": [mod]}
        raw["federation"] = {**raw["federation"], "rounds": 2}
        raw["mas"] = {**raw["mas"], "merge_rounds": 1}
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
        assert (tmp_path / "r" / "summary.json").exists()
    finally:
        methods.PLANS.pop("mine", None)


@pytest.mark.parametrize("body, needle", [
    ("def f(:\n", "syntax error"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    ("import os\nos._exit(0)\n", "os._exit(0)"),
])
def test_a_failing_plugin_is_the_users_error(tiny_raw, tmp_path, monkeypatch, capsys, body, needle):
    mod = _plugin(tmp_path, monkeypatch, "badplug", body)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_raw, "plugins": [mod]}))
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "badplug" in err and "bug in fedmas" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_plugin_data_function_that_exits_is_the_users_error(tiny_raw, tmp_path, monkeypatch, capsys):
    mod = _plugin(tmp_path, monkeypatch, "exitdata", "import os\ndef data(cfg, tasks):\n    os._exit(0)\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_raw, "data": {"dataset": f"python:{mod}:data"}}))
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "os._exit(0)" in err, err


def test_plugin_names_and_registries_are_guarded(tiny_raw, capsys):
    with pytest.raises(ValueError, match="already registered"):
        register(L1Task("normal", 1))  # a built-in task is not silently replaced
    with pytest.raises(ValueError, match="not a module name"):
        Config.model_validate({**tiny_raw, "plugins": ["..evil"]})


def test_lenient_values_are_refused(tiny_raw, tmp_path, capsys):
    for key, val in (("mas", {"splits": True}), ("federation", {"local_epochs": True})):
        with pytest.raises(ValueError, match="boolean"):
            Config.model_validate({**tiny_raw, key: {**tiny_raw.get(key, {}), **val}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\nseed: 2\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "appears twice" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump(tiny_raw))
    assert main(["compare", str(cfg), "--methods", "all-in-one,all-in-one", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "more than once" in capsys.readouterr().err


def test_split_and_preview_flags_name_the_problem(tmp_path, capsys):
    import json

    aff = tmp_path / "a.json"
    aff.write_text(json.dumps({"tasks": ["a", "b", "c"], "affinity": {s: {t: 0.1 for t in "abc"} for s in "abc"}}))
    for flags, needle in ((["--epsilon", "nan"], "--epsilon nan"), (["--epsilon", "-1"], "--epsilon -1.0"),
                          (["--max-splits", "0"], "--max-splits 0")):
        assert main(["split", "--affinity", str(aff), "--splits", "auto", *flags]) == 2
        err = capsys.readouterr().err
        assert needle in err and "expected" in err, err
    assert main(["data", "preview", "--buildings", "-1", "--out", str(tmp_path / "p.png")]) == 2
    assert "--buildings -1" in capsys.readouterr().err


def test_a_plugin_that_blocks_is_named_while_fedmas_waits(tiny_raw, tmp_path):
    """A plugin whose import blocks (until a file appears): fedmas says what it waits for, then goes on."""
    import os
    import subprocess

    go = tmp_path / "go"
    (tmp_path / "slowplug.py").write_text(f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists():\n"
                                          f"    time.sleep(0.05)\n")
    cfg = tmp_path / "c.yaml"
    raw = {**tiny_raw, "plugins": ["slowplug"], "federation": {**tiny_raw["federation"], "rounds": 2},
           "mas": {**tiny_raw["mas"], "merge_rounds": 1}}
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "FEDMAS_PLUGIN_NOTICE_S": "0.2", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "run", str(cfg), "--out", str(tmp_path / "r"),
                             "--quiet"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()  # blocks until fedmas says something: the plugin is still importing
        assert "still waiting for plugin module 'slowplug'" in line, line
        go.write_text("")
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    finally:
        proc.kill()
