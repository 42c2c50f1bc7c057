"""Nothing lost, nothing crashes: user folders survive, one process per run folder, derived files are
rewritten on resume, every bad input (config, data, checkpoint) is one line and exit 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from fedmas.cli import main
from fedmas.config import Config
from fedmas.engines.inprocess import InProcessEngine
from fedmas.run import execute, serve_run_folder
from fedmas.runfolder import RunLock

pytestmark = pytest.mark.slow


def _small(tiny_raw: dict, **fed) -> dict:
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 3, **fed}
    raw["mas"] = {**raw["mas"], "merge_rounds": 2}
    return raw


def _one_line_refusal(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedmas: error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_users_folder_is_never_deleted(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small(tiny_raw)))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep").write_text("precious")
    _one_line_refusal(capsys, main(["run", str(cfg), "--out", str(out), "--quiet"]), "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--force"]) == 0
    assert (out / "keep").read_text() == "precious" and (out / "summary.json").exists()
    # a finished run is not started over without --force
    _one_line_refusal(capsys, main(["run", str(cfg), "--out", str(out), "--quiet"]), "already holds a run")
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--force"]) == 0
    assert (out / "keep").read_text() == "precious"


def test_no_run_folder_before_the_data_is_checked(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_small(tiny_raw)))
    out = tmp_path / "r"
    rc = main(["run", str(cfg), "--set", "data.dataset=python:os:getcwd", "--out", str(out)])
    _one_line_refusal(capsys, rc, "os.getcwd", "TypeError")
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    rc = main(["run", str(cfg), "--set", f"data.cache_dir={tmp_path / 'afile'}", "--out", str(out)])
    _one_line_refusal(capsys, rc, "data.cache_dir", "not a folder")
    assert not out.exists()


def test_one_process_per_run_folder(tiny_raw, tmp_path, capsys):
    run = tmp_path / "r"
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False, stop_after=1)
    with RunLock(run):  # as if another fedmas process were driving it
        _one_line_refusal(capsys, main(["run", "--resume", str(run), "--quiet"]), "in use", f"PID {os.getpid()}")
    assert main(["run", "--resume", str(run), "--quiet"]) == 0  # the kernel released the lock
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sorted({json.loads(x)["round"] for x in lines}) == [0, 1, 2]


_HOLD = """
import sys
from pathlib import Path
from fedmas.runfolder import DriveLock
with DriveLock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_driver_waits_for_the_first_and_continues_where_it_stopped(tiny_raw, tmp_path, capsys):
    """A ServerApp given a run folder whose rounds another process is running (an earlier ServerApp of the
    same run that outlived its SuperLink) waits, naming it, runs nothing meanwhile, and then continues from
    the checkpoint to the numbers of an uninterrupted run."""
    cfg = Config.model_validate(_small(tiny_raw))
    ref = execute(cfg, tmp_path / "ref", progress=False)
    run = tmp_path / "r"
    execute(cfg, run, progress=False, stop_after=1)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got: list = []
        serve = threading.Thread(target=lambda: got.append(serve_run_folder(
            run, lambda _cfg, data, spec: InProcessEngine(data.clients, spec))))
        serve.start()
        err, end = "", time.monotonic() + 600  # the bound only ends a hung test
        while f"PID {holder.pid}" not in err and serve.is_alive() and time.monotonic() < end:
            time.sleep(0.1)
            err += capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "waiting for it to end" in err, err
        rounds = {json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()}
        assert rounds == {0} and serve.is_alive()  # nothing ran while the other process held the rounds
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(60)
    serve.join(600)
    assert not serve.is_alive() and got[0]["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-6)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({ln["round"] for ln in lines}) == [0, 1, 2]


def test_derived_files_are_rewritten_on_resume(tiny_raw, tmp_path):
    cfg = Config.model_validate(_small(tiny_raw, rounds=4))
    ref = tmp_path / "ref"
    execute(cfg, ref, progress=False)
    run = tmp_path / "r"
    execute(cfg, run, progress=False, stop_after=3)  # merged phase done, split decided, one group round
    (run / "affinity.json").write_text('{"stale": true}')  # as if killed after the checkpoint, before this file
    (run / "split.json").unlink()
    execute(None, run, resume=True, progress=False)
    for name in ("affinity.json", "split.json", "summary.json"):
        got, want = json.loads((run / name).read_text()), json.loads((ref / name).read_text())
        if name == "summary.json":
            got, want = got["test_loss"], want["test_loss"]
        assert got == want, name


# A weighting that sleeps before every backward: each client's reply takes at least SLOW_S, however fast
# the machine (a sleep never ends early), so a deadline below it is missed by every client.
SLOW_WEIGHTING = """
import time

from fedmas.weighting import Weighting, register


@register
class Slow(Weighting):
    name = "slow_for_test"

    def backward(self, batch):
        time.sleep(0.5)
        super().backward(batch)
"""


def test_round_deadline_that_abandons_threads_exits_cleanly(tiny_raw, tmp_path):
    (tmp_path / "slowweighting.py").write_text(SLOW_WEIGHTING)  # beside the config: found without PYTHONPATH
    raw = _small(tiny_raw, round_deadline_s=0.05, max_round_retries=0, task_weighting="slow_for_test")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**raw, "plugins": ["slowweighting"]}))
    proc = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", str(cfg), "--out", str(tmp_path / "r"),
                           "--quiet"], capture_output=True, text=True, timeout=600)
    # every reply is late (each takes >= 0.5 s against a 0.05 s deadline), so the run trained nothing:
    # a clean failure naming why (exit 2), never a crash
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no accepted client update" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr and (tmp_path / "r" / "summary.json").exists()


