"""Plain-data messages between server and clients (the wire format; no training code).

A message is named arrays + a config dict + metrics, so any engine (in-process,
Flower) can carry it; :func:`message_nbytes` is its exact size on the wire.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Scalar = str | int | float | bool


PRECISIONS = ("fp32", "bf16")
_OPTIONAL = {"precision": "fp32", "weighting": "equal", "weighting_args": "", "aggregation": "fedavg",
             "aggregation_args": "", "signals": "lookahead"}  # keys a message may leave out
AFFINITY = "@affinity"  # the wire names of a message's typed fields among its arrays (no weight starts with "@")
STATE = "@state/"
SIGNAL = "@signal/"  # grouping signals other than the lookahead affinity


def encode_args(args: Mapping[str, Any]) -> str:
    """A strategy's parameters as the JSON text a LocalConfig carries."""
    return json.dumps(dict(args), sort_keys=True) if args else ""


def decode_args(text: str) -> dict[str, Any]:
    if not text:
        return {}
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"a strategy's arguments must be a JSON object, got {text[:40]!r}")
    return doc


def autocast(precision: str, device: object):
    """The context for forward passes at ``precision``: bfloat16 autocast on ``device`` for "bf16", else none."""
    import contextlib

    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=torch.bfloat16)


@dataclass(frozen=True)
class LocalConfig:
    """Instructions for one round of local training; the server sends ``dataclasses.asdict`` of it
    and the client rebuilds it with :meth:`from_dict`, which refuses unknown, missing or mistyped keys."""

    tasks: str = ""  # comma-separated task names of the FL task's model
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    local_epochs: int = 1
    batch_size: int = 16
    weighting: str = "equal"  # the task weighting (a name registered in fedmas.weighting)
    weighting_args: str = ""  # its parameters, as JSON ("" = none)
    aggregation: str = "fedavg"  # the aggregation, whose client part (if any) local training runs
    aggregation_args: str = ""  # the client part's parameters, as JSON ("" = none)
    lookahead_step: int = 0  # measure affinity every this many batches; 0 = off
    signals: str = "lookahead"  # comma-separated grouping signals measured on lookahead batches (fedmas.signals)
    encoder_grad_scale: float = 1.0  # the shared encoder's gradient is scaled by this (1/√n: see fedmas.config)
    seed: int = 0
    round: int = 0
    precision: str = "fp32"  # "bf16": forward passes (training and lookahead) under bfloat16 autocast

    @property
    def task_tuple(self) -> tuple[str, ...]:
        return tuple(self.tasks.split(","))

    def to_dict(self) -> dict[str, str | int | float]:
        d = dataclasses.asdict(self)
        for k in _OPTIONAL:  # at their default, optional keys are not sent (the message stays as it was)
            if d[k] == _OPTIONAL[k]:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> LocalConfig:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        missing = sorted(set(fields) - set(d) - set(_OPTIONAL))
        d = {**_OPTIONAL, **d}
        if unknown or missing:
            raise ValueError(f"local training config: unknown keys {unknown}, missing keys {missing}")
        out: dict[str, object] = {}
        for k, kind in fields.items():
            v = d[k]
            ok = {"str": isinstance(v, str), "int": isinstance(v, int) and not isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool)}[str(kind)]
            if not ok:
                raise ValueError(f"local training config: {k} must be {kind}, got {v!r}")
            if k == "precision" and v not in PRECISIONS:
                raise ValueError(f"local training config: precision must be one of {PRECISIONS}, got {v!r}")
            out[k] = float(v) if kind == "float" else v  # type: ignore[arg-type]
        return cls(**out)  # type: ignore[arg-type]


@dataclass
class Message:
    """``arrays``: model weights only. ``state``: what the FL task's strategies keep between rounds (GradNorm's
    task weights), averaged by the server like weights. ``affinity``: a reply's measured n×n affinity matrix;
    ``signals``: the other grouping signals it measured (name → n×n matrix)."""

    arrays: dict[str, Tensor]
    config: dict[str, Scalar] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)
    affinity: Tensor | None = None
    signals: dict[str, Tensor] = field(default_factory=dict)

    def wire_arrays(self) -> dict[str, Tensor]:
        """Every tensor the message carries, by wire name: the weights as named, the state under ``@state/``,
        the affinity as ``@affinity``, the other signals under ``@signal/``."""
        out = {**self.arrays, **{STATE + k: v for k, v in self.state.items()},
               **{SIGNAL + k: v for k, v in self.signals.items()}}
        if self.affinity is not None:
            out[AFFINITY] = self.affinity
        return out

    @classmethod
    def from_wire(cls, arrays: Mapping[str, Tensor], config: dict[str, Scalar],
                  metrics: dict[str, float] | None = None) -> Message:
        """The inverse of :meth:`wire_arrays`."""
        weights = {k: v for k, v in arrays.items() if k != AFFINITY and not k.startswith((STATE, SIGNAL))}
        state = {k[len(STATE):]: v for k, v in arrays.items() if k.startswith(STATE)}
        signals = {k[len(SIGNAL):]: v for k, v in arrays.items() if k.startswith(SIGNAL)}
        return cls(weights, config, metrics or {}, state, arrays.get(AFFINITY), signals)


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
    return payload_nbytes(msg.wire_arrays(), meta)
