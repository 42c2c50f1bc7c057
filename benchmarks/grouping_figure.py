"""The grouping study in one figure: every partition into ≤ 2 groups, its validation skill per seed, from
scratch and from the merged model of 0.7 R, with the partition the reference's lookahead picks and the two
baselines.

    .venv/bin/python benchmarks/grouping_figure.py

Reads ``results/grouping_truth.json`` and ``results/grouping_choice.json`` (validation skill only) and writes
``results/grouping_truth.png``.
"""

from __future__ import annotations

import json
import sys

from _common import RESULTS

from fedmas.report import short

TRUTH = RESULTS / "grouping_truth.json"
CHOICE = RESULTS / "grouping_choice.json"
PANELS = (("scratch", "start scratch, lookahead@0.1", "every group from scratch, R rounds"),
          ("merged-0.7", "start merged, lookahead@0.1", "every group from the merged model of 0.7 R"))


def _key(groups: list[list[str]]) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(g) for g in groups)


def _label(groups: list[list[str]]) -> str:
    return " | ".join("{" + ",".join(short(t) for t in g) + "}" for g in groups)


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = json.loads(TRUTH.read_text())["sources"]
    choice = json.loads(CHOICE.read_text())
    ctx = choice["context"]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 6.5), sharey=True)
    for ax, (source, design, title) in zip(axes, PANELS, strict=True):
        seeds = sorted(truth[source], key=int)
        rows: dict[frozenset[frozenset[str]], dict[str, object]] = {}
        for seed in seeds:
            for r in truth[source][seed]["partitions"]:
                if r["k"] <= 2:
                    e = rows.setdefault(_key(r["groups"]), {"groups": r["groups"], "val": {}})
                    e["val"][seed] = r["val_skill"]  # type: ignore[index]
        order = sorted(rows.values(), key=lambda e: -sum(e["val"].values()) / len(e["val"]))  # type: ignore
        picks = {seed: _key(choice["designs"][design]["per_seed"][seed]["groups"]) for seed in seeds
                 if seed in choice["designs"][design]["per_seed"]}
        markers = "os^Dv"
        for i, e in enumerate(order):
            for j, seed in enumerate(seeds):
                v = e["val"].get(seed)  # type: ignore[attr-defined]
                if v is None:
                    continue
                best = max(truth[source][seed]["partitions"], key=lambda r: r["val_skill"] if r["k"] <= 2 else -1)
                is_best = _key(best["groups"]) == _key(e["groups"])  # type: ignore[arg-type]
                ax.plot(i + (j - 1) * 0.15, v, markers[j % 5], color="black" if is_best else "0.55", ms=6,
                        label=f"seed {seed}" if i == 0 else None)
                if picks.get(seed) == _key(e["groups"]):  # type: ignore[arg-type]
                    ax.plot(i + (j - 1) * 0.15, v, "o", mfc="none", mec="tab:red", ms=13, mew=2,
                            label="the lookahead's pick" if not any(
                                h.get_label() == "the lookahead's pick" for h in ax.lines) else None)
        ax.axhline(ctx["one-by-one val"][0], color="tab:blue", ls="--", label="one-by-one (mean)")
        ax.axhline(ctx["all-in-one val (scratch)"][0], color="tab:orange", ls=":", label="all-in-one (mean)")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([_label(e["groups"]) for e in order], rotation=75, ha="right",  # type: ignore[arg-type]
                           fontsize=7)
        ax.set_title(f"{title}\n(seeds {', '.join(seeds)}; black: the seed's best ≤ 2 partition)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean validation skill over the 5 tasks")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Which groups matter: every partition into ≤ 2 groups (learned protocol)", fontsize=12)
    fig.tight_layout()
    out = RESULTS / "grouping_truth.png"
    fig.savefig(out, dpi=110)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
