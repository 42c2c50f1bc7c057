"""The verdict rules of benchmarks/learned_results.py on hand-made runs: a finding holds, is refuted or cannot be
told by the paired interval over seeds; a task one method did not learn is left out of the comparison and named;
the per-task table marks only intervals that exclude 0; the split-schedule default reads validation skill only."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def lr(benchmark):
    return benchmark("learned_results")


def _run(skill: dict[str, float], val: dict[str, float] | None = None,
         groups: list[list[str]] | None = None) -> dict[str, Any]:
    return {"tasks": sorted(skill), "test_skill": dict(skill), "mean_skill": sum(skill.values()) / len(skill),
            "total_test_loss": 1.0, "costs": {"train_flop": 1e12}, "groups": groups, "val_skill": dict(val or skill)}


def test_a_consistent_gain_holds_and_its_opposite_is_refuted(lr) -> None:
    # a is 0.02 above b in every seed on both tasks, with a little seed-to-seed noise
    noise = [0.001, -0.002, 0.0, 0.002, -0.001]
    runs = {"a": {s: _run({"x": 0.4 + n + 0.02, "y": 0.3 + 0.02}) for s, n in enumerate(noise)},
            "b": {s: _run({"x": 0.4 + n, "y": 0.3}) for s, n in enumerate(noise)}}
    d = lr.compare(runs, "a", "b", +1)
    assert d["finding"] == "holds"
    assert d["diff"] == pytest.approx(0.02)
    assert d["seeds"] == 5 and d["tasks"] == ["x", "y"] and d["excluded"] == []
    assert lr.compare(runs, "a", "b", -1)["finding"] == "refuted"
    assert lr.compare(runs, "b", "a", +1)["finding"] == "refuted"


def test_differences_that_change_sign_cannot_be_told(lr) -> None:
    runs = {"a": {s: _run({"x": 0.4 + d}) for s, d in enumerate([0.03, -0.03, 0.02, -0.025, 0.01])},
            "b": {s: _run({"x": 0.4}) for s in range(5)}}
    assert lr.compare(runs, "a", "b", +1)["finding"] == "cannot tell"
    one = {"a": {0: _run({"x": 0.5})}, "b": {0: _run({"x": 0.4})}}
    assert lr.compare(one, "a", "b", +1)["finding"] == "cannot tell (one seed)"


def test_a_task_not_learned_by_one_method_is_left_out_and_named(lr) -> None:
    # on z, b is no better than a constant (skill 0.01 < 0.05): a's large lead there must not decide anything
    noise = [0.001, -0.002, 0.0, 0.002, -0.001]
    runs = {"a": {s: _run({"x": 0.40 + n, "z": 0.50}) for s, n in enumerate(noise)},
            "b": {s: _run({"x": 0.42 + n, "z": 0.01}) for s, n in enumerate(noise)}}
    d = lr.compare(runs, "a", "b", +1)
    assert d["tasks"] == ["x"] and d["excluded"] == ["z"]
    assert d["diff"] == pytest.approx(-0.02)
    assert d["finding"] == "refuted"
    row = lr._finding_row(runs, "a beats b", "a", "b", +1)
    assert "not compared on z" in row and "**refuted**" in row


def test_a_missing_method_is_reported_as_not_run(lr) -> None:
    runs = {"a": {0: _run({"x": 0.4})}}
    assert lr.compare(runs, "a", "b", +1) is None
    assert "not run yet" in lr._finding_row(runs, "a beats b", "a", "b", +1)


def test_the_per_task_table_bolds_only_intervals_that_exclude_zero(lr, monkeypatch) -> None:
    noise = [0.001, -0.002, 0.0, 0.002, -0.001]
    swing = [0.03, -0.03, 0.02, -0.025, 0.01]
    runs = {"a": {s: _run({"x": 0.4 + n + 0.05, "y": 0.3 + w}) for s, (n, w) in enumerate(zip(noise, swing))},
            "b": {s: _run({"x": 0.4 + n, "y": 0.3}) for s, n in enumerate(noise)}}
    monkeypatch.setattr(lr, "FINDINGS", [("a beats b", "a", "b", +1)])
    lines = lr.per_task_table(runs, ["x", "y"])
    row = next(line for line in lines if line.startswith("| a − b |"))
    x_cell, y_cell = (c.strip() for c in row.split("|")[2:4])
    assert x_cell.startswith("**+0.050")
    assert not y_cell.startswith("**")
    assert row.rstrip().endswith("| 5 |")


def test_groupings_count_the_partitions_over_seeds(lr) -> None:
    g1, g1_reordered, g2 = [["x", "y"], ["z"]], [["z"], ["y", "x"]], [["x"], ["y", "z"]]
    xyz = {"x": 0.4, "y": 0.4, "z": 0.4}
    runs = {"mas:2": {0: _run(xyz, groups=g1), 1: _run(xyz, groups=g1_reordered), 2: _run(xyz, groups=g2)},
            "all-in-one": {0: _run({"x": 0.4}, groups=[["x", "y", "z"]])}}
    lines = lr.groupings(runs)
    rows = [line for line in lines if line.startswith("| mas:2 |")]
    assert len(rows) == 1 and not any(line.startswith("| all-in-one |") for line in lines)
    assert "{x, y}; {z}: 2" in rows[0]  # the same partition in another order is counted once
    assert rows[0].index(": 2") < rows[0].index(": 1")  # the most frequent partition first
    assert rows[0].rstrip().endswith("| 3 |")


def test_the_split_schedule_default_reads_validation_skill_only(lr) -> None:
    # continue is better on validation in every seed but worse on test: the default must follow validation
    def runs_with(val_gain: float) -> dict[str, dict[int, dict[str, Any]]]:
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for k in ("mas:2", "mas:3"):
            out[k] = {s: _run({"x": 0.4}, val={"x": 0.30 + 0.001 * s}) for s in range(5)}
            out["continue " + k] = {s: _run({"x": 0.2}, val={"x": 0.30 + 0.001 * s + val_gain + 0.0005 * (s % 2)})
                                    for s in range(5)}
        return out

    d = lr.split_schedule_default(runs_with(0.02))
    assert d["default"] == "continue" and d["seeds"] == 5
    assert lr.split_schedule_default(runs_with(-0.02))["default"] == "restart"
    missing = runs_with(0.02)
    missing["mas:3"][2]["val_skill"] = {"x": None}
    d = lr.split_schedule_default(missing)
    assert d["default"] == "restart" and "mas:3 seed 2" in d["why"]
