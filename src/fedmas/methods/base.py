"""The plan interface and its registry, the two baselines without groups (all-in-one, one-by-one), and
the merge-and-split schedule every method with a merged phase reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedmas.models import build_model
from fedmas.server.loop import Server
from fedmas.server.state import FLTaskState, PlanState, atomic_write_text

MERGED = "merged"


def group_name(i: int) -> str:
    return f"group{i + 1}"


def split_count(cfg) -> int:
    """k for the methods that need a fixed number of groups (``mas.splits: auto`` means 2 for them)."""
    return 2 if cfg.mas.splits == "auto" else int(cfg.mas.splits)


@dataclass
class Schedule:
    """The merge-and-split schedule (:func:`mas_schedule`): the split time in its one form."""

    merge_rounds: int  # R0: rounds of the merged phase (the maximum under mas.merge_rounds: auto until it stops)
    affinity_rounds: int | None  # N: the merged rounds whose mean signal decides; None: every merged round


@dataclass
class MergedPhaseState(PlanState):
    """The state of a method with a merged phase before its groups (MAS, random, TAG, exhaustive)."""

    schedule: Schedule | None = None  # resolved once, at the start (mas_schedule)

    @classmethod
    def from_json(cls, doc: dict[str, Any]):  # type: ignore[override]
        out = super().from_json(doc)
        if isinstance(out.schedule, dict):
            out.schedule = Schedule(**out.schedule)
        return out


@dataclass
class OneByOneState(PlanState):
    next: int = 0  # the index of the next task to train


class Plan:
    """A method: which FL tasks exist and when they change, plus the facts the CLI and reports need.

    ``update`` runs before every round (and again after a resume) and must be idempotent; it keeps what it
    decides in ``server.state.plan``, an instance of its :attr:`State` (checkpointed whole);
    ``final_assignment`` maps each task to the FL task whose evaluation reports its loss.
    """

    name: ClassVar[str]
    State: ClassVar[type[PlanState]] = PlanState
    label: ClassVar[str]  # how figures and tables name it
    splits: ClassVar[bool] = False  # takes a number of groups (``name:K`` in ``fedmas compare``)
    auto_splits: ClassVar[bool] = False  # understands ``mas.splits: auto``
    merges: ClassVar[bool] = False  # has a merged phase of ``mas.merge_rounds`` rounds before its groups
    continues: ClassVar[bool] = False  # its groups continue from the merged weights within R rounds
    variants: ClassVar[dict[str, dict[str, Any]]] = {}  # further ``fedmas compare`` names → config overrides

    @classmethod
    def cost_note(cls, cfg) -> str | None:
        """A line the console prints before the run starts when the method's cost needs saying up front."""
        return None

    def expected_rounds(self, server: Server) -> int | None:
        """Rounds the method will run (for progress), or None when it cannot be known up front."""
        return server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        raise NotImplementedError

    def final_assignment(self, server: Server) -> dict[str, str]:
        plan = server.state.plan
        if plan.assignment is not None:
            return dict(plan.assignment)
        assert plan.groups is not None
        return {t: group_name(i) for i, g in enumerate(plan.groups) for t in g}

    def groups(self, server: Server) -> list[list[str]] | None:
        """The task groups the run ended with (for the summary and figures), or None."""
        return server.state.plan.groups


PLANS: dict[str, type[Plan]] = {}


def register(cls: type[Plan]) -> type[Plan]:
    """Make a plan available as ``method: <cls.name>`` in configs and in ``fedmas compare``. A name already
    registered for another plan is refused: a plugin never silently replaces a method."""
    old = PLANS.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.name!r} is already registered ({old.__qualname__}); choose another name")
    PLANS[cls.name] = cls
    return cls


def make_plan(method: str) -> Plan:
    return PLANS[method]()


@register
class AllInOne(Plan):
    name, label = "all-in-one", "all-in-one"
    variants = {"all-in-one-fedprox": {"federation": {"aggregation": "fedprox"}},
                "all-in-one-gradnorm": {"federation": {"task_weighting": "gradnorm"}},
                "all-in-one-pcgrad": {"federation": {"task_weighting": "pcgrad"}},
                "all-in-one-famo": {"federation": {"task_weighting": "famo"}}}

    def update(self, server: Server) -> None:
        if not server.state.plan.started:
            server.add_task(FLTaskState("all-in-one", list(server.tasks), server.cfg.federation.rounds))
            server.state.plan.started = True

    def final_assignment(self, server: Server) -> dict[str, str]:
        return {t: "all-in-one" for t in server.tasks}


