"""How sure a split is: bootstrap resamples of the client replies, and the documented fallback when unsure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmas import grouping
from fedmas.config import Config
from fedmas.console import split_line
from fedmas.methods.base import MERGED
from fedmas.methods.mas import MAS
from fedmas.server.federation import Server
from fedmas.server.state import FLTaskState, ServerState

TASKS = ["segment_semantic", "depth_zbuffer", "normal", "edge_texture"]


def _favouring(pairs: list[tuple[int, int]], rng: np.random.Generator, strength: float = 0.5) -> np.ndarray:
    """A 4×4 affinity where the tasks of each pair help each other and hurt the others, plus noise."""
    z = np.full((4, 4), -strength) + rng.normal(0, 0.01, (4, 4))
    for a, b in pairs:
        z[a, b] = z[b, a] = strength + rng.normal(0, 0.01)
    np.fill_diagonal(z, 0.1)
    return z


def _best2(z: np.ndarray) -> list[list[int]]:
    return grouping.best_partition(z, 2).groups


def test_a_clear_winner_is_sure():
    rng = np.random.default_rng(0)
    replies = [(_favouring([(0, 1), (2, 3)], rng), [0, 1, 2, 3], 10.0) for _ in range(9)]
    chosen = _best2(grouping.pooled_matrix(replies, 4))
    assert sorted(map(sorted, chosen)) == [[0, 1], [2, 3]]
    conf = grouping.split_confidence(replies, 4, chosen, _best2, draws=100, seed=1)
    assert conf["confidence"] == 1.0 and conf["runner_up"] is None and conf["replies"] == 9


def test_two_partitions_that_cannot_be_told_apart():
    rng = np.random.default_rng(0)
    replies = [(_favouring([(0, 1), (2, 3)] if i % 2 else [(0, 2), (1, 3)], rng), [0, 1, 2, 3], 10.0)
               for i in range(10)]
    chosen = _best2(grouping.pooled_matrix(replies, 4))
    conf = grouping.split_confidence(replies, 4, chosen, _best2, draws=200, seed=1)
    assert 0.2 < conf["confidence"] < 0.8
    assert conf["runner_up"] is not None and conf["runner_up_share"] > 0.2


def test_pooled_matrix_weights_by_samples_and_leaves_unmeasured_pairs_missing():
    a, b = np.ones((2, 2)), 3 * np.ones((2, 2))
    z = grouping.pooled_matrix([(a, [0, 1], 1.0), (b, [1, 2], 3.0)], 3)
    assert z[1, 1] == pytest.approx((1 + 9) / 4) and z[0, 1] == 1.0 and z[2, 2] == 3.0 and np.isnan(z[0, 2])


def _server(tmp_path, replies: list[np.ndarray], **mas) -> Server:
    cfg = Config.model_validate({"tasks": TASKS, "method": "mas", "federation": {"rounds": 10},
                                 "mas": {"splits": 2, "merge_rounds": 5, "affinity_rounds": 3, **mas}})
    st = ServerState(plan=MAS.State())
    for r in range(3):
        chunk = replies[r * 3:(r + 1) * 3]
        st.affinity.append(r, MERGED, TASKS, np.mean(chunk, 0).tolist(), len(chunk), 30.0,
                           [(m.tolist(), [0, 1, 2, 3], 10.0) for m in chunk])
    merged = FLTaskState(MERGED, TASKS, 5, role="merged", done_rounds=5)
    st.finished.append(merged)
    st.round = 5
    return Server(cfg, st, ["c0", "c1", "c2"], tmp_path)


@pytest.mark.parametrize("unsure", ["split", "merged"])
def test_mas_says_when_it_is_not_sure_and_takes_the_fallback(tmp_path, unsure):
    rng = np.random.default_rng(3)
    mixed = [_favouring([(0, 1), (2, 3)] if i % 2 else [(0, 2), (1, 3)], rng) for i in range(9)]
    server = _server(tmp_path, mixed, unsure=unsure, min_confidence=0.9)
    groups = MAS().choose_groups(server)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["confidence"]["sure"] is False and split["confidence"]["confidence"] < 0.9
    if unsure == "merged":
        assert groups == [TASKS] and "no split, the merged model continues" in split["rule"]
    else:
        assert len(groups) == 2 and "not sure" in split["rule"]
    server.state.plan.groups = groups
    assert "NOT SURE" in split_line(server)


def test_mas_is_sure_of_a_clear_split(tmp_path):
    rng = np.random.default_rng(3)
    clear = [_favouring([(0, 1), (2, 3)], rng) for _ in range(9)]
    server = _server(tmp_path, clear, unsure="merged")
    groups = MAS().choose_groups(server)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["confidence"]["sure"] is True and split["confidence"]["confidence"] == 1.0
    assert sorted(map(sorted, groups)) == sorted(map(sorted, [TASKS[:2], TASKS[2:]]))
    server.state.plan.groups = groups
    assert "confidence 100%" in split_line(server) and "NOT SURE" not in split_line(server)


def test_cosine_signal_against_a_hand_computation():
    from fedmas.signals.cosine import cosine_matrix

    g = [(torch.tensor([1.0, 0.0]), torch.tensor([0.0])), (torch.tensor([1.0, 1.0]), None),
         (torch.tensor([-2.0, 0.0]), torch.tensor([0.0]))]
    c = cosine_matrix(g)
    s2 = 2 ** -0.5
    assert np.allclose(c.numpy(), [[1, s2, -1], [s2, 1, -s2], [-1, -s2, 1]], atol=1e-6)


@pytest.mark.slow
def test_mas_decides_by_another_signal_and_records_more(tiny_raw, tmp_path):
    from fedmas.run import execute

    raw = {**tiny_raw, "method": "mas", "mas": {**tiny_raw["mas"], "signal": "cosine", "affinity_rounds": 2}}
    s = execute(Config.model_validate(raw), tmp_path / "r", progress=False)
    aff = json.loads((tmp_path / "r" / "affinity.json").read_text())
    cos = aff["signals"]["cosine"]
    z = np.array([[cos["affinity"][a][b] for b in cos["tasks"]] for a in cos["tasks"]])
    assert np.allclose(np.diag(z), 1.0, atol=1e-5) and np.allclose(z, z.T, atol=1e-6) and cos["rounds"] == 2
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert np.allclose(split["affinity"], z) and "grouping signal: cosine" in split["rule"]
    assert "confidence" in split and len(s["groups"]) <= 2
    with pytest.raises(Exception, match="unknown grouping signal"):
        execute(Config.model_validate({**raw, "mas": {**raw["mas"], "record": ["nope"]}}), tmp_path / "x",
                progress=False)


@pytest.mark.slow
def test_fixed_groups_are_used_and_a_bad_partition_is_refused(tiny_raw, tmp_path):
    from fedmas.run import execute

    tasks = tiny_raw["tasks"]
    raw = {**tiny_raw, "method": "mas", "mas": {**tiny_raw["mas"], "groups": [[tasks[2]], tasks[:2]]}}
    s = execute(Config.model_validate(raw), tmp_path / "r", progress=False)
    assert s["groups"] == [[tasks[2]], tasks[:2]]
    assert json.loads((tmp_path / "r" / "split.json").read_text())["rule"] == "fixed partition (mas.groups)"
    bad = {**raw, "mas": {**raw["mas"], "groups": [tasks[:2]]}}
    with pytest.raises(Exception, match="mas.groups: must partition the tasks"):
        execute(Config.model_validate(bad), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_lookahead_self_divides_each_target_column_by_its_own_step():
    from fedmas import signals

    z = np.array([[0.04, 0.001, -0.002], [0.01, 0.002, 0.0], [-0.02, 0.0005, 0.0]])
    d = signals.get("lookahead-self").decision_matrix(z)
    # column t divided by |Z(t→t)|: 0.04, 0.002, and 0 (floored at 1e-12, so its column keeps its signs)
    expected = np.array([[1.0, 0.5, -2e9], [0.25, 1.0, 0.0], [-0.5, 0.25, 0.0]])
    assert np.allclose(d, expected)
    assert signals.measured_as("lookahead-self") == "lookahead" and signals.measured_as("cosine") == "cosine"


@pytest.mark.slow
def test_lookahead_self_decides_from_the_reference_matrices_measuring_nothing_more(tiny_raw, tmp_path):
    from fedmas import signals
    from fedmas.run import execute

    splits = {}
    for sig in ("lookahead", "lookahead-self"):
        raw = {**tiny_raw, "method": "mas", "mas": {**tiny_raw["mas"], "signal": sig}}
        execute(Config.model_validate(raw), tmp_path / sig, progress=False)
        splits[sig] = json.loads((tmp_path / sig / "split.json").read_text())
        assert "signals" not in json.loads((tmp_path / sig / "affinity.json").read_text())
    ref = np.asarray(splits["lookahead"]["affinity"])
    assert np.allclose(splits["lookahead-self"]["affinity"], signals.get("lookahead-self").decision_matrix(ref))
    assert "grouping signal: lookahead-self" in splits["lookahead-self"]["rule"]
    assert splits["lookahead-self"]["confidence"]["confidence"] is not None
