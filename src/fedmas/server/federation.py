"""The federation the round loop serves: its clients and FL tasks (:class:`Server`), which client trains which
FL task in a round (:func:`schedule`), and what a client is told (:func:`local_config`, the learning rate)."""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedmas import aggregation, signals, weighting
from fedmas.messages import LocalConfig, encode_args
from fedmas.models import build_model, model_spec
from fedmas.server.state import CheckpointError, FLTaskState, ServerState
from fedmas.tasks import TASKS

if TYPE_CHECKING:
    from fedmas.config import Config


def stable_seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


class Server:
    """The state plus the operations plans may use."""

    def __init__(self, cfg: Config, state: ServerState, clients: list[str], run_dir: Path,
                 sizes: dict[str, int] | None = None, holds: dict[str, tuple[str, ...]] | None = None,
                 device: str = "cpu"):
        """``device``: the torch device the run resolved ``cfg.device`` to, once, where it started."""
        self.cfg, self.state, self.clients, self.run_dir = cfg, state, clients, run_dir
        self.spec = model_spec(cfg, device)
        self.sizes = sizes or {}  # client → training samples it holds, where the server knows it
        self.holds = holds  # client → the tasks whose labels it holds; None: every client holds every task
        self.val_baseline: dict[str, float] = {}  # task → the constant predictor's validation loss, where known

    def held(self, client: str, tasks: Sequence[str]) -> list[str]:
        """Those of ``tasks`` whose labels ``client`` holds (in ``tasks``' order)."""
        if self.holds is None:
            return list(tasks)
        h = self.holds.get(client, ())
        return [t for t in tasks if t in h]

    def max_samples(self, client: str) -> float:
        """The most samples a reply of ``client`` can honestly report for one round."""
        n = self.sizes.get(client)
        return 1e9 if n is None else float(n * self.cfg.federation.local_epochs)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the method starts with (tasks arriving later are handled by the plan)."""
        return self.cfg.start_tasks

    def capacity(self) -> int:
        """How many FL tasks can train at once with a full client quota each."""
        f = self.cfg.federation
        return max(1, (len(self.clients) * f.max_tasks_per_client) // f.clients_per_round)

    def add_task(self, fl: FLTaskState, init_from: str | None = None, fresh: Sequence[str] = ()) -> FLTaskState:
        """Start ``fl`` this round (its poly schedule over its own rounds unless it says otherwise), its model
        copied from FL task ``init_from`` (but for the heads of ``fresh``) or newly initialised."""
        name, tasks = fl.name, fl.tasks
        if any(t.name == name for t in self.state.active + self.state.finished):
            raise ValueError(f"FL task {name!r} exists already")
        fl.started_round, fl.schedule_total = self.state.round, fl.schedule_total or fl.rounds
        fl.started_from = init_from
        src = self.state.weights[init_from] if init_from else None
        self.state.weights[name] = self.initial_weights(tasks, src, stable_seed(self.cfg.seed, "init", name), fresh)
        self.state.strategy[name] = self.initial_state(tasks)
        self.state.active.append(fl)
        return fl

    def initial_weights(self, tasks: list[str], init_from: dict[str, Tensor] | None = None,
                        seed: int = 0, fresh: Sequence[str] = ()) -> dict[str, Tensor]:
        """An FL task's model weights (copied from ``init_from``, but for the heads of ``fresh``)."""
        model = build_model(tasks, self.spec, init_from=init_from, seed=seed, fresh=fresh)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def initial_state(self, tasks: Sequence[str]) -> dict[str, Tensor]:
        """What the task weighting keeps for an FL task of ``tasks`` (GradNorm's task weights on a multi-task
        model; nothing for one task)."""
        return weighting_of(self.cfg, len(tasks)).initial_state(len(tasks))

    def check_weights(self) -> None:
        """Every active FL task has the weights its model needs (names, shapes, dtypes), all finite:
        a tampered or damaged checkpoint is refused here, naming the file, before any round runs."""
        ck = self.run_dir / "checkpoint"
        for fl in self.state.active:
            w = self.state.weights.get(fl.name)
            if w is None:
                raise CheckpointError(f"{ck}: no weights for active FL task {fl.name!r}")
            unknown = [t for t in fl.tasks if t not in TASKS]
            if unknown:
                raise CheckpointError(f"{ck}: FL task {fl.name!r} names unknown tasks {unknown}")
            ref = self.initial_weights(fl.tasks)
            if set(w) != set(ref):
                missing, extra = sorted(set(ref) - set(w)), sorted(set(w) - set(ref))
                raise CheckpointError(f"{ck}: weights of {fl.name!r} do not fit its model "
                                      f"(missing {missing[:3]}, unexpected {extra[:3]})")
            for k, v in ref.items():
                _check_tensor(ck, fl.name, k, w[k], v, "the model")
            state, ref = self.state.strategy.get(fl.name, {}), self.initial_state(fl.tasks)
            if set(state) != set(ref):
                raise CheckpointError(f"{ck}: the task weighting's state of {fl.name!r} is {sorted(state)}, "
                                      f"expected {sorted(ref)}")
            for k, v in ref.items():
                _check_tensor(ck, fl.name, k, state[k], v, "the task weighting")
        for name, w in self.state.weights.items():  # finished FL tasks' and kept best-validation weights too
            bad = next((k for k, v in w.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
            if bad is not None:
                raise CheckpointError(f"{ck}: {name}/{bad} holds non-finite values")

    def finished(self, name: str) -> FLTaskState | None:
        return next((t for t in self.state.finished if t.name == name), None)


def _check_tensor(ck: Path, fl_task: str, name: str, got: Tensor, ref: Tensor, who: str) -> None:
    if got.shape != ref.shape or got.dtype != ref.dtype:
        raise CheckpointError(f"{ck}: {fl_task}/{name} is {got.dtype} {tuple(got.shape)}, "
                              f"{who} needs {ref.dtype} {tuple(ref.shape)}")
    if got.is_floating_point() and not bool(torch.isfinite(got).all()):
        raise CheckpointError(f"{ck}: {fl_task}/{name} holds non-finite values")


def weighting_of(cfg: Config, n_tasks: int) -> type[weighting.Weighting]:
    """The task weighting an FL task of ``n_tasks`` tasks uses (one task needs none: equal)."""
    return weighting.for_tasks(cfg.federation.task_weighting, n_tasks)


def schedule(rng: np.random.Generator, clients: list[str], fl_tasks: list[FLTaskState], per_round: int,
             max_per_client: int, round_index: int,
             holds: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[str]]:
    """Seeded random selection: each FL task gets up to ``per_round`` distinct clients and no client
    trains more than ``max_per_client`` FL tasks. When the pool cannot give every FL task its full
    quota, the slots are shared out evenly; the order of FL tasks rotates each round for fairness.
    With partial labels (``holds``), an FL task only gets clients that hold the labels of at least one
    of its tasks, and of every task in its ``needs`` (it may get fewer than its quota, or none)."""
    n = len(fl_tasks)
    out: dict[str, list[str]] = {}
    if n == 0:
        return out
    slots = len(clients) * max_per_client
    quota = [per_round] * n
    if per_round * n > slots:
        base, extra = divmod(slots, n)
        quota = [min(per_round, base + (1 if i < extra else 0)) for i in range(n)]
    r = round_index % n
    order = list(range(n))[r:] + list(range(n))[:r]
    load: dict[str, int] = defaultdict(int)
    perm = [clients[i] for i in rng.permutation(len(clients))]
    for rank, i in enumerate(order):
        chosen: list[str] = []
        mine, needs = set(fl_tasks[i].tasks), set(fl_tasks[i].needs)
        for c in sorted(perm, key=lambda c: load[c]):  # stable: least-loaded first, random within
            if len(chosen) == quota[rank]:
                break
            if holds is not None and (mine.isdisjoint(holds.get(c, ())) or not needs.issubset(holds.get(c, ()))):
                continue
            if load[c] < max_per_client:
                chosen.append(c)
                load[c] += 1
        out[fl_tasks[i].name] = chosen
    return out


def lr_at(cfg: Config, fl: FLTaskState) -> float:
    f = cfg.federation
    if f.schedule == "constant":
        return f.lr
    pos = fl.schedule_offset + fl.done_rounds
    return f.lr * max(0.0, 1 - pos / fl.schedule_total) ** 0.9


def encoder_grad_scale(cfg: Config, n_tasks: int) -> float:
    """Scale of the shared encoder's gradient in a model of ``n_tasks`` tasks (``model.encoder_grad_scale``)."""
    return 1.0 / math.sqrt(n_tasks) if cfg.model.encoder_grad_scale == "inv_sqrt_n" and n_tasks > 1 else 1.0


def measured_signals(cfg: Config) -> list[str]:
    """The grouping signals measured on lookahead batches: the lookahead affinity (the reference's, always),
    the one deciding the split and those recorded beside it (``mas.signal``, ``mas.record``)."""
    out = [signals.REFERENCE]
    for name in [signals.measured_as(n) for n in (cfg.mas.signal, *cfg.mas.record)]:
        if name not in out:
            out.append(name)
    return out


def local_config(cfg: Config, fl: FLTaskState, round_index: int, client: str, attempt: int,
                 tasks: Sequence[str] | None = None) -> LocalConfig:
    """A client's instructions for ``fl``; ``tasks`` narrows the model to the tasks it holds labels for."""
    f = cfg.federation
    tasks = list(fl.tasks) if tasks is None else list(tasks)
    return LocalConfig(
        tasks=",".join(tasks), lr=lr_at(cfg, fl), momentum=f.momentum, weight_decay=f.weight_decay,
        local_epochs=f.local_epochs, batch_size=f.batch_size,
        weighting=(kind := weighting_of(cfg, len(fl.tasks))).name,
        weighting_args=encode_args(kind.local_args(f)),
        aggregation=f.aggregation, aggregation_args=encode_args(aggregation.get(f.aggregation).client_args(f)),
        lookahead_step=cfg.mas.lookahead_step if fl.measured_by(len(tasks)) else 0,
        signals=",".join(measured_signals(cfg)),
        encoder_grad_scale=encoder_grad_scale(cfg, len(tasks)),
        seed=stable_seed(cfg.seed, round_index, client, fl.name, attempt), round=round_index,
        precision=f.precision,
    )