@register
class OneByOne(Plan):
    name, label = "one-by-one", "one-by-one"
    State = OneByOneState

    def expected_rounds(self, server: Server) -> int | None:
        return len(server.tasks) * server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        st = server.state
        plan = st.plan
        assert isinstance(plan, OneByOneState)
        if st.active:
            return
        if plan.next < len(server.tasks):
            t = server.tasks[plan.next]
            server.add_task(FLTaskState(f"single-{t}", [t], server.cfg.federation.rounds))
            plan.next += 1

    def final_assignment(self, server: Server) -> dict[str, str]:
        return {t: f"single-{t}" for t in server.tasks}


def mas_schedule(server: Server) -> Schedule:
    """The merge-and-split schedule, resolved once from the config and kept in the plan's state (so the
    checkpoint holds it and everything reads the same numbers): ``merge_rounds`` R0 (the maximum when
    ``mas.merge_rounds`` is auto), ``affinity_rounds`` N (the merged rounds whose mean affinity decides the
    split; None: every merged round — ``mas.affinity_rounds: all``, and always with ``merge_rounds: auto``)."""
    plan = server.state.plan
    assert isinstance(plan, MergedPhaseState), f"{type(plan).__name__} has no merge-and-split schedule"
    if plan.schedule is None:
        m, R = server.cfg.mas, server.cfg.federation.rounds
        r0 = min(m.max_merge_rounds, R - 1) if m.merge_rounds == "auto" else m.rounds_of(m.merge_rounds, R)
        n = None if m.affinity_rounds == "all" or m.merge_rounds == "auto" else min(m.rounds_of(m.affinity_rounds, R),
                                                                                   r0)
        plan.schedule = Schedule(r0, n)
    return plan.schedule


def merge_rounds(server: Server) -> int:
    """R0: rounds of the merged phase (:func:`mas_schedule`)."""
    return mas_schedule(server).merge_rounds


def affinity_rounds(server: Server) -> int | None:
    """The N merged rounds whose mean affinity decides the split (the first N, after which measuring stops,
    or with ``mas.affinity_window: last`` the N just before the split); None: every merged round
    (:func:`mas_schedule`); None too for a method without a merged phase (it measures nothing)."""
    if not isinstance(server.state.plan, MergedPhaseState):
        return None
    return mas_schedule(server).affinity_rounds


def affinity_skip(server: Server, phase_rounds: int) -> int:
    """Merged rounds trained before measuring starts: 0, or phase − N for ``mas.affinity_window: last``."""
    n = affinity_rounds(server)
    return 0 if n is None or server.cfg.mas.affinity_window == "first" else max(0, phase_rounds - n)


def window_rule(server: Server) -> str:
    n = affinity_rounds(server)
    return "all merged rounds" if n is None else f"the {server.cfg.mas.affinity_window} {n} merged rounds"


def pair_rounds(server: Server) -> int:
    """Rounds HOA trains each single task and pair (``hoa.pair_rounds``; full = R, as in the paper)."""
    p = server.cfg.hoa.pair_rounds
    return server.cfg.federation.rounds if p == "full" else int(p)


def split_rounds(server: Server, merged_rounds: int) -> int:
    """Rounds each group trains after a merged phase of ``merged_rounds`` rounds."""
    m = server.cfg.mas
    return m.split_rounds if m.split_rounds is not None else server.cfg.federation.rounds - merged_rounds


def param_count(server: Server, tasks: list[str]) -> int:
    return sum(p.numel() for p in build_model(tasks, server.spec).parameters())


def write_split(server: Server, tasks: list[str], z: np.ndarray, cands, chosen, rule: str,
                confidence: dict[str, Any] | None = None) -> None:
    m, first = server.cfg.mas, affinity_rounds(server)
    merged = server.finished(MERGED)
    doc = {"round": server.state.round, "tasks": tasks, "affinity": z.tolist(), "candidates": cands,
           "chosen": chosen, "rule": rule, "affinity_rounds": len(server.state.affinity.of(MERGED, first)),
           "affinity_rounds_rule": window_rule(server),
           "merge_rounds": merged.done_rounds if merged else None,
           "merge_rounds_rule": "auto: the affinity ranking settled" if m.merge_rounds == "auto"
           else f"mas.merge_rounds={m.merge_rounds}",
           "split_rounds": (server.cfg.federation.rounds if m.start == "scratch" and len(chosen["groups"]) > 1
                            else split_rounds(server, merged.done_rounds) if merged else None),
           "split_schedule": m.split_schedule, "start": m.start}
    if confidence is not None:
        doc["confidence"] = confidence
    server.state.plan.split = doc
    atomic_write_text(server.run_dir / "split.json", json.dumps(doc, indent=1))
