"""TAG (Fifty et al., 2021): affinity from a merged phase → overlapping groups, retrained from scratch."""

from __future__ import annotations

import fedmas.methods.base as base
from fedmas import grouping
from fedmas.methods.base import MERGED, Plan, register
from fedmas.server.loop import Server
from fedmas.server.state import FLTaskState


@register
class TAG(Plan):
    """Task Affinity Grouping (Fifty et al., NeurIPS 2021): groups retrained from scratch."""

    name, label = "tag", "TAG"
    State = base.MergedPhaseState
    splits = merges = True

    def expected_rounds(self, server: Server) -> int | None:
        return self._phase(server) + server.cfg.federation.rounds

    @staticmethod
    def _phase(server: Server) -> int:
        """Rounds of the affinity phase: TAG discards its merged model, so it trains only while it measures
        (up to the end of the window: R0 rounds with ``mas.affinity_window: last``)."""
        if server.cfg.mas.affinity_window == "last":
            return base.merge_rounds(server)
        return base.affinity_rounds(server) or base.merge_rounds(server)

    def update(self, server: Server) -> None:
        st, R = server.state, server.cfg.federation.rounds
        if not st.plan.started:
            r0 = self._phase(server)
            server.add_task(FLTaskState(MERGED, list(server.tasks), r0, role="merged", measure_affinity=True,
                                        schedule_total=r0, affinity_rounds=base.affinity_rounds(server),
                                        affinity_skip=base.affinity_skip(server, r0)))
            st.plan.started = True
        if server.finished(MERGED) is not None and st.plan.groups is None:
            tasks, z = server.state.affinity.mean(MERGED, base.affinity_rounds(server))
            z = grouping.fill_missing(z)
            k = base.split_count(server.cfg)
            sel = grouping.tag_selection(z, k)
            assign = grouping.tag_assignment(z, sel.groups)
            used = sorted(set(assign.values()))  # at most k: a group that serves no task is not trained
            groups = [[tasks[i] for i in sel.groups[gi]] for gi in used]
            st.plan.groups = groups
            st.plan.assignment = {tasks[t]: base.group_name(used.index(gi)) for t, gi in assign.items()}
            base.write_split(server, tasks, z, [], {"k": len(groups), "groups": groups, "score": sel.score},
                         f"TAG's overlapping selection of at most {k} groups; each task reported from its best "
                         f"group; groups that serve no task are dropped")
            for i, g in enumerate(groups):
                server.add_task(FLTaskState(base.group_name(i), g, R))
