"""Plain-data messages between server and clients, and the client side's entry point.

A message is named arrays + a config dict + metrics, so any engine (in-process,
Flower) can carry it. :func:`handle_train` is what every engine runs on a client:
it turns a train message into a reply using :func:`fedmas.client.train_local`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fedmas.client import LocalConfig, train_local
from fedmas.models import ModelSpec, MultiTaskModel

Scalar = str | int | float | bool


@dataclass
class Message:
    arrays: dict[str, Tensor]
    config: dict[str, Scalar] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One client's work in one round: train FL task ``fl_task`` from ``message``."""

    client: str
    fl_task: str
    message: Message


@dataclass
class Reply:
    client: str
    fl_task: str
    message: Message | None
    error: str | None = None
    bytes_down: int = 0
    bytes_up: int = 0


_DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                torch.uint8: "U8", torch.bool: "BOOL"}


def payload_nbytes(arrays: dict[str, Tensor], metadata: dict[str, str] | None = None) -> int:
    """Exact size of ``arrays`` serialised with safetensors (header + data), without serialising."""
    header: dict[str, object] = {}
    offset = 0
    for name in sorted(arrays, key=lambda k: (-_align(arrays[k]), k)):
        t = arrays[name]
        nb = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nb]}
        offset += nb
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    pad = (8 - len(h) % 8) % 8
    return 8 + len(h) + pad + offset


def _align(t: Tensor) -> int:
    return t.element_size()


def message_nbytes(msg: Message) -> int:
    meta = {k: str(v) for k, v in {**msg.config, **{f"m:{k}": v for k, v in msg.metrics.items()}}.items()}
    return payload_nbytes(msg.arrays, meta)


class ModelCache:
    """One model instance per task tuple, reused across rounds (weights are loaded each time)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._models: dict[tuple[str, ...], MultiTaskModel] = {}

    def get(self, tasks: tuple[str, ...]) -> MultiTaskModel:
        if tasks not in self._models:
            self._models[tasks] = MultiTaskModel(tasks, self.spec)
        return self._models[tasks]


def handle_train(msg: Message, data: Dataset, models: ModelCache) -> Message:
    """Client side of a train message: local training, then a reply with weights and metrics."""
    tasks = tuple(str(msg.config["tasks"]).split(","))
    cfg = LocalConfig.from_dict(msg.config)
    arrays = dict(msg.arrays)
    task_weights = arrays.pop("gradnorm.weights", None)
    result = train_local(models.get(tasks), arrays, data, cfg, task_weights)
    out = result.weights
    if result.affinity is not None:
        out["affinity"] = result.affinity
    return Message(arrays=out, config={"tasks": ",".join(tasks)}, metrics=result.metrics)
