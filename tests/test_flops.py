"""FLOP counting: a tiny model against a hand count; the same count in two runs of one config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fedmas.client import LocalConfig, train_local
from fedmas.config import Config
from fedmas.data.federated import MultiTaskArrays
from fedmas.evaluate import evaluate
from fedmas.models import ModelSpec, build_model
from fedmas.run import execute

TASKS = ("depth_zbuffer", "normal")


def _tiny_model():
    model = build_model(TASKS, ModelSpec(width=4), seed=0)
    model.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    model.encoder.out_channels = 4  # type: ignore[assignment]
    model.heads = nn.ModuleDict({"depth_zbuffer": nn.Conv2d(4, 1, 1, bias=False),
                                 "normal": nn.Conv2d(4, 3, 1, bias=False)})
    return model


def _data(n: int, hw: int = 8) -> MultiTaskArrays:
    g = torch.Generator().manual_seed(0)
    return MultiTaskArrays(torch.randn(n, 3, hw, hw, generator=g),
                           {"depth_zbuffer": torch.randn(n, 1, hw, hw, generator=g),
                            "normal": torch.randn(n, 3, hw, hw, generator=g)}, {})


def test_flops_of_a_tiny_model_against_a_hand_count():
    n, hw, b = 6, 8, 4  # batches of 4 and 2
    model = _tiny_model()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = hw * hw
    enc = 2 * 3 * 4 * 9 * pixels  # FLOPs per sample: 2 per multiply-add of the 3×3 conv 3→4
    heads = 2 * 4 * (1 + 3) * pixels  # the two 1×1 heads 4→1 and 4→3
    # forward: enc + heads; backward: the heads' weight and input gradients (2 × heads), the encoder's
    # weight gradient only (its input needs no gradient): enc
    per_sample = 2 * enc + 3 * heads
    res = train_local(model, w0, _data(n, hw), LocalConfig(tasks=",".join(TASKS), batch_size=b, lr=0.01))
    assert res.metrics["flop"] == n * per_sample
    ev = evaluate(model, w0, _data(n, hw), batch_size=b)
    assert ev["flop"] == n * (enc + heads)


def test_lookahead_batches_cost_more_and_the_count_is_cached():
    from fedmas.flops import FlopCounter

    model = _tiny_model()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    counter = FlopCounter()
    cfg = LocalConfig(tasks=",".join(TASKS), batch_size=2, lookahead_step=2)
    a = train_local(model, w0, _data(8), cfg, flops=counter)
    kinds = {k[0] for k in counter.per_batch}
    assert kinds == {"train", "lookahead"}
    look = next(v for k, v in counter.per_batch.items() if k[0] == "lookahead")
    train = next(v for k, v in counter.per_batch.items() if k[0] == "train")
    assert look > train
    assert a.metrics["flop"] == 2 * look + 2 * train  # batches 0 and 2 look ahead
    b = train_local(model, w0, _data(8), cfg, flops=counter)  # counted from the cache: same number
    assert b.metrics["flop"] == a.metrics["flop"]
    for k in a.weights:
        torch.testing.assert_close(a.weights[k], b.weights[k], rtol=0, atol=0)


@pytest.mark.slow
def test_flop_totals_identical_across_two_runs(tiny_raw, tmp_path):
    cfg = Config.model_validate(tiny_raw)
    s1 = execute(cfg, tmp_path / "a", progress=False)
    s2 = execute(cfg, tmp_path / "b", progress=False)
    assert s1["costs"]["train_flop"] > 0 and s1["costs"]["eval_flop"] > 0
    for k in ("train_flop", "eval_flop", "energy_j"):
        assert s1["costs"][k] == s2["costs"][k], k
    per_task = json.loads((tmp_path / "a" / "costs.json").read_text())["per_task"]
    assert sum(r["train_flop"] for r in per_task.values()) == s1["costs"]["train_flop"]


def test_the_python_api_counts_each_kind_of_batch_once_per_model(monkeypatch):
    """train_local and evaluate without a counter of their own: the first call counts, later calls reuse it."""
    import fedmas.flops

    entered = []
    real = fedmas.flops.FlopCounterMode

    class Spy(real):  # type: ignore[misc, valid-type]
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(fedmas.flops, "FlopCounterMode", Spy)
    model, data = _tiny_model(), _data(8)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LocalConfig(lr=0.1, batch_size=4)
    first = train_local(model, w0, data, cfg)
    n = len(entered)
    second = train_local(model, w0, data, cfg)
    assert n >= 1 and len(entered) == n  # no second count
    assert first.metrics["flop"] == second.metrics["flop"] > 0
    e1 = evaluate(model, None, data)
    m = len(entered)
    assert evaluate(model, None, data)["flop"] == e1["flop"] and len(entered) == m
    other = _tiny_model()  # another model is counted on its own
    train_local(other, w0, data, cfg)
    assert len(entered) > m
