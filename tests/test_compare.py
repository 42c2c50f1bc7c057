"""fedmas compare: every method charged its full cost, resumable, figure and table written."""

from __future__ import annotations

import json
from concurrent.futures import Future

import pytest
import torch
import yaml

from fedmas.cli import main
from fedmas.compare import _run_one, gather, parse_methods
from fedmas.config import Config, ConfigError
from fedmas.run import execute
from fedmas.stats import mean_ci

pytestmark = pytest.mark.slow


def test_compare_runs_and_resumes(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    tiny_raw["hoa"] = {"pair_rounds": 1}
    cfg.write_text(yaml.safe_dump(tiny_raw))
    out = tmp_path / "cmp"
    methods = "mas:2,all-in-one,all-in-one-fedprox,one-by-one,tag:2,hoa:2,random:2"
    assert main(["compare", str(cfg), "--methods", methods, "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "comparison.json").read_text())
    res = {r["key"]: r for r in doc["results"]}
    assert set(res) == set(methods.split(","))
    assert (out / "comparison.png").stat().st_size > 5000 and (out / "energy.png").stat().st_size > 5000
    md = (out / "comparison.md").read_text()
    assert "MAS 2 splits" in md and "total test loss" in md and "cannot be told" in md
    # full cost of every phase: TAG pays its affinity phase, HOA its probes, one-by-one 3× the rounds
    tag = json.loads((out / "tag-2" / "summary.json").read_text())
    assert any(f["role"] == "merged" for f in tag["fl_tasks"])
    assert tag["costs"]["train_s"] == pytest.approx(sum(f["costs"]["train_s"] for f in tag["fl_tasks"]))
    hoa = json.loads((out / "hoa-2" / "summary.json").read_text())
    assert sum(f["role"] == "probe" for f in hoa["fl_tasks"]) == 6
    assert res["one-by-one"]["runs"][0]["rounds"] == 3 * tiny_raw["federation"]["rounds"]
    before = (out / "mas-2" / "summary.json").stat().st_mtime_ns
    assert main(["compare", str(cfg), "--methods", "mas:2,all-in-one", "--out", str(out), "--quiet"]) == 0
    assert (out / "mas-2" / "summary.json").stat().st_mtime_ns == before  # not run again


def test_parse_methods_errors():
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        parse_methods("magic", 3)
    with pytest.raises(ConfigError, match="split count 1..3"):
        parse_methods("mas:9", 3)
    assert parse_methods("mas:auto,all-in-one-gradnorm", 3)[1][2] == {"federation": {"task_weighting": "gradnorm"}}


def test_compare_over_seeds_reports_intervals_and_refuses_a_changed_config(tiny_raw, tmp_path, capsys,
                                                                           monkeypatch):
    import fedmas.compare

    loads = []
    real = fedmas.compare.load_federated
    monkeypatch.setattr(fedmas.compare, "load_federated", lambda *a: loads.append(a) or real(*a))
    cfg = tmp_path / "c.yaml"
    tiny_raw["federation"]["rounds"] = 2
    tiny_raw["mas"]["merge_rounds"] = 1
    cfg.write_text(yaml.safe_dump(tiny_raw))
    out = tmp_path / "cmp"
    args = ["compare", str(cfg), "--methods", "mas:2,one-by-one", "--seeds", "0,1,2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["seeds"] == [0, 1, 2]
    assert len(loads) == 1  # 6 runs, the data loaded once
    mas = next(r for r in doc["results"] if r["key"] == "mas:2")
    totals = [r["total_loss"] for r in mas["runs"]]
    assert len(set(totals)) == 3  # the seeds really differ
    m, half = mas["total_loss"], mas["total_loss_ci"]
    sd = (sum((x - m) ** 2 for x in totals) / 2) ** 0.5
    assert m == pytest.approx(sum(totals) / 3) and half == pytest.approx(4.303 * sd / 3 ** 0.5)
    obo = next(r for r in doc["results"] if r["key"] == "one-by-one")
    assert obo["normalised_total"] == pytest.approx(3.0) and mas["normalised_total"] > 0
    win = doc["wins"][0]
    assert win["seeds"] == 3 and 0 <= win["lower_loss_in"] <= 3
    other = {r["seed"]: r["total_loss"] for r in obo["runs"]}
    diffs = [r["total_loss"] - other[r["seed"]] for r in mas["runs"]]
    assert (win["paired_diff"], win["paired_diff_ci"]) == pytest.approx(mean_ci(diffs))
    assert win["verdict"] in ("lower", "higher", "cannot tell") and "Paired" in (out / "comparison.md").read_text()
    assert "in " in (out / "comparison.md").read_text() and (out / "seed-1" / "mas-2" / "summary.json").exists()
    # a run saved before a config key existed reads as that key's default: reused, not refused
    before = (out / "seed-0" / "mas-2" / "summary.json").stat().st_mtime_ns
    saved = out / "seed-0" / "mas-2" / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["mas"]["affinity_window"], older["data"]["options"]
    saved.write_text(yaml.safe_dump(older))
    state = out / "seed-0" / "mas-2" / "checkpoint" / "state.json"  # as that older version wrote it: no hashes
    doc = json.loads(state.read_text())
    for k in ("state_sha256", "weights_sha256", "config_sha256", "trivial_sha256"):
        doc.pop(k)
    doc["format"] = 1
    state.write_text(json.dumps(doc))
    assert main(args) == 0
    assert (out / "seed-0" / "mas-2" / "summary.json").stat().st_mtime_ns == before
    # the same folder with another config is refused, naming what changed; nothing is rerun or mixed
    capsys.readouterr()
    assert main(args + ["--set", "federation.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "federation.lr: 0.1 → 0.05" in err
    assert (out / "seed-0" / "mas-2" / "summary.json").stat().st_mtime_ns == before
    # run again with one of its seeds: that seed's runs are reused from seed-<s>/ (not run again elsewhere)
    one = ["compare", str(cfg), "--methods", "mas:2,one-by-one", "--out", str(out), "--quiet", "--seeds"]
    seed1 = (out / "seed-1" / "mas-2" / "summary.json").stat().st_mtime_ns
    assert main([*one, "1"]) == 0
    assert (out / "seed-1" / "mas-2" / "summary.json").stat().st_mtime_ns == seed1 and not (out / "mas-2").exists()
    # a one-seed comparison made before that rule kept its run in <out>/<method>: used where it is
    (out / "seed-2" / "mas-2").rename(out / "mas-2")
    seed2 = (out / "mas-2" / "summary.json").stat().st_mtime_ns
    assert main([*one, "2"]) == 0
    assert (out / "mas-2" / "summary.json").stat().st_mtime_ns == seed2 and not (out / "seed-2" / "mas-2").exists()


def test_interval_arithmetic_on_a_known_sample():
    from fedmas.stats import t95

    m, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3, t(2) = 4.303
    assert m == 2.0 and half == pytest.approx(4.303 / 3 ** 0.5)
    assert mean_ci([5.0]) == (5.0, None)
    assert t95(1) == 12.706 and t95(30) == 2.042 and abs(t95(120) - 1.980) < 0.005
    with pytest.raises(ValueError):
        t95(0)


def test_verdict_of_a_paired_difference():
    from fedmas.stats import verdict

    assert verdict(-0.3, 0.2) == "lower" and verdict(0.3, 0.2) == "higher"
    assert verdict(-0.1, 0.2) == "cannot tell" and verdict(0.1, None) == "one seed: cannot tell"
    assert verdict(0.0, 0.0) == "identical"
    from fedmas.stats import fmt_g

    assert fmt_g(1340.0, 6.8e-13) == "1.34e+03 ± 0" and fmt_g(2030.0, 36.0) == "2.03e+03 ± 36"


def _without_timing(doc):
    """A summary or comparison without what the clock decides: seconds, and the bytes of replies (their metadata
    carries each client's compute seconds as text, whose length varies by a few bytes)."""
    if isinstance(doc, dict):
        return {k: _without_timing(v) for k, v in doc.items()
                if not k.endswith(("_s", "_s_ci", "_h")) and not k.startswith("bytes") and k != "threads"}
    if isinstance(doc, list):
        return [_without_timing(v) for v in doc]
    return doc


def test_compare_jobs_2_gives_the_files_of_jobs_1(tiny_raw, tmp_path):
    from safetensors.torch import load_file

    tiny_raw["threads"] = 2  # --jobs 2 gives each run 1 thread: the sequential comparison runs at 1 thread too
    tiny_raw["federation"]["rounds"] = 2
    tiny_raw["mas"]["merge_rounds"] = 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    common = ["compare", str(cfg), "--methods", "mas:2,all-in-one,one-by-one", "--seeds", "0,1", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "seq"), "--set", "threads=1"]) == 0
    assert main([*common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    seq = json.loads((tmp_path / "seq" / "comparison.json").read_text())
    par = json.loads((tmp_path / "par" / "comparison.json").read_text())
    assert _without_timing(seq["results"]) == _without_timing(par["results"]) and seq["wins"] == par["wins"]
    for run in ("seed-0/mas-2", "seed-1/all-in-one", "seed-1/one-by-one"):
        a, b = (json.loads((tmp_path / d / run / "summary.json").read_text()) for d in ("seq", "par"))
        assert _without_timing(a) == _without_timing(b)
        assert (tmp_path / "par" / run / "metrics.jsonl").exists()
        wa, wb = (load_file(str(next((tmp_path / d / run / "checkpoint").glob("weights-*.safetensors"))))
                  for d in ("seq", "par"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert yaml.safe_load((tmp_path / "par" / "seed-0" / "mas-2" / "config.yaml").read_text())["threads"] == 1
    assert main([*common, "--out", str(tmp_path / "par"), "--jobs", "0"]) == 2


KILLED_WORKER = '''
import multiprocessing, os, signal
from fedmas.data import load_federated


def data(cfg, tasks):
    if multiprocessing.parent_process() is not None:  # a worker of compare --jobs: killed from outside
        os.kill(os.getpid(), signal.SIGKILL)
    return load_federated(cfg.model_copy(update={"dataset": "scenes", "validation_fraction": 0.0}), tasks)
'''


@pytest.mark.slow
def test_a_killed_worker_is_named_not_called_a_bug(tiny_raw, tmp_path, monkeypatch, capsys):
    (tmp_path / "killedworker.py").write_text(KILLED_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the spawned workers import the plugin too
    raw = {**tiny_raw, "data": {**tiny_raw["data"], "dataset": "python:killedworker:data"}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    rc = main(["compare", str(cfg), "--methods", "all-in-one,one-by-one", "--jobs", "2", "--quiet",
               "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert rc == 2 and "ended abruptly" in err and "the same command resumes" in err, err
    assert "bug in fedmas" not in err


def test_parallel_runs_are_reported_as_each_finishes_not_when_all_have():
    first, second, third = Future(), Future(), Future()
    futures = {first: 0, second: 1, third: 2}
    for f in futures:
        f.set_running_or_notify_cancel()
    seen: list[tuple[int, str, int]] = []

    def done(i, result, finished):
        seen.append((i, result, finished))
        if i == 1:  # the others still run while this one is reported
            assert not first.done() and not third.done()
            third.set_result("c")
        elif i == 2:
            assert not first.done()
            first.set_result("a")

    second.set_result("b")
    assert gather(futures, done) == {0: "a", 1: "b", 2: "c"}
    assert seen == [(1, "b", 1), (2, "c", 2), (0, "a", 3)]


def test_a_failed_parallel_run_stops_the_runs_not_yet_started():
    running, failing, queued = Future(), Future(), Future()
    running.set_running_or_notify_cancel()
    failing.set_running_or_notify_cancel()
    failing.set_exception(ConfigError("seed 1 holds a run of another config"))
    told: list[tuple[int, int, str]] = []
    with pytest.raises(ConfigError, match="another config"):
        gather({running: 0, failing: 1, queued: 2}, lambda *a: pytest.fail("nothing finished"),
               lambda i, still_running, e: told.append((i, still_running, str(e))))
    assert queued.cancelled() and not running.cancelled()
    assert told == [(1, 1, "seed 1 holds a run of another config")]


def test_an_interrupted_parallel_comparison_starts_nothing_more():
    finished, queued = Future(), Future()
    finished.set_running_or_notify_cancel()
    finished.set_result("a")

    def interrupted(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gather({finished: 0, queued: 1}, interrupted)
    assert queued.cancelled()


def test_a_comparison_resumes_a_run_with_its_own_thread_count(tiny_raw, tmp_path):
    """A run started with 2 torch threads and resumed by ``compare --jobs 2`` (1 thread per run) trains on 1:
    threads change float order only, and two runs of 2 threads on 2 cores would oversubscribe them. Its
    config.yaml is left as it was, so a later resume still matches its checkpoint."""
    raw = json.loads(json.dumps(tiny_raw))
    raw["threads"] = 2
    run = tmp_path / "r"
    before = torch.get_num_threads()
    try:
        assert execute(Config.model_validate(raw), run, progress=False, stop_after=1) is None
        saved = (run / "config.yaml").read_text()
        raw["threads"] = 1
        summary = _run_one(Config.model_validate(raw), run, "mas", False)
        assert torch.get_num_threads() == 1
        assert summary["rounds"] >= 2 and (run / "config.yaml").read_text() == saved
        assert execute(None, run, resume=True, progress=False) is not None  # finished: read back, hash intact
    finally:
        torch.set_num_threads(before)
