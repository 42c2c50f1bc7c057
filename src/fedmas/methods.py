"""Methods as plans on the shared round loop: which FL tasks exist and when they change.

Each plan's ``update`` runs before every round and after a resume; it decides
only from the server state (and writes its decisions into ``state.plan``), so a
resumed run takes the same decisions as an uninterrupted one.

- ``all-in-one``  the merged model for R rounds (FedAvg / FedProx / GradNorm by config)
- ``one-by-one``  one single-task FL task per task, one after another, R rounds each
- ``mas``         merge R0 rounds measuring affinity → exact split → continue R − R0 rounds
- ``tag``         affinity from R0 merged rounds → TAG's overlapping groups, retrained from scratch R rounds
- ``hoa``         every single task and pair trained ``hoa.pair_rounds`` rounds (default R) → higher-order
                  estimate → best partition, retrained from scratch R rounds
- ``random``      merge R0 rounds (no affinity) → a seeded random partition into k groups → continue
"""

from __future__ import annotations

import itertools
import json
from typing import Any, ClassVar

import numpy as np

from fedmas import arrivals, grouping
from fedmas.models import build_model
from fedmas.server.loop import Server, stable_seed
from fedmas.server.state import atomic_write_text, mean_matrix

MERGED = "merged"


def _group_name(i: int) -> str:
    return f"group{i + 1}"


def split_count(cfg) -> int:
    """k for the methods that need a fixed number of groups (``mas.splits: auto`` means 2 for them)."""
    return 2 if cfg.mas.splits == "auto" else int(cfg.mas.splits)


