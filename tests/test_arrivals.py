"""FL tasks that arrive mid-training (arrival.tasks, fedmas run --resume --add-task): probe, placement, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmas import arrivals
from fedmas.config import Config, ConfigError
from fedmas.data import load_federated
from fedmas.run import execute

NEW = "edge_texture"


def _raw(tiny_raw, arrive: int | None = 3, **arrival) -> dict:
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 6}
    raw["arrival"] = {"tasks": {NEW: arrive} if arrive is not None else {}, **arrival}
    return raw


def _files(run) -> dict:
    keep = ("summary.json", "arrivals.json", "split.json", "costs.json")
    out = {f: json.loads((run / f).read_text()) for f in keep}
    out["metrics"] = [{k: v for k, v in json.loads(x).items() if k != "round_s"}
                      for x in (run / "metrics.jsonl").read_text().splitlines()]
    for doc in (out["summary.json"], out["costs.json"]):  # measured seconds and energy differ between runs
        _drop_measured(doc)
    return out


def _drop_measured(doc) -> None:
    """Without what is measured rather than computed: seconds, hours, energy, and the reply sizes (their
    metrics carry measured times, whose text length varies by a few bytes)."""
    if isinstance(doc, dict):
        for k in list(doc):
            if k.endswith(("_s", "_h")) or "energy" in k or k == "bytes_up":
                doc.pop(k)
            else:
                _drop_measured(doc[k])
    elif isinstance(doc, list):
        for x in doc:
            _drop_measured(x)


def test_arrival_is_probed_placed_and_resumes_identically_across_the_probe(tiny_raw, tmp_path):
    cfg = Config.model_validate(_raw(tiny_raw))
    whole = execute(cfg, tmp_path / "whole", progress=False)
    assert whole is not None
    rec = json.loads((tmp_path / "whole" / "arrivals.json").read_text())[NEW]
    # split after round 1 (merge_rounds 2); the groups have 4 rounds, so the probe takes 2 (3 and 4)
    assert rec["round"] == 3 and rec["probe_start"] == 3 and rec["probe_rounds"] == 2
    groups = [p["group"] for p in rec["probes"]]
    assert groups == ["group1", "group2"] and set(rec["gain"]) == set(groups)
    placed = rec["placed"]
    assert placed["round"] == 5 and placed["how"] in ("joined", "own group")
    best = max(rec["gain"], key=rec["gain"].get)
    if rec["gain"][best] > 0:
        assert placed == {**placed, "how": "joined", "fl_task": best}
    else:
        assert placed["fl_task"] == f"group-{NEW}" and placed["init_from"] == f"probe-{NEW}@{best}"
    assert whole["owner"][NEW] == placed["fl_task"] and NEW in whole["test_loss"]
    assert sorted(t for g in whole["groups"] for t in g) == sorted(cfg.task_list)
    rows = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if r["role"] == arrivals.PROBE]
    assert sorted({r["round"] for r in probes}) == [3, 4] and all(r["tasks"][-1] == NEW for r in probes)
    assert not any(NEW in r["tasks"] for r in rows if r["round"] < 3)  # it does not train before it arrives
    assert {f"probe-{NEW}@group1", f"probe-{NEW}@group2"} <= {t["name"] for t in whole["fl_tasks"]}

    # killed after round 3 (the probe's first round), resumed: the same numbers and decisions
    execute(Config.model_validate(_raw(tiny_raw)), tmp_path / "cut", progress=False, stop_after=4)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert any(t["role"] == arrivals.PROBE for t in state["active"])
    execute(None, tmp_path / "cut", resume=True, progress=False)
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_add_task_on_a_resumed_run_equals_the_arrival_in_the_config(tiny_raw, tmp_path):
    execute(Config.model_validate(_raw(tiny_raw, arrive=None)), tmp_path / "late", progress=False, stop_after=3)
    got = execute(None, tmp_path / "late", resume=True, progress=False, add_tasks=(NEW,))
    saved = Config.model_validate(__import__("yaml").safe_load((tmp_path / "late" / "config.yaml").read_text()))
    assert saved.arrival.tasks == {NEW: 3}
    ref = execute(Config.model_validate(_raw(tiny_raw, arrive=3)), tmp_path / "ref", progress=False)
    assert got is not None and got["owner"] == ref["owner"] and got["groups"] == ref["groups"]
    assert got["total_test_loss"] == ref["total_test_loss"]
    assert _files(tmp_path / "late") == _files(tmp_path / "ref")
    with pytest.raises(ConfigError, match="has finished"):
        execute(None, tmp_path / "late", resume=True, progress=False, add_tasks=("keypoints2d",))


def test_add_task_is_refused_with_a_clear_reason(tiny_raw, tmp_path, capsys):
    from fedmas.cli import main

    execute(Config.model_validate(_raw(tiny_raw, arrive=None)), tmp_path / "r", progress=False, stop_after=3)
    with pytest.raises(ConfigError, match="has that task already"):
        execute(None, tmp_path / "r", resume=True, progress=False, add_tasks=("normal",))
    with pytest.raises(ConfigError, match="unknown task"):
        execute(None, tmp_path / "r", resume=True, progress=False, add_tasks=("no_such_task",))
    assert main(["run", "--add-task", NEW]) != 0
    assert "--resume" in capsys.readouterr().err
    raw = _raw(tiny_raw, arrive=None)
    raw["method"] = "all-in-one"
    execute(Config.model_validate(raw), tmp_path / "aio", progress=False, stop_after=1)
    with pytest.raises(ConfigError, match="method mas"):
        execute(None, tmp_path / "aio", resume=True, progress=False, add_tasks=(NEW,))


@pytest.mark.parametrize(("change", "match"), [
    ({"method": "all-in-one"}, "method mas"),
    ({"arrival": {"tasks": {"normal": 3}}}, "among the starting tasks"),
    ({"arrival": {"tasks": {NEW: 6}}}, "at or after the last round"),
    ({"arrival": {"tasks": {NEW: 0}}}, "round index ≥ 1"),
    ({"arrival": {"tasks": {NEW: 1.5}}}, "fraction"),
    ({"arrival": {"policy": "later"}}, "probe"),
])
def test_arrival_config_is_checked(tiny_raw, change, match):
    raw = {**_raw(tiny_raw), **change}
    with pytest.raises(ValueError, match=match):
        Config.model_validate(raw)


def test_a_fraction_arrives_at_that_share_of_the_rounds(tiny_raw):
    cfg = Config.model_validate(_raw(tiny_raw, arrive=0.5))  # type: ignore[arg-type]
    assert cfg.arrival.round_of(NEW, cfg.federation.rounds) == 3
    assert cfg.task_list == (*tiny_raw["tasks"], NEW) and cfg.start_tasks == tuple(tiny_raw["tasks"])


def test_gain_follows_the_split_objective():
    # tasks a, b form group g1, c forms g2 (a single task); n helps a and b strongly and hurts c
    order = ["a", "b", "c", "n"]
    z = np.array([[0.0, 0.1, 0.0, 0.3],
                  [0.1, 0.0, 0.0, 0.3],
                  [0.0, 0.0, 0.0, -0.2],
                  [0.3, 0.3, -0.2, 0.0]])
    g = arrivals.gains(z, order, {"g1": ["a", "b"], "g2": ["c"]}, "n")
    # by hand (scores summed over tasks): alone n scores mean of its row and column = (0.3+0.3-0.2)*2/6
    alone_n = (0.3 + 0.3 - 0.2 + 0.3 + 0.3 - 0.2) / 6
    # g1 ∪ n: a scores (0.1+0.3)/2, b (0.1+0.3)/2, n (0.3+0.3)/2; before: a 0.1, b 0.1
    assert g["g1"] == pytest.approx((0.2 + 0.2 + 0.3) - (0.1 + 0.1 + alone_n))
    # g2 ∪ n: c scores −0.2, n −0.2; before: c alone = mean of its row and column = −0.4/6
    assert g["g2"] == pytest.approx((-0.2 - 0.2) - (-0.4 / 6 + alone_n))
    assert g["g1"] > 0 > g["g2"]
    # a pair nobody measured is filled by the split's rule (smallest measured off-diagonal value)
    z2, z0 = z.copy(), z.copy()
    z2[2, 3] = z2[3, 2] = np.nan
    z0[2, 3] = z0[3, 2] = 0.0  # the smallest measured off-diagonal value left
    assert arrivals.gains(z2, order, {"g1": ["a", "b"], "g2": ["c"]}, "n") == pytest.approx(
        arrivals.gains(z0, order, {"g1": ["a", "b"], "g2": ["c"]}, "n"))


def test_a_newcomer_that_joins_the_merged_model_takes_part_in_the_split(tiny_raw, tmp_path, monkeypatch):
    raw = _raw(tiny_raw, arrive=1)
    raw["mas"] = {**raw["mas"], "merge_rounds": 4}  # the merged model has 3 rounds left at round 1
    monkeypatch.setattr(arrivals, "gains", lambda z, order, groups, name: dict.fromkeys(groups, 1.0))
    summary = execute(Config.model_validate(raw), tmp_path / "run", progress=False)
    rec = json.loads((tmp_path / "run" / "arrivals.json").read_text())[NEW]
    assert rec["placed"]["how"] == "joined" and rec["placed"]["fl_task"] == "merged"
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["tasks"] == [*tiny_raw["tasks"], NEW]  # the split covers the newcomer
    i = split["tasks"].index(NEW)
    probe = rec["affinity"]["merged"]
    for j, t in enumerate(split["tasks"][:-1]):  # its pairs are the probe's measurements
        assert split["affinity"][i][j] == pytest.approx(probe["matrix"][-1][probe["tasks"].index(t)])
    assert summary is not None and sorted(t for g in summary["groups"] for t in g) == sorted(split["tasks"])


def test_policy_alone_trains_the_newcomer_from_scratch_for_r_rounds(tiny_raw, tmp_path):
    summary = execute(Config.model_validate(_raw(tiny_raw, policy="alone")), tmp_path / "run", progress=False)
    assert summary is not None and summary["owner"][NEW] == f"single-{NEW}"
    single = next(t for t in summary["fl_tasks"] if t["name"] == f"single-{NEW}")
    assert single["started_round"] == 3 and single["rounds"] == 6 and summary["rounds"] == 9


def test_probes_go_only_to_clients_holding_the_newcomers_labels(tiny_raw, tmp_path, monkeypatch):
    from fedmas.engines.inprocess import InProcessEngine

    raw = _raw(tiny_raw)
    raw["data"] = {**raw["data"], "buildings": 6, "label_coverage": 0.6}
    cfg = Config.model_validate(raw)
    holds = load_federated(cfg.data, cfg.task_list, cfg.arrival_tasks).holds
    assert holds is not None and any(NEW not in h for h in holds.values())
    # the starting tasks' labels are drawn as without the newcomer
    without = load_federated(cfg.data, cfg.start_tasks).holds
    assert {c: tuple(t for t in h if t != NEW) for c, h in holds.items()} == without
    sent: list[tuple[str, str, set[str]]] = []
    real = InProcessEngine.run

    def spy(self, jobs, deadline_s):
        sent.extend((j.client, j.fl_task, set(j.message.arrays)) for j in jobs)
        return real(self, jobs, deadline_s)

    monkeypatch.setattr(InProcessEngine, "run", spy)
    assert execute(cfg, tmp_path / "run", progress=False) is not None
    probes = [(c, keys) for c, fl, keys in sent if fl.startswith("probe-")]
    assert probes and all(NEW in holds[c] for c, _ in probes)
    for c, _fl, keys in sent:
        heads = {k.split(".")[1] for k in keys if k.startswith("heads.")}
        assert heads <= set(holds[c])


def test_sigkill_during_the_probe_then_resume_gives_the_uninterrupted_result(tiny_raw, tmp_path):
    """A real SIGKILL at a fixed point: after the probe's last round is trained and logged, before its
    checkpoint is written (the process kills itself there, so no timing decides where it dies)."""
    import subprocess
    import sys

    import yaml

    cfg = Config.model_validate(_raw(tiny_raw))
    execute(cfg, tmp_path / "whole", progress=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    driver = (
        "import os, signal, sys\n"
        "import fedmas.server.loop as loop\n"
        "real = loop.save_checkpoint\n"
        "def save(run_dir, st):\n"
        "    if st.round == 5:  # rounds 0-4 trained: the probe (rounds 3 and 4) has just finished\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(run_dir, st)\n"
        "loop.save_checkpoint = save\n"
        "from fedmas.cli import main\n"
        "sys.exit(main(['run', sys.argv[1], '--out', sys.argv[2], '--quiet']))\n")
    out = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", driver, str(tmp_path / "c.yaml"), str(out)], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["round"] == 4 and any(t["role"] == arrivals.PROBE for t in state["active"])
    assert any(json.loads(x)["round"] == 4 for x in (out / "metrics.jsonl").read_text().splitlines())
    r = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", "--resume", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _files(out) == _files(tmp_path / "whole")
