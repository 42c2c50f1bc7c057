"""The offline grouping signals of benchmarks/grouping_signals.py against hand-made truths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

TASKS = ["a", "b", "c", "d"]


def test_the_linear_surrogate_recovers_an_exactly_linear_table(benchmark):
    sig = benchmark("grouping_signals")
    rng = np.random.default_rng(1)
    base = {t: float(rng.uniform(0.2, 0.6)) for t in TASKS}
    effect = {(t, o): float(rng.normal(0, 0.05)) for t in TASKS for o in TASKS if o != t}
    triv = {"val": {t: 1.0 for t in TASKS}}
    early: dict = {}
    for size in range(1, 5):
        for c in itertools.combinations(TASKS, size):
            g = frozenset(c)  # skill_t = base_t + Σ effect(t, o): the loss with a constant predictor's loss of 1
            early[g] = {2: {t: 1 - (base[t] + sum(effect[(t, o)] for o in g if o != t)) for t in g}}
    pred = sig._linear(early, triv, TASKS, 2)
    for g, losses in early.items():
        assert pred[g] == pytest.approx(sum(1 - v for v in losses[2].values()), abs=1e-9)


def test_the_best_partition_is_the_brute_force_one(benchmark):
    sig = benchmark("grouping_signals")
    rng = np.random.default_rng(2)
    values = {frozenset(c): float(rng.normal()) for size in range(1, 5) for c in itertools.combinations(TASKS, size)}
    for k in (1, 2, 3):
        got = sig._best(values, TASKS, k)
        best = max(sig.partitions(TASKS, k), key=lambda p: sum(values[frozenset(g)] for g in p))
        assert sum(values[frozenset(g)] for g in got) == pytest.approx(sum(values[frozenset(g)] for g in best))
        assert len(got) <= k


def test_ranks_give_ties_their_mean(benchmark):
    sig = benchmark("grouping_signals")
    assert sig._ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert sig._spearman([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0)
    assert sig._spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
