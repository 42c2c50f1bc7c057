"""The one round loop every method runs on.

Each round: the plan may change which FL tasks exist (merge, split, next task);
the server selects clients and schedules which FL task each trains (at most
``max_tasks_per_client`` per client), sends plain-data messages through the
engine, rejects bad replies, aggregates each FL task with FedAvg, averages the
clients' affinity matrices, evaluates, accounts costs, logs one metrics line per
FL task and checkpoints the complete state.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from fedmas import aggregation, signals
from fedmas.accounting import EnergyMeter
from fedmas.evaluate import evaluate
from fedmas.messages import Job, Message, Reply
from fedmas.models import ModelCache
from fedmas.server.bookkeeping import append_metrics, print_progress, progress_line, truncate_metrics  # noqa: F401
from fedmas.server.federation import (  # noqa: F401 - the loop's parts, importable from here as before
    Server,
    encoder_grad_scale,
    local_config,
    lr_at,
    measured_signals,
    schedule,
    stable_seed,
)
from fedmas.server.replies import check_reply
from fedmas.server.state import FLTaskState, save_checkpoint

if TYPE_CHECKING:
    pass

log = logging.getLogger("fedmas")


class Engine(Protocol):
    """Carries jobs to clients and brings their replies back (in-process, Flower, ...)."""

    def run(self, jobs: list[Job], deadline_s: float | None) -> list[Reply]: ...


class Plan(Protocol):
    """What the loop needs of a method (:class:`fedmas.methods.Plan`): which FL tasks exist now."""

    def update(self, server: Server) -> None:
        """Called before every round (and again after a resume); must be idempotent."""


class RoundLoop:
    def __init__(self, server: Server, engine: Engine, plan: Plan, test_data, on_round: Callable | None = None,
                 val_data=None):
        self.server, self.engine, self.plan, self.test_data = server, engine, plan, test_data
        self.val_data = val_data  # decisions read only this (never test_data)
        self.cfg = server.cfg
        self.models = ModelCache(server.spec)
        self.meter = EnergyMeter(self.cfg.cost.measure_energy)
        self.on_round = on_round
        server.state.costs.energy_source = self.meter.source

    def run(self, stop_after: int | None = None) -> bool:
        """Train until the plan has no FL task left (returns True) or ``stop_after`` rounds (False)."""
        st = self.server.state
        rng = np.random.default_rng(self.cfg.seed)
        if st.rng:
            rng.bit_generator.state = st.rng
        if st.torch_rng is not None:
            torch.set_rng_state(st.torch_rng)
        done = 0
        while True:
            self.plan.update(self.server)
            if not st.active:
                return True
            self._round(rng)
            st.rng = rng.bit_generator.state
            st.torch_rng = torch.get_rng_state()
            save_checkpoint(self.server.run_dir, st)
            if self.on_round:
                self.on_round(self.server)
            done += 1
            if stop_after is not None and done >= stop_after:
                return False

    def _round(self, rng: np.random.Generator) -> None:
        st, cfg, f = self.server.state, self.cfg, self.cfg.federation
        t_round = time.perf_counter()
        assign = schedule(rng, self.server.clients, st.active, f.clients_per_round, f.max_tasks_per_client, st.round,
                          self.server.holds)
        busy = {c for cs in assign.values() for c in cs}  # a retry asks only clients idle this round
        client_time: dict[str, float] = defaultdict(float)
        for fl in st.active:
            self._keep_start_if_best(fl)
        first = self._first_attempts(assign)
        lines = []
        for fl in list(st.active):
            lr = lr_at(cfg, fl)  # this round's learning rate (logged below)
            if not assign[fl.name]:
                holders = [c for c in self.server.clients if self.server.held(c, fl.tasks)]
                log.warning("round %d, FL task %s: %s; not trained this round", st.round, fl.name,
                            "no client holds labels of its tasks" if not holders else
                            f"each of the {len(holders)} clients holding labels of its tasks was busy with "
                            f"another FL task (federation.max_tasks_per_client)")
                st.faults["rounds_without_holders"] = st.faults.get("rounds_without_holders", 0) + 1
                valid = 0
            else:
                valid = self._train_fl_task(fl, assign[fl.name], client_time, busy, first.get(fl.name))
            fl.done_rounds += 1
            ev: dict[str, Any] = {}
            if fl.done_rounds % f.eval_every == 0 or fl.done_rounds >= fl.rounds:
                ev = self._evaluate(fl, st.weights[fl.name], self.test_data)
                fl.last_eval = ev
                if self._validates(fl):
                    fl.last_val = self._evaluate(fl, st.weights[fl.name], self.val_data)
                    ev["val_total_loss"] = fl.last_val["total_loss"]
                    ev.update({f"val_loss/{t}": fl.last_val[f"loss/{t}"] for t in fl.tasks})
                    self._keep_if_best(fl)
            extra = {}
            if self.server.holds is not None:  # partial labels: the tasks none of this round's clients held
                held = {t for c in assign[fl.name] for t in self.server.held(c, fl.tasks)}
                extra["tasks_without_labels"] = [t for t in fl.tasks if t not in held]
            lines.append({"round": st.round, "fl_task": fl.name, "tasks": fl.tasks, "role": fl.role,
                          "fl_round": fl.done_rounds, "lr": lr,
                          "clients": assign[fl.name], "accepted": valid, **extra, **ev})
            if fl.done_rounds >= fl.rounds:
                self._select(fl)
                st.retire(fl)
        speed = cfg.cost.speed_factors
        st.costs.sim_wallclock_s += max((s * speed.get(c, 1.0) for c, s in client_time.items()), default=0.0)
        st.costs.rounds += 1
        append_metrics(self.server.run_dir, lines, time.perf_counter() - t_round)
        st.round += 1

    def _evaluate(self, fl: FLTaskState, weights: dict[str, Tensor], data) -> dict[str, Any]:
        t0 = time.perf_counter()
        ev: dict[str, Any] = evaluate(self.models.get(tuple(fl.tasks)), weights, data,
                                      self.cfg.federation.eval_batch_size, self.models.flops)
        self.server.state.costs.add_eval(fl.name, time.perf_counter() - t0, ev.pop("flop"))
        ev["total_loss"] = sum(ev[f"loss/{t}"] for t in fl.tasks)
        return ev

    def _replacements(self, failed: list[str], taken: set[str], fl_task: str, attempt: int) -> list[str]:
        """As many idle clients as failed, drawn with a seed of their own (the round's stream is untouched);
        the failed ones again where no client is idle."""
        free = _unused(self.server.clients, taken)
        if not free:
            return failed
        rng = np.random.default_rng(stable_seed(self.cfg.seed, "retry", self.server.state.round, fl_task, attempt))
        pick = rng.choice(len(free), size=min(len(failed), len(free)), replace=False)
        return [free[i] for i in sorted(pick)] + failed[len(pick):]

    def _validates(self, fl: FLTaskState) -> bool:
        """Validation losses: HOA's probes and best-validation selection decide by them, and every final FL
        task's are logged (whether its run had converged is judged on them, never on test data)."""
        return self.val_data is not None and fl.role in ("probe", "final")

    def _keep_if_best(self, fl: FLTaskState) -> None:
        if fl.role != "final" or self.cfg.federation.select != "best_val":
            return
        val = fl.last_val["total_loss"]
        if fl.best_val is None or val < fl.best_val:
            fl.best_val, fl.best_round = val, fl.done_rounds
            fl.best_val_loss = {t: fl.last_val[f"loss/{t}"] for t in fl.tasks}
            st = self.server.state
            st.weights[best_key(fl.name)] = {k: v.clone() for k, v in st.weights[fl.name].items()}

    def _keep_start_if_best(self, fl: FLTaskState) -> None:
        """A final FL task that starts from another's weights (a group from the merged model) has those weights
        as its first best-validation candidate, round 0: with ``select: best_val`` it never reports a model
        worse on validation than the one it started from."""
        if (fl.started_from is None or fl.done_rounds > 0 or fl.start_val is not None or fl.role != "final"
                or self.cfg.federation.select != "best_val" or not self._validates(fl)):
            return
        fl.last_val = self._evaluate(fl, self.server.state.weights[fl.name], self.val_data)
        fl.start_val = fl.last_val["total_loss"]
        fl.start_val_loss = {t: fl.last_val[f"loss/{t}"] for t in fl.tasks}
        self._keep_if_best(fl)  # the first candidate: best_round 0

    def _select(self, fl: FLTaskState) -> None:
        """The reported model of a finishing FL task: its last, or (best_val) its best-validation round's,
        whose test losses are then evaluated once (test data never chooses anything)."""
        st = self.server.state
        best = st.weights.pop(best_key(fl.name), None)
        fl.selected_round = fl.done_rounds
        if best is not None and fl.best_round is not None and fl.best_round != fl.done_rounds:
            fl.last_eval = self._evaluate(fl, best, self.test_data)
            fl.selected_round = fl.best_round

    def _jobs(self, fl: FLTaskState, ask: list[str], attempt: int
              ) -> tuple[list[Job], dict[str, list[str]], dict[str, dict[str, Tensor]]]:
        """The jobs of ``fl`` for clients ``ask`` (those holding none of its labels, or not its ``needs``,
        left out), the tasks each holds labels for, and the weights each is sent."""
        weights = self.server.state.weights[fl.name]
        mine = {c: self.server.held(c, fl.tasks) for c in ask}  # the tasks each client holds labels for
        ask = [c for c in ask if mine[c] and set(fl.needs) <= set(mine[c])]  # a retry may draw one without
        sent = {c: weights if len(mine[c]) == len(fl.tasks) else restrict(weights, mine[c]) for c in ask}
        state = self.server.state.strategy.get(fl.name, {})
        jobs = [Job(c, fl.name, Message(sent[c], local_config(self.cfg, fl, self.server.state.round, c, attempt,
                                                              mine[c]).to_dict(), state=state))
                for c in ask]
        return jobs, mine, sent

    def _send(self, jobs: list[Job]) -> tuple[list[Reply], float | None]:
        """The engine's replies to ``jobs`` and the measured energy per reply (None where not measured)."""
        e0 = self.meter.read()
        replies = self.engine.run(jobs, self.cfg.federation.round_deadline_s)
        e1 = self.meter.read()
        return replies, (e1 - e0) / max(len(replies), 1) if e0 is not None and e1 is not None else None

    def _first_attempts(self, assign: dict[str, list[str]]) -> dict[str, Attempt]:
        """Every FL task's first attempt of the round, sent in one engine call (a distributed engine then
        sends each node one message for all its jobs of the round); retries go per FL task."""
        prepared = {fl.name: self._jobs(fl, assign[fl.name], 0) for fl in self.server.state.active
                    if assign.get(fl.name)}
        jobs = [j for p in prepared.values() for j in p[0]]
        if not jobs:
            return {}
        replies, measured = self._send(jobs)
        by_task: dict[str, list[Reply]] = defaultdict(list)
        for r in replies:
            by_task[r.fl_task].append(r)
        return {name: Attempt(own, mine, sent, by_task[name], measured) for name, (own, mine, sent) in prepared.items()}

    def _train_fl_task(self, fl: FLTaskState, clients: list[str], client_time: dict[str, float],
                       busy: set[str] | None = None, first: Attempt | None = None) -> int:
        """One FL task's round (``first``: its first attempt's jobs and replies, already sent with the
        other FL tasks'). A retry keeps the usable replies it has and asks other clients (idle this
        round, chosen by a seed of their own) in place of those that failed; the same ones only when no
        other client is free."""
        st, f = self.server.state, self.cfg.federation
        weights, state = st.weights[fl.name], st.strategy.get(fl.name, {})
        good: list[tuple[dict[str, Tensor], float]] = []
        states: list[tuple[dict[str, Tensor], float]] = []
        affs: list[tuple[Tensor, list[int], float]] = []
        # the grouping signals measured besides the lookahead affinity, with the bounds a reply's values keep to
        others = {k: signals.get(k).bounds for k in measured_signals(self.cfg) if k != signals.REFERENCE}
        extra: dict[str, list[tuple[Tensor, list[int], float]]] = {k: [] for k in others}
        tried, ask = set(clients), list(clients)
        partial = self.server.holds is not None
        for attempt in range(f.max_round_retries + 1):
            if attempt == 0 and first is not None:
                jobs, mine, sent, replies, measured = first
            else:  # a retry
                jobs, mine, sent = self._jobs(fl, ask, attempt)
                replies, measured = self._send(jobs)
            ask = [j.client for j in jobs]
            failed = set(ask)
            for r in replies:
                try:
                    n_mine = len(mine[r.client])
                    why = check_reply(r, sent[r.client], n_mine, fl.measured_by(n_mine),
                                      self.server.max_samples(r.client), state, others)
                except Exception as e:  # noqa: BLE001 - no reply may raise in the server
                    why = f"malformed reply: {type(e).__name__}"
                if why is not None:
                    log.warning("round %d, FL task %s: rejected client %s: %s", st.round, fl.name, r.client, why)
                    kind = why.split(":")[0]
                    if r.error is not None:  # the client's own failure: raised, timed out, dropped out
                        kind = f"client error: {r.error.split(':')[0]}"
                    st.faults[kind] = st.faults.get(kind, 0) + 1
                    st.costs.add_rejected(fl.name, r.client, r.bytes_down)
                    continue
                assert r.message is not None
                failed.discard(r.client)
                m = r.message.metrics
                client_time[r.client] += m["compute_s"]
                st.costs.add_train(fl.name, r.client, m["compute_s"], m["samples"], r.bytes_down, r.bytes_up,
                                   measured, m["flop"])
                good.append((r.message.arrays, m["samples"]))
                states.append((r.message.state, m["samples"]))
                if r.message.affinity is not None and fl.measuring:
                    idx = [fl.tasks.index(t) for t in mine[r.client]]
                    affs.append((r.message.affinity, idx, m["samples"]))
                    for k in others:
                        extra[k].append((r.message.signals[k], idx, m["samples"]))
            if len(good) >= min(f.min_replies, len(clients)) and good:
                dev = self.server.spec.device  # the sums where training runs (a GPU's), the state on the CPU
                st.weights[fl.name] = aggregation.get(f.aggregation).aggregate(good, weights, partial, dev)
                if state:  # the weighting's state (GradNorm's task weights): the sample-weighted mean
                    st.strategy[fl.name] = aggregation.fedavg(states, dev)
                for name, got in ([(None, affs)] + list(extra.items())) if affs else []:
                    st.affinity.append(st.round, fl.name, fl.tasks, mean_affinity(got, len(fl.tasks), partial),
                                       len(got), sum(n for *_, n in got),
                                       [(a.double().tolist(), idx, n) for a, idx, n in got], name)
                return len(good)
            if attempt < f.max_round_retries:
                ask = self._replacements(sorted(failed), tried | (busy or set()), fl.name, attempt)
                tried |= set(ask)
                log.warning("round %d, FL task %s: %d usable replies < min_replies %d; retry %d/%d with %s",
                            st.round, fl.name, len(good), f.min_replies, attempt + 1, f.max_round_retries,
                            ", ".join(ask))
                st.faults["round_retries"] = st.faults.get("round_retries", 0) + 1
        log.warning("round %d, FL task %s: no update this round (too few usable replies)", st.round, fl.name)
        st.faults["rounds_without_update"] = st.faults.get("rounds_without_update", 0) + 1
        return 0


class Attempt(NamedTuple):
    """One attempt of an FL task's round: its jobs, the tasks each client holds labels for, the weights
    each was sent, the replies, and the measured energy per reply (None where not measured)."""

    jobs: list[Job]
    mine: dict[str, list[str]]
    sent: dict[str, dict[str, Tensor]]
    replies: list[Reply]
    measured: float | None


def restrict(weights: dict[str, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
    """The encoder and ``tasks``' heads of an FL task's weights (no copy): what a client holding only
    those tasks' labels receives; it never receives another task's head."""
    keep = ("encoder.",) + tuple(f"heads.{t}." for t in tasks)
    return {k: v for k, v in weights.items() if k.startswith(keep)}


def mean_affinity(affs: list[tuple[Tensor, list[int], float]], n: int, partial: bool) -> list[list[float | None]]:
    """The round's n×n affinity from the clients' matrices (``affs``: matrix, the FL task's indices of the
    tasks the client holds, sample count): their sample-weighted mean; with partial labels each pair's own
    mean (:func:`pairwise_mean`)."""
    if partial:
        return pairwise_mean(affs, n)
    tot = sum(n for *_, n in affs)  # the full-label formula, kept so results stay bit-identical
    return sum(a.double() * (n / tot) for a, _, n in affs).tolist()  # type: ignore[union-attr]


def pairwise_mean(affs: list[tuple[Tensor, list[int], float]], n: int) -> list[list[float | None]]:
    """The round's n×n affinity: each pair (i, j) the sample-weighted mean over the clients that measured
    it (a client measures the pairs among the tasks it holds, ``idx`` in the FL task's order); a pair
    that no client measured is ``None`` (missing, not 0)."""
    total = torch.zeros(n, n, dtype=torch.float64)
    weight = torch.zeros(n, n, dtype=torch.float64)
    for a, idx, samples in affs:
        ix = torch.tensor(idx)
        total[ix[:, None], ix[None, :]] += a.double() * samples
        weight[ix[:, None], ix[None, :]] += samples
    return [[float(total[i, j] / weight[i, j]) if weight[i, j] > 0 else None for j in range(n)] for i in range(n)]


def _unused(clients: list[str], taken: set[str]) -> list[str]:
    return [c for c in clients if c not in taken]


def best_key(fl_task: str) -> str:
    """Where the best-validation weights of ``fl_task`` are kept in the state (``federation.select: best_val``)."""
    return f"{fl_task}@best"
