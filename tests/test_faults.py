"""Client faults are rejected with a log line naming client and reason; the run goes on."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

from fedmas.config import Config
from fedmas.data import load_federated
from fedmas.engines.inprocess import InProcessEngine
from fedmas.messages import Message
from fedmas.models import ModelSpec
from fedmas.run import execute
from fedmas.server.state import CheckpointError, load_checkpoint

pytestmark = pytest.mark.slow


class RaisingData(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def batch(self, idx):
        raise OSError("disk on fire")


class HangingData(RaisingData):
    def batch(self, idx):
        time.sleep(3)
        return self.inner.batch(idx)


class NaNData(RaisingData):
    def batch(self, idx):
        x, t, m = self.inner.batch(idx)
        return x * float("nan"), t, m


class Tamper(InProcessEngine):
    """Clients that reply with malformed updates (what a buggy or malicious client could send)."""

    def __init__(self, clients, spec, how):
        super().__init__(clients, spec)
        self.how = how

    def _one(self, job, models):
        r = super()._one(job, models)
        fn = self.how.get(job.client)
        if fn and r.message is not None:
            fn(r.message)
        return r


def _rename(m: Message):
    k = next(iter(m.arrays))
    m.arrays["bogus." + k] = m.arrays.pop(k)


def _reshape(m: Message):
    k = next(iter(m.arrays))
    m.arrays[k] = torch.zeros(3, 3)


def _zero_samples(m: Message):
    m.metrics["samples"] = 0.0


def _neg_samples(m: Message):
    m.metrics["samples"] = -5.0


def _bad_affinity(m: Message):
    m.affinity = torch.zeros(2, 7)


def _cfg(tiny_raw, **fed) -> Config:
    raw = dict(tiny_raw)
    raw["data"] = {**raw["data"], "buildings": 8}
    raw["federation"] = {**raw["federation"], "clients_per_round": 8, "rounds": 2, **fed}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    return Config.model_validate(raw)


def test_faulty_clients_are_rejected_and_counted(tiny_raw, tmp_path, caplog):
    # every client is faulty, so no round updates: the run is let finish (it would fail otherwise) to count them
    cfg = _cfg(tiny_raw, round_deadline_s=1.5, max_share_without_update=1.0)
    cfg.method = "mas"
    data = load_federated(cfg.data, cfg.task_list)
    ids = data.client_ids
    clients = dict(data.clients)
    clients[ids[0]] = RaisingData(clients[ids[0]])
    clients[ids[1]] = HangingData(clients[ids[1]])
    clients[ids[2]] = NaNData(clients[ids[2]])
    engine = Tamper(clients, ModelSpec(cfg.model.encoder, cfg.model.width),
                    {ids[3]: _rename, ids[4]: _reshape, ids[5]: _zero_samples, ids[6]: _neg_samples,
                     ids[7]: _bad_affinity})
    with caplog.at_level(logging.WARNING, logger="fedmas"):
        s = execute(cfg, tmp_path / "run", progress=False, engine=engine)
    assert s is not None and all(v == v for v in s["test_loss"].values())  # finished, no NaN leaked in
    log = caplog.text
    for cid, why in [(ids[0], "disk on fire"), (ids[1], "timeout"), (ids[2], "non-finite"),
                     (ids[3], "wrong tensor names"), (ids[4], "wrong shape"), (ids[5], "bad sample count"),
                     (ids[6], "bad sample count"), (ids[7], "bad affinity")]:
        assert any(cid in ln and why in ln for ln in log.splitlines()), (cid, why)
    faults = s["faults"]
    assert faults["client error: OSError"] >= 1 and faults["client error: timeout"] >= 1
    assert sum(faults.values()) >= 8
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(ln["accepted"] < 8 for ln in lines)


def test_too_few_replies_retries_then_skips(tiny_raw, tmp_path, caplog):
    cfg = _cfg(tiny_raw, min_replies=8, max_round_retries=1, max_share_without_update=1.0)  # counted, not failed
    cfg.method = "all-in-one"
    data = load_federated(cfg.data, cfg.task_list)
    clients = dict(data.clients)
    clients[data.client_ids[0]] = RaisingData(clients[data.client_ids[0]])
    engine = InProcessEngine(clients, ModelSpec(cfg.model.encoder, cfg.model.width))
    with caplog.at_level(logging.WARNING, logger="fedmas"):
        s = execute(cfg, tmp_path / "run", progress=False, engine=engine)
    assert s["faults"]["round_retries"] == 2  # two rounds, each retried once, then skipped
    assert s["faults"]["rounds_without_update"] == 2
    assert "retry" in caplog.text


def test_a_retry_asks_idle_clients_in_place_of_failed_ones(tiny_raw, tmp_path, caplog):
    """Dead clients fail instantly; asking them again would fail again. The retry keeps the usable replies
    and asks clients that are idle this round instead, so the round still updates."""
    cfg = _cfg(tiny_raw, clients_per_round=4, min_replies=4, max_round_retries=3)
    cfg.method = "all-in-one"
    data = load_federated(cfg.data, cfg.task_list)
    clients = dict(data.clients)
    dead = set(data.client_ids[:4])  # half the federation sits on a dead machine
    for c in dead:
        clients[c] = RaisingData(clients[c])
    engine = InProcessEngine(clients, ModelSpec(cfg.model.encoder, cfg.model.width))
    with caplog.at_level(logging.WARNING, logger="fedmas"):
        s = execute(cfg, tmp_path / "run", progress=False, engine=engine)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert s["faults"].get("rounds_without_update", 0) == 0
    assert all(ln["accepted"] == 4 for ln in lines)  # the failed ones replaced by idle live clients
    asked = {ln["round"]: set(ln["clients"]) for ln in lines}
    retries = [ln for ln in caplog.text.splitlines() if "; retry " in ln]
    assert retries and s["faults"]["round_retries"] == len(retries)
    for ln in retries:  # never the same client twice in a round
        r = int(ln.split("round ")[1].split(",")[0])
        new = set(ln.split(" with ")[1].split(", "))
        assert not new & asked[r], ln
        asked[r] |= new


def test_crafted_pickle_checkpoint_is_refused(tiny_raw, tmp_path):
    import pickle

    cfg = _cfg(tiny_raw)
    cfg.method = "all-in-one"
    run = tmp_path / "run"
    execute(cfg, run, progress=False, stop_after=1)
    st = json.loads((run / "checkpoint" / "state.json").read_text())
    wfile = run / "checkpoint" / st["weights_file"]

    class Boom:
        def __reduce__(self):
            target = str(tmp_path / "pwned")
            return (exec, (f"open({target!r}, 'w').write('pwned')",))

    wfile.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(run)
    assert not (tmp_path / "pwned").exists()
    (run / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(run)
