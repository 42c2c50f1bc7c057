"""Partial labels: clients that hold labels for only some tasks (data.label_coverage, or a dataset's holds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmas.aggregation import fedavg_partial
from fedmas.config import Config
from fedmas.data import load_federated
from fedmas.grouping import fill_missing
from fedmas.run import execute
from fedmas.server.loop import pairwise_mean, schedule
from fedmas.server.state import AffinityLog, FLTaskState


def test_head_averaging_over_the_clients_that_hold_the_task():
    prev = {"encoder.w": torch.zeros(2), "heads.a.w": torch.zeros(2), "heads.b.w": torch.full((2,), 5.0)}
    updates = [({"encoder.w": torch.full((2,), 1.0), "heads.a.w": torch.full((2,), 2.0)}, 1.0),
               ({"encoder.w": torch.full((2,), 3.0), "heads.a.w": torch.full((2,), 4.0)}, 3.0),
               ({"encoder.w": torch.full((2,), 5.0)}, 2.0)]  # this client holds neither a nor b
    got = fedavg_partial(updates, prev)
    assert torch.allclose(got["encoder.w"], torch.full((2,), (1 * 1 + 3 * 3 + 5 * 2) / 6))  # over all
    assert torch.allclose(got["heads.a.w"], torch.full((2,), (2 * 1 + 4 * 3) / 4))  # over a's holders only
    assert torch.equal(got["heads.b.w"], prev["heads.b.w"])  # nobody held b: unchanged
    assert got["heads.b.w"] is not prev["heads.b.w"]


def test_affinity_pair_that_no_client_measured_is_missing_not_zero():
    # client 1 holds tasks 0 and 1 (100 samples), client 2 holds 1 and 2 (300 samples): nobody holds 0 and 2
    c1 = torch.tensor([[0.0, 0.2], [0.4, 0.0]])
    c2 = torch.tensor([[0.0, -0.1], [0.3, 0.0]])
    m = pairwise_mean([(c1, [0, 1], 100.0), (c2, [1, 2], 300.0)], 3)
    assert m[0][1] == pytest.approx(0.2) and m[1][0] == pytest.approx(0.4)
    assert m[1][2] == pytest.approx(-0.1) and m[2][1] == pytest.approx(0.3)
    assert m[1][1] == pytest.approx(0.0)  # both measured the diagonal of task 1
    assert m[0][2] is None and m[2][0] is None
    log = AffinityLog()
    log.append(0, "merged", ["a", "b", "c"], m, 2, 400.0)
    log.append(1, "merged", ["a", "b", "c"], [[0.0, 0.4, None], [0.2, 0.0, 0.1], [None, 0.5, 0.0]], 2, 400.0)
    doc = json.loads(json.dumps(log.to_doc("merged")))
    assert doc["affinity"]["a"]["c"] is None and doc["affinity"]["c"]["a"] is None
    assert doc["affinity"]["a"]["b"] == pytest.approx(0.3)  # the mean over the rounds that measured it
    assert sorted(map(tuple, doc["missing"])) == [("a", "c"), ("c", "a")]
    # the documented rule: a missing pair takes the smallest measured off-diagonal value
    z = fill_missing(log.mean("merged")[1])
    # measured off-diagonal means: a→b 0.3, b→a 0.3, b→c (−0.1 + 0.1)/2 = 0, c→b 0.4
    assert z[0, 2] == z[2, 0] == pytest.approx(0.0, abs=1e-6)
    assert z[0, 1] == pytest.approx(0.3) and not np.isnan(z).any()


def _fl(name: str, tasks: list[str]) -> FLTaskState:
    return FLTaskState(name=name, tasks=tasks, rounds=10)


def test_scheduler_never_sends_an_fl_task_to_a_client_without_any_of_its_labels():
    clients = [f"c{i}" for i in range(12)]
    holds = {c: (("a",) if i % 3 == 0 else ("b",) if i % 3 == 1 else ("a", "b")) for i, c in enumerate(clients)}
    fls = [_fl("ga", ["a"]), _fl("gb", ["b"]), _fl("gc", ["c"])]
    for r in range(20):
        got = schedule(np.random.default_rng(r), clients, fls, 4, 1, r, holds)
        assert all("a" in holds[c] for c in got["ga"]) and all("b" in holds[c] for c in got["gb"])
        assert got["gc"] == []  # nobody holds c
        assert len(got["ga"]) == len(got["gb"]) == 4
    full = schedule(np.random.default_rng(0), clients, fls, 4, 1, 0, None)
    assert all(len(v) == 4 for v in full.values())  # without holds: unchanged behaviour


def test_label_coverage_is_seeded_and_within_the_tasks(tiny_raw):
    raw = dict(tiny_raw)
    raw["data"] = {**raw["data"], "label_coverage": 0.5}
    cfg = Config.model_validate(raw)
    a, b = load_federated(cfg.data, cfg.task_list), load_federated(cfg.data, cfg.task_list)
    assert a.holds == b.holds and a.holds is not None
    assert all(1 <= len(h) <= len(cfg.task_list) and set(h) <= set(cfg.task_list) for h in a.holds.values())
    raw["data"]["label_coverage"] = {"nonexistent": 0.5}
    with pytest.raises(Exception, match="nonexistent"):
        load_federated(Config.model_validate(raw).data, cfg.task_list)
    raw["data"]["label_coverage"] = 1.5
    with pytest.raises(ValueError, match="probability"):
        Config.model_validate(raw)


@pytest.mark.parametrize("method", ["mas", "all-in-one", "one-by-one", "tag"])
def test_a_client_never_receives_a_head_it_has_no_labels_for(tiny_raw, tmp_path, monkeypatch, method):
    from fedmas.engines.inprocess import InProcessEngine

    raw = dict(tiny_raw)
    raw["method"] = method
    raw["data"] = {**raw["data"], "label_coverage": 0.5}
    cfg = Config.model_validate(raw)
    holds = load_federated(cfg.data, cfg.task_list).holds
    sent: list[tuple[str, set[str], str]] = []
    real = InProcessEngine.run

    def spy(self, jobs, deadline_s):
        for j in jobs:
            sent.append((j.client, set(j.message.arrays), str(j.message.config["tasks"])))
        return real(self, jobs, deadline_s)

    monkeypatch.setattr(InProcessEngine, "run", spy)
    summary = execute(cfg, tmp_path / "run", progress=False)
    assert summary is not None and sent
    for client, keys, tasks in sent:
        heads = {k.split(".")[1] for k in keys if k.startswith("heads.")}
        assert heads <= set(holds[client]), (client, heads, holds[client])
        assert heads == set(tasks.split(","))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("tasks_without_labels" in r for r in rows)
    assert np.isfinite(summary["total_test_loss"])
