"""The summary ``fedmas compare`` writes: one row per method over its seeds, the Markdown table, what was
not learned or not converged, and the paired differences of MAS against every other method."""

from __future__ import annotations

from typing import Any

from fedmas.methods import PLANS
from fedmas.report import short, table
from fedmas.stats import fmt, fmt_g, mean_ci, paired
from fedmas.trivial import NOT_LEARNED_BELOW


def label_of(key: str) -> str:
    """How figures and tables name a ``--methods`` entry: 'mas:2' → 'MAS 2 splits'."""
    name, _, k = key.partition(":")
    if not k:
        return name
    label = PLANS[name].label
    return f"{label} auto" if k == "auto" else f"{label} {k} splits"


def dataset_name(dataset: str) -> str:
    return dataset.split(":")[-2] if dataset.startswith("python:") else dataset


def summarise(plan, runs: dict[str, list[dict[str, Any]]], tasks: list[str]) -> list[dict[str, Any]]:
    obo = {r["seed"]: r["test_loss"] for r in runs.get("one-by-one", [])}
    results = []
    for label, method, _ in plan:
        rs = runs[label]
        row: dict[str, Any] = {"label": label_of(label), "key": label, "method": method, "runs": rs,
                               "groups": rs[0]["groups"], "energy_source": rs[0]["energy_source"]}
        for key in ("total_loss", "train_tflop", "train_s", "energy_j", "bytes"):
            row[key], row[f"{key}_ci"] = mean_ci([r[key] for r in rs])
        row["test_loss"] = {t: mean_ci([r["test_loss"][t] for r in rs])[0] for t in tasks}
        row["skill"] = {t: _mean_or_none([r["skill"].get(t) for r in rs]) for t in tasks}
        ms = [r["mean_skill"] for r in rs]
        if all(v is not None for v in ms):
            row["mean_skill"], row["mean_skill_ci"] = mean_ci(ms)
        row["not_converged_runs"] = sum(bool(r["not_converged"]) for r in rs)
        if all(r["seed"] in obo for r in rs):  # Σ_t L_t / L_t(one-by-one): no single task decides the ranking
            norm = [sum(r["test_loss"][t] / obo[r["seed"]][t] for t in tasks) for r in rs]
            row["normalised_total"], row["normalised_total_ci"] = mean_ci(norm)
        results.append(row)
    return results


def _mean_or_none(vals: list[float | None]) -> float | None:
    return None if not vals or any(v is None for v in vals) else float(sum(vals) / len(vals))  # type: ignore[arg-type]


def unlearned(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, list[str]]:
    """Per task, the methods whose mean skill on it is below the not-learned threshold."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        low = [r["label"] for r in results if r["skill"].get(t) is not None and r["skill"][t] < NOT_LEARNED_BELOW]
        if low:
            out[t] = low
    return out


def learned_text(low: dict[str, list[str]], results: list[dict[str, Any]]) -> str:
    lines = [f"Skill = 1 − test loss / test loss of a constant fitted on the training data (per task, in brackets "
             f"beside its loss; mean skill over tasks in its own column). Below {NOT_LEARNED_BELOW:g}: not learned."]
    if low:
        lines.append("**Not learned** — " + "; ".join(f"{short(t)} by {', '.join(m)}" for t, m in low.items())
                     + ". A ranking of methods over these tasks is noise: their losses are those of a model no "
                       "better than a constant, and the differences between methods there say nothing about the "
                       "methods.")
    nc = [f"{r['label']} ({r['not_converged_runs']} of {len(r['runs'])} runs)" for r in results
          if r.get("not_converged_runs")]
    if nc:
        lines.append("**Not converged** (validation total still falling over the last quarter of rounds): "
                     + ", ".join(nc) + ".")
    return "\n\n".join(lines)


def _scaled(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def wins(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For every MAS entry against every other: in how many seeds its total test loss was lower."""
    out = []
    for a, ra in runs.items():
        if not a.startswith("mas"):
            continue
        for b, rb in runs.items():
            if b == a:
                continue
            p = paired([(x["total_loss"], y["total_loss"]) for x in ra for y in rb if x["seed"] == y["seed"]])
            out.append({"mas": a, "other": b, "lower_loss_in": p["lower_in"], "tied_in": p["tied_in"],
                        "seeds": p["seeds"], "paired_diff": p["diff"], "paired_diff_ci": p["ci"],
                        "verdict": p["verdict"]})
    return out


def wins_text(rows: list[dict[str, Any]], n_seeds: int) -> str:
    if n_seeds < 2:
        return "One seed: differences between methods cannot be told from seed-to-seed noise."
    lines = [f"- {label_of(w['mas'])} − {label_of(w['other'])}: {fmt(w['paired_diff'], w['paired_diff_ci'])} "
             f"total test loss ({w['verdict']}); lower in {w['lower_loss_in']} of {w['seeds']} seeds"
             + (f" (equal in {w['tied_in']})" if w["tied_in"] else "") for w in rows if w["seeds"]]
    return "Intervals: mean ± 95% Student-t half-width over seeds. Paired: the difference of two methods " \
           "run under the same seed, whose interval decides: where it contains 0 the two cannot be told " \
           "apart at this many seeds.\n\n" + "\n".join(lines) + "\n"


def results_table(results: list[dict[str, Any]], tasks: list[str], n_seeds: int) -> str:
    rows = [[r["label"], fmt(r["total_loss"], r["total_loss_ci"]),
             fmt(r["normalised_total"], r["normalised_total_ci"], 3) if "normalised_total" in r else "",
             fmt(r["mean_skill"], r["mean_skill_ci"], 3) if "mean_skill" in r else "",
             *[f"{r['test_loss'][t]:.4f}" + (f" ({r['skill'][t]:.2f})" if r["skill"].get(t) is not None else "")
               for t in tasks],
             fmt_g(r["train_tflop"] * 1000, _scaled(r["train_tflop_ci"], 1000)),
             f"{r['train_s']:.0f}", fmt_g(r["energy_j"], r["energy_j_ci"]),
             f"{r['bytes'] / 1e6:.0f}",
             "; ".join("{" + ",".join(short(t) for t in g) + "}" for g in (r["groups"] or []))] for r in results]
    header = ["method", "total test loss", "normalised total", "mean skill", *[f"{short(t)} (skill)" for t in tasks],
              "compute GFLOP",
              "compute s", "energy J", "traffic MB", "groups (first seed)"]
    note = (f"\n\n{n_seeds} seed(s). Compute: client training FLOPs over all phases (deterministic); seconds "
            f"depend on the machine's load. Energy: {results[0]['energy_source']}. Normalised total: "
            f"Σ_t L_t / L_t(one-by-one).")
    return table(rows, header) + note