class Plan:
    """A method: which FL tasks exist and when they change, plus the facts the CLI and reports need.

    ``update`` runs before every round (and again after a resume) and must be idempotent;
    ``final_assignment`` maps each task to the FL task whose evaluation reports its loss.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # how figures and tables name it
    splits: ClassVar[bool] = False  # takes a number of groups (``name:K`` in ``fedmas compare``)
    auto_splits: ClassVar[bool] = False  # understands ``mas.splits: auto``
    merges: ClassVar[bool] = False  # has a merged phase of ``mas.merge_rounds`` rounds before its groups
    continues: ClassVar[bool] = False  # its groups continue from the merged weights within R rounds
    variants: ClassVar[dict[str, dict[str, Any]]] = {}  # further ``fedmas compare`` names → config overrides

    def expected_rounds(self, server: Server) -> int | None:
        """Rounds the method will run (for progress), or None when it cannot be known up front."""
        return server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        raise NotImplementedError

    def final_assignment(self, server: Server) -> dict[str, str]:
        groups = server.state.plan["groups"]
        return {t: _group_name(i) for i, g in enumerate(groups) for t in g}

    def groups(self, server: Server) -> list[list[str]] | None:
        """The task groups the run ended with (for the summary and figures), or None."""
        return server.state.plan.get("groups")


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
                "all-in-one-gradnorm": {"federation": {"task_weighting": "gradnorm"}}}

    def update(self, server: Server) -> None:
        if not server.state.plan.get("started"):
            server.add_task("all-in-one", list(server.tasks), server.cfg.federation.rounds)
            server.state.plan["started"] = True

    def final_assignment(self, server: Server) -> dict[str, str]:
        return {t: "all-in-one" for t in server.tasks}


@register
class OneByOne(Plan):
    name, label = "one-by-one", "one-by-one"

    def expected_rounds(self, server: Server) -> int | None:
        return len(server.tasks) * server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        st = server.state
        if st.active:
            return
        nxt = st.plan.get("next", 0)
        if nxt < len(server.tasks):
            t = server.tasks[nxt]
            server.add_task(f"single-{t}", [t], server.cfg.federation.rounds)
            st.plan["next"] = nxt + 1

    def final_assignment(self, server: Server) -> dict[str, str]:
        return {t: f"single-{t}" for t in server.tasks}


def mas_schedule(server: Server) -> dict[str, int | None]:
    """The merge-and-split schedule, resolved once from the config and kept in the plan's state (so the
    checkpoint holds it and everything reads the same numbers): ``merge_rounds`` R0 (the maximum when
    ``mas.merge_rounds`` is auto), ``affinity_rounds`` N (the merged rounds whose mean affinity decides the
    split; None: every merged round — ``mas.affinity_rounds: all``, and always with ``merge_rounds: auto``)."""
    got = server.state.plan.get("schedule")
    if got is None:
        m, R = server.cfg.mas, server.cfg.federation.rounds
        r0 = min(m.max_merge_rounds, R - 1) if m.merge_rounds == "auto" else m.rounds_of(m.merge_rounds, R)
        n = None if m.affinity_rounds == "all" or m.merge_rounds == "auto" else min(m.rounds_of(m.affinity_rounds, R),
                                                                                   r0)
        got = server.state.plan["schedule"] = {"merge_rounds": r0, "affinity_rounds": n}
    return got


def merge_rounds(server: Server) -> int:
    """R0: rounds of the merged phase (:func:`mas_schedule`)."""
    return int(mas_schedule(server)["merge_rounds"])  # type: ignore[arg-type]


def affinity_rounds(server: Server) -> int | None:
    """The N merged rounds whose mean affinity decides the split (the first N, after which measuring stops,
    or with ``mas.affinity_window: last`` the N just before the split); None: every merged round
    (:func:`mas_schedule`)."""
    return mas_schedule(server)["affinity_rounds"]


def affinity_skip(server: Server, phase_rounds: int) -> int:
    """Merged rounds trained before measuring starts: 0, or phase − N for ``mas.affinity_window: last``."""
    n = affinity_rounds(server)
    return 0 if n is None or server.cfg.mas.affinity_window == "first" else max(0, phase_rounds - n)


def _window_rule(server: Server) -> str:
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


class _MergeThenSplit(Plan):
    """Shared by MAS and the random control: a merged phase, then groups from its weights."""

    measure = True
    splits = merges = continues = True

    def expected_rounds(self, server: Server) -> int | None:
        r0 = merge_rounds(server)
        return r0 + split_rounds(server, r0)

    def update(self, server: Server) -> None:
        st, m = server.state, server.cfg.mas
        if not st.plan.get("started"):
            r0 = merge_rounds(server)
            total = r0 if m.split_schedule == "restart" else r0 + split_rounds(server, r0)
            server.add_task(MERGED, list(server.tasks), r0, role="merged",
                            measure_affinity=self.measure and len(server.tasks) > 1, schedule_total=total,
                            affinity_rounds=affinity_rounds(server) if self.measure else None,
                            affinity_skip=affinity_skip(server, r0) if self.measure else 0)
            st.plan["started"] = True
        merged = next((t for t in st.active if t.name == MERGED), None)
        if merged is not None and m.merge_rounds == "auto" and self.measure:
            self._maybe_stop_merge(server, merged)
        done = server.finished(MERGED)
        if done is not None and "groups" not in st.plan:
            groups = self.choose_groups(server)
            st.plan["groups"] = groups
            rounds = split_rounds(server, done.done_rounds)
            restart = m.split_schedule == "restart"
            for i, g in enumerate(groups):
                server.add_task(_group_name(i), g, rounds, init_from=MERGED,
                                schedule_offset=0 if restart else done.done_rounds,
                                schedule_total=rounds if restart else done.done_rounds + rounds)

    def _maybe_stop_merge(self, server: Server, merged) -> None:
        m = server.cfg.mas
        rows = [a["matrix"] for a in server.state.affinity.of(MERGED)]
        rhos = [grouping.spearman(grouping.fill_missing(mean_matrix(rows[:i + 1])),
                                  grouping.fill_missing(mean_matrix(rows[:i]))) for i in range(1, len(rows))]
        server.state.plan["settle_rho"] = rhos
        settled = len(rhos) >= m.settle_patience and all(r >= m.settle_threshold for r in rhos[-m.settle_patience:])
        if settled and merged.done_rounds >= m.min_merge_rounds:
            merged.rounds = merged.done_rounds
            server.state.retire(merged, server.state.round - 1)
            server.state.plan["merge_stopped"] = {"round": merged.done_rounds, "rho": rhos[-m.settle_patience:],
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
        split = server.state.plan.get("split")
        if split:
            return split["tasks"], np.asarray(split["affinity"])
        return server.state.affinity.mean(MERGED, affinity_rounds(server))

    def final_assignment(self, server: Server) -> dict[str, str]:
        if not server.state.plan.get("arrivals"):
            return super().final_assignment(server)
        return {t: fl.name for fl in server.state.finished if fl.role == "final" for t in fl.tasks}

    def groups(self, server: Server) -> list[list[str]] | None:
        if not server.state.plan.get("arrivals"):
            return super().groups(server)
        return [list(fl.tasks) for fl in server.state.finished + server.state.active if fl.role == "final"]

    def choose_groups(self, server: Server) -> list[list[str]]:
        m = server.cfg.mas
        got = server.state.affinity.mean(MERGED, affinity_rounds(server))
        tasks, z = got if got is not None else (list(server.tasks), None)
        merged = server.finished(MERGED)
        order = list(merged.tasks) if merged is not None else list(tasks)
        z = arrivals.extend_affinity(server, order, tasks, z)  # newcomers that joined the merged model
        tasks = order
        if z is None:  # a single task: nothing to split
            return [list(tasks)]
        z = grouping.fill_missing(z)  # pairs no client measured (partial labels): see fill_missing's rule
        k_max = m.max_splits if m.splits == "auto" else int(m.splits)
        cands = [{"k": k, "groups": [[tasks[i] for i in grp] for grp in g.groups], "score": g.score, "exact": g.exact}
                 for k, g in enumerate(grouping.partitions_up_to(z, k_max, server.cfg.seed), start=1)]
        if m.splits == "auto":
            chosen, rule = _auto_k(server, cands)
        else:  # at most k groups: the best of the exactly-j optima, j ≤ k (fewest groups on ties)
            chosen = max(cands, key=lambda c: (c["score"], -c["k"]))
            rule = f"best partition into at most {m.splits} groups (mas.splits)"
        _write_split(server, tasks, z, cands, chosen, rule)
        return chosen["groups"]


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
        full = _param_count(server, list(server.tasks))
        for c in cands:
            c["projected_h"] = (spent + remaining * per_round *
                                sum(_param_count(server, g) / full for g in c["groups"])) / 3600
        feasible = [c for c in cands if c["projected_h"] <= m.compute_budget_h] or cands[:1]
        rule = f"within the compute budget of {m.compute_budget_h} h, "
    best = max(c["score"] for c in feasible)
    chosen = grouping.smallest_within(feasible, m.auto_epsilon)
    rule += f"smallest k whose objective is within ε={m.auto_epsilon} × |best| of the best ({best:.4g})"
    return chosen, rule


def _param_count(server: Server, tasks: list[str]) -> int:
    return sum(p.numel() for p in build_model(tasks, server.spec).parameters())


def _write_split(server: Server, tasks: list[str], z: np.ndarray, cands, chosen, rule: str) -> None:
    m, first = server.cfg.mas, affinity_rounds(server)
    merged = server.finished(MERGED)
    doc = {"round": server.state.round, "tasks": tasks, "affinity": z.tolist(), "candidates": cands,
           "chosen": chosen, "rule": rule, "affinity_rounds": len(server.state.affinity.of(MERGED, first)),
           "affinity_rounds_rule": _window_rule(server),
           "merge_rounds": merged.done_rounds if merged else None,
           "merge_rounds_rule": "auto: the affinity ranking settled" if m.merge_rounds == "auto"
           else f"mas.merge_rounds={m.merge_rounds}",
           "split_rounds": split_rounds(server, merged.done_rounds) if merged else None,
           "split_schedule": m.split_schedule}
    server.state.plan["split"] = doc
    atomic_write_text(server.run_dir / "split.json", json.dumps(doc, indent=1))


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
        _write_split(server, tasks, np.zeros((len(tasks), len(tasks))), [], {"k": k, "groups": groups},
                     "random partition into k groups (control)")
        return groups


@register
class TAG(Plan):
    """Task Affinity Grouping (Fifty et al., NeurIPS 2021): groups retrained from scratch."""

    name, label = "tag", "TAG"
    splits = merges = True

    def expected_rounds(self, server: Server) -> int | None:
        return self._phase(server) + server.cfg.federation.rounds

    @staticmethod
    def _phase(server: Server) -> int:
        """Rounds of the affinity phase: TAG discards its merged model, so it trains only while it measures
        (up to the end of the window: R0 rounds with ``mas.affinity_window: last``)."""
        if server.cfg.mas.affinity_window == "last":
            return merge_rounds(server)
        return affinity_rounds(server) or merge_rounds(server)

    def update(self, server: Server) -> None:
        st, R = server.state, server.cfg.federation.rounds
        if not st.plan.get("started"):
            r0 = self._phase(server)
            server.add_task(MERGED, list(server.tasks), r0, role="merged", measure_affinity=True, schedule_total=r0,
                            affinity_rounds=affinity_rounds(server), affinity_skip=affinity_skip(server, r0))
            st.plan["started"] = True
        if server.finished(MERGED) is not None and "groups" not in st.plan:
            tasks, z = server.state.affinity.mean(MERGED, affinity_rounds(server))
            z = grouping.fill_missing(z)
            k = split_count(server.cfg)
            sel = grouping.tag_selection(z, k)
            assign = grouping.tag_assignment(z, sel.groups)
            used = sorted(set(assign.values()))  # at most k: a group that serves no task is not trained
            groups = [[tasks[i] for i in sel.groups[gi]] for gi in used]
            st.plan["groups"] = groups
            st.plan["assignment"] = {tasks[t]: _group_name(used.index(gi)) for t, gi in assign.items()}
            _write_split(server, tasks, z, [], {"k": len(groups), "groups": groups, "score": sel.score},
                         f"TAG's overlapping selection of at most {k} groups; each task reported from its best "
                         f"group; groups that serve no task are dropped")
            for i, g in enumerate(groups):
                server.add_task(_group_name(i), g, R)

    def final_assignment(self, server: Server) -> dict[str, str]:
        return dict(server.state.plan["assignment"])


@register
class HOA(Plan):
    """Higher-Order Approximation (Standley et al., ICML 2020): every single task and pair is trained,
    a group's loss is estimated from the pairs, the best partition is retrained from scratch."""

    name, label = "hoa", "HOA"
    splits = True

    def expected_rounds(self, server: Server) -> int | None:
        n = len(server.tasks)
        probes = n + n * (n - 1) // 2
        return -(-probes // server.capacity()) * pair_rounds(server) + server.cfg.federation.rounds

    def update(self, server: Server) -> None:
        st, tasks = server.state, list(server.tasks)
        probes = [[t] for t in tasks] + [list(p) for p in itertools.combinations(tasks, 2)]
        started = st.plan.setdefault("probes_started", 0)
        if started < len(probes) and not any(t.role == "probe" for t in st.active):
            wave = probes[started:started + server.capacity()]
            for p in wave:
                server.add_task("probe-" + "+".join(p), p, pair_rounds(server), role="probe")
            st.plan["probes_started"] = started + len(wave)
            return
        if started == len(probes) and not st.active and "groups" not in st.plan:
            groups = self._choose(server, tasks)
            st.plan["groups"] = groups
            for i, g in enumerate(groups):
                server.add_task(_group_name(i), g, server.cfg.federation.rounds)

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
        server.state.plan["estimate"] = {"single": single.tolist(), "pair": pair.tolist(),
                                         "estimated_mean_loss": -best.score / n}
        return groups
