"""The ClientApp a Flower deployment starts for every message: a thin shim in front of a warm worker.

Flower 1.41 starts a fresh ``flwr-clientapp`` process for each message. Importing torch and fedmas,
reading the client's data and building its model in that process cost several seconds a message,
far more than the training itself on small clients. So this module imports only the standard
library and ``flwr.app`` (the floor adds numpy): it hands the message's packed weights
(:mod:`fedmas.engines.flower_pack`), as the raw bytes Flower already holds, to
a long-lived fedmas worker beside the SuperNode (:mod:`fedmas.engines.flower_worker`) over a local
Unix socket, and returns the worker's answer. The worker keeps torch, the node's clients' data and
their models warm. A user may start it (``fedmas worker --socket PATH``) and name its socket in the
SuperNode's node config (``fedmas-worker=PATH``); otherwise the node's first message starts one,
which stops when its SuperNode stops or after ``flower.worker_idle_s`` seconds without work. Should
the worker at that path not listen, the message starts one there (stopping only when idle).

The server chooses per run (``flower.client_work``) what a message does: ``train`` (the worker
trains), ``train-here`` (train in this process, no worker: the old way, kept to measure the
difference), ``none`` (reply at once with the weights received, changed in their last place so
that Flower moves as many new bytes as after training: Flower's own cost, the floor) or ``echo``
(reply with the very bytes received, which Flower does not move again: an optimistic floor).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context
from flwr.app import Message as FlMessage
from flwr.clientapp import ClientApp

from fedmas.engines.flower_wire import KEY, LAYOUT, Work, bundle_reply, on_node_device, part, partition_reply

WORKER_START_S = 300.0  # how long a first message waits for a new worker to listen (it imports torch)
IDLE_S = 1800.0  # a worker stops after this many seconds without a message (flower.worker_idle_s's default)


# ------------------------------------------------------------------ wire format (shared with the worker)


def send_frame(sock: socket.socket, header: dict[str, Any], blobs: list[bytes]) -> None:
    """One frame: 8-byte header length, the JSON header, then the blobs' bytes back to back
    (their lengths are in the header's ``arrays`` entries)."""
    head = json.dumps(header).encode()
    sock.sendall(struct.pack("!Q", len(head)) + head)
    for b in blobs:
        sock.sendall(b)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the other side closed the connection mid-frame")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_header: int = 1 << 26) -> tuple[dict[str, Any], list[bytes]]:
    (n,) = struct.unpack("!Q", _recv_exact(sock, 8))
    if n > max_header:
        raise ValueError(f"frame header of {n} bytes is over the limit of {max_header}")
    header = json.loads(_recv_exact(sock, n))
    return header, [_recv_exact(sock, int(a[4])) for a in header.get("arrays", [])]


def record_to_wire(rec: ArrayRecord) -> tuple[list[list[Any]], list[bytes]]:
    """An ArrayRecord as ``[name, dtype, shape, stype, nbytes]`` entries and the arrays' bytes."""
    meta, blobs = [], []
    for name, arr in rec.items():
        meta.append([name, arr.dtype, list(arr.shape), arr.stype, len(arr.data)])
        blobs.append(arr.data)
    return meta, blobs


def record_from_wire(meta: list[list[Any]], blobs: list[bytes]) -> ArrayRecord:
    return ArrayRecord(array_dict={m[0]: Array(dtype=m[1], shape=tuple(m[2]), stype=m[3], data=b)
                                   for m, b in zip(meta, blobs)})


# ------------------------------------------------------------------ the worker's address and start


def socket_path(node_id: int) -> Path:
    """This node's worker socket: one worker per SuperNode and Python installation, in a folder only
    this user can enter (Unix-socket paths must stay short, so under the system's temp folder)."""
    import hashlib

    tag = hashlib.sha1(f"{sys.executable}|{Path(__file__).resolve()}".encode()).hexdigest()[:10]
    folder = Path(tempfile.gettempdir()) / f"fedmas-workers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{tag}-{node_id}.sock"


def try_connect(path: Path) -> socket.socket | None:
    """A connection to the worker listening on ``path``, or None if none listens there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def connect_worker(path: Path, watch_pid: int | None, idle_s: float = IDLE_S) -> socket.socket:
    """Connect to the node's worker, starting it first if none listens (one start at a time): it stops
    when ``watch_pid`` is gone or after ``idle_s`` seconds without a message."""
    s = try_connect(path)
    if s is not None:
        return s
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = try_connect(path)
        if s is not None:
            return s
        log = open(f"{path}.log", "ab")  # noqa: SIM115 - handed to the worker process
        cmd = [sys.executable, "-m", "fedmas.engines.flower_worker", "--socket", str(path), "--idle-s", f"{idle_s:g}"]
        if watch_pid:
            cmd += ["--watch-pid", str(watch_pid)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        end = time.monotonic() + WORKER_START_S
        while time.monotonic() < end:
            s = try_connect(path)
            if s is not None:
                return s
            if proc.poll() is not None:
                tail = Path(f"{path}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the fedmas worker exited with status {proc.returncode}:\n{tail}")
            time.sleep(0.05)
        raise TimeoutError(f"the fedmas worker did not listen on {path} within {WORKER_START_S:g} s")


# ------------------------------------------------------------------ the ClientApp


def _floor_reply(arrays: ArrayRecord, config: dict[str, Any], echo: bool = False) -> tuple[ArrayRecord, dict, dict]:
    """What ``client_work: none`` sends back without computing anything: the weights received, each changed
    in its last place (:func:`~fedmas.engines.flower_pack.perturbed`), so that as many new bytes travel up
    as after training; ``echo`` (``client_work: echo``) sends the very bytes received, which Flower, holding
    them already, does not move at all. One sample, and a zero affinity matrix when one is due, so the
    server accepts the reply and the round goes on."""
    from fedmas.engines.flower_pack import extend, perturbed
    from fedmas.messages import AFFINITY, SIGNAL

    layout, affinity = str(config[LAYOUT]), int(config.get("lookahead_step", 0)) > 0
    metrics = {"samples": 1.0, "compute_s": 0.0, "flop": 0.0}
    if echo and not affinity:
        return arrays, {"tasks": config["tasks"], LAYOUT: layout}, metrics
    flat = arrays[KEY].numpy() if echo else perturbed(arrays[KEY].numpy())
    if affinity:
        import numpy as np

        n = len(str(config["tasks"]).split(","))
        flat, layout = extend(flat, layout, AFFINITY, np.zeros((n, n), dtype=np.float32))
        for name in str(config.get("signals", "lookahead")).split(","):
            if name and name != "lookahead":
                flat, layout = extend(flat, layout, SIGNAL + name, np.zeros((n, n), dtype=np.float32))
    return ArrayRecord({KEY: Array(flat)}), {"tasks": config["tasks"], LAYOUT: layout}, metrics


def _by_worker(path: Path, watch_pid: int | None) -> Work:
    def work(arrays: ArrayRecord, config: dict[str, Any]) -> tuple[ArrayRecord, dict[str, Any], dict[str, float]]:
        meta, blobs = record_to_wire(arrays)
        sock = connect_worker(path, watch_pid, float(config.get("fedmas_worker_idle_s", IDLE_S)))
        with sock:
            send_frame(sock, {"config": config, "arrays": meta}, blobs)
            header, blobs = recv_frame(sock)
        if "error" in header:
            raise RuntimeError(f"fedmas worker: {header['error']}")
        return record_from_wire(header["arrays"], blobs), header["config"], header["metrics"]

    return work


def make_shim_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: FlMessage, context: Context) -> FlMessage:
        first = msg.content[part("config", 0)] if part("config", 0) in msg.content else {}
        how = str(first.get("fedmas_client_work", "train"))  # the same for every job of a run
        if how in ("none", "echo"):
            work: Work = functools.partial(_floor_reply, echo=how == "echo")
        elif how == "train-here":
            from fedmas.engines.flower_client import train_here

            work = train_here
        else:  # the node's own worker (node config fedmas-worker=SOCKET), else one started beside this SuperNode
            own = str(context.node_config.get("fedmas-worker", "") or "")
            work = _by_worker(Path(own), None) if own else _by_worker(socket_path(context.node_id), os.getppid())
        return bundle_reply(msg, on_node_device(work, context))  # train_here drops the engine's own config keys

    app.query()(partition_reply)
    return app
