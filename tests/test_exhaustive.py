"""The exhaustive grouping method: its choice against a brute force over a hand-made table, and end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fedmas.config import Config, ConfigError
from fedmas.methods.exhaustive import best_partition, makespan, subsets, task_score
from fedmas.run import execute

TASKS = ["a", "b", "c", "d", "e"]


def _partitions(items: list[str]):
    """Every set partition of ``items`` (brute force, independent of the dynamic programme)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_choice_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    values = {frozenset(g): float(rng.normal()) for g in subsets(TASKS)}
    groups, score = best_partition(values, TASKS, k)
    brute = max((sum(values[frozenset(g)] for g in p), p) for p in _partitions(TASKS) if len(p) <= k)
    assert score == pytest.approx(brute[0])
    assert sorted(map(sorted, groups)) == sorted(map(sorted, brute[1]))
    assert sorted(t for g in groups for t in g) == TASKS


def test_hand_table_prefers_the_isolated_task():
    # a starved task e: every group holding e loses 0.3 of e's skill; the others gain 0.05 each from sharing
    values = {}
    for g in subsets(TASKS):
        others = [t for t in g if t != "e"]
        values[frozenset(g)] = 0.4 * len(others) + 0.05 * (len(others) - 1 if others else 0) \
            + (0.5 if "e" in g and not others else 0.2 if "e" in g else 0.0)
    groups, score = best_partition(values, TASKS, 2)
    assert sorted(map(sorted, groups)) == [["a", "b", "c", "d"], ["e"]]
    assert score == pytest.approx(4 * 0.4 + 3 * 0.05 + 0.5)
    groups1, _ = best_partition(values, TASKS, 1)
    assert groups1 == [TASKS]


def test_missing_value_is_refused():
    values = {frozenset(g): 0.0 for g in subsets(TASKS) if len(g) != 3}
    with pytest.raises(ValueError, match="no value for the group"):
        best_partition(values, TASKS, 2)


def test_subsets_scores_and_makespan():
    assert len(subsets(TASKS)) == 31 and subsets(["x", "y"]) == [["x"], ["y"], ["x", "y"]]
    assert task_score(0.25, 0.5) == pytest.approx(0.5) and task_score(0.25, None) == -0.25
    assert makespan([30] * 31, 2) == 16 * 30 and makespan([9, 9, 30, 30], 2) == 39 and makespan([], 2) == 0


def test_too_many_tasks_is_refused_with_the_count(tiny_raw, tmp_path):
    raw = {**tiny_raw, "method": "exhaustive", "tasks": "sdnkt"}
    raw["tasks"] = ["segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture", "reshading",
                    "edge_occlusion", "principal_curvature", "rgb"]
    with pytest.raises(ConfigError, match="511 FL tasks.*at most 8"):
        execute(Config.model_validate(raw), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("start", ["scratch", "merged", "both"])
def test_exhaustive_end_to_end(tiny_raw, tmp_path, start):
    raw = {**tiny_raw, "method": "exhaustive", "exhaustive": {"start": start}}
    raw["federation"] = {**raw["federation"], "rounds": 3, "select": "best_val"}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    cfg = Config.model_validate(raw)
    s = execute(cfg, tmp_path / "r", progress=False)
    doc = json.loads((tmp_path / "r" / "exhaustive.json").read_text())
    per_start = 7
    assert len(doc["subsets"]) == per_start * (2 if start == "both" else 1)
    names = [f["name"] for f in s["fl_tasks"]]
    assert ("merged" in names) == (start != "scratch")
    for f in s["fl_tasks"]:
        if f["name"] != "merged":
            assert f["rounds"] == (3 if f["name"].startswith("scratch-") else 2)
    # the choice: the best partition into at most 2 groups of the recorded validation scores, recomputed here
    triv = json.loads((tmp_path / "r" / "trivial.json").read_text())["val_loss"]
    best: dict[frozenset, float] = {}
    for row in doc["subsets"]:
        score = sum(1 - v / triv[t] for t, v in row["val_loss"].items())
        assert row["score"] == pytest.approx(score)
        key = frozenset(row["tasks"])
        best[key] = max(best.get(key, -np.inf), score)
    expect = max(sum(best[frozenset(g)] for g in p) for p in _partitions(list(cfg.task_list)) if len(p) <= 2)
    assert doc["chosen"]["score"] == pytest.approx(expect)
    assert sorted(map(sorted, s["groups"])) == sorted(map(sorted, doc["chosen"]["groups"]))
    # each task is reported by the chosen subset's FL task, and its validation loss is that subset's
    for t, fl in s["owner"].items():
        row = next(r for r in doc["subsets"] if r["fl_task"] == fl)
        assert t in row["tasks"] and s["val_loss"][t] == pytest.approx(row["val_loss"][t])
    # every subset is charged
    assert sum(f["costs"]["train_flop"] for f in s["fl_tasks"]) == pytest.approx(s["costs"]["train_flop"])
    assert [c["k"] for c in doc["by_k"]] == [1, 2, 3]
    assert all(a["score"] <= b["score"] + 1e-12 for a, b in itertools.pairwise(doc["by_k"]))


@pytest.mark.slow
def test_exhaustive_resumes_to_the_same_choice(tiny_raw, tmp_path):
    raw = {**tiny_raw, "method": "exhaustive", "exhaustive": {"start": "merged"}}
    raw["federation"] = {**raw["federation"], "rounds": 3, "select": "best_val"}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    cfg = Config.model_validate(raw)
    whole = execute(cfg, tmp_path / "whole", progress=False)
    assert execute(cfg, tmp_path / "cut", progress=False, stop_after=4) is None
    again = execute(None, tmp_path / "cut", resume=True, progress=False)
    assert again["test_loss"] == whole["test_loss"] and again["groups"] == whole["groups"]
