"""Live curves: TensorBoard event files written by fedmas itself (no TensorBoard or TensorFlow needed to write).

A run with ``tensorboard: true`` writes ``<run>/tensorboard/events.out.tfevents.*``: after every round, each FL
task's test loss per task, its skill (once the trivial predictor is known), the validation total, the learning
rate, the number of FL tasks trained that round (it steps at the split) and the cumulative client compute and traffic.
``pip install 'fedmas[tensorboard]'`` installs TensorBoard to look at them: ``tensorboard --logdir runs/``.

The file format is TensorFlow's record format (length, masked CRC-32C, an ``Event`` protocol buffer holding a
``Summary`` of scalar values), written here with the few protobuf fields it needs; :func:`read_scalars` reads
such files back.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(step: int, wall: float, *, version: str | None = None, scalars: dict[str, float] | None = None) -> bytes:
    msg = _field(1, 1, struct.pack("<d", wall)) + _field(2, 0, _varint(step))
    if version is not None:
        msg += _bytes_field(3, version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
                          for tag, v in scalars.items())
        msg += _bytes_field(5, values)
    return msg


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


class EventWriter:
    """Appends scalar summaries to one event file in ``folder`` (created on first use)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.fedmas"
        self.path = folder / name
        with open(self.path, "ab") as f:
            f.write(_record(_event(0, time.time(), version="brain.Event:2")))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
        if finite:
            with open(self.path, "ab") as f:
                f.write(_record(_event(step, time.time(), scalars=finite)))
                f.flush()


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    at = 0
    while at + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        (crc,) = struct.unpack_from("<I", data, at + 8)
        if crc != _masked(data[at:at + 8]):
            raise ValueError(f"{path}: damaged record length at byte {at}")
        body = data[at + 12:at + 12 + n]
        (crc,) = struct.unpack_from("<I", data, at + 12 + n)
        if crc != _masked(body):
            raise ValueError(f"{path}: damaged record at byte {at}")
        yield body
        at += 16 + n


def _fields(msg: bytes) -> Iterator[tuple[int, int, Any]]:
    at = 0
    while at < len(msg):
        key, at = _read_varint(msg, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(msg, at)
        elif wire == 1:
            value, at = msg[at:at + 8], at + 8
        elif wire == 5:
            value, at = msg[at:at + 4], at + 4
        elif wire == 2:
            n, at = _read_varint(msg, at)
            value, at = msg[at:at + n], at + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[at]
        at += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, at


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``folder``: tag → [(step, value), ...] in the order written."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for rec in _records(path):
            step, summary = 0, b""
            for number, _, value in _fields(rec):
                if number == 2:
                    step = value
                elif number == 5:
                    summary = value
            for number, _, value in _fields(summary):
                if number != 1:
                    continue
                tag, v = "", None
                for n2, _, x in _fields(value):
                    if n2 == 1:
                        tag = x.decode()
                    elif n2 == 2:
                        v = struct.unpack("<f", x)[0]
                if v is not None:
                    out.setdefault(tag, []).append((step, v))
    return out


class RoundCurves:
    """After each round: the new lines of metrics.jsonl as scalars (per FL task and task), and the costs so far."""

    def __init__(self, run_dir: Path, trivial_test_loss: dict[str, float]):
        self.metrics = run_dir / "metrics.jsonl"
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0  # a resume: the rounds to come
        self.trivial = trivial_test_loss
        self.writer = EventWriter(run_dir / FOLDER)

    def after_round(self, round_index: int, costs: dict[str, float]) -> None:
        if not self.metrics.exists():
            return
        with open(self.metrics, "rb") as f:
            f.seek(self.offset)
            new = f.read()
        end = new.rfind(b"\n") + 1
        self.offset += end
        lines = new[:end].decode().splitlines()
        values: dict[str, float] = {"run/fl_tasks_trained": len(lines),
                                    "run/train_tflop": costs.get("train_flop", 0.0) / 1e12,
                                    "run/energy_kj": costs.get("energy_j", 0.0) / 1000,
                                    "run/traffic_mb": (costs.get("bytes_down", 0.0) + costs.get("bytes_up", 0.0)) / 1e6}
        for line in lines:
            r = json.loads(line)
            fl = r["fl_task"]
            values[f"{fl}/lr"] = r["lr"]
            for k, v in r.items():
                if k.startswith("loss/"):
                    t = k[5:]
                    values[f"{fl}/test_loss/{t}"] = v
                    if self.trivial.get(t):
                        values[f"{fl}/skill/{t}"] = 1.0 - v / self.trivial[t]
            for k in ("total_loss", "val_total_loss"):
                if k in r:
                    values[f"{fl}/{k}"] = r[k]
        self.writer.scalars(round_index, values)
