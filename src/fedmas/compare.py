"""``fedmas compare``: run several methods on one config and draw the paper's comparison.

Each method runs in its own folder under the output folder; a finished method is
not run again and an interrupted one is resumed, so the command itself is
resumable. Writes ``comparison.json``, ``comparison.md``, ``comparison.png``
(total test loss against training compute) and ``energy.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmas.config import Config, ConfigError
from fedmas.methods import PLANS
from fedmas.report import comparison_figure, energy_figure, short, table
from fedmas.run import execute


def _names() -> tuple[dict[str, tuple[str, dict[str, Any]]], list[str]]:
    """From the method registry: plain names (a method or one of its variants) → (method, overrides),
    and the methods that take a split count (``name:K``)."""
    plain: dict[str, tuple[str, dict[str, Any]]] = {}
    splitting = []
    for name, plan in PLANS.items():
        if plan.splits:
            splitting.append(name)
        else:
            plain[name] = (name, {})
        for variant, over in plan.variants.items():
            plain[variant] = (name, over)
    return plain, splitting


def parse_methods(spec: str, n_tasks: int) -> list[tuple[str, str, dict[str, Any]]]:
    """'mas:2,one-by-one,...' → [(key, method, config overrides)]."""
    plain, splitting = _names()
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, k = item.partition(":")
        if name in plain and not k:
            method, over = plain[name]
            out.append((name, method, over))
        elif name in splitting:
            if k == "auto" and PLANS[name].auto_splits:
                out.append((item, name, {"mas": {"splits": "auto"}}))
                continue
            if not k.isdigit() or not 1 <= int(k) <= n_tasks:
                raise ConfigError(f"--methods {item!r}: {name} needs a split count 1..{n_tasks}, e.g. {name}:2")
            out.append((item, name, {"mas": {"splits": int(k)}}))
        else:
            autos = [f"{n}:auto" for n in splitting if PLANS[n].auto_splits]
            raise ConfigError(f"--methods: unknown method {item!r}; accepted: {', '.join(plain)}, "
                              f"{', '.join(s + ':K' for s in splitting)}, {', '.join(autos)}")
    if not out:
        raise ConfigError("--methods is empty")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def label_of(key: str) -> str:
    """How figures and tables name a ``--methods`` entry: 'mas:2' → 'MAS 2 splits'."""
    name, _, k = key.partition(":")
    if not k:
        return name
    label = PLANS[name].label
    return f"{label} auto" if k == "auto" else f"{label} {k} splits"


def compare(cfg: Config, methods: str, out: Path, progress: bool = True) -> list[dict[str, Any]]:
    plan = parse_methods(methods, len(cfg.task_list))
    out.mkdir(parents=True, exist_ok=True)
    base = cfg.model_dump()
    results = []
    for i, (label, method, over) in enumerate(plan):
        run_cfg = Config.model_validate(_merge({**base, "method": method, "name": f"{cfg.name}-{label}"}, over))
        run_dir = out / label.replace(":", "-")
        if progress:
            print(f"[fedmas compare] {i + 1}/{len(plan)} {label} → {run_dir}", flush=True)
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
        elif (run_dir / "checkpoint" / "state.json").exists():
            summary = execute(None, run_dir, resume=True, progress=progress)
        else:
            summary = execute(run_cfg, run_dir, progress=progress)
        assert summary is not None
        c = summary["costs"]
        results.append({"label": label_of(label), "key": label, "method": method,
                        "total_loss": summary["total_test_loss"], "test_loss": summary["test_loss"],
                        "groups": summary.get("groups"), "compute_h": c["compute_h"], "train_s": c["train_s"],
                        "eval_s": c["eval_s"], "energy_j": c["energy_j"], "bytes": c["bytes_down"] + c["bytes_up"],
                        "sim_wallclock_s": c["sim_wallclock_s"], "rounds": summary["rounds"],
                        "energy_source": summary["energy_source"]})
    (out / "comparison.json").write_text(json.dumps({"config": base, "results": results}, indent=1))
    tasks = list(cfg.task_list)
    rows = [[r["label"], f"{r['total_loss']:.4f}", *[f"{r['test_loss'][t]:.4f}" for t in tasks],
             f"{r['train_s']:.0f}", f"{r['energy_j'] / 1000:.2f}", f"{r['bytes'] / 1e6:.0f}",
             f"{r['sim_wallclock_s']:.0f}", "; ".join("{" + ",".join(short(t) for t in g) + "}"
                                                     for g in (r["groups"] or []))] for r in results]
    header = ["method", "total loss", *[short(t) for t in tasks], "compute s", "energy kJ", "traffic MB",
              "sim. wall-clock s", "groups"]
    md = table(rows, header)
    (out / "comparison.md").write_text(md + f"\n\nEnergy: {results[0]['energy_source']}. Compute: client "
                                            f"training seconds over all phases.\n")
    title = (f"{len(tasks)} tasks on {cfg.data.dataset} ({cfg.data.buildings} clients, "
             f"{cfg.federation.clients_per_round}/round, R={cfg.federation.rounds})")
    comparison_figure(results, out / "comparison.png", title)
    energy_figure(results, out / "energy.png", results[0]["energy_source"])
    if progress:
        print(md)
    return results
