"""FL tasks that arrive while the others train (``arrival.tasks``, method mas).

A task arriving at round r is handled by ``arrival.policy``:

- ``probe``: from round r (or, when the current groups have too few rounds left, from the next phase's
  groups) each current group — the merged model before the split, the groups after it — gets a probe:
  a copy of that group's model with the newcomer's head attached, trained ``arrival.probe_rounds``
  rounds on clients that hold the newcomer's labels, measuring the lookahead affinity every round.
  Then, by the split objective (:func:`fedmas.grouping.mas_objective`) on each probe's mean affinity,
  the newcomer joins the group whose objective it raises most (its head, trained by the probe, is
  added to that group's model), or opens a group of its own from that probe's weights when it raises
  none. A newcomer that joins the merged model takes part in the split: its pairs with the merged
  tasks come from its probe.
- ``alone``: it trains as a single-task FL task from scratch for ``federation.rounds`` rounds.

Every decision is read from the server state (``state.plan.arrivals``), so a resumed run decides
exactly as an uninterrupted one; ``arrivals.json`` in the run folder records them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmas import grouping
from fedmas.server.loop import best_key
from fedmas.server.state import FLTaskState, atomic_write_text

if TYPE_CHECKING:
    from fedmas.server.loop import Server

PROBE = "arrival-probe"  # the role of a probe FL task


def records(server: Server) -> dict[str, dict[str, Any]]:
    """What happened to each arrived task so far (kept in the plan state, checkpointed)."""
    plan = server.state.plan
    if getattr(plan, "arrivals", None) is None:
        plan.arrivals = {}  # type: ignore[attr-defined]
    return plan.arrivals  # type: ignore[attr-defined]


Known = Callable[[], "tuple[list[str], np.ndarray] | None"]


def joinable(server: Server) -> list[FLTaskState]:
    """The groups a newcomer may join after the split: the active final FL tasks, except newcomers
    that train alone."""
    alone = {r["placed"]["fl_task"] for r in records(server).values() if r.get("placed", {}).get("how") == "alone"}
    return [fl for fl in server.state.active if fl.role == "final" and fl.name not in alone]


def update(server: Server, groups: list[FLTaskState], end: int, base: Known, wait: bool = False) -> None:
    """Handle the arrivals whose round has come. ``groups``: the FL tasks a newcomer may join now (the
    merged model, or the groups after the split); ``end``: the round after which those groups stop;
    ``base``: gives the affinity among the current tasks the split used (or will use), read only when
    a newcomer is placed; ``wait``: the current phase cannot be probed (its length is not known yet)."""
    cfg, st = server.cfg, server.state
    R = cfg.federation.rounds
    for name in cfg.arrival_tasks:
        r = cfg.arrival.round_of(name, R)
        if st.round < r:
            continue
        rec = records(server).setdefault(name, {"round": r})
        if "placed" in rec:
            continue
        if cfg.arrival.policy == "alone":
            _alone(server, name, rec, "arrival.policy: alone")
        elif "probes" not in rec:
            _start_probes(server, name, rec, groups, wait)
        elif all(server.finished(p["fl_task"]) is not None for p in rec["probes"]):
            _place(server, name, rec, end, base())


def _alone(server: Server, name: str, rec: dict[str, Any], why: str) -> None:
    fl = server.add_task(FLTaskState(f"single-{name}", [name], server.cfg.federation.rounds))   # as one-by-one names it
    rec["placed"] = {"round": server.state.round, "how": "alone", "fl_task": fl.name, "rule": why}
    write(server)


def _start_probes(server: Server, name: str, rec: dict[str, Any], groups: list[FLTaskState], wait: bool) -> None:
    if wait or not groups:
        return
    left = min(fl.rounds - fl.done_rounds for fl in groups)
    p = min(server.cfg.arrival.probe_rounds, left - 1)  # the probed groups still train after the decision
    if p < 1:
        if any(fl.role == "merged" for fl in groups):
            return  # probe the groups of the split instead
        _alone(server, name, rec, f"the groups had {left} round(s) left, too few to probe and then join")
        return
    probes = []
    for fl in groups:
        probe = server.add_task(FLTaskState(f"probe-{name}@{fl.name}", fl.tasks + [name], p, role=PROBE,
                                            measure_affinity=True, needs=[name],
                                            schedule_offset=fl.schedule_offset + fl.done_rounds,
                                            schedule_total=fl.schedule_total), init_from=fl.name, fresh=[name])
        probes.append({"fl_task": probe.name, "group": fl.name})
    rec.update(probes=probes, probe_start=server.state.round, probe_rounds=p)
    write(server)


def fill_known(server: Server, order: list[str], base: tuple[list[str], np.ndarray] | None) -> np.ndarray:
    """What is known of the affinity among ``order``: the pairs of ``base`` (the split's affinity, or
    the merged rounds' before the split), and each newcomer's pairs with the tasks its probes carried
    (from ``arrivals`` records that hold probe affinity); NaN elsewhere."""
    out = np.full((len(order), len(order)), np.nan)
    at = {t: i for i, t in enumerate(order)}
    if base is not None:
        _overlay(out, at, base[0], base[1])
    for name, rec in records(server).items():
        for probe in (rec.get("affinity") or {}).values():
            _overlay(out, at, probe["tasks"], probe["matrix"], involving=name)
    return out


def _overlay(out: np.ndarray, at: dict[str, int], tasks: list[str], matrix, involving: str | None = None) -> None:
    """Write ``matrix`` (over ``tasks``) into ``out`` (over the tasks indexed by ``at``), only the pairs
    with ``involving`` when given, never a missing (None) entry."""
    for i, s in enumerate(tasks):
        for j, t in enumerate(tasks):
            if s in at and t in at and matrix[i][j] is not None and involving in (None, s, t):
                out[at[s], at[t]] = matrix[i][j]


def gains(z: np.ndarray, order: list[str], groups: dict[str, list[str]], name: str) -> dict[str, float]:
    """For each group: how much the split objective (summed over tasks) over every task in ``order``
    rises when ``name`` joins that group rather than standing alone, the other groups unchanged
    (missing pairs filled by :func:`fedmas.grouping.fill_missing`)."""
    z = grouping.fill_missing(z)
    at = {t: i for i, t in enumerate(order)}
    part = [[at[t] for t in g] for g in groups.values()]
    alone = grouping.mas_objective(z, part + [[at[name]]])
    out = {}
    for k, (g, ix) in enumerate(zip(groups, part)):
        joined = part[:k] + [ix + [at[name]]] + part[k + 1:]
        out[g] = (grouping.mas_objective(z, joined) - alone) * len(order)
    return out


def _place(server: Server, name: str, rec: dict[str, Any], end: int,
           base: tuple[list[str], np.ndarray] | None) -> None:
    st = server.state
    rec["affinity"] = {}
    for p in rec["probes"]:
        got = st.affinity.mean(p["fl_task"])
        if got is not None:  # None: nobody measured (no client held the newcomer's labels with another's)
            rec["affinity"][p["group"]] = {"tasks": got[0], "matrix": [[None if np.isnan(x) else float(x)
                                                                         for x in row] for row in got[1]]}
    active = {fl.name: fl for fl in st.active}
    groups = {p["group"]: list(active[p["group"]].tasks) for p in rec["probes"] if p["group"] in active}
    order = [t for g in groups.values() for t in g] + [name]
    g = gains(fill_known(server, order, base), order, groups, name) if groups else {}
    rec["gain"] = g
    best = max(g, key=lambda k: g[k]) if g else rec["probes"][0]["group"]
    probe = next(p["fl_task"] for p in rec["probes"] if p["group"] == best)
    rule = ("the split objective over all current tasks with the newcomer in the group minus with it alone "
            "(its pairs from its probes, the others' from the split)")
    if g and g[best] > 0:
        target = st.task(best)
        head = f"heads.{name}."
        st.weights[target.name].update({k: v.clone() for k, v in st.weights[probe].items() if k.startswith(head)})
        target.tasks.append(name)
        target.best_val = target.best_round = None  # validation losses over other tasks are not comparable
        st.weights.pop(best_key(target.name), None)
        rec["placed"] = {"round": st.round, "how": "joined", "fl_task": target.name,
                         "rule": f"largest gain, > 0: {rule}"}
    else:
        rounds = end - st.round
        if rounds < 1:
            _alone(server, name, rec, "no round left for a group of its own")
            return
        restart = server.cfg.mas.split_schedule == "restart"
        fl = server.add_task(FLTaskState(f"group-{name}", [name], rounds, schedule_offset=0 if restart else st.round,
                                         schedule_total=rounds if restart else end), init_from=probe)
        rec["placed"] = {"round": st.round, "how": "own group", "fl_task": fl.name, "init_from": probe,
                         "rule": f"no gain > 0: {rule}; its group starts from the probe of {best}"}
    for p in rec["probes"]:
        st.weights.pop(p["fl_task"], None)  # the probes are done with
    write(server)


def extend_affinity(server: Server, order: list[str], tasks: list[str], z: np.ndarray | None
                    ) -> np.ndarray | None:
    """The affinity over ``order`` (the merged model's tasks at the split) from the merged rounds'
    mean ``z`` over ``tasks``, with the pairs of each newcomer that joined the merged model taken
    from its probe (NaN where nothing measured a pair); None for a single task."""
    if len(order) < 2:
        return None
    if z is not None and list(tasks) == list(order):
        return z
    return fill_known(server, order, (tasks, z) if z is not None else None)


def write(server: Server) -> None:
    """``arrivals.json``: per arrived task, its round, its probes, their affinity and gains, and where it went."""
    atomic_write_text(server.run_dir / "arrivals.json", json.dumps(records(server), indent=1))


def console_line(server: Server) -> str | None:
    """The console line for arrivals placed before the round just finished, if any."""
    done = server.state.round - 1
    lines = []
    for name, rec in records(server).items():
        placed = rec.get("placed")
        if placed and placed["round"] == done:
            gains = rec.get("gain") or {}
            g = ", ".join(f"{k} {v:+.3g}" if v is not None else f"{k} n/a" for k, v in gains.items())
            lines.append(f"[fedmas] {name} (arrived at round {rec['round']}): {placed['how']} → "
                         f"{placed['fl_task']}" + (f"; gain by group: {g}" if g else ""))
    return "\n".join(lines) or None
