"""A run config against what is registered: the method and the engine by name (after the config's plugins were
imported, so a plugin's method or engine is known), and what the method implies for the other keys.

:mod:`fedmas.config` validates values only and imports no method or engine; every entry point that starts a run
(``fedmas run``, ``fedmas compare``, a resumed run, the Flower ServerApp) calls :func:`check_config` before
anything is written.
"""

from __future__ import annotations

from fedmas import aggregation, signals, weighting
from fedmas.config import Config, ConfigError
from fedmas.engines import ENGINES
from fedmas.methods import PLANS


def check_config(cfg: Config, source: str = "config") -> Config:
    """``cfg`` if its method and engine are registered and consistent with it; ConfigError naming the key."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: invalid configuration: {key}: {why}")

    if cfg.method not in PLANS:
        raise bad("method", f"unknown method {cfg.method!r}; accepted: {', '.join(PLANS)}")
    if cfg.engine not in ENGINES:
        raise bad("engine", f"unknown engine {cfg.engine!r}; accepted: {', '.join(ENGINES)}")
    f = cfg.federation
    if f.aggregation not in aggregation.AGGREGATIONS:
        raise bad("federation.aggregation", f"unknown aggregation {f.aggregation!r}; "
                                            f"accepted: {', '.join(aggregation.AGGREGATIONS)}")
    if f.task_weighting not in weighting.WEIGHTINGS:
        raise bad("federation.task_weighting", f"unknown task weighting {f.task_weighting!r}; "
                                               f"accepted: {', '.join(weighting.WEIGHTINGS)}")
    if cfg.arrival.tasks and not weighting.WEIGHTINGS[f.task_weighting].supports_arrivals:
        raise bad("arrival.tasks", f"tasks arriving mid-training are not supported with "
                                   f"federation.task_weighting: {f.task_weighting}")
    plan, n = PLANS[cfg.method], len(cfg.start_tasks)
    if isinstance(cfg.mas.splits, int) and cfg.mas.splits > n and plan.splits:
        raise bad("config", f"mas.splits={cfg.mas.splits} is larger than the number of tasks ({n})")
    for key, names in (("mas.signal", [cfg.mas.signal]), ("mas.record", cfg.mas.record)):
        unknown = [x for x in names if x not in signals.SIGNALS]
        if unknown:
            raise bad(key, f"unknown grouping signal(s) {unknown}; accepted: {', '.join(signals.SIGNALS)}")
    if m_groups := cfg.mas.groups:
        flat = [t for g in m_groups for t in g]
        if sorted(flat) != sorted(cfg.start_tasks) or any(not g for g in m_groups):
            raise bad("mas.groups", f"must partition the tasks {list(cfg.start_tasks)} (each once, no empty "
                                    f"group), got {m_groups}")
    if cfg.mas.start == "scratch" and cfg.arrival.tasks and plan.continues:
        raise bad("mas.start", "scratch (groups trained afresh, fedmas's default) does not take tasks arriving "
                               "mid-training (arrival.tasks or --add-task); a run that will take them sets "
                               "mas.start: merged from its start")
    limit = getattr(plan, "max_tasks", None)
    if limit is not None and n > limit:
        raise bad("tasks", f"method {cfg.method} trains every non-empty subset of the tasks: {2 ** n - 1} FL tasks "
                           f"for {n} tasks; it accepts at most {limit} tasks (use hoa or mas for more)")
    m, R = cfg.mas, cfg.federation.rounds
    if m.merge_rounds != "auto" and plan.continues and m.split_rounds is None \
            and m.rounds_of(m.merge_rounds, R) >= R:  # type: ignore[arg-type]
        raise bad("config", f"mas.merge_rounds={m.merge_rounds} leaves no rounds after the split in "
                            f"federation.rounds={R}; lower it or set mas.split_rounds")
    return cfg
