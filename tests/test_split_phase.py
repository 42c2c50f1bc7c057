"""The split phase: a group starts from the merged weights, so with ``select: best_val`` the merged model at the
split is the group's first best-validation candidate (round 0) — a group never reports a model that validates
worse than the one it started from."""

from __future__ import annotations

import json

import pytest
import yaml

from fedmas.compare import config_changes
from fedmas.config import Config, load_config
from fedmas.run import execute

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("schedule", ["restart", "continue"])
def test_a_group_starts_with_the_merged_model_as_its_first_candidate(tiny_raw, tmp_path, schedule):
    raw = json.loads(json.dumps(tiny_raw))
    raw["federation"].update(select="best_val", rounds=4, lr=0.5)  # a large lr: a group may get worse
    raw["mas"].update(split_schedule=schedule)
    s = execute(Config.model_validate(raw), tmp_path / "r", progress=False)
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    groups = [f for f in state["finished"] if f["role"] == "final"]
    assert groups and all(f["started_from"] == "merged" for f in groups)
    for f in groups:
        assert f["start_val"] is not None and f["best_val"] <= f["start_val"]
        assert (f["best_round"] == 0) == (f["best_val"] == f["start_val"])
        assert f["selected_round"] == f["best_round"]
    by_name = {f["name"]: f for f in s["fl_tasks"]}
    assert all(by_name[f["name"]]["start_val_total_loss"] == f["start_val"] for f in groups)
    # the reported model's validation loss per task: round 0's is the start evaluation's, another round's is
    # the one metrics.jsonl logged for that round
    lines = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    trivial_val = json.loads((tmp_path / "r" / "trivial.json").read_text())["val_loss"]
    for f in groups:
        assert by_name[f["name"]]["start_val_loss"] == f["start_val_loss"]
        assert sum(f["start_val_loss"].values()) == pytest.approx(f["start_val"])
        if f["selected_round"] == 0:
            expected = f["start_val_loss"]
        else:
            line = next(ln for ln in lines if ln["fl_task"] == f["name"] and ln["fl_round"] == f["selected_round"])
            expected = {t: line[f"val_loss/{t}"] for t in f["tasks"]}
        for t in f["tasks"]:
            assert s["val_loss"][t] == expected[t]
            assert s["val_skill"][t] == pytest.approx(1 - expected[t] / trivial_val[t])
            assert "val_loss" not in s["test_metrics"][t]  # a validation number is not a test metric
    assert s["mean_val_skill"] == pytest.approx(sum(s["val_skill"].values()) / len(s["val_skill"]))


def test_with_select_last_nothing_is_evaluated_at_the_start(tiny_raw, tmp_path):
    s = execute(Config.model_validate(tiny_raw), tmp_path / "r", progress=False)
    assert all(f["start_val_total_loss"] is None and f["start_val_loss"] is None for f in s["fl_tasks"])
    lines = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for t, fl in s["owner"].items():  # the last round's model is reported: its validation loss
        last = [ln for ln in lines if ln["fl_task"] == fl][-1]
        assert s["val_loss"][t] == last[f"val_loss/{t}"]


def test_groups_from_scratch_take_the_same_decision_and_start_afresh(tiny_raw, tmp_path):
    """``mas.start: scratch``: the merged phase (the same rounds as with ``merged``, the schedule continued)
    decides the same groups from the same affinity; each group then trains R rounds from fresh weights
    instead of R − R0 from the merged model, and the merged phase's FLOPs are charged besides."""
    runs = {}
    for start in ("merged", "scratch"):
        raw = json.loads(json.dumps(tiny_raw))
        raw["mas"].update(start=start, split_schedule="continue", merge_rounds=1)
        runs[start] = execute(Config.model_validate(raw), tmp_path / start, progress=False)
    split = {s: json.loads((tmp_path / s / "split.json").read_text()) for s in runs}
    assert split["scratch"]["affinity"] == split["merged"]["affinity"]
    assert split["scratch"]["chosen"]["groups"] == split["merged"]["chosen"]["groups"]
    assert len(split["scratch"]["chosen"]["groups"]) == 2
    assert split["scratch"]["start"] == "scratch" and split["scratch"]["split_rounds"] == 4
    assert split["merged"]["start"] == "merged" and split["merged"]["split_rounds"] == 3
    states = {s: json.loads((tmp_path / s / "checkpoint" / "state.json").read_text()) for s in runs}
    for s, rounds in (("merged", 3), ("scratch", 4)):
        groups = [f for f in states[s]["finished"] if f["role"] == "final"]
        assert len(groups) == 2 and all(f["rounds"] == rounds for f in groups)
        assert all((f["started_from"] == "merged") == (s == "merged") for f in groups)
    lines = {s: [json.loads(ln) for ln in (tmp_path / s / "metrics.jsonl").read_text().splitlines()] for s in runs}
    merged_lines = {s: [ln for ln in lines[s] if ln["fl_task"] == "merged"] for s in runs}
    assert [ln["total_loss"] for ln in merged_lines["scratch"]] == [ln["total_loss"] for ln in merged_lines["merged"]]
    flop = {s: {f["name"]: f["costs"]["train_flop"] for f in runs[s]["fl_tasks"]} for s in runs}
    assert flop["scratch"]["merged"] == flop["merged"]["merged"] > 0
    for g in ("group1", "group2"):  # a group's FLOPs grow with its rounds: 4 against 3
        assert flop["scratch"][g] == pytest.approx(flop["merged"][g] * 4 / 3, rel=0.35)
        assert flop["scratch"][g] > flop["merged"][g]