# ------------------------------------------------------------------ bad data


@pytest.fixture
def taskonomy_root(tiny_raw, tmp_path) -> Path:
    root = tmp_path / "tk"
    assert main(["data", "export", "--format", "taskonomy", "--out", str(root), "--config", str(_cfg_file(
        tiny_raw, tmp_path))]) == 0
    return root


def _cfg_file(raw: dict, tmp_path: Path, **data) -> Path:
    raw = _small(raw)
    raw["data"] = {**raw["data"], **data}
    p = tmp_path / f"c{len(data)}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _pngs(root: Path, task: str, building: str) -> list[Path]:
    return sorted((root / task / building).glob("*.png"))


@pytest.mark.parametrize("damage", ["truncated-train", "wrong-size-test", "bomb-test", "fifo-train", "missing-rgb"])
def test_bad_taskonomy_image_stops_with_its_name(tiny_raw, tmp_path, taskonomy_root, capsys, damage):
    building = sorted(p.name for p in (taskonomy_root / "rgb").iterdir())[0]
    files = _pngs(taskonomy_root, "normal", building)
    if damage == "truncated-train":
        bad = files[0]  # the first points of a building are training data
        bad.write_bytes(bad.read_bytes()[:60])
    elif damage == "wrong-size-test":
        bad = files[-1]  # the last points are held out for testing
        Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(bad)
    elif damage == "fifo-train":  # would block the reader forever
        bad = files[1]
        bad.unlink()
        os.mkfifo(bad)
    elif damage == "missing-rgb":  # the point is not silently dropped
        bad = _pngs(taskonomy_root, "rgb", building)[2]
        bad.unlink()
    else:
        bad = files[-1]
        Image.new("L", (8200, 8200)).save(bad)
    cfg = _cfg_file(tiny_raw, tmp_path, dataset="taskonomy", root=str(taskonomy_root))
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    _one_line_refusal(capsys, rc, str(bad))


