"""A finished run's account: ``summary.json`` (test and validation losses, skill, metrics, groups, costs),
``costs.json``, the figures, and whether the run succeeded at all (a run that trained nothing or reports a
non-finite number is :class:`RunFailed`); and reading a summary back, checked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmas import trivial
from fedmas.console import render_summary
from fedmas.methods import MERGED, affinity_rounds
from fedmas.server.loop import Server
from fedmas.server.state import PlanState, ServerState, atomic_write_text
from fedmas.summaryfile import MAX_SUMMARY_BYTES, read_summary  # noqa: F401 - importable from here too


class RunFailed(ValueError):
    """A run that ended without a result worth reporting (a non-finite loss): exit 2, never success."""


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run, or None."""
    p = run_dir / "summary.json"
    return read_summary(p) if p.exists() or p.is_symlink() else None


def write_affinity(server: Server, always: bool = False) -> None:
    rows = server.state.affinity.of(MERGED)
    if not rows or (rows[-1]["round"] != server.state.round - 1 and not always):
        return
    log = server.state.affinity
    doc = log.to_doc(MERGED, affinity_rounds(server))
    others = log.signals(MERGED)
    if doc is not None and others:  # the other grouping signals measured (mas.signal, mas.record)
        doc["signals"] = {k: log.to_doc(MERGED, affinity_rounds(server), k) for k in others}
    atomic_write_text(server.run_dir / "affinity.json", json.dumps(doc, indent=1))


def learned(per_task: dict[str, float], triv: trivial.Trivial | None, val_curves: dict[str, list[float]]
            ) -> dict[str, Any]:
    """The summary's account of how much was learned: each task's trivial test loss and skill, the mean
    skill, the tasks not learned, and the FL tasks whose validation total was still falling at the end."""
    tl = triv.test_loss if triv is not None else {}
    sk = trivial.skills(per_task, tl)
    return {"trivial_test_loss": {t: tl.get(t) for t in per_task}, "test_skill": sk,
            "mean_skill": trivial.mean_skill(sk), "not_learned": trivial.not_learned(sk),
            "not_learned_below": trivial.NOT_LEARNED_BELOW,
            "not_converged": [f for f, v in val_curves.items() if trivial.still_falling(v)]}


def validation(owner: dict[str, str], st: ServerState, triv: trivial.Trivial | None) -> dict[str, Any]:
    """The summary's validation account of the reported models: each task's validation loss and skill (the
    numbers a decision between runs may read; the test losses are for reporting only)."""
    val = {t: st.task(fl).reported_val_loss(t) for t, fl in owner.items()}
    known = {t: v for t, v in val.items() if v is not None}
    sk = trivial.skills(known, triv.val_loss if triv is not None else {})
    return {"val_loss": val, "val_skill": {t: sk.get(t) for t in val}, "mean_val_skill": trivial.mean_skill(sk)}


def _val_curves(run_dir: Path, fl_tasks: list[str]) -> dict[str, list[float]]:
    """Each final FL task's validation total per round, from metrics.jsonl."""
    out: dict[str, list[float]] = {f: [] for f in fl_tasks}
    p = run_dir / "metrics.jsonl"
    for ln in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(ln)
        if r.get("fl_task") in out and "val_total_loss" in r:
            out[r["fl_task"]].append(float(r["val_total_loss"]))
    return out


def _confidence_title(plan: PlanState) -> str:
    conf = (plan.split or {}).get("confidence")
    if not conf:
        return ""
    return f"\nsplit confidence {conf['confidence']:.0%}" + (" — NOT SURE" if conf.get("sure") is False else "")


