"""Weights packed into one Flower array; the floor's replies; the ClientApp shim in front of a worker that
a user started (``fedmas worker``), driven by the real round loop through the Flower engine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
pytestmark = pytest.mark.usefixtures("flower_identity")

from flwr.app import Array, ArrayRecord, Context, RecordDict  # noqa: E402

from fedmas.config import Config  # noqa: E402
from fedmas.engines.flower import FlowerEngine  # noqa: E402
from fedmas.engines.flower_pack import KEY, LAYOUT, entries, extend, pack_torch, perturbed, unpack_torch  # noqa: E402
from fedmas.engines.flower_shim import _floor_reply, make_shim_app  # noqa: E402
from fedmas.messages import Message  # noqa: E402
from fedmas.run import drive, execute  # noqa: E402
from fedmas.runfolder import prepare_run_dir  # noqa: E402


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "bn.num_batches_tracked": torch.tensor(7),
            "odd": torch.randn(5, generator=g).to(torch.bfloat16), "half": torch.randn(3, generator=g).half(),
            "empty": torch.zeros(0, 2), "idx": torch.arange(3, dtype=torch.int32), "flag": torch.tensor([True, False])}


def test_pack_round_trip_keeps_every_dtype_shape_and_value():
    state = _state()
    flat, layout = pack_torch(state)
    assert flat.dtype == np.uint8 and flat.ndim == 1
    assert all(e[3] % 8 == 0 for e in entries(layout))
    back = unpack_torch(flat.copy(), layout)
    assert list(back) == list(state)
    for k, t in state.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k


def test_pack_survives_a_flower_array_and_fills_one_record():
    flat, layout = pack_torch(_state())
    rec = ArrayRecord({KEY: Array(flat)})
    assert len(rec) == 1
    back = unpack_torch(rec[KEY].numpy(), layout)
    assert torch.equal(back["conv.weight"], _state()["conv.weight"])


@pytest.mark.parametrize("layout, why", [("{}", "list of"), ('[["w", "float32", [2], 0]]', "list of"),
                                          ('[["w", "nonsense", [1], 0, 4]]', "unknown dtype"),
                                          ('[["w", "float32", [4], 8, 16]]', "outside"),
                                          ('[["w", "float32", [1], 4, 4]]', "boundary")])
def test_a_bad_layout_is_refused_by_name(layout, why):
    with pytest.raises(ValueError, match=why):
        unpack_torch(np.zeros(16, np.uint8), layout)


def test_perturbed_changes_every_word_by_one_unit_in_the_last_place():
    w = torch.randn(1000, dtype=torch.float32)
    flat, layout = pack_torch({"w": w, "n": torch.tensor([5, 9], dtype=torch.int64)})
    out = perturbed(flat)
    words = flat.reshape(-1, 8)
    assert (out.reshape(-1, 8) != words).any(axis=1).all()  # no 8-byte word is left as it was
    back = unpack_torch(out, layout)
    ulp = torch.nextafter(w.abs(), torch.tensor(float("inf"))) - w.abs()
    assert torch.isfinite(back["w"]).all() and ((back["w"] - w).abs() <= ulp).all()
    assert (back["n"] - torch.tensor([5, 9])).abs().max() == 1
    assert np.array_equal(perturbed(out), flat)  # flipping twice restores it: nothing but the bit changed


def _job_config(layout: str, **extra) -> dict:
    return {"tasks": "a,b", LAYOUT: layout, **extra}


def test_floor_replies_same_size_new_bytes_and_echo_the_same_bytes():
    flat, layout = pack_torch(_state())
    rec = ArrayRecord({KEY: Array(flat)})
    out, cfg, metrics = _floor_reply(rec, _job_config(layout))
    assert cfg[LAYOUT] == layout and metrics["samples"] == 1.0
    assert out[KEY].numpy().shape == flat.shape and out[KEY].object_id != rec[KEY].object_id
    echo, _, _ = _floor_reply(rec, _job_config(layout), echo=True)
    assert echo[KEY].object_id == rec[KEY].object_id  # what Flower would not send again


def test_floor_reply_adds_a_zero_affinity_when_one_is_due():
    flat, layout = pack_torch(_state())
    for echo in (False, True):
        out, cfg, _ = _floor_reply(ArrayRecord({KEY: Array(flat)}), _job_config(layout, lookahead_step=1), echo)
        back = unpack_torch(out[KEY].numpy(), cfg[LAYOUT])
        assert torch.equal(Message.from_wire(back, {}).affinity, torch.zeros(2, 2))
        assert torch.equal(back["conv.weight"], _state()["conv.weight"]) == echo
    flat2, layout2 = extend(flat, layout, "x", np.ones(3, np.float64))
    assert torch.equal(unpack_torch(flat2, layout2)["x"], torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ the shim and a worker a user started


class DirectGrid:
    """A Grid whose nodes answer at once by calling the ClientApp in this process (no Flower processes):
    node ``i`` has the node config a SuperNode started with ``--node-config`` would have."""

    def __init__(self, app, node_configs: list[dict]):
        self.app, self.node_configs, self.replies, self.arrays_per_job = app, node_configs, {}, []

    def get_node_ids(self) -> list[int]:
        return list(range(1, len(self.node_configs) + 1))

    def _call(self, msg):
        ctx = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config=self.node_configs[
            msg.metadata.dst_node_id - 1], state=RecordDict(), run_config={})
        return self.app(msg, ctx)

    def send_and_receive(self, msgs, timeout):
        out = []
        for m in msgs:
            r = self._call(m)
            r.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            out.append(r)
        return out

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            mid = f"m{len(self.replies)}"
            self.arrays_per_job += [len(v) for k, v in m.content.items() if k.startswith("arrays-")]
            r = self._call(m)
            r.metadata.__dict__["_reply_to_message_id"] = mid
            self.replies[mid] = r
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _start_worker(sock: Path, idle_s: float = 600) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "worker", "--socket", str(sock), "--idle-s",
                             str(idle_s)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # "fedmas worker PID listening on SOCK" once it listens
    assert "listening on" in line, line
    return proc


def test_shim_hands_jobs_to_a_worker_the_user_started_and_matches_inprocess(tiny_raw, tmp_path):
    cfg = Config.model_validate(tiny_raw)
    ref = execute(cfg, tmp_path / "inprocess", progress=False)
    socks = [tmp_path / f"w{i}.sock" for i in range(2)]
    workers = [_start_worker(s) for s in socks]
    try:
        grid = DirectGrid(make_shim_app(), [{"partition-id": i, "num-partitions": 2, "fedmas-worker": str(s)}
                                            for i, s in enumerate(socks)])
        run = tmp_path / "fl"
        run.mkdir()
        prepare_run_dir(run, cfg)
        got = drive(cfg, run, lambda c, data, _spec: FlowerEngine(grid, c, data.client_ids), progress=False)
    finally:
        for w in workers:
            w.terminate()
        outs = [w.communicate(timeout=60)[0] for w in workers]
    assert got["groups"] == ref["groups"]
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], abs=1e-5)
    assert all(" round " in o for o in outs), outs  # both workers trained: the jobs went to them
    assert grid.arrays_per_job and set(grid.arrays_per_job) == {1}  # each job's weights: one packed array


def test_floor_run_completes_through_the_shim(tiny_raw, tmp_path):
    """client_work none (and echo) on MAS: the replies carry a zero affinity and parse; nothing trains."""
    for work in ("none", "echo"):
        cfg = Config.model_validate({**tiny_raw, "flower": {"client_work": work}})
        grid = DirectGrid(make_shim_app(), [{"partition-id": i, "num-partitions": 2} for i in range(2)])
        run = tmp_path / work
        run.mkdir()
        prepare_run_dir(run, cfg)
        got = drive(cfg, run, lambda c, data, _spec, g=grid: FlowerEngine(g, c, data.client_ids), progress=False)
        assert got["faults"] == {} and got["costs"]["train_flop"] == 0, work


def test_worker_refuses_a_socket_another_worker_listens_on_and_stops_when_idle(tmp_path):
    sock = tmp_path / "w.sock"
    first = _start_worker(sock, idle_s=86400)  # it cannot go idle while the second one is tried, however busy
    try:
        again = subprocess.run([sys.executable, "-m", "fedmas.cli", "worker", "--socket", str(sock)],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and "already listens" in again.stderr
    finally:
        first.kill()
        first.wait(timeout=300)
    idle = _start_worker(sock, idle_s=0.5)  # a stale socket is replaced; then nothing comes and it stops
    try:
        idle.wait(timeout=300)  # bounds a hung test only: the worker checks every 2 s
    finally:
        idle.kill()
    assert idle.returncode == 0 and not sock.exists()
    assert "idle for 0.5 s" in idle.stdout.read()


def test_worker_flags_are_checked(tmp_path):
    for args, why in [(["--idle-s", "0"], "--idle-s must be > 0"),
                      (["--socket", "/" + "x" * 120], "under 100 bytes")]:
        argv = ["--socket", str(tmp_path / "w.sock"), *args] if args[0] != "--socket" else args
        proc = subprocess.run([sys.executable, "-m", "fedmas.cli", "worker", *argv], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr


def test_a_named_worker_that_is_not_running_is_started_there_and_stops_after_worker_idle_s(tiny_raw, tmp_path):
    """Node config fedmas-worker=PATH with nothing listening: the first message starts a worker at PATH; with
    no SuperNode to watch it stops after ``flower.worker_idle_s`` without a message."""
    raw = {**tiny_raw, "federation": {**tiny_raw["federation"], "rounds": 1}, "method": "all-in-one",
           "flower": {"worker_idle_s": 1.0, "nodes": 1}}
    cfg = Config.model_validate(raw)
    sock = tmp_path / "w.sock"
    grid = DirectGrid(make_shim_app(), [{"partition-id": 0, "num-partitions": 1, "fedmas-worker": str(sock)}])
    run = tmp_path / "fl"
    run.mkdir()
    prepare_run_dir(run, cfg)
    got = drive(cfg, run, lambda c, data, _spec: FlowerEngine(grid, c, data.client_ids), progress=False)
    assert got["faults"] == {}
    log = Path(f"{sock}.log")
    end = time.monotonic() + 300  # bounds a hung test only: the worker checks every 2 s
    while sock.exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert not sock.exists(), log.read_text()
    assert "idle for 1 s: stopping" in log.read_text()


def test_a_nodes_own_device_comes_from_its_node_config(tiny_raw, tmp_path):
    """fedmas-device in a SuperNode's node config is the device its client work runs on: cpu trains as usual;
    a GPU the node does not have fails that node's jobs (counted as client failures), not the run."""
    import torch

    raw = {**tiny_raw, "federation": {**tiny_raw["federation"], "rounds": 1}, "method": "all-in-one",
           "flower": {"client_work": "train-here", "nodes": 2}}
    cfg = Config.model_validate(raw)
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    grid = DirectGrid(make_shim_app(), [{"partition-id": 0, "num-partitions": 2, "fedmas-device": "cpu"},
                                        {"partition-id": 1, "num-partitions": 2, "fedmas-device": missing}])
    run = tmp_path / "fl"
    run.mkdir()
    prepare_run_dir(run, cfg)
    got = drive(cfg, run, lambda c, data, _spec: FlowerEngine(grid, c, data.client_ids), progress=False)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    on_cpu = [c for c in line["clients"] if int(c.split("_")[1]) % 2 == 0]  # partition 0 serves even clients
    assert line["accepted"] == len(on_cpu) and sum(got["faults"].values()) >= len(line["clients"]) - len(on_cpu)
