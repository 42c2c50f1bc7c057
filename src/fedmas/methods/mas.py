"""MAS (merge, measure affinity, split, continue) and its random-split control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmas import arrivals, grouping, signals
from fedmas.methods.base import (
    MERGED,
    MergedPhaseState,
    Plan,
    affinity_rounds,
    affinity_skip,
    group_name,
    mas_schedule,
    merge_rounds,
    param_count,
    register,
    split_count,
    split_rounds,
    write_split,
)
from fedmas.server.loop import Server, stable_seed
from fedmas.server.state import FLTaskState, mean_matrix


@dataclass
class MergeSplitState(MergedPhaseState):
    """MAS's and the random control's decisions besides the schedule and the split."""

    settle_rho: list[float] | None = None  # merge_rounds auto: successive rank correlations of the affinity
    merge_stopped: dict[str, Any] | None = None  # merge_rounds auto: when the merged phase stopped, and why
    arrivals: dict[str, dict[str, Any]] | None = None  # what happened to each task that arrived (fedmas.arrivals)


class _MergeThenSplit(Plan):
    """Shared by MAS and the random control: a merged phase, then groups from its weights."""

    State = MergeSplitState
    measure = True
    splits = merges = continues = True

    def expected_rounds(self, server: Server) -> int | None:
        r0 = merge_rounds(server)
        return r0 + (server.cfg.federation.rounds if server.cfg.mas.start == "scratch" else split_rounds(server, r0))

    def update(self, server: Server) -> None:
        st, m = server.state, server.cfg.mas
        plan = st.plan
        assert isinstance(plan, MergeSplitState)
        if not plan.started:
            r0 = merge_rounds(server)
            total = r0 if m.split_schedule == "restart" else r0 + split_rounds(server, r0)
            if m.start == "scratch":  # the merged phase measures: its rounds are all-in-one's first R0
                total = server.cfg.federation.rounds
            server.add_task(FLTaskState(MERGED, list(server.tasks), r0, role="merged",
                                        measure_affinity=self.measure, schedule_total=total,
                                        affinity_rounds=affinity_rounds(server) if self.measure else None,
                                        affinity_skip=affinity_skip(server, r0) if self.measure else 0))
            plan.started = True
        merged = next((t for t in st.active if t.name == MERGED), None)
        if merged is not None and m.merge_rounds == "auto" and self.measure:
            self._maybe_stop_merge(server, merged)
        done = server.finished(MERGED)
        if done is not None and plan.groups is None:
            groups = self.choose_groups(server)
            plan.groups = groups
            if m.start == "scratch" and len(groups) > 1:  # as TAG: each group afresh for R rounds
                for i, g in enumerate(groups):
                    server.add_task(FLTaskState(group_name(i), g, server.cfg.federation.rounds))
                return
            rounds = split_rounds(server, done.done_rounds)
            restart = m.split_schedule == "restart"
            for i, g in enumerate(groups):
                offset = 0 if restart else done.done_rounds
                server.add_task(FLTaskState(group_name(i), g, rounds, schedule_offset=offset,
                                            schedule_total=offset + rounds), init_from=MERGED)

    def _maybe_stop_merge(self, server: Server, merged) -> None:
        m = server.cfg.mas
        rows = [a["matrix"] for a in server.state.affinity.of(MERGED)]
        rhos = [grouping.spearman(grouping.fill_missing(mean_matrix(rows[:i + 1])),
                                  grouping.fill_missing(mean_matrix(rows[:i]))) for i in range(1, len(rows))]
        plan = server.state.plan
        assert isinstance(plan, MergeSplitState)
        plan.settle_rho = rhos
        settled = len(rhos) >= m.settle_patience and all(r >= m.settle_threshold for r in rhos[-m.settle_patience:])
        if settled and merged.done_rounds >= m.min_merge_rounds:
            merged.rounds = merged.done_rounds
            server.state.retire(merged, server.state.round - 1)
            mas_schedule(server).merge_rounds = merged.done_rounds  # the split time, now known, in its one place
            plan.merge_stopped = {"round": merged.done_rounds, "rho": rhos[-m.settle_patience:],
                                  "rule": f"rank correlation of successive running-mean affinity "
                                          f"≥ {m.settle_threshold} for {m.settle_patience} rounds"}

    def choose_groups(self, server: Server) -> list[list[str]]:
        raise NotImplementedError


@register
class MAS(_MergeThenSplit):
    """Merge and Split (Zhuang et al., ICCV 2023)."""

    name, label = "mas", "MAS"
    auto_splits = True

    def expected_rounds(self, server: Server) -> int | None:
        base = super().expected_rounds(server)
        cfg = server.cfg
        if base is None or cfg.arrival.policy != "alone":
            return base
        R = cfg.federation.rounds
        return max([base] + [cfg.arrival.round_of(t, R) + R for t in cfg.arrival_tasks])

    def update(self, server: Server) -> None:
        super().update(server)
        if not server.cfg.arrival_tasks:
            return
        st = server.state
        merged = next((t for t in st.active if t.name == MERGED), None)
        if merged is not None:
            r0 = merge_rounds(server)
            arrivals.update(server, [merged], r0 + split_rounds(server, r0), lambda: self._known(server),
                            wait=server.cfg.mas.merge_rounds == "auto")
        else:
            groups = arrivals.joinable(server)
            arrivals.update(server, groups, max((t.started_round + t.rounds for t in groups), default=st.round),
                            lambda: self._known(server))

    @staticmethod
    def _known(server: Server) -> tuple[list[str], np.ndarray] | None:
        """The affinity among the current tasks that the split used, or before the split will use."""
        split = server.state.plan.split
        if split:
            return split["tasks"], np.asarray(split["affinity"])
        return server.state.affinity.mean(MERGED, affinity_rounds(server))

    def final_assignment(self, server: Server) -> dict[str, str]:
        if not server.state.plan.arrivals:  # type: ignore[attr-defined]
            return super().final_assignment(server)
        return {t: fl.name for fl in server.state.finished if fl.role == "final" for t in fl.tasks}

    def groups(self, server: Server) -> list[list[str]] | None:
        if not server.state.plan.arrivals:  # type: ignore[attr-defined]
            return super().groups(server)
        return [list(fl.tasks) for fl in server.state.finished + server.state.active if fl.role == "final"]

    def choose_groups(self, server: Server) -> list[list[str]]:
        m = server.cfg.mas
        if m.groups and not server.cfg.arrival_tasks:  # fixed by the config: nothing to decide
            groups = [list(g) for g in m.groups]
            tasks = list(server.tasks)
            write_split(server, tasks, np.zeros((len(tasks), len(tasks))), [], {"k": len(groups), "groups": groups},
                        "fixed partition (mas.groups)")
            return groups
        measured = signals.measured_as(m.signal)
        key = None if measured == signals.REFERENCE else measured  # the affinity log's name of its matrices
        got = server.state.affinity.mean(MERGED, affinity_rounds(server), key)
        tasks, z = got if got is not None else (list(server.tasks), None)
        if z is not None:
            z = signals.get(m.signal).decision_matrix(z)
        merged = server.finished(MERGED)
        order = list(merged.tasks) if merged is not None else list(tasks)
        z = arrivals.extend_affinity(server, order, tasks, z)  # newcomers that joined the merged model
        tasks = order
        if z is None:  # a single task: nothing to split
            return [list(tasks)]
        z = grouping.fill_missing(z)  # pairs no client measured (partial labels): see fill_missing's rule
        k_max = m.max_splits if m.splits == "auto" else int(m.splits)

        def candidates(zz: np.ndarray) -> list[dict[str, Any]]:
            return [{"k": k, "groups": [[tasks[i] for i in grp] for grp in g.groups], "score": g.score,
                     "exact": g.exact} for k, g in enumerate(grouping.partitions_up_to(zz, k_max, server.cfg.seed),
                                                              start=1)]

        def select(cands: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
            if m.splits == "auto":
                return _auto_k(server, cands)
            # at most k groups: the best of the exactly-j optima, j ≤ k (fewest groups on ties)
            return (max(cands, key=lambda c: (c["score"], -c["k"])),
                    f"best partition into at most {m.splits} groups (mas.splits)")

        cands = candidates(z)
        chosen, rule = select(cands)
        conf = _confidence(server, tasks, chosen["groups"], lambda zz: select(candidates(zz))[0]["groups"], key)
        if conf is not None and conf["confidence"] < m.min_confidence:
            conf["sure"] = False
            if m.unsure == "merged" and chosen["k"] > 1:
                chosen = cands[0]
                rule = (f"not sure (the chosen groups won {conf['confidence']:.0%} of the resamples, below "
                        f"mas.min_confidence={m.min_confidence}): no split, the merged model continues "
                        f"(mas.unsure: merged)")
            else:
                rule += (f"; not sure: these groups won only {conf['confidence']:.0%} of the resamples (below "
                         f"mas.min_confidence={m.min_confidence}), the affinity cannot tell the partitions apart")
        elif conf is not None:
            conf["sure"] = True
        if m.signal != signals.REFERENCE:
            rule += f" (grouping signal: {m.signal})"
        write_split(server, tasks, z, cands, chosen, rule, conf)
        return chosen["groups"]


def _confidence(server: Server, tasks: list[str], groups: list[list[str]], choose, signal: str | None = None
                ) -> dict[str, Any] | None:
    """The split's confidence (:func:`fedmas.grouping.split_confidence`) over the client replies of the rounds
    it used; None where they were not kept (a run checkpointed by an older version) or a task is missing."""
    replies = server.state.affinity.replies(MERGED, affinity_rounds(server), signal)
    seen = {t for _, names, _ in replies for t in names}
    if not replies or not seen <= set(tasks) or (server.cfg.arrival_tasks and seen != set(tasks)):
        return None  # a newcomer's affinity came from its probe, not from these replies
    idx = {t: i for i, t in enumerate(tasks)}
    decide = signals.get(server.cfg.mas.signal).decision_matrix
    units = [(np.asarray(mat), [idx[t] for t in names], n) for mat, names, n in replies]
    conf = grouping.split_confidence(units, len(tasks), [[idx[t] for t in g] for g in groups],
                                     lambda zz: [[idx[t] for t in g] for g in choose(decide(zz))],
                                     seed=stable_seed(server.cfg.seed, "split-confidence"))
    if conf["runner_up"] is not None:
        conf["runner_up"] = [[tasks[i] for i in g] for g in conf["runner_up"]]
    return conf


def _auto_k(server: Server, cands: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    m = server.cfg.mas
    feasible = cands
    rule = ""
    if m.compute_budget_h is not None:
        led = server.state.costs.per_task.get(MERGED)
        merged = server.finished(MERGED)
        per_round = (led["train_s"] / max(merged.done_rounds, 1)) if led and merged else 0.0
        remaining = server.cfg.federation.rounds - (merged.done_rounds if merged else 0)
        spent = server.state.costs.totals()["train_s"]
        full = param_count(server, list(server.tasks))
        for c in cands:
            c["projected_h"] = (spent + remaining * per_round *
                                sum(param_count(server, g) / full for g in c["groups"])) / 3600
        feasible = [c for c in cands if c["projected_h"] <= m.compute_budget_h] or cands[:1]
        rule = f"within the compute budget of {m.compute_budget_h} h, "
    best = max(c["score"] for c in feasible)
    chosen = grouping.smallest_within(feasible, m.auto_epsilon)
    rule += f"smallest k whose objective is within ε={m.auto_epsilon} × |best| of the best ({best:.4g})"
    return chosen, rule


@register
class RandomSplit(_MergeThenSplit):
    """Control: the same merge phase (no affinity measured) and a seeded random partition."""

    name, label = "random", "random"
    measure = False

    def choose_groups(self, server: Server) -> list[list[str]]:
        tasks = list(server.tasks)
        k = split_count(server.cfg)
        rng = np.random.default_rng(stable_seed(server.cfg.seed, "random-split"))
        labels = rng.permutation(np.arange(len(tasks)) % k)
        groups = [[t for t, lab in zip(tasks, labels) if lab == g] for g in range(k)]
        write_split(server, tasks, np.zeros((len(tasks), len(tasks))), [], {"k": k, "groups": groups},
                     "random partition into k groups (control)")
        return groups
