"""The exhaustive grouping: every non-empty subset of the tasks trained as its own FL task, and the partition
into at most k groups with the best validation skill reported — the ground truth every grouping signal is
judged against, and a real option for a handful of tasks.

Its cost is stated up front: 2^n − 1 FL tasks (31 for 5 tasks), each trained as long as a group of MAS
(``exhaustive.start: merged``) or as one task of one-by-one (``scratch``); ``both`` trains every subset both
ways. It generalises HOA's probes (Standley et al., ICML 2020) from pairs to every subset, so no
higher-order estimate is needed: each group's validation loss is measured, never inferred.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmas import grouping
from fedmas.methods.base import (
    MERGED,
    MergedPhaseState,
    Plan,
    affinity_rounds,
    affinity_skip,
    merge_rounds,
    register,
    split_count,
    split_rounds,
)
from fedmas.server.loop import Server
from fedmas.server.state import FLTaskState, atomic_write_text

MAX_TASKS = 8  # 255 FL tasks: beyond this the exhaustive method is refused (use HOA or MAS)
PREFIX = {"scratch": "scratch-", "merged": "merged-"}


def subsets(tasks: Sequence[str]) -> list[list[str]]:
    """Every non-empty subset of ``tasks``, smallest first, each in ``tasks``' order."""
    return [list(c) for size in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, size)]


def task_score(loss: float, baseline: float | None) -> float:
    """A task's validation score in a group: its skill 1 − L / L_constant where the constant predictor's
    validation loss is known (so tasks of different loss scales weigh alike), else −L."""
    return 1.0 - loss / baseline if baseline is not None and baseline > 0 else -loss


def best_partition(values: Mapping[frozenset[str], float], tasks: Sequence[str], k: int
                   ) -> tuple[list[list[str]], float]:
    """The partition of ``tasks`` into at most ``k`` groups with the largest sum of ``values[group]`` (each
    group's summed task scores), and that sum. Every non-empty subset must have a value."""
    n = len(tasks)
    val = np.full(1 << n, grouping.NEG)
    for mask in range(1, 1 << n):
        members = frozenset(tasks[i] for i in range(n) if mask >> i & 1)
        if members not in values:
            raise ValueError(f"no value for the group {sorted(members)}")
        val[mask] = values[members]
    best = grouping.partition_by_values(val, n, k)
    return [[tasks[i] for i in g] for g in best.groups], float(best.score)


def makespan(durations: Sequence[int], slots: int) -> int:
    """Rounds to train FL tasks of these ``durations`` in order, at most ``slots`` at a time, each starting as
    soon as a slot frees."""
    ends: list[int] = []
    for d in durations:
        start = heapq.heappop(ends) if len(ends) >= slots else 0
        heapq.heappush(ends, start + d)
    return max(ends, default=0)


@dataclass
class ExhaustiveState(MergedPhaseState):
    next: int = 0  # the index of the next subset to start (in _candidates' order)


