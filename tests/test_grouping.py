"""Split search: exact optimum against brute force, TAG selection, the heuristic, properties."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmas.cli import main
from fedmas.grouping import (
    brute_force_partition,
    exact_partition,
    heuristic_partition,
    mas_objective,
    tag_assignment,
    tag_selection,
)


@pytest.mark.parametrize("seed", range(25))
def test_exact_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    k = int(rng.integers(1, n + 1))
    z = rng.normal(size=(n, n)) * rng.choice([0.01, 1.0])
    for exactly in (False, True):
        got = exact_partition(z, k, exactly)
        ref = brute_force_partition(z, k, exactly)
        assert got.score == pytest.approx(ref.score, abs=1e-12)
        assert mas_objective(z, got.groups) == pytest.approx(got.score, abs=1e-12)
        assert sorted(i for g in got.groups for i in g) == list(range(n))
        assert len(got.groups) <= k and (not exactly or len(got.groups) == k)


def test_singleton_score_uses_affinities_to_and_from():
    z = np.array([[0, 1.0, -1.0], [0.5, 0, 2.0], [-2.0, 0.1, 0]])
    # task 0 alone: mean of z[0,1], z[0,2], z[1,0], z[2,0]
    from fedmas.grouping import task_scores

    s = task_scores(z, [[0], [1, 2]])
    assert s[0] == pytest.approx((1.0 - 1.0 + 0.5 - 2.0) / 4)
    assert s[1] == pytest.approx(0.1) and s[2] == pytest.approx(2.0)


def _tag_brute(z, k):
    n = len(z)
    cands = [list(c) for r in range(2, n + 1) for c in itertools.combinations(range(n), r)]
    off = z - np.diag(np.diag(z))
    best = -np.inf
    for combo in itertools.combinations(cands, k):
        total = 0.0
        for t in range(n):
            vals = [sum(off[p, t] for p in g if p != t) / (len(g) - 1) for g in combo if t in g]
            total += max(vals) if vals else -np.inf
        best = max(best, total / n)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_tag_selection_is_optimal_for_small_n(seed):
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(3, 6)), int(rng.integers(1, 4))
    z = rng.normal(size=(n, n))
    sel = tag_selection(z, k)
    assert sel.score == pytest.approx(_tag_brute(z, k))
    assign = tag_assignment(z, sel.groups)
    if np.isfinite(sel.score):
        assert all(t in sel.groups[g] for t, g in assign.items())


def test_heuristic_near_exact_on_12_tasks():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(12, 12))
    ex = exact_partition(z, 3)
    h = heuristic_partition(z, 3, restarts=10)
    assert h.score >= ex.score - 0.01 * abs(ex.score)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, n),
    st.lists(st.floats(-1, 1, allow_nan=False), min_size=n * n, max_size=n * n), st.integers(0, 2**31))))
def test_property_valid_partition_never_worse_than_random(args):
    n, k, flat, seed = args
    z = np.asarray(flat).reshape(n, n)
    g = exact_partition(z, k)
    assert sorted(i for grp in g.groups for i in grp) == list(range(n))
    assert 1 <= len(g.groups) <= k
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    rand = [list(np.flatnonzero(labels == c)) for c in range(k) if (labels == c).any()]
    assert g.score >= mas_objective(z, rand) - 1e-12


def _affinity_file(path, tasks, z):
    path.write_text(json.dumps({"tasks": tasks, "affinity": {s: {t: float(z[i][j]) for j, t in enumerate(tasks)}
                                                           for i, s in enumerate(tasks)}}))


def test_split_cli_json(tmp_path, capsys):
    tasks = ["a", "b", "c", "d"]
    z = np.array([[0, 1, -1, -1], [1, 0, -1, -1], [-1, -1, 0, 1], [-1, -1, 1, 0]], float)
    f = tmp_path / "aff.json"
    _affinity_file(f, tasks, z)
    assert main(["split", "--affinity", str(f), "--splits", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(map(sorted, out["groups"])) == [["a", "b"], ["c", "d"]]
    assert out["score"] == pytest.approx(1.0)
    assert main(["split", "--affinity", str(f), "--splits", "3", "--exact", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 3


@pytest.mark.parametrize("doc,needle", [
    ({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": 1}}}, "no row for task 'b'"),
    ({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": "x"}, "b": {"a": 0, "b": 0}}}, "must be a number"),
    ({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": True}, "b": {"a": 0, "b": 0}}}, "must be a number"),
    ({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": 1e308}, "b": {"a": 0, "b": 0}}}, "must be a number"),
    ({"tasks": ["a"], "affinity": {"a": {"a": 10 ** 400}}}, "must be a number"),
    ({"tasks": ["a", "b"], "affinity": {"a": {"a": 0, "b": 1, "c": 2}, "b": {"a": 0, "b": 0}}}, "columns for tasks"),
    ({"tasks": [f"t{i}" for i in range(65)], "affinity": {}}, "at most 64"),
    ({"affinity": {}}, "expected"),
])
def test_split_cli_rejects_bad_affinity(tmp_path, capsys, doc, needle):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    assert main(["split", "--affinity", str(f), "--splits", "1"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_split_cli_rejects_unreadable_files(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, needle in [(tmp_path, "not a regular file"), (tmp_path / "none.json", "not found"), (deep, "nested")]:
        assert main(["split", "--affinity", str(path), "--splits", "1"]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_split_cli_rejects_k_too_large(tmp_path, capsys):
    f = tmp_path / "aff.json"
    _affinity_file(f, ["a", "b"], np.zeros((2, 2)))
    assert main(["split", "--affinity", str(f), "--splits", "3"]) == 2
    assert "between 1 and the number of tasks (2)" in capsys.readouterr().err
