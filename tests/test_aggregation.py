"""FedAvg invariants (property-based) and reply validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmas.aggregation import fedavg
from fedmas.messages import Message, Reply, payload_nbytes
from fedmas.server.replies import check_reply

floats = st.floats(-100, 100, allow_nan=False, width=32)


def _upd(vals):
    return {"w": torch.tensor(vals, dtype=torch.float32), "steps": torch.tensor(len(vals))}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(floats, min_size=3, max_size=3), st.floats(0.1, 50)), min_size=1, max_size=6),
       st.randoms())
def test_fedavg_weighted_mean_and_permutation_invariant(updates, rnd):
    ups = [(_upd(v), n) for v, n in updates]
    out = fedavg(ups)
    total = sum(n for _, n in updates)
    expect = sum(torch.tensor(v, dtype=torch.float64) * n for v, n in updates) / total
    torch.testing.assert_close(out["w"].double(), expect, rtol=1e-4, atol=1e-3)
    shuffled = list(ups)
    rnd.shuffle(shuffled)
    torch.testing.assert_close(fedavg(shuffled)["w"], out["w"], rtol=1e-5, atol=1e-4)
    lo = torch.stack([u["w"] for u, _ in ups]).min(0).values
    hi = torch.stack([u["w"] for u, _ in ups]).max(0).values
    assert bool((out["w"] >= lo - 1e-3).all() and (out["w"] <= hi + 1e-3).all())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(floats, min_size=2, max_size=2), min_size=1, max_size=5), st.floats(0.5, 10))
def test_fedavg_equal_weights_is_plain_mean(vals, n):
    out = fedavg([(_upd(v), n) for v in vals])
    torch.testing.assert_close(out["w"], torch.tensor(vals).mean(0), rtol=1e-5, atol=1e-4)


def _reply(arrays, samples=10.0, error=None, compute_s=0.5, flop=1e6, affinity=None, **metrics):
    m = {"samples": samples, "compute_s": compute_s, "flop": flop, **metrics}
    m = {k: v for k, v in m.items() if v is not None}
    return Reply("c1", "t", None if error else Message(arrays, {}, m, affinity=affinity), error)


def test_check_reply_rejections():
    ref = {"w": torch.zeros(3)}
    ok = torch.ones(3)
    assert check_reply(_reply({"w": ok}), ref, 1, False) is None
    cases = {
        "client error": _reply({}, error="boom"),
        "non-finite": _reply({"w": torch.tensor([1.0, float("nan"), 0])}),
        "wrong tensor names": _reply({"v": ok}),
        "wrong shape": _reply({"w": torch.ones(4)}),
        "complex64": _reply({"w": torch.ones(3, dtype=torch.complex64)}),
        "float16": _reply({"w": torch.ones(3, dtype=torch.float16)}),
        "float64": _reply({"w": torch.ones(3, dtype=torch.float64)}),
        "sparse": _reply({"w": torch.ones(3).to_sparse()}),
        "not a tensor": _reply({"w": [1.0, 1.0, 1.0]}),
        "sample count: 0": _reply({"w": ok}, samples=0),
        "sample count: -3": _reply({"w": ok}, samples=-3),
        "sample count: 1e+30": _reply({"w": ok}, samples=1e30),
        "sample count: nan": _reply({"w": ok}, samples=float("nan")),
        "sample count: True": _reply({"w": ok}, samples=True),
        "sample count: 2.5": _reply({"w": ok}, samples=2.5),
        "compute time: None": _reply({"w": ok}, compute_s=None),
        "compute time: nan": _reply({"w": ok}, compute_s=float("nan")),
        "compute time: -1": _reply({"w": ok}, compute_s=-1.0),
        "FLOP count: None": _reply({"w": ok}, flop=None),
        "FLOP count: inf": _reply({"w": ok}, flop=float("inf")),
    }
    for expect, reply in cases.items():
        why = check_reply(reply, ref, 1, False)
        assert why is not None and expect in why, (expect, why)
    assert "at most 20" in check_reply(_reply({"w": ok}, samples=21), ref, 1, False, max_samples=20)
    assert check_reply(_reply({"w": ok}, samples=20), ref, 1, False, max_samples=20) is None
    affs = {"wrong shape": torch.zeros(2, 3), "out of": torch.full((2, 2), 1e300, dtype=torch.float64), "non-finite":
            torch.full((2, 2), float("inf")), "dtype torch.int64": torch.zeros(2, 2, dtype=torch.int64)}
    for expect, aff in affs.items():
        why = check_reply(_reply({"w": ok}, affinity=aff), ref, 2, True)
        assert why is not None and why.startswith("bad affinity") and expect in why, (expect, why)
    assert check_reply(_reply({"w": ok}, affinity=torch.full((2, 2), -5.0)), ref, 2, True) is None
    assert "wrong tensor names" in check_reply(_reply({"w": ok, "affinity": torch.zeros(2, 2)}), ref, 1, False)
    assert "bad affinity: missing" in check_reply(_reply({"w": ok}), ref, 2, True)


def test_payload_nbytes_is_the_serialised_size():
    from safetensors.torch import save

    arrays = {"a.weight": torch.randn(3, 4), "b": torch.zeros(7, dtype=torch.int64), "c": torch.ones(2, 2,
              dtype=torch.float16)}
    assert payload_nbytes(arrays) == len(save(arrays))
    meta = {"tasks": "x,y", "lr": "0.1"}
    assert payload_nbytes(arrays, meta) == len(save(arrays, metadata=meta))


def test_schedule_shares_the_pool_fairly():
    import numpy as np

    from fedmas.server.loop import schedule
    from fedmas.server.state import FLTaskState

    tasks = [FLTaskState(f"g{i}", ["a"], 5) for i in range(3)]
    clients = [f"c{i}" for i in range(7)]
    for rnd in range(4):
        got = schedule(np.random.default_rng(rnd), clients, tasks, 4, 1, rnd)
        sizes = sorted(len(v) for v in got.values())
        assert sizes == [2, 2, 3]  # 7 slots over 3 FL tasks
        used = [c for v in got.values() for c in v]
        assert len(used) == len(set(used))  # nobody trains two models in one round
    two = schedule(np.random.default_rng(0), clients, tasks, 4, 2, 0)
    assert all(len(v) == 4 and len(set(v)) == 4 for v in two.values())


def test_local_config_round_trip_and_strictness():
    from fedmas.messages import LocalConfig

    cfg = LocalConfig(tasks="normal,depth_zbuffer", lr=0.05, seed=7, round=3)
    assert LocalConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    with pytest.raises(ValueError, match="unknown keys \\['lr_typo'\\]"):
        LocalConfig.from_dict({**d, "lr_typo": 1.0})
    with pytest.raises(ValueError, match="missing keys \\['seed'\\]"):
        LocalConfig.from_dict({k: v for k, v in d.items() if k != "seed"})
    with pytest.raises(ValueError, match="batch_size must be int"):
        LocalConfig.from_dict({**d, "batch_size": "16"})