@register
class Exhaustive(Plan):
    """Every subset trained (from scratch, from the merged weights, or both), the best partition on validation
    skill reported; the subsets not chosen are charged in full."""

    name, label = "exhaustive", "exhaustive"
    State = ExhaustiveState
    splits = True
    max_tasks = MAX_TASKS

    @classmethod
    def cost_note(cls, cfg) -> str | None:
        n, start, R = len(cfg.start_tasks), cfg.exhaustive.start, cfg.federation.rounds
        count = 2 ** n - 1
        m = cfg.mas
        r0 = m.rounds_of(m.merge_rounds, R) if m.merge_rounds != "auto" else min(m.max_merge_rounds, R - 1)
        after = m.split_rounds if m.split_rounds is not None else R - r0
        rounds = {"scratch": count * R, "merged": count * after, "both": count * (R + after)}[start]
        how = {"scratch": f"from scratch for {R} rounds", "merged": f"from the merged model of round {r0} for "
               f"{after} rounds", "both": f"from scratch for {R} rounds and from the merged model of round {r0} for "
               f"{after} rounds"}[start]
        return (f"[fedmas] exhaustive: {count * (2 if start == 'both' else 1)} FL tasks, every non-empty subset of "
                f"the {n} tasks {how}: {rounds} FL-task rounds, about {rounds / (n * R):.1f}× one-by-one's "
                f"{n * R}" + (f", plus the merged phase's {r0}" if start != "scratch" else ""))

    @staticmethod
    def _starts(server: Server) -> list[str]:
        s = server.cfg.exhaustive.start
        return ["merged", "scratch"] if s == "both" else [s]

    def _candidates(self, server: Server) -> list[tuple[str, list[str], str]]:
        """(FL task name, tasks, start) of every subset, the merged starts first."""
        return [(PREFIX[s] + "+".join(g), g, s) for s in self._starts(server) for g in subsets(list(server.tasks))]

    def _merged_rounds(self, server: Server) -> int:
        return merge_rounds(server) if "merged" in self._starts(server) else 0

    def expected_rounds(self, server: Server) -> int | None:
        r0, R = self._merged_rounds(server), server.cfg.federation.rounds
        after = split_rounds(server, r0) if r0 else R
        return r0 + makespan([after if s == "merged" else R for _, _, s in self._candidates(server)],
                             server.capacity())

    def update(self, server: Server) -> None:
        st, m = server.state, server.cfg.mas
        plan = st.plan
        assert isinstance(plan, ExhaustiveState)
        if not plan.started:
            plan.started = True
            r0 = self._merged_rounds(server)
            if r0:
                total = r0 if m.split_schedule == "restart" else r0 + split_rounds(server, r0)
                # the merged phase measures MAS's affinity as MAS would, so that MAS's choice from these very
                # weights can be set beside the measured best partition
                server.add_task(FLTaskState(MERGED, list(server.tasks), r0, role="merged", schedule_total=total,
                                            measure_affinity=True,
                                            affinity_rounds=affinity_rounds(server),
                                            affinity_skip=affinity_skip(server, r0)))
        if any(t.name == MERGED for t in st.active):
            return
        cands = self._candidates(server)
        running = [t for t in st.active if t.name != MERGED]
        while plan.next < len(cands) and len(running) < server.capacity():
            name, tasks, start = cands[plan.next]
            running.append(self._start(server, name, tasks, start))
            plan.next += 1
        kept = set((plan.assignment or {}).values())
        for fl in st.finished:  # a finished subset's numbers are kept; its weights are not needed again
            if fl.name != MERGED and fl.name in st.weights and fl.name not in kept:
                del st.weights[fl.name]
        if plan.next == len(cands) and not running and plan.groups is None:
            self._choose(server, cands)

    def _start(self, server: Server, name: str, tasks: list[str], start: str) -> FLTaskState:
        if start == "scratch":
            return server.add_task(FLTaskState(name, tasks, server.cfg.federation.rounds))
        done = server.finished(MERGED)
        assert done is not None
        rounds = split_rounds(server, done.done_rounds)
        offset = 0 if server.cfg.mas.split_schedule == "restart" else done.done_rounds
        return server.add_task(FLTaskState(name, tasks, rounds, schedule_offset=offset,
                                           schedule_total=offset + rounds), init_from=MERGED)

    def _choose(self, server: Server, cands: list[tuple[str, list[str], str]]) -> None:
        st, tasks = server.state, list(server.tasks)
        rows, values, source = [], {}, {}
        for name, group, start in cands:
            fl = server.finished(name)
            assert fl is not None
            val = {t: fl.reported_val_loss(t) for t in group}
            if any(v is None for v in val.values()):
                raise ValueError(f"FL task {name} has no validation loss: the exhaustive method needs validation data")
            score = sum(task_score(v, server.val_baseline.get(t)) for t, v in val.items())  # type: ignore[arg-type]
            rows.append({"fl_task": name, "tasks": group, "start": start, "val_loss": val, "score": score,
                         "selected_round": fl.selected_round})
            key = frozenset(group)
            if key not in values or score > values[key]:  # with start: both, the better start of each group
                values[key], source[key] = score, name
        k = split_count(server.cfg)
        by_k = []
        for j in range(1, len(tasks) + 1):
            groups, score = best_partition(values, tasks, j)
            by_k.append({"k": j, "groups": groups, "score": score,
                         "fl_tasks": [source[frozenset(g)] for g in groups]})
        chosen = by_k[k - 1]
        st.plan.groups = chosen["groups"]
        st.plan.assignment = {t: name for g, name in zip(chosen["groups"], chosen["fl_tasks"]) for t in g}
        doc = {"round": st.round, "tasks": tasks, "k": k, "chosen": chosen, "by_k": by_k, "subsets": rows,
               "score": "Σ over a group's tasks of the validation skill 1 − L / L_constant of its reported model "
                        "(−L where the constant predictor's loss is unknown)",
               "rule": f"best partition into at most {k} groups by the validation scores of every subset"}
        atomic_write_text(server.run_dir / "exhaustive.json", json.dumps(doc, indent=1))
