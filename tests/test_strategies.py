"""Task weighting and aggregation as registered strategies: a plugin adds one in one module, its state travels
as the message's typed field (never among the weights), and an unknown name is refused before the run."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fedmas import aggregation, weighting
from fedmas.cli import main
from fedmas.messages import Message

PLUGIN = '''
import torch
from fedmas.aggregation import Aggregation, fedavg, register as register_aggregation
from fedmas.weighting import Weighting, register

@register
class Counting(Weighting):
    """Equal weights that count the steps taken: state travels and is averaged like weights."""
    name = "counting"

    def __init__(self, n_tasks, args, state, device):
        super().__init__(n_tasks, args, state, device)
        self.steps = state["steps"].to(device, copy=True) if "steps" in state else torch.zeros(1, device=device)

    @classmethod
    def initial_state(cls, n_tasks):
        return {"steps": torch.zeros(1)}

    def after_step(self, losses, initial):
        self.steps += 1

    def state(self):
        return {"steps": self.steps}

CALLS = []

@register_aggregation
class Logged(Aggregation):
    name = "logged"

    @classmethod
    def aggregate(cls, updates, previous, partial, device=None):
        CALLS.append(len(updates))
        return fedavg(updates, device)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "mystrategies.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mystrategies"
    weighting.WEIGHTINGS.pop("counting", None)
    aggregation.AGGREGATIONS.pop("logged", None)
    sys.modules.pop("mystrategies", None)


@pytest.mark.slow
def test_a_plugin_weighting_and_aggregation_run_and_the_state_travels_apart(tiny_raw, tmp_path, plugin):
    raw = {**tiny_raw, "method": "all-in-one", "plugins": [plugin]}
    raw["federation"] = {**raw["federation"], "rounds": 2, "task_weighting": "counting", "aggregation": "logged"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert sys.modules[plugin].CALLS == [2, 2]  # two rounds, two clients each
    flat = load_file(str(next((tmp_path / "r" / "checkpoint").glob("weights-*.safetensors"))))
    steps = flat["all-in-one/@state/steps"]
    # each client holds 7 training images (8, one held out): 2 batches of 4 per round; the mean over clients
    # of (last round's mean + 2), twice
    assert steps.tolist() == [4.0]
    assert not any(k.endswith("steps") for k in flat if "@state/" not in k)


def test_unknown_strategies_are_refused_naming_what_is_accepted(tiny_raw, tmp_path, capsys):
    for key, value, needle in (("task_weighting", "nope", "accepted: equal, famo, gradnorm, pcgrad"),
                               ("aggregation", "nope", "accepted: fedavg, fedprox")):
        raw = {**tiny_raw, "federation": {**tiny_raw["federation"], key: value}}
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"federation.{key}" in err and needle in err, err
        assert not (tmp_path / "r").exists()


def test_gradnorm_refuses_arrivals_before_the_run(tiny_raw, tmp_path, capsys):
    raw = {**tiny_raw, "arrival": {"tasks": {"keypoints2d": 1}},
           "federation": {**tiny_raw["federation"], "task_weighting": "gradnorm"}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "arrival.tasks" in capsys.readouterr().err


def test_the_wire_keeps_weights_state_and_affinity_apart():
    msg = Message({"encoder.w": torch.ones(2)}, {"tasks": "a,b"}, {}, {"gradnorm.weights": torch.ones(2)},
                  torch.zeros(2, 2))
    wire = msg.wire_arrays()
    assert set(wire) == {"encoder.w", "@state/gradnorm.weights", "@affinity"}
    back = Message.from_wire(wire, msg.config)
    assert set(back.arrays) == {"encoder.w"} and set(back.state) == {"gradnorm.weights"}
    assert torch.equal(back.affinity, msg.affinity)
    odd = Message.from_wire({**wire, "@other": torch.ones(1)}, {})
    assert "@other" in odd.arrays  # an unknown wire name stays among the weights, where the reply check refuses it


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dwa", "equal-norms"])
def test_the_own_strategy_example_runs_as_a_plugin(tiny_raw, tmp_path, monkeypatch, name):
    """DWA (weights from the losses) and EqualNorms (per-task gradients, also on the lookahead batches of
    MAS's merged phase), each from the example module as a plugin."""
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    raw = {**tiny_raw, "method": "all-in-one" if name == "dwa" else "mas", "plugins": ["own_strategy"]}
    raw["federation"] = {**raw["federation"], "rounds": 2 if name == "dwa" else 4, "task_weighting": name}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    try:
        assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    finally:
        weighting.WEIGHTINGS.pop("dwa", None)
        weighting.WEIGHTINGS.pop("equal-norms", None)
        sys.modules.pop("own_strategy", None)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["costs"]["rejected"] == 0  # every client's training ran
    flat = load_file(str(next((tmp_path / "r" / "checkpoint").glob("weights-*.safetensors"))))
    if name == "dwa":
        losses = flat["all-in-one/@state/dwa.losses"]
        assert losses.shape == (3,) and bool((losses > 0).all()) and not bool((losses == 1).all())
    else:
        assert json.loads((tmp_path / "r" / "affinity.json").read_text())["rounds"] == 1