def test_empty_test_set_is_refused(tiny_raw, tmp_path, capsys, monkeypatch):
    (tmp_path / "emptytest.py").write_text(
        "from fedmas.data import FederatedData, load_federated\n"
        "def load(cfg, tasks):\n"
        "    d = load_federated(cfg.model_copy(update={'dataset': 'scenes'}), tasks)\n"
        "    return FederatedData(clients=d.clients, test=[], tasks=d.tasks)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg_file(tiny_raw, tmp_path, dataset="python:emptytest:load")
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    _one_line_refusal(capsys, rc, "test set is empty")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ bad configs


def test_bad_config_files(tmp_path, capsys):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    cases = {
        "empty.yaml": ("# nothing here\n", "empty"),
        "bomb.yaml": (bomb + "tasks: *i\n", "aliases"),
        "deep.yaml": ("tasks: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
        "list.yaml": ("- 1\n- 2\n", "mapping"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"r-{name}"
        _one_line_refusal(capsys, main(["run", str(tmp_path / name), "--out", str(out)]), name, needle)
        assert not out.exists()
    _one_line_refusal(capsys, main(["run", str(tmp_path)]), "not a regular file")


@pytest.mark.parametrize("override,needle", [
    ("federation.lr=.inf", "federation.lr"), ("federation.weight_decay=.nan", "federation.weight_decay"),
    ("federation.prox_mu=.inf", "federation.prox_mu"), ("cost.device_power_w=.inf", "cost.device_power_w"),
    ("federation.round_deadline_s=.inf", "federation.round_deadline_s"), ("seed=-1", "seed"),
    ("data.train_images=1000000000", "data.train_images"), ("cost.speed_factors.building_000=-1", "speed_factors"),
    ("name=../../elsewhere", "name"),
])
def test_bad_config_values_are_refused_before_any_folder(tiny_raw, tmp_path, capsys, override, needle):
    cfg = _cfg_file(tiny_raw, tmp_path)
    out = tmp_path / "r"
    _one_line_refusal(capsys, main(["run", str(cfg), "--set", override, "--out", str(out)]), needle)
    assert not out.exists()


def test_config_without_tasks_uses_the_validated_default(tiny_raw, tmp_path):
    raw = _small(tiny_raw)
    del raw["tasks"]
    cfg = Config.model_validate(raw)
    assert cfg.task_list == ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture")


# ------------------------------------------------------------------ tampered checkpoints


def _weights(run: Path) -> Path:
    ck = run / "checkpoint"
    return ck / json.loads((ck / "state.json").read_text())["weights_file"]


def _tamper_weights(run: Path, fn) -> None:
    p = _weights(run)
    flat = load_file(str(p))
    fn(flat)
    save_file(flat, str(p))


def _tamper_state(run: Path, fn) -> None:
    p = run / "checkpoint" / "state.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def _first_encoder_key(flat: dict) -> str:
    return next(k for k in sorted(flat) if k.startswith("merged/encoder") and k.endswith("weight"))


TAMPER = {
    "wrong shape": lambda run: _tamper_weights(run, lambda f: f.__setitem__(_first_encoder_key(f), torch.zeros(2))),
    "missing key": lambda run: _tamper_weights(run, lambda f: f.pop(_first_encoder_key(f))),
    "nan weights": lambda run: _tamper_weights(run, lambda f: f[_first_encoder_key(f)].fill_(float("nan"))),
    "bad rng": lambda run: _tamper_weights(run, lambda f: f.__setitem__("__rng__/torch", torch.zeros(3))),
    "bad field": lambda run: _tamper_state(run, lambda d: (d["active"] or d["finished"])[0].__setitem__("rounds",
                                                                                                       "many")),
    "bad round": lambda run: _tamper_state(run, lambda d: d.__setitem__("round", -4)),
    "bad numpy rng": lambda run: _tamper_state(run, lambda d: d.__setitem__("rng", {"state": 1})),
    "not json": lambda run: (run / "checkpoint" / "state.json").write_text("{"),
    "edited config": lambda run: (run / "config.yaml").write_text("federation: {rounds: lots}\n"),
    "edited lr": lambda run: _edit_config(run, lambda c: c["federation"].__setitem__("lr", 0.05)),
    "edited method": lambda run: _edit_config(run, lambda c: c.__setitem__("method", "one-by-one")),
    "bit flip": lambda run: _flip_a_bit(_weights(run)),
    "round 1e20, checksum redone": lambda run: _forge_state(run, lambda d: d.__setitem__("round", 10**20)),
    "round true, checksum redone": lambda run: _forge_state(run, lambda d: d.__setitem__("round", True)),
    "round 50, checksum redone": lambda run: _forge_state(run, lambda d: d.__setitem__("round", 50)),
    "nan in a kept weight, checksums redone": lambda run: _forge_nan_in_kept_weights(run),
    "state.json deleted": lambda run: (run / "checkpoint" / "state.json").unlink(),
    "checkpoint deleted": lambda run: __import__("shutil").rmtree(run / "checkpoint"),
}


def _edit_config(run: Path, fn) -> None:
    p = run / "config.yaml"
    c = yaml.safe_load(p.read_text())
    fn(c)
    p.write_text(yaml.safe_dump(c, sort_keys=False))


def _flip_a_bit(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) - 5] ^= 0x01  # in the last tensor's data: a valid file, a changed value
    p.write_bytes(bytes(b))


def _forge_state(run: Path, fn) -> None:
    """An edit that also redoes the checkpoint's checksums: only the values' own checks can refuse it."""
    from fedmas.server import state as st

    p = run / "checkpoint" / "state.json"
    doc = json.loads(p.read_text())
    fn(doc)
    doc["weights_sha256"] = st._file_sha256(run / "checkpoint" / doc["weights_file"])
    st._write_state_doc(p, {k: v for k, v in doc.items() if k != "state_sha256"})


def _forge_nan_in_kept_weights(run: Path) -> None:
    p = _weights(run)
    flat = load_file(str(p))
    flat["finished-one/encoder.x"] = torch.tensor([float("nan")])  # weights the round loop does not train
    save_file(flat, str(p))
    _forge_state(run, lambda d: None)


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_checkpoint_is_refused_naming_the_file(tiny_raw, tmp_path, capsys, how):
    run = tmp_path / "r"
    # two rounds: after one only, a deleted checkpoint is a run killed before its first one (which starts over)
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False, stop_after=2)
    TAMPER[how](run)
    rc = main(["run", "--resume", str(run), "--quiet"])
    err = _one_line_refusal(capsys, rc)
    assert str(run) in err, err
    assert not (run / "summary.json").exists()


def test_a_summary_that_is_not_one_is_refused(tiny_raw, tmp_path, capsys):
    run = tmp_path / "r"
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False)
    for text in ("[]", "{}", "not json"):
        (run / "summary.json").write_text(text)
        _one_line_refusal(capsys, main(["run", "--resume", str(run), "--quiet"]), "summary.json", "not a fedmas")
        _one_line_refusal(capsys, main(["show", str(run)]), "summary.json", "not a fedmas")


def test_a_non_finite_result_is_not_reported_as_success(tiny_raw, tmp_path, capsys):
    raw = _small(tiny_raw)
    raw["federation"]["lr"] = 1000.0  # diverges to non-finite weights and losses
    rc = main(["run", _write(tmp_path / "c.yaml", raw), "--quiet", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err, err
    assert not (tmp_path / "r" / "summary.json").exists()


def _write(p: Path, raw: dict) -> str:
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_fifo_as_weights_file_does_not_hang(tiny_raw, tmp_path):
    run = tmp_path / "r"
    execute(Config.model_validate(_small(tiny_raw)), run, progress=False, stop_after=1)
    w = _weights(run)
    w.unlink()
    os.mkfifo(w)
    proc = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", "--resume", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr


def test_resume_imports_only_trusted_plugins(tiny_raw, tmp_path):
    """--resume runs the plugin modules named in the run's config.yaml only when they are installed, inside
    the run folder (a single-file plugin is copied there when the run starts), or allowed by name; anything
    else is refused before it is imported."""
    (tmp_path / "mytasks.py").write_text("from pathlib import Path\nPath(__file__).with_suffix('.ran').touch()\n")
    (tmp_path / "other.py").write_text("from pathlib import Path\nPath(__file__).with_suffix('.ran').touch()\n")
    raw = _small(tiny_raw)
    raw["plugins"] = ["mytasks"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "fedmas.cli", "run"]
    subprocess.run(cmd + [str(cfg), "--out", str(run), "--quiet"], env=env, check=True, capture_output=True)
    (tmp_path / "mytasks.ran").unlink()
    (run / "summary.json").unlink()  # pretend it was interrupted after the last checkpoint
    proc = subprocess.run(cmd + ["--resume", str(run), "--quiet"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # the run's own copy of its plugin, not the (editable) original
    assert (run / "plugins" / "mytasks.ran").exists() and not (tmp_path / "mytasks.ran").exists()
    (run / "summary.json").unlink()
    original = (run / "config.yaml").read_text()
    saved = yaml.safe_load(original)
    saved["plugins"] = ["mytasks", "other"]  # someone edits the run's config to run code from elsewhere
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    for extra in ([], ["--allow-plugin", "other"]):  # refused as an edited config, before any import
        proc = subprocess.run(cmd + ["--resume", str(run), "--quiet", *extra], env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "was changed after the run started" in proc.stderr, proc.stderr
        assert not (tmp_path / "other.ran").exists()
    (run / "config.yaml").write_text(original)
    (run / "plugins" / "mytasks.py").unlink()  # the run's copy gone: its plugin would come from outside the folder
    proc = subprocess.run(cmd + ["--resume", str(run), "--quiet"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "--allow-plugin mytasks" in proc.stderr, proc.stderr
    assert not (tmp_path / "mytasks.ran").exists()  # refused before anything ran
    proc = subprocess.run(cmd + ["--resume", str(run), "--quiet", "--allow-plugin", "mytasks"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mytasks.ran").exists() and (run / "summary.json").exists()


@pytest.mark.parametrize("what", ["fifo", "folder", "device", "binary"])
def test_a_buildings_file_that_is_not_a_text_file_is_refused(tiny_raw, tmp_path, taskonomy_root, capsys, what):
    bf = tmp_path / "b.txt"
    if what == "fifo":
        os.mkfifo(bf)
    elif what == "folder":
        bf.mkdir()
    elif what == "device":
        bf = Path("/dev/zero")
    else:
        bf.write_bytes(bytes(range(256)) * 4)
    cfg = _cfg_file(tiny_raw, tmp_path, dataset="taskonomy", root=str(taskonomy_root), buildings_file=str(bf))
    _one_line_refusal(capsys, main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]), str(bf))
    assert not (tmp_path / "r").exists()


def test_paths_and_numbers_the_system_refuses_are_the_users_errors(tiny_raw, tmp_path, capsys):
    cfg = _cfg_file(tiny_raw, tmp_path)
    (tmp_path / "afile").write_text("x")
    _one_line_refusal(capsys, main(["run", str(cfg), "--out", str(tmp_path / "afile" / "r"), "--quiet"]))
    _one_line_refusal(capsys, main(["run", str(cfg), "--out", str(tmp_path / ("x" * 300)), "--quiet"]),
                      "too long")
    _one_line_refusal(capsys, main(["compare", str(cfg), "--seeds", "99999999999", "--out", str(tmp_path / "c"),
                                    "--quiet"]), "--seeds")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage", ["nan-input", "bad-class"])
def test_bad_data_beyond_the_first_checked_samples_stops_naming_the_sample(tiny_raw, tmp_path, capsys, monkeypatch,
                                                                             damage):
    """Sample 12 of a client (beyond the 8 that are checked by shape): refused before any folder, naming it."""
    (tmp_path / "latebad.py").write_text(
        "from fedmas.data import FederatedData, load_federated\n"
        f"DAMAGE = {damage!r}\n"
        "def load(cfg, tasks):\n"
        "    d = load_federated(cfg.model_copy(update={'dataset': 'scenes'}), tasks)\n"
        "    ds = d.clients['building_001']\n"
        "    if DAMAGE == 'nan-input':\n"
        "        ds.x[12, 0, 3, 3] = float('nan')\n"
        "    else:\n"
        "        ds.targets['segment_semantic'][12, 5, 5] = 99\n"
        "    return FederatedData(clients=d.clients, test=d.test, tasks=d.tasks)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = _small(tiny_raw)
    raw["data"] = {**raw["data"], "train_images": 16}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "dataset": "python:latebad:load"}}))
    rc = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    _one_line_refusal(capsys, rc, "building_001", "sample 12")
    assert not (tmp_path / "r").exists()


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    from fedmas.files import atomic_write

    target = tmp_path / "summary.json"
    target.write_text("old")

    def half_then_fail(f):
        f.write(b"new, but only half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert target.read_text() == "old"
    atomic_write(target, lambda f: f.write(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"] and target.read_text() == "new"
