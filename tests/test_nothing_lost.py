"""Nothing lost, part three: a run that learned nothing is not a success, every file a resume trusts is
checked, masks are checked like targets, and compare's workers end with the process that started them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fedmas.cli import main
from fedmas.config import Config
from fedmas.data import _check_all
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.taskonomy import DataError
from fedmas.run import RunFailed, execute, failures
from fedmas.server.state import CheckpointError, ServerState


def _arrays(n: int = 8) -> MultiTaskArrays:
    x = torch.rand(n, 3, 8, 8) * 2 - 1
    depth = torch.rand(n, 1, 8, 8)
    return MultiTaskArrays(x, {"depth_zbuffer": depth}, {"depth_zbuffer": torch.ones(n, 1, 8, 8)})


@pytest.mark.parametrize("bad,needle", [(float("nan"), "NaN or infinite"), (50.0, "outside [0, 1]")])
def test_a_bad_mask_anywhere_is_refused_naming_the_sample(bad, needle):
    ds = _arrays()
    ds.masks["depth_zbuffer"][5, 0, 3, 3] = bad
    with pytest.raises(DataError, match=rf"sample 5: mask .*{re.escape(needle)}"):
        _check_all(ds, "client 'c0'", ["depth_zbuffer"])


def test_a_run_whose_every_round_is_rejected_fails(tiny_raw, tmp_path, capsys):
    raw = {**tiny_raw, "method": "all-in-one"}
    raw["federation"] = {**raw["federation"], "rounds": 2, "round_deadline_s": 0.0001}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "FL task all-in-one: no accepted client update in 2 of its 2 rounds" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["failed"] and "all-in-one" in summary["failed"][0]
    # resuming or showing it says so again, never exit 0
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 2
    assert main(["show", str(tmp_path / "r")]) == 2


def test_failures_name_idle_fl_tasks_and_non_finite_numbers(tmp_path):
    from fedmas.server.state import FLTaskState

    lines = [{"round": r, "fl_task": "a", "accepted": 0 if r < 3 else 2} for r in range(5)] + \
            [{"round": r, "fl_task": "b", "accepted": 0 if r < 2 else 1} for r in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    st = ServerState(finished=[FLTaskState("a", ["t"], 5), FLTaskState("b", ["t"], 5)])
    got = failures(tmp_path, st, 0.5, {"val_loss": {"t": float("nan")}, "test_loss": {"t": 1.0}})
    assert len(got) == 2 and got[0].startswith("FL task a: no accepted client update in 3 of its 5 rounds")
    assert "val_loss.t" in got[1]
    assert failures(tmp_path, st, 0.6, {"test_loss": {"t": 1.0}}) == []


def _finished(tiny_raw, tmp_path: Path, stop_after: int | None = None) -> Path:
    raw = {**tiny_raw, "method": "all-in-one", "federation": {**tiny_raw["federation"], "rounds": 2}}
    execute(Config.model_validate(raw), tmp_path / "r", progress=False, stop_after=stop_after)
    return tmp_path / "r"


def test_an_edited_trivial_json_is_refused_on_resume(tiny_raw, tmp_path):
    run = _finished(tiny_raw, tmp_path, stop_after=1)
    doc = json.loads((run / "trivial.json").read_text())
    doc["test_loss"] = {t: v * 10 for t, v in doc["test_loss"].items()}
    (run / "trivial.json").write_text(json.dumps(doc, indent=1))
    with pytest.raises(CheckpointError, match="trivial.json was changed after the run started"):
        execute(None, run, resume=True, progress=False)
    (run / "trivial.json").unlink()  # deleted: fitted again from the data, and the run goes on
    assert execute(None, run, resume=True, progress=False) is not None


@pytest.mark.parametrize("key", ["state_sha256", "config_sha256", "trivial_sha256"])
def test_a_checkpoint_without_its_checksums_is_refused(tiny_raw, tmp_path, key):
    run = _finished(tiny_raw, tmp_path, stop_after=1)
    sp = run / "checkpoint" / "state.json"
    doc = json.loads(sp.read_text())
    del doc[key]
    doc.pop("state_sha256", None)  # as someone editing it by hand would: no checksum to match
    sp.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="checksum field"):
        execute(None, run, resume=True, progress=False)


@pytest.mark.parametrize("value", ["NaN", "Infinity", '"0.5"'])
def test_show_refuses_a_summary_with_a_bad_number_naming_the_file(tiny_raw, tmp_path, capsys, value):
    run = _finished(tiny_raw, tmp_path)
    text = (run / "summary.json").read_text()
    doc = json.loads(text)
    t = next(iter(doc["test_loss"]))
    doc["test_loss"][t] = "@@"
    (run / "summary.json").write_text(json.dumps(doc).replace('"@@"', value))
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(run / "summary.json") in err and f"test_loss.{t}" in err


def test_a_run_killed_before_its_first_checkpoint_resumes(tiny_raw, tmp_path):
    """Round 0's metric lines written, no checkpoint yet: the resume starts over and ends where an
    uninterrupted run does (a refusal before)."""
    whole = _finished(tiny_raw, tmp_path)
    want = json.loads((whole / "summary.json").read_text())["test_loss"]
    run = tmp_path / "cut"
    run.mkdir()
    for name in ("config.yaml", "trivial.json", ".fedmas-run"):
        (run / name).write_bytes((whole / name).read_bytes())
    first = [ln for ln in (whole / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["round"] == 0]
    (run / "metrics.jsonl").write_text("\n".join(first) + "\n" + first[0][:20])  # and a torn line
    (run / ".trivial.json.abc123.tmp").write_text("{")  # a kill during an atomic write
    got = execute(None, run, resume=True, progress=False)
    assert got is not None and got["test_loss"] == want
    assert not (run / ".trivial.json.abc123.tmp").exists()


@pytest.mark.slow
def test_compare_workers_end_with_their_parent(tiny_raw, tmp_path):
    raw = {**tiny_raw, "federation": {**tiny_raw["federation"], "rounds": 50}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    parent = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "compare", str(cfg), "--methods",
                               "all-in-one,one-by-one", "--jobs", "2", "--out", str(tmp_path / "cmp"), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    for _ in range(600):  # until both workers have started their runs (at most 5 minutes)
        workers = _children(parent.pid)
        if len(workers) >= 2 and all((tmp_path / "cmp" / m / "config.yaml").exists()
                                     for m in ("all-in-one", "one-by-one")):
            break
        time.sleep(0.5)
    assert len(workers) >= 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(600):  # each worker notices within about a second; allow a busy machine 5 minutes
        if not any(_alive(p) for p in workers):
            break
        time.sleep(0.5)
    alive = [p for p in workers if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the killed parent"
    # and the comparison resumes where it stopped
    assert main(["compare", str(cfg), "--methods", "all-in-one", "--out", str(tmp_path / "cmp"),
                 "--quiet", "--set", "federation.rounds=50"]) == 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_runfailed_is_a_value_error():
    assert issubclass(RunFailed, ValueError)  # the CLI turns it into one line and exit 2


def test_messages_name_the_real_problem(tiny_raw, tmp_path, capsys):
    """A dangling symlink as --out, a slowdown for a client that does not exist, an affinity value in quotes."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_raw, "method": "all-in-one"}))
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    assert main(["run", str(cfg), "--out", str(link), "--quiet"]) == 2
    assert "symbolic link to" in capsys.readouterr().err
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet", "--set",
                 "cost.speed_factors={nobody: 2.0}"]) == 2
    err = capsys.readouterr().err
    assert "cost.speed_factors names client(s) ['nobody']" in err and "building_000" in err
    assert not (tmp_path / "r").exists()
    aff = tmp_path / "a.json"
    aff.write_text(json.dumps({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": "0.5"}, "b": {"a": 0, "b": 0}}}))
    assert main(["split", "--affinity", str(aff), "--splits", "2"]) == 2
    assert "got str '0.5' (a string: write the number without quotes)" in capsys.readouterr().err


def test_a_full_disk_at_the_first_checkpoint_then_resume(tiny_raw, tmp_path, capsys, monkeypatch):
    """The disk fills while the first checkpoint is written: exit 2 saying a run continues with --resume —
    and it does, to the uninterrupted run's numbers (was: --resume refused, the run had trained rounds)."""
    import errno

    from fedmas.server import state as st

    whole = _finished(tiny_raw, tmp_path / "a")
    want = json.loads((whole / "summary.json").read_text())["test_loss"]
    raw = {**tiny_raw, "method": "all-in-one", "federation": {**tiny_raw["federation"], "rounds": 2}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    real = st.save_file

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "a run continues with --resume" in capsys.readouterr().err
    monkeypatch.setattr(st, "save_file", real)
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["test_loss"] == want


def test_a_checkpoint_from_another_seeds_run_is_named_as_such(tiny_raw, tmp_path, capsys):
    import shutil

    runs = []
    for seed in (0, 1):
        raw = {**tiny_raw, "seed": seed, "method": "all-in-one", "federation": {**tiny_raw["federation"], "rounds": 3}}
        execute(Config.model_validate(raw), tmp_path / f"s{seed}", progress=False, stop_after=1)
        runs.append(tmp_path / f"s{seed}")
    shutil.rmtree(runs[0] / "checkpoint")
    shutil.copytree(runs[1] / "checkpoint", runs[0] / "checkpoint")
    assert main(["run", "--resume", str(runs[0]), "--quiet"]) == 2
    assert "copied in from another run (another seed or config)" in capsys.readouterr().err
