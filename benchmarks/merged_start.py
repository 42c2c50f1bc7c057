"""Why a group continued from an early merged model learns less than the same group from scratch.

    .venv/bin/python benchmarks/merged_start.py run [--seeds 0,1] [--epochs 3]
    .venv/bin/python benchmarks/merged_start.py table [--seeds 0,1]

Under ``benchmarks/learned_protocol.yaml`` with the merged phase of ``mas.merge_rounds: 0.1`` (R0 = 3 rounds,
the poly schedule continued), per seed:

1. the merged phase is run for R0 rounds (``fedmas.run.execute(..., stop_after=R0)``), which gives the merged
   model at the split and, rebuilt from the same seed, the weights it started from;
2. each task is then trained alone, centrally, on the pooled training data of all clients (SGD with the
   protocol's batch size, momentum, weight decay and the learning rate of round R0), from three starts:
   ``init`` (the merged model's own initial weights), ``merged`` (the merged model at R0), and
   ``merged encoder + init head``; after every epoch its validation loss is turned into skill with the run's
   trivial predictor;
3. the norm of the task's gradient on the shared encoder is taken on the first training batch of each start.

Central training is a proxy for a group of one task continuing in the federation: it removes client
sampling and averaging, so what is left is the starting weights. No test data is read. Resumable per seed:
a seed's finished record is read back. Writes ``results/merged_start.{json,md}`` (with the paired differences
against ``init``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS

HERE = Path(__file__).parent
PROTOCOL = HERE / "learned_protocol.yaml"
OUT = RESULTS / "merged_start"
FRACTION = 0.1
STARTS = ("init", "merged", "merged encoder + init head")


def _config(seed: int):
    from fedmas.config import Config, load_config

    raw = load_config(PROTOCOL).model_dump()
    raw["seed"] = seed
    raw["name"] = f"merged-start-s{seed}"
    raw["method"] = "mas"
    raw["threads"] = 1
    raw["mas"].update(start="merged", merge_rounds=FRACTION, split_schedule="continue",
                      groups=[list(raw["tasks"][:-1]), [raw["tasks"][-1]]])
    return Config.model_validate(raw)


def _merged_phase(cfg, run_dir: Path, r0: int) -> dict[str, Any]:
    """The merged model's weights at round ``r0`` (the merged phase is run, or resumed, up to there)."""
    from safetensors.torch import load_file

    from fedmas.run import execute

    state = run_dir / "checkpoint" / "state.json"
    if not state.exists() or json.loads(state.read_text())["round"] < r0:
        resume = state.exists()
        execute(None if resume else cfg, run_dir, resume=resume, progress=False, stop_after=r0,
                force=not resume)
    st = json.loads(state.read_text())
    if st["round"] != r0:
        raise SystemExit(f"merged_start: {run_dir} stopped at round {st['round']}, not {r0}; remove it and rerun")
    weights = load_file(str(run_dir / "checkpoint" / st["weights_file"]))
    return {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith("merged/")}


