"""Behaviour unchanged? Run nine tiny configs with the fedmas on ``PYTHONPATH`` and compare two such folders.

    PYTHONPATH=<tree A>/src .venv/bin/python benchmarks/identity.py run /tmp/ident/a
    PYTHONPATH=<tree B>/src .venv/bin/python benchmarks/identity.py run /tmp/ident/b
    .venv/bin/python benchmarks/identity.py compare /tmp/ident/a /tmp/ident/b

Compared per config: ``summary.json`` without times and byte counts, ``affinity.json``, ``split.json``,
``arrivals.json`` (every key of the first folder's file; keys only the second has are named as new outputs),
the final model weights and the task weighting's state (GradNorm's weights; kept among the weights as
``gradnorm.weights`` before fedmas had typed strategy state, under ``@state/`` since).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "name": "tiny", "seed": 0, "tasks": ["segment_semantic", "depth_zbuffer", "normal"],
    "data": {"buildings": 4, "train_images": 8, "test_images": 4, "resolution": 32, "views_per_room": 4},
    "model": {"width": 8}, "federation": {"rounds": 4, "clients_per_round": 2, "batch_size": 4},
    "mas": {"splits": 2, "merge_rounds": 2, "lookahead_step": 1, "start": "merged"}, "threads": 1}
TIMES = ("bytes", "_s", "compute_h", "energy")


def _variant(**keys: Any) -> dict[str, Any]:
    c = copy.deepcopy(TINY)
    for k, v in keys.items():
        node = c
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return c


CONFIGS = {
    "mas": _variant(), "mas-gradnorm": _variant(federation__task_weighting="gradnorm"),
    "aio-fedprox": _variant(method="all-in-one", federation__aggregation="fedprox"),
    "aio-gradnorm-bestval": _variant(method="all-in-one", federation__task_weighting="gradnorm",
                                     federation__select="best_val"),
    "partial": _variant(data__label_coverage=0.6), "arrival": _variant(arrival={"tasks": {"keypoints2d": 1}}),
    "tag": _variant(method="tag"), "hoa": _variant(method="hoa"),
    "obo-bestval": _variant(method="one-by-one", federation__select="best_val"),
}


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, cfg in CONFIGS.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        r = subprocess.run([sys.executable, "-c", "import sys; from fedmas.cli import main; sys.exit(main())", "run",
                            str(out / f"{name}.yaml"), "--out", str(out / name), "--quiet", "--force"],
                           capture_output=True, text=True)
        print(name, "ok" if r.returncode == 0 else "FAILED " + r.stderr[-800:], flush=True)


def _flat(o: Any, p: str = ""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _flat(v, f"{p}/{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _flat(v, f"{p}[{i}]")
    else:
        yield p, o


def _tensors(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    flat = load_file(str(sorted((run_dir / "checkpoint").glob("weights-*.safetensors"))[-1]))
    state = {k.replace("@state/", ""): v for k, v in flat.items() if "gradnorm.weights" in k}
    return {k: v for k, v in flat.items() if "gradnorm.weights" not in k}, state


def compare(a: Path, b: Path) -> int:
    bad = 0
    for name in CONFIGS:
        sa = dict(_flat(json.loads((a / name / "summary.json").read_text())))
        sb = dict(_flat(json.loads((b / name / "summary.json").read_text())))
        diff = sorted(k for k in set(sa) | set(sb)
                      if sa.get(k) != sb.get(k) and not any(t in k.split("/")[-1] for t in TIMES))
        files, added = True, []
        for f in ("affinity.json", "split.json", "arrivals.json"):
            if (a / name / f).exists():  # every key of A's file the same in B's; keys only B has are new outputs
                ja, jb = (json.loads((x / name / f).read_text()) for x in (a, b))
                files &= all(jb.get(k) == v for k, v in ja.items())
                added += [f"{f}:{k}" for k in jb if k not in ja]
        (wa, ta), (wb, tb) = _tensors(a / name), _tensors(b / name)
        same_w = wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
        same_t = ta.keys() == tb.keys() and all(bool((ta[k] == tb[k]).all()) for k in ta)
        ok = not diff and files and same_w and same_t
        bad += not ok
        new = f" (new: {', '.join(added)})" if added else ""
        print(f"{name:22s} {'identical' if ok else 'DIFFERENT'}: summary {diff[:5] or 'same'}, files "
              f"{'same' if files else 'differ'}{new}, weights {'same' if same_w else 'differ'}, state "
              f"{'same' if same_t else 'differ'} ({len(ta)} tensors)")
    return 1 if bad else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        return compare(Path(sys.argv[2]), Path(sys.argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
