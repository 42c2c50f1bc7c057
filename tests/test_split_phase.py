"""The split phase: a group starts from the merged weights, so with ``select: best_val`` the merged model at the
split is the group's first best-validation candidate (round 0) — a group never reports a model that validates
worse than the one it started from."""

from __future__ import annotations

import json

import pytest

from fedmas.config import Config
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


def test_with_select_last_nothing_is_evaluated_at_the_start(tiny_raw, tmp_path):
    s = execute(Config.model_validate(tiny_raw), tmp_path / "r", progress=False)
    assert all(f["start_val_total_loss"] is None for f in s["fl_tasks"])
