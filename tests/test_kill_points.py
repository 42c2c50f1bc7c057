"""Crash consistency by construction: a run killed at every write boundary of fedmas's own files (each atomic
rename, before and after; each removal; inside and after each append; each checkpoint step), then resumed,
ends at the uninterrupted run's numbers exactly — for a MAS run and for ``--resume --add-task``. The
boundaries are counted by tests/kill_runner.py, not sampled by time."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmas.config import Config
from fedmas.run import execute

pytestmark = pytest.mark.slow
RUNNER = str(Path(__file__).with_name("kill_runner.py"))


def _raw(tiny_raw: dict, start: str = "merged") -> dict:
    raw = copy.deepcopy(tiny_raw)
    raw["threads"] = 1
    raw["federation"] = {**raw["federation"], "rounds": 3}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1, "start": start}
    return raw


def _fedmas(args: list[str], kill_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDMAS_KILL_AT": str(kill_at)}
    return subprocess.run([sys.executable, RUNNER, *args, "--quiet"], capture_output=True, text=True, env=env,
                          timeout=600)


def _numbers(run: Path) -> tuple:
    s = json.loads((run / "summary.json").read_text())
    return s["test_loss"], s["groups"], s.get("val_loss"), s["rounds"]


def _boundaries(proc: subprocess.CompletedProcess) -> int:
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("BOUNDARIES "), last
    return int(last.split()[-1])


@pytest.mark.parametrize("start", ["scratch", "merged"])  # fedmas's default and the reference's
def test_a_run_killed_at_every_write_boundary_resumes_to_the_same_numbers(tiny_raw, tmp_path, start):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tiny_raw, start)))
    ref = tmp_path / "ref"
    assert _boundaries(_fedmas(["run", str(cfg), "--out", str(ref)], 0)) >= 20
    want = _numbers(ref)
    for k in itertools.count(1):  # until the run ends before its k-th boundary (their number may vary by one:
        run = tmp_path / f"k{k}"  # a lock file that is or is not there to remove)
        killed = _fedmas(["run", str(cfg), "--out", str(run)], k)
        if killed.returncode == 0:
            assert _boundaries(killed) < k and _numbers(run) == want
            break
        assert killed.returncode == 137, (k, killed.stderr[-1500:])
        if (run / "config.yaml").exists():
            got = execute(None, run, resume=True, progress=False)
        else:  # killed before the run wrote its config: it never started, and the same command starts it
            got = execute(Config.model_validate(yaml.safe_load(cfg.read_text())), run, progress=False)
        assert got is not None and _numbers(run) == want, (k, killed.stderr.splitlines()[-1])
        assert not [p.name for p in run.rglob("*.tmp")], k  # nothing half-written left behind
        shutil.rmtree(run)


def test_add_task_killed_at_every_write_boundary_resumes(tiny_raw, tmp_path):
    raw = _raw(tiny_raw)
    started = tmp_path / "started"
    assert execute(Config.model_validate(raw), started, progress=False, stop_after=1) is None
    ref = tmp_path / "ref"
    shutil.copytree(started, ref)
    whole = _fedmas(["run", "--resume", str(ref), "--add-task", "keypoints2d"], 0)
    assert _boundaries(whole) >= 10
    want = _numbers(ref)
    assert "keypoints2d" in json.loads((ref / "summary.json").read_text())["test_loss"]
    # the adding itself, up to and including the first checkpoint with the new task: later boundaries are
    # ordinary rounds', each killed in the test above
    named = [ln for ln in whole.stderr.splitlines() if ln.startswith("BOUNDARY ")]
    first_round = next(i for i, ln in enumerate(named) if "metrics.jsonl" in ln)
    last = next(i for i, ln in enumerate(named, start=1) if i > first_round and ln.endswith("checkpoint/state.json"))
    last += 1  # and the removal of the previous weights after it
    assert last >= 8
    for k in range(1, last + 1):
        run = tmp_path / f"k{k}"
        shutil.copytree(started, run)
        killed = _fedmas(["run", "--resume", str(run), "--add-task", "keypoints2d"], k)
        assert killed.returncode == 137, (k, killed.stderr[-1500:])
        took = "keypoints2d" in (yaml.safe_load((run / "config.yaml").read_text())["arrival"]["tasks"] or {})
        # the task was added before the kill (the run continues with it), or not at all (add it again)
        extra = [] if took else ["--add-task", "keypoints2d"]
        again = _fedmas(["run", "--resume", str(run), *extra], 0)
        assert again.returncode == 0, (k, killed.stderr.splitlines()[-1], again.stderr[-1500:])
        assert _numbers(run) == want, (k, killed.stderr.splitlines()[-1])
        shutil.rmtree(run)


def test_compare_killed_at_each_of_its_own_write_boundaries_resumes(tiny_raw, tmp_path):
    """Compare's bookkeeping (its marker, each run's last write, comparison.json/.md/.png, energy.png): killed
    there, the same command ends with the uninterrupted comparison's numbers. The runs' own boundaries are
    the first test's."""
    raw = _raw(tiny_raw)
    raw["federation"]["rounds"] = 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    args = ["compare", str(cfg), "--methods", "all-in-one,all-in-one-fedprox", "--quiet"]

    def results(out: Path) -> list:
        doc = json.loads((out / "comparison.json").read_text())
        return [(r["key"], r["total_loss"], r["train_tflop"]) for r in doc["results"]]

    ref = tmp_path / "ref"
    whole = _fedmas([*args, "--out", str(ref)], 0)
    _boundaries(whole)
    want = results(ref)
    named = [ln.split(": ", 1) for ln in whole.stderr.splitlines() if ln.startswith("BOUNDARY ")]
    runs = [str(ref / m) for m in ("all-in-one", "all-in-one-fedprox")]
    own = [int(k.split()[1]) for k, what in named
           if not any(r + "/" in what for r in runs) or what.endswith("summary.json")]
    assert len(own) >= 6, named
    for k in own:
        out = tmp_path / f"k{k}"
        killed = _fedmas([*args, "--out", str(out)], k)
        if killed.returncode == 0:  # the count may be one less (a lock file that was not there to remove)
            assert k == own[-1] and _boundaries(killed) < k and results(out) == want
            break
        assert killed.returncode == 137, (k, killed.stderr[-1500:])
        again = _fedmas([*args, "--out", str(out)], 0)
        assert again.returncode == 0, (k, killed.stderr.splitlines()[-1], again.stderr[-1500:])
        assert results(out) == want, (k, killed.stderr.splitlines()[-1])
        shutil.rmtree(out)