def _alone(model, task: str, train, val, cfg, lr: float, epochs: int, seed: int) -> dict[str, Any]:
    """Train ``task`` alone from ``model``: the encoder's gradient norm on the first batch, and the
    validation loss after each epoch."""
    import torch

    from fedmas.data.federated import batches
    from fedmas.tasks import get_task

    model = copy.deepcopy(model)
    head, enc, t = model.heads[task], model.encoder, get_task(task)
    params = list(enc.parameters()) + list(head.parameters())
    f = cfg.federation
    opt = torch.optim.SGD(params, lr=lr, momentum=f.momentum, weight_decay=f.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    grad_norm, losses = None, []
    for _ in range(epochs):
        model.train()
        for x, y, m in batches(train, f.batch_size, gen):
            opt.zero_grad()
            t.loss(head(enc(x)), y[task], m.get(task)).backward()
            if grad_norm is None:
                grad_norm = float(sum(p.grad.pow(2).sum() for p in enc.parameters() if p.grad is not None).sqrt())
            opt.step()
        model.eval()
        with torch.no_grad():
            losses.append(float(t.loss(head(enc(val.x)), val.targets[task], val.masks.get(task))))
    return {"encoder_grad_norm": grad_norm, "val_loss": losses}


def run_seed(seed: int, epochs: int) -> dict[str, Any]:
    import torch

    from fedmas.data import load_federated
    from fedmas.data.federated import concat
    from fedmas.models import build_model, model_spec
    from fedmas.server.federation import lr_at, stable_seed
    from fedmas.server.state import FLTaskState
    from fedmas.trivial import skill

    torch.set_num_threads(1)
    cfg = _config(seed)
    r0 = round(FRACTION * cfg.federation.rounds)
    run_dir = OUT / f"seed-{seed}" / "merged-phase"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    merged_w = _merged_phase(cfg, run_dir, r0)
    tasks, spec = list(cfg.tasks), model_spec(cfg)
    init = build_model(tasks, spec, seed=stable_seed(cfg.seed, "init", "merged"))
    merged = build_model(tasks, spec)
    merged.load_state_dict(merged_w)
    trivial_val = json.loads((run_dir / "trivial.json").read_text())["val_loss"]
    data = load_federated(cfg.data, tasks)
    train = concat([data.clients[c] for c in sorted(data.clients)])
    lr = lr_at(cfg, FLTaskState(name="probe", tasks=tasks, rounds=cfg.federation.rounds, done_rounds=r0,
                                schedule_total=cfg.federation.rounds))
    out: dict[str, Any] = {"seed": seed, "r0": r0, "lr": lr, "epochs": epochs, "train_images": len(train),
                           "tasks": {}}
    for task in tasks:
        mixed = copy.deepcopy(merged)
        mixed.heads[task].load_state_dict(init.heads[task].state_dict())
        rec = {}
        for name, model in zip(STARTS, (init, merged, mixed)):
            r = _alone(model, task, train, data.validation, cfg, lr, epochs, seed)
            r["val_skill"] = [skill(v, trivial_val[task]) for v in r["val_loss"]]
            rec[name] = r
            print(f"[merged_start] seed {seed} {task:17s} {name:27s} |grad enc| {r['encoder_grad_norm']:.3g} "
                  f"val skill by epoch {[round(s, 3) for s in r['val_skill']]}", flush=True)
        out["tasks"][task] = rec
    return out


def table(records: list[dict[str, Any]]) -> str:
    from fedmas.stats import fmt, mean_ci, paired

    tasks = list(records[0]["tasks"])
    last = records[0]["epochs"]
    lines = [f"Each task trained alone, centrally, for {last} epochs on the pooled training data, from three starts "
             f"(seeds {', '.join(str(r['seed']) for r in records)}; R0 = {records[0]['r0']} merged rounds; "
             f"lr {records[0]['lr']:.4f}). Validation skill after the last epoch, and the task's gradient norm on "
             f"the shared encoder at the start relative to the same from `init`. Mean ± 95% half-width over "
             f"seeds where there are several.", "",
             "| task | " + " | ".join(f"skill from {s}" for s in STARTS) + " | "
             + " | ".join(f"grad ratio {s}" for s in STARTS[1:]) + " |",
             "| --- |" + " --- |" * (2 * len(STARTS) - 1)]
    for task in tasks:
        per = [r["tasks"][task] for r in records]
        cells = [fmt(*mean_ci([p[s]["val_skill"][-1] for p in per]), 3) for s in STARTS]
        cells += [fmt(*mean_ci([p[s]["encoder_grad_norm"] / p["init"]["encoder_grad_norm"] for p in per]), 2)
                  for s in STARTS[1:]]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences of that validation skill against `init` (mean ± 95% half-width over seeds):", "",
              "| task | " + " | ".join(f"{s} − init" for s in STARTS[1:]) + " |",
              "| --- |" + " --- |" * (len(STARTS) - 1)]
    for task in tasks:
        per = [r["tasks"][task] for r in records]
        diffs = [paired([(p[s]["val_skill"][-1], p["init"]["val_skill"][-1]) for p in per]) for s in STARTS[1:]]
        lines.append(f"| {task} | " + " | ".join(fmt(d["diff"], d["ci"], 3) for d in diffs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "table"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    records = []
    for seed in seeds:
        path = OUT / f"seed-{seed}" / "alone.json"
        if not path.exists():
            if a.what == "table":
                raise SystemExit(f"merged_start: seed {seed} has no record at {path}; run it first")
            rec = run_seed(seed, a.epochs)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec, indent=1))
            tmp.replace(path)
        records.append(json.loads(path.read_text()))
    text = table(records)
    (RESULTS / "merged_start.md").write_text(text)
    (RESULTS / "merged_start.json").write_text(json.dumps({"seeds": seeds, "records": records}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
