"""Every method end to end on tiny data, through the CLI's runner; resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedmas.config import Config
from fedmas.run import execute

pytestmark = pytest.mark.slow


def _cfg(raw: dict, **over) -> Config:
    raw = {**raw, **over}
    return Config.model_validate(raw)


@pytest.mark.parametrize("method", ["all-in-one", "one-by-one", "mas", "random", "tag", "hoa"])
def test_method_runs(tiny_raw, tmp_path, method):
    cfg = _cfg(tiny_raw, method=method)
    if method == "hoa":
        cfg.hoa.pair_rounds = 1
    s = execute(cfg, tmp_path / method, progress=False)
    assert s is not None
    assert set(s["test_loss"]) == set(cfg.task_list)
    assert s["total_test_loss"] == pytest.approx(sum(s["test_loss"].values()))
    c = s["costs"]
    assert c["train_s"] > 0 and c["bytes_down"] > 0 and c["bytes_up"] > 0 and c["energy_j"] > 0
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("fl_task" in x for x in lines)
    if method == "one-by-one":
        assert s["rounds"] == 3 * cfg.federation.rounds
        assert [f["tasks"] for f in s["fl_tasks"]] == [[t] for t in cfg.task_list]
    if method in ("mas", "random"):
        split = json.loads((tmp_path / method / "split.json").read_text())
        assert len(split["chosen"]["groups"]) <= 2
        assert s["rounds"] == cfg.federation.rounds
    if method == "mas":
        aff = json.loads((tmp_path / method / "affinity.json").read_text())
        assert aff["tasks"] == list(cfg.task_list) and aff["rounds"] == 1  # the first 0.1·R merged rounds
        assert (tmp_path / method / "affinity.png").stat().st_size > 1000
        assert [c["k"] for c in split["candidates"]] == [1, 2]
    if method == "tag":  # the affinity phase is charged too
        assert any(f["name"] == "merged" for f in s["fl_tasks"])
        assert s["fl_tasks"][0]["costs"]["train_s"] > 0
    if method == "hoa":
        names = [f["name"] for f in s["fl_tasks"]]
        assert sum(n.startswith("probe-") for n in names) == 3 + 3


def test_mas_split_initialises_from_merged(tiny_raw, tmp_path):
    cfg = _cfg(tiny_raw, method="mas")
    execute(cfg, tmp_path / "r", progress=False, stop_after=2)  # merged phase done, nothing split yet
    from fedmas.server.state import load_checkpoint

    st = load_checkpoint(tmp_path / "r")
    assert [t.name for t in st.finished] == ["merged"] and not st.active
    merged = st.weights["merged"]
    s = execute(None, tmp_path / "r", resume=True, progress=False, stop_after=None)
    assert s is not None
    groups = s["groups"]
    assert len(groups) >= 1
    # and the same run uninterrupted takes the same decision
    s2 = execute(cfg, tmp_path / "r2", progress=False)
    assert s2["groups"] == groups
    assert s2["total_test_loss"] == pytest.approx(s["total_test_loss"], rel=1e-6)
    assert merged  # merged weights existed when the split happened


def test_auto_splits_and_merge_rounds(tiny_raw, tmp_path):
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 6}
    raw["mas"] = {**raw["mas"], "splits": "auto", "merge_rounds": "auto", "min_merge_rounds": 2,
                  "max_merge_rounds": 4, "settle_patience": 1, "settle_threshold": -1.0}
    s = execute(_cfg(raw, method="mas"), tmp_path / "auto", progress=False)
    split = json.loads((tmp_path / "auto" / "split.json").read_text())
    assert "smallest k" in split["rule"]
    assert [c["k"] for c in split["candidates"]] == [1, 2, 3]
    merged = next(f for f in s["fl_tasks"] if f["name"] == "merged")
    assert merged["rounds"] == 2  # threshold −1: settled as soon as allowed


def _write_cfg(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "fedmas.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_then_resume_gives_uninterrupted_result(tiny_raw, tmp_path):
    raw = dict(tiny_raw)
    raw["method"] = "mas"
    raw["federation"] = {**raw["federation"], "rounds": 6}
    raw["mas"] = {**raw["mas"], "merge_rounds": 3}
    cfg_path = _write_cfg(tmp_path / "c.yaml", raw)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = _run_cli(["run", str(cfg_path), "--out", str(tmp_path / "ref"), "--quiet"], env)
    assert ref.wait(300) == 0, ref.stderr.read()
    want = json.loads((tmp_path / "ref" / "summary.json").read_text())
    # kill at several points: early, right at the split, late
    for kill_after_rounds in (1, 3, 5):
        out = tmp_path / f"k{kill_after_rounds}"
        p = _run_cli(["run", str(cfg_path), "--out", str(out)], env)
        deadline = time.time() + 300
        while time.time() < deadline:
            st = out / "checkpoint" / "state.json"
            if st.exists():
                try:
                    if json.loads(st.read_text())["round"] >= kill_after_rounds:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not (out / "summary.json").exists()
        r = _run_cli(["run", "--resume", str(out), "--quiet"], env)
        assert r.wait(300) == 0, r.stderr.read()
        got = json.loads((out / "summary.json").read_text())
        assert got["groups"] == want["groups"]
        assert got["total_test_loss"] == pytest.approx(want["total_test_loss"], rel=1e-9, abs=1e-9)
        rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        ref_rounds = [json.loads(x)["round"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
        assert rounds == ref_rounds  # no duplicated or missing metric lines


def _mas(tiny_raw, **mas) -> Config:
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 6}
    raw["mas"] = {**raw["mas"], "merge_rounds": 4, **mas}
    return Config.model_validate(raw)


def _lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_split_schedule_restart_and_continue(tiny_raw, tmp_path):
    """restart: the merged phase runs the poly schedule over its R0 rounds, each group afresh over its own;
    continue: one schedule over R, the groups take it on from round R0."""
    lr = 0.1
    poly = lambda pos, total: lr * (1 - pos / total) ** 0.9  # noqa: E731
    for mode, want in [("restart", [poly(r, 4) for r in range(4)] + [poly(r, 2) for r in range(2)]),
                       ("continue", [poly(r, 6) for r in range(6)])]:
        run = tmp_path / mode
        execute(_mas(tiny_raw, split_schedule=mode), run, progress=False)
        by_round: dict[int, set[float]] = {}
        for ln in _lines(run):
            by_round.setdefault(ln["round"], set()).add(ln["lr"])
        assert [len(v) for v in by_round.values()] == [1] * 6  # every group of a round at the same lr
        got = [next(iter(by_round[r])) for r in range(6)]
        assert got == pytest.approx(want, rel=1e-12), mode
        assert json.loads((run / "split.json").read_text())["split_schedule"] == mode


def test_split_uses_the_first_affinity_rounds_and_measuring_stops(tiny_raw, tmp_path):
    run = tmp_path / "r"
    s = execute(_mas(tiny_raw, affinity_rounds=2), run, progress=False)
    aff = json.loads((run / "affinity.json").read_text())
    assert [h["round"] for h in aff["history"]] == [0, 1] and aff["rounds"] == 2  # nothing measured after round 1
    mean = np.mean([h["matrix"] for h in aff["history"]], axis=0)
    split = json.loads((run / "split.json").read_text())
    np.testing.assert_allclose(split["affinity"], mean)
    assert split["affinity_rounds"] == 2 and split["merge_rounds"] == 4 and split["split_rounds"] == 2
    merged = [ln for ln in _lines(run) if ln["fl_task"] == "merged"]
    assert len(merged) == 4 and s["rounds"] == 6
    full = tmp_path / "all"  # the ablation: affinity over every merged round
    execute(_mas(tiny_raw, affinity_rounds="all"), full, progress=False)
    assert len(json.loads((full / "affinity.json").read_text())["history"]) == 4
    last = tmp_path / "last"  # the ablation: the N merged rounds just before the split
    execute(_mas(tiny_raw, affinity_rounds=2, affinity_window="last"), last, progress=False)
    aff = json.loads((last / "affinity.json").read_text())
    assert [h["round"] for h in aff["history"]] == [2, 3] and aff["rounds"] == 2
    split = json.loads((last / "split.json").read_text())
    np.testing.assert_allclose(split["affinity"], np.mean([h["matrix"] for h in aff["history"]], axis=0))
    assert split["affinity_rounds_rule"] == "the last 2 merged rounds"
