"""Many clients: a 200-client federation runs MAS with bounded state (nothing kept per client)."""

from __future__ import annotations

import json

import pytest

from fedmas.config import Config
from fedmas.run import execute
from fedmas.server.state import load_checkpoint


def _cfg(clients: int, **extra) -> Config:
    return Config.model_validate({
        "name": "many", "method": "mas", "tasks": ["segment_semantic", "depth_zbuffer", "normal"], "threads": 1,
        "data": {"dataset": "python:fedmas.testing:synthetic_federation", "resolution": 16,
                 "options": {"clients": clients, "images": 2}},
        "model": {"width": 8}, "federation": {"rounds": 3, "clients_per_round": 20, "batch_size": 2},
        "mas": {"splits": 2, "merge_rounds": 2, "affinity_rounds": 1, "lookahead_step": 1, "start": "merged"}, **extra})


def test_two_hundred_clients_run_mas_without_per_client_state(tmp_path):
    cfg = _cfg(200)
    run = tmp_path / "run"
    summary = execute(cfg, run, progress=False)
    assert summary is not None and summary["rounds"] == 3
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["accepted"] for r in rows if r["round"] == 0) == 20  # 20 of 200 each round
    picked = {c for r in rows for c in r["clients"]}
    assert len(picked) > 20  # different clients over the rounds
    state = load_checkpoint(run)
    assert len(state.weights) <= 2 + 2  # the FL tasks' models (and best-validation copies), none per client
    assert (run / "checkpoint" / "state.json").stat().st_size < 200_000


@pytest.mark.slow
def test_two_hundred_clients_in_flower_simulation(tmp_path):
    """engine: flower-sim with 200 simulated SuperNodes, one client each: every round gets its 20 replies,
    and the run's state is the same size as in-process (nothing kept per client). No deadline can drop a
    client however busy the machine (the 200 nodes answer one after another through one actor)."""
    pytest.importorskip("ray")
    cfg = _cfg(200, engine="flower-sim", flower={"nodes": 200, "straggler_multiple": None,
                                                 "round_deadline_s": 86_400})
    run = tmp_path / "sim"
    summary = execute(cfg, run, progress=False)
    assert summary is not None and summary["rounds"] == 3 and summary["faults"] == {}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sum(r["accepted"] for r in rows if r["round"] == k) for k in range(3)] == [20, 20, 40]
    assert len(load_checkpoint(run).weights) <= 2 + 2
