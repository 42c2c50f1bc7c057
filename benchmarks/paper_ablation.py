"""Ablation of the paper protocol: MAS with 2 groups against all-in-one and one-by-one, with each of the
reference's choices switched back one at a time, over several seeds.

    .venv/bin/python benchmarks/paper_ablation.py            # seeds 0,1,2; resumable
    .venv/bin/python benchmarks/paper_ablation.py --seeds 0,1

The reference rows come from the paper-protocol comparison (``benchmarks/results/paper_protocol``, run it
first, see ``benchmarks/paper_protocol.yaml``); every variant runs in its own comparison folder under
``benchmarks/results/paper_ablation/``. A variant reruns only the methods its change can affect: MAS
settings do not touch all-in-one or one-by-one, and the 1/√n encoder scale is 1 for a one-task model, so
those baselines are the reference's own runs. Writes ``paper_ablation.json``, ``paper_ablation.md`` and
``paper_ablation.png`` (paired differences with 95% intervals) under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CONFIG = HERE / "paper_protocol.yaml"
RESULTS = HERE / "results"
REFERENCE = RESULTS / "paper_protocol"
BASELINES = ("all-in-one", "one-by-one")

# name, what it switches back, config overrides, methods it must rerun
VARIANTS: list[tuple[str, str, list[str], list[str]]] = [
    ("reference", "the reference's protocol", [], []),
    ("continue", "groups continue the decayed lr schedule", ["mas.split_schedule=continue"], ["mas:2"]),
    ("r0-third", "split at R0 = R/3 instead of 0.7 R", ["mas.merge_rounds=0.3333"], ["mas:2"]),
    ("affinity-last", "affinity from the last 0.1 R merged rounds", ["mas.affinity_window=last"], ["mas:2"]),
    ("no-inv-sqrt-n", "encoder gradient not scaled by 1/√n", ["model.encoder_grad_scale=none"],
     ["mas:2", "all-in-one"]),
    ("head-heavy", "small encoder (heads hold most parameters)", ["model.encoder=small"],
     ["mas:2", "all-in-one", "one-by-one"]),
]


def _runs(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    doc = json.loads((folder / "comparison.json").read_text())
    return {r["key"]: {x["seed"]: x for x in r["runs"]} for r in doc["results"]}


def _paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], key) -> dict[str, Any]:
    from fedmas.stats import paired

    seeds = sorted(set(a) & set(b))
    return {**paired([(key(a[s]), key(b[s])) for s in seeds]), "seeds": seeds}


def _normaliser(obo: dict[int, dict[str, Any]]):
    """Σ_t L_t / L_t(one-by-one of the same seed)."""
    return lambda r, s: sum(v / obo[s]["test_loss"][t] for t, v in r["test_loss"].items())


def main(argv: list[str] | None = None) -> int:
    from fedmas.compare import compare
    from fedmas.config import load_config
    from fedmas.stats import fmt, mean_ci

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="the protocol's comparison folder")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where paper_ablation.* and its runs go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every variant")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    for name, _, sets, methods in VARIANTS:  # the variants first (they need nothing from the reference)
        if methods:
            compare(load_config(a.config, [*a.set, *sets]), ",".join(methods), a.out / "paper_ablation" / name,
                    progress=True, seeds=seeds)
    if not (a.reference / "comparison.json").exists():
        print(f"variants done; run the paper-protocol comparison into {a.reference} (see {CONFIG.name}), then "
              f"this script again for the table", file=sys.stderr)
        return 2
    ref = _runs(a.reference)
    rows, md = [], []
    for name, what, sets, methods in VARIANTS:
        runs = {k: ref[k] for k in ("mas:2", *BASELINES)}
        if methods:
            runs.update(_runs(a.out / "paper_ablation" / name))
        mas, aio, obo = runs["mas:2"], runs["all-in-one"], runs["one-by-one"]
        norm = _normaliser(obo)
        total, total_ci = mean_ci([mas[s]["total_loss"] for s in seeds])
        nt, nt_ci = mean_ci([norm(mas[s], s) for s in seeds])
        flop = mean_ci([mas[s]["train_tflop"] / obo[s]["train_tflop"] for s in seeds])
        row = {"variant": name, "change": what, "overrides": sets, "rerun": methods, "seeds": seeds,
               "mas2_total": total, "mas2_total_ci": total_ci, "mas2_normalised": nt, "mas2_normalised_ci": nt_ci,
               "mas2_flop_over_one_by_one": flop[0], "mas2_flop_over_one_by_one_ci": flop[1],
               "groups": {s: mas[s]["groups"] for s in seeds},
               "vs_reference": _paired(mas, ref["mas:2"], lambda r: r["total_loss"]),
               "vs_all_in_one": _paired(mas, aio, lambda r: r["total_loss"]),
               "vs_one_by_one": _paired(mas, obo, lambda r: r["total_loss"]),
               "vs_all_in_one_normalised": _paired({s: {"v": norm(mas[s], s)} for s in seeds},
                                                   {s: {"v": norm(aio[s], s)} for s in seeds}, lambda r: r["v"])}
        rows.append(row)
        p, q, o = row["vs_all_in_one"], row["vs_one_by_one"], row["vs_reference"]
        against = "—" if name == "reference" else \
            f"{fmt(o['diff'], o['ci'])} ({o['verdict']}, lower in {o['lower_in']})"
        md.append(f"| {name} | {what} | {fmt(total, total_ci)} | {against} | {fmt(nt, nt_ci, 3)} | "
                  f"{fmt(p['diff'], p['ci'])} ({p['verdict']}) | {fmt(q['diff'], q['ci'])} ({q['verdict']}) | "
                  f"{fmt(flop[0], flop[1], 2)} |")
    header = ("| variant | switched back | MAS-2 total test loss | − reference MAS-2 | MAS-2 normalised total "
              "| MAS-2 − all-in-one | MAS-2 − one-by-one | MAS-2 FLOP / one-by-one |\n"
              "|---|---|---|---|---|---|---|---|")
    text = header + "\n" + "\n".join(md) + (
        f"\n\n{len(seeds)} seeds; mean ± 95% Student-t half-width; differences are paired by seed "
        "(\"cannot tell\": the interval contains 0). Normalised total: Σ_t L_t / L_t(one-by-one of that "
        "variant and seed).\n")
    (a.out / "paper_ablation.json").write_text(json.dumps({"config": a.config.name, "overrides": a.set,
                                                           "rows": rows}, indent=1))
    (a.out / "paper_ablation.md").write_text(text)
    _figure(rows, a.out / "paper_ablation.png", len(seeds))
    print(text)
    return 0


def _figure(rows: list[dict[str, Any]], path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.55 * len(rows) + 1.6), sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, key, title in ((axes[0], "vs_all_in_one", "MAS-2 − all-in-one"),
                           (axes[1], "vs_one_by_one", "MAS-2 − one-by-one")):
        for y, r in zip(ys, rows):
            d, ci = r[key]["diff"], r[key]["ci"] or 0.0
            colour = {"lower": "tab:green", "higher": "tab:red"}.get(r[key]["verdict"], "tab:grey")
            ax.errorbar(d, y, xerr=ci, fmt="o", color=colour, capsize=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(title + " (total test loss)", fontsize=10)
        ax.set_xlabel("paired difference, < 0: MAS lower")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [r["variant"] for r in rows])
    fig.suptitle(f"Ablation of the paper protocol ({n_seeds} seeds, 95% intervals; green/red: interval "
                 f"excludes 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
