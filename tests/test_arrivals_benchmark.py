"""benchmarks/arrivals.py's run folders: an interrupted run (a full one, or one stopped at the arrival round) is
resumed from its checkpoint, not started again, and ends as an uninterrupted run does; a folder holding a run
of another config is refused."""

from __future__ import annotations

import json

import pytest

from fedmas import run as fedmas_run
from fedmas.config import Config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(benchmark):
    return benchmark("arrivals")


@pytest.fixture
def calls(monkeypatch) -> list[bool]:
    """The ``resume`` flag of every fedmas.run.execute call."""
    seen: list[bool] = []
    real = fedmas_run.execute

    def spy(*args, **kwargs):
        seen.append(bool(kwargs.get("resume", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(fedmas_run, "execute", spy)
    return seen


def _computed(costs: dict) -> dict:
    """The costs that are counted, not timed (FLOPs, samples, client rounds)."""
    return {k: v for k, v in costs.items() if "flop" in k or k in ("samples", "client_rounds")}


def test_an_interrupted_run_is_resumed_and_ends_as_an_uninterrupted_one(bench, calls, tiny_raw, tmp_path):
    cfg = Config.model_validate(tiny_raw)
    whole = bench._run(cfg, tmp_path / "whole")
    fedmas_run.execute(cfg, tmp_path / "cut", progress=False, stop_after=2)
    calls.clear()
    resumed = bench._run(cfg, tmp_path / "cut")
    assert calls == [True]  # resumed from its checkpoint, not run again from round 0
    assert resumed["test_loss"] == whole["test_loss"]
    assert _computed(resumed["costs"]) == _computed(whole["costs"])
    calls.clear()
    assert bench._run(cfg, tmp_path / "cut")["test_loss"] == whole["test_loss"]  # finished: reused as it is
    assert calls == []


def test_a_run_cut_before_its_stop_round_is_resumed_up_to_it(bench, calls, tiny_raw, tmp_path):
    cfg = Config.model_validate(tiny_raw)
    fresh = bench._run(cfg, tmp_path / "fresh", stop_after=3)
    fedmas_run.execute(cfg, tmp_path / "cut", progress=False, stop_after=1)
    calls.clear()
    resumed = bench._run(cfg, tmp_path / "cut", stop_after=3)
    assert calls == [True]
    assert resumed["rounds"] == 3 == fresh["rounds"]
    assert _computed(resumed["costs"]) == _computed(fresh["costs"])
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["round"] == 3


def test_a_folder_of_another_config_is_refused(bench, tiny_raw, tmp_path):
    cfg = Config.model_validate(tiny_raw)
    fedmas_run.execute(cfg, tmp_path / "r", progress=False, stop_after=1)
    other = Config.model_validate({**tiny_raw, "seed": 1})
    with pytest.raises(SystemExit, match=r"another config \(differs in: seed\)"):
        bench._run(other, tmp_path / "r")
    threads = Config.model_validate({**tiny_raw, "threads": 1})  # float order only: the same run
    assert bench._run(threads, tmp_path / "r")["rounds"] == tiny_raw["federation"]["rounds"]