def test_groups_from_scratch_refuse_arriving_tasks(tiny_raw):
    from fedmas.checks import check_config
    from fedmas.config import ConfigError

    raw = json.loads(json.dumps(tiny_raw))
    raw["mas"]["start"] = "scratch"
    raw["arrival"] = {"tasks": {"reshading": 2}}
    with pytest.raises(ConfigError, match="mas.start"):
        check_config(Config.model_validate(raw), "test")


def test_the_default_trains_groups_from_scratch_after_the_window_and_the_reference_is_one_line(tiny_raw):
    """fedmas's default MAS: the merged phase lasts the affinity window and the groups start afresh; the
    reference is ``start: merged`` (R0 = 0.7·R); with arriving tasks an unset start is ``merged``; a value the
    user sets wins."""
    raw = json.loads(json.dumps(tiny_raw))
    raw["mas"] = {"splits": 2}
    m = Config.model_validate(raw).mas
    assert (m.start, m.merge_rounds, m.affinity_rounds) == ("scratch", 0.1, 0.1)
    raw["mas"] = {"affinity_rounds": 0.3}
    assert Config.model_validate(raw).mas.merge_rounds == 0.3
    raw["mas"] = {"affinity_rounds": "all"}
    assert Config.model_validate(raw).mas.merge_rounds == 0.1
    raw["mas"] = {"start": "merged"}
    m = Config.model_validate(raw).mas
    assert (m.start, m.merge_rounds, m.affinity_rounds) == ("merged", 0.7, 0.1)
    raw["mas"] = {"start": "scratch", "merge_rounds": 3}
    assert Config.model_validate(raw).mas.merge_rounds == 3
    raw["mas"], raw["arrival"] = {}, {"tasks": {"reshading": 2}}
    m = Config.model_validate(raw).mas
    assert (m.start, m.merge_rounds) == ("merged", 0.7)
    dumped = Config.model_validate(raw).model_dump()  # the resolved values are written out: a resume reads them
    assert dumped["mas"]["start"] == "merged" and dumped["mas"]["merge_rounds"] == 0.7


def test_a_run_saved_before_mas_start_existed_resumes_and_compares_as_it_began(tiny_raw, tmp_path):
    """A run folder's config.yaml is written resolved; one without ``mas.start`` was written when the groups
    continued the merged model: a resume (``load_config(..., saved=True)``) and ``compare`` read it so, not as
    today's default (scratch)."""
    raw = json.loads(json.dumps(tiny_raw))
    run = tmp_path / "r"
    assert execute(Config.model_validate(raw), run, progress=False, stop_after=1) is None
    p = run / "config.yaml"
    old = yaml.safe_load(p.read_text())
    del old["mas"]["start"]  # as fedmas wrote it before the key existed
    p.write_text(yaml.safe_dump(old))
    assert load_config(p).mas.start == "scratch"  # a user's config: today's default
    assert load_config(p, saved=True).mas.start == "merged"
    assert config_changes(run, Config.model_validate(raw)) == []
    raw["mas"]["start"] = "scratch"
    assert any(d.startswith("mas.start") for d in config_changes(run, Config.model_validate(raw)))