def finish(server: Server, plan, progress: bool, triv: trivial.Trivial | None = None) -> dict[str, Any]:
    from fedmas.report import heatmap, loss_curves  # matplotlib: imported by a run that draws, not before

    st, run_dir, cfg = server.state, server.run_dir, server.cfg
    owner = plan.final_assignment(server)
    per_task = {t: st.task(fl).last_eval[f"loss/{t}"] for t, fl in owner.items()}
    diverged = {t: v for t, v in per_task.items() if not math.isfinite(v)}
    if diverged:
        raise RunFailed(f"{run_dir}: the run ended with a non-finite test loss for "
                        + ", ".join(f"{t} (FL task {owner[t]})" for t in diverged)
                        + "; no summary is written: training diverged (a lower federation.lr?) or the data holds "
                          "non-finite values")
    metrics = {t: {k.split("/")[0]: v for k, v in st.task(fl).last_eval.items()
                   if k.endswith(f"/{t}") and not k.startswith(("loss/", "val_"))} for t, fl in owner.items()}
    totals = st.costs.totals()
    summary = {
        "name": cfg.name, "method": cfg.method, "tasks": list(cfg.task_list), "rounds": st.round,
        "total_test_loss": sum(per_task.values()), "test_loss": per_task, "test_metrics": metrics,
        "owner": owner, "groups": plan.groups(server), "select": cfg.federation.select,
        "fl_tasks": [{"name": t.name, "tasks": t.tasks, "role": t.role, "rounds": t.done_rounds,
                      "started_round": t.started_round, "finished_round": t.finished_round,
                      "selected_round": t.selected_round, "start_val_total_loss": t.start_val,
                      "start_val_loss": t.start_val_loss or None,
                      "final_total_loss": t.last_eval.get("total_loss"),
                      "costs": dict(st.costs.per_task[t.name])} for t in st.finished],
        "costs": totals, "energy_source": st.costs.energy_source, "faults": st.faults,
        **learned(per_task, triv, _val_curves(run_dir, sorted(set(owner.values())))),
        **validation(owner, st, triv),
    }
    failed = failures(run_dir, st, cfg.federation.max_share_without_update, summary)
    if failed:
        summary["failed"] = failed
    atomic_write_text(run_dir / "costs.json", json.dumps(st.costs.to_json(), indent=1))
    measured = st.affinity.mean(MERGED, affinity_rounds(server))
    if measured is not None:
        rounds = len(st.affinity.of(MERGED, affinity_rounds(server)))
        heatmap(measured[0], measured[1], run_dir / "affinity.png",
                f"Inter-task affinity, mean of {rounds} merged rounds" + _confidence_title(st.plan),
                st.plan.groups)  # the split's groups (a newcomer placed later is not in this matrix)
    loss_curves(run_dir / "metrics.jsonl", run_dir / "losses.png", summary["trivial_test_loss"],
                {t.name: t.selected_round for t in st.finished if t.role == "final"})
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    if progress:
        print(render_summary(summary, run_dir))
    if failed:
        raise RunFailed(failed_line(run_dir, summary))
    return summary


def failures(run_dir: Path, st: ServerState, max_share: float, summary: dict[str, Any]) -> list[str]:
    """Why a finished run is not a success: an FL task that got no accepted client update in more than
    ``max_share`` of its rounds (it trained on nothing), or a non-finite number among the reported ones."""
    out = []
    rounds: dict[str, list[int]] = {}
    p = run_dir / "metrics.jsonl"
    for ln in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(ln)
        rounds.setdefault(r["fl_task"], []).append(int(r.get("accepted", 1)) == 0)
    for fl in st.finished:
        idle = rounds.get(fl.name, [])
        if idle and sum(idle) > max_share * len(idle):
            out.append(f"FL task {fl.name}: no accepted client update in {sum(idle)} of its {len(idle)} rounds "
                       f"(more than federation.max_share_without_update={max_share:g}): it trained on nothing "
                       f"(run.log names the rejected clients and why)")
    bad = [k for k, v in _numbers(summary) if not math.isfinite(v)]
    if bad:
        out.append(f"non-finite reported value(s): {', '.join(bad[:4])} (training diverged, or the data holds "
                   f"values far out of range)")
    return out


def failed_line(run_dir: Path, summary: dict[str, Any]) -> str:
    return f"{run_dir}: the run did not succeed: " + "; ".join(summary["failed"])


def _numbers(doc: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(doc, dict):
        return [x for k, v in doc.items() for x in _numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(doc, list):
        return [x for i, v in enumerate(doc) for x in _numbers(v, f"{path}[{i}]")]
    return [(path, float(doc))] if isinstance(doc, (int, float)) and not isinstance(doc, bool) else []
