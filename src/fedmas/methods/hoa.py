"""HOA (Standley et al., 2020): every single task and pair trained → higher-order estimate → best
partition, retrained from scratch."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmas import grouping
from fedmas.methods.base import Plan, group_name, pair_rounds, register, split_count
from fedmas.server.loop import Server
from fedmas.server.state import FLTaskState, PlanState


@dataclass
class HOAState(PlanState):
    probes_started: int = 0  # singles and pairs started so far
    estimate: dict[str, Any] | None = None  # the probes' validation losses and the chosen partition's estimate


@register
class HOA(Plan):
    """Higher-Order Approximation (Standley et al., ICML 2020): every single task and pair is trained,
    a group's loss is estimated from the pairs, the best partition is retrained from scratch."""

    name, label = "hoa", "HOA"
    State = HOAState
    splits = True

    def expected_rounds(self, server: Server) -> int | None:
        n = len(server.tasks)
        probes = n + n * (n - 1) // 2
        return -(-probes // server.capacity()) * pair_rounds(server) + server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        st, tasks = server.state, list(server.tasks)
        probes = [[t] for t in tasks] + [list(p) for p in itertools.combinations(tasks, 2)]
        plan = st.plan
        assert isinstance(plan, HOAState)
        started = plan.probes_started
        if started < len(probes) and not any(t.role == "probe" for t in st.active):
            wave = probes[started:started + server.capacity()]
            for p in wave:
                server.add_task(FLTaskState("probe-" + "+".join(p), p, pair_rounds(server), role="probe"))
            plan.probes_started = started + len(wave)
            return
        if started == len(probes) and not st.active and plan.groups is None:
            groups = self._choose(server, tasks)
            plan.groups = groups
            for i, g in enumerate(groups):
                server.add_task(FLTaskState(group_name(i), g, server.cfg.federation.rounds))

    def _choose(self, server: Server, tasks: list[str]) -> list[list[str]]:
        n = len(tasks)
        # validation losses only: test data never chooses the groups
        single = np.array([server.finished("probe-" + t).last_val[f"loss/{t}"] for t in tasks])  # type: ignore[union-attr]
        pair = np.zeros((n, n))
        for i, j in itertools.combinations(range(n), 2):
            ev = server.finished(f"probe-{tasks[i]}+{tasks[j]}").last_val  # type: ignore[union-attr]
            pair[i, j], pair[j, i] = ev[f"loss/{tasks[i]}"], ev[f"loss/{tasks[j]}"]
        bits = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(bool)
        val = np.zeros(1 << n)
        for g in range(1, 1 << n):
            members = np.flatnonzero(bits[g])
            if len(members) == 1:
                val[g] = -single[members[0]]
            else:
                val[g] = -sum(pair[t, members[members != t]].mean() for t in members)
        k = split_count(server.cfg)
        best = grouping.partition_by_values(val, n, k)
        groups = [[tasks[i] for i in g] for g in best.groups]
        plan = server.state.plan
        assert isinstance(plan, HOAState)
        plan.estimate = {"single": single.tolist(), "pair": pair.tolist(),
                                         "estimated_mean_loss": -best.score / n}
        return groups
