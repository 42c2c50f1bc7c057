"""fedmas's overhead against a plain PyTorch loop training the same model on the same batches.

Prints, measured side by side in one process (median of --repeats):
  (a) fedmas local training time per batch ÷ the plain loop's         target ≤ 1.10 (reference 1.15–1.17)
  (b) a whole round without evaluation (selection, sending, local training,
      receiving, validation, aggregation) per batch ÷ the plain loop's  target ≤ 1.25 (reference 1.80)

(a) times ``train_local`` as the Python API's users call it (no FLOP counter passed: the model's own counter,
which counts each kind of batch once per process).

Usage: python benchmarks/overhead.py [--encoder small|resnet18] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, save  # noqa: E402

from fedmas.client import LocalConfig, train_local  # noqa: E402
from fedmas.config import Config  # noqa: E402
from fedmas.data import load_federated  # noqa: E402
from fedmas.data.federated import batches, to_device  # noqa: E402
from fedmas.engines.inprocess import InProcessEngine  # noqa: E402
from fedmas.methods import AllInOne  # noqa: E402
from fedmas.models import build_model  # noqa: E402
from fedmas.runtime import configure_cpu  # noqa: E402
from fedmas.server.loop import RoundLoop, Server, schedule  # noqa: E402
from fedmas.server.state import ServerState  # noqa: E402
from fedmas.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--images", type=int, default=64, help="training images per client")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both loops on it)")
    ap.add_argument("--resolution", type=int, default=64)
    a = ap.parse_args()
    cfg = Config.model_validate({
        "method": "all-in-one", "tasks": "sdnkt", "threads": 2, "device": a.device,
        "data": {"buildings": a.clients, "train_images": a.images, "test_images": 4, "resolution": a.resolution},
        "model": {"encoder": a.encoder},
        "federation": {"rounds": 10, "clients_per_round": a.clients, "batch_size": 16, "schedule": "constant"},
    })
    configure_cpu(cfg.threads)  # as `fedmas run` does: threads and malloc keeping freed memory
    data = load_federated(cfg.data, cfg.task_list)
    tmp = Path(tempfile.mkdtemp())
    server = Server(cfg, ServerState(), data.client_ids, tmp)
    AllInOne().update(server)
    fl = server.state.active[0]
    loop = RoundLoop(server, InProcessEngine(data.clients, server.spec), AllInOne(), data.test)
    w0 = {k: v.clone() for k, v in server.state.weights[fl.name].items()}
    model = build_model(cfg.task_list, server.spec).to(server.spec.device)
    dev = torch.device(server.spec.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    f = cfg.federation
    local = LocalConfig(lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay, batch_size=f.batch_size)
    one = data.clients[data.client_ids[0]]
    n_local = len(list(batches(one, f.batch_size)))

    def plain_epoch():  # the plain loop: same model, same batches, nothing else
        model.load_state_dict(w0)
        opt = torch.optim.SGD(model.parameters(), lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay)
        for batch in batches(one, f.batch_size, torch.Generator().manual_seed(0)):
            x, t, m = to_device(batch, dev)
            opt.zero_grad()
            preds = model(x)
            sum(get_task(k).loss(preds[k], t[k], m.get(k)) for k in cfg.task_list).backward()
            opt.step()
        sync()

    def fedmas_local():
        train_local(model, w0, one, local)  # as the Python API is called: no counter passed
        sync()

    rng = np.random.default_rng(0)

    def fedmas_round():
        server.state.weights[fl.name] = {k: v.clone() for k, v in w0.items()}
        assign = schedule(rng, server.clients, [fl], f.clients_per_round, 1, 0)
        loop._train_fl_task(fl, assign[fl.name], defaultdict(float))
        sync()

    for fn in (plain_epoch, fedmas_local, fedmas_round):
        fn()  # warm-up
    times = defaultdict(list)
    for _ in range(a.repeats):  # interleaved, so drift hits all three alike
        for name, fn in (("plain", plain_epoch), ("local", fedmas_local), ("round", fedmas_round)):
            times[name].append(median_time(fn, 1))
    med = {k: float(np.median(v)) for k, v in times.items()}
    per_batch = {"plain": med["plain"] / n_local, "local": med["local"] / n_local,
                 "round": med["round"] / (n_local * a.clients)}
    ra, rb = per_batch["local"] / per_batch["plain"], per_batch["round"] / per_batch["plain"]
    print(f"{a.encoder} encoder, 5 tasks, {a.resolution}×{a.resolution}, batch {f.batch_size}, {a.clients} clients × "
          f"{n_local} batches, on {dev} ({cfg.threads} CPU threads), median of {a.repeats}")
    print(f"  plain loop            {per_batch['plain'] * 1000:7.1f} ms/batch")
    print(f"  (a) fedmas local      {per_batch['local'] * 1000:7.1f} ms/batch  ratio {ra:.3f}  (target ≤ 1.10)")
    print(f"  (b) fedmas full round {per_batch['round'] * 1000:7.1f} ms/batch  ratio {rb:.3f}  (target ≤ 1.25)")
    name = f"overhead_{a.encoder}" + ("" if dev.type == "cpu" else f"_{dev.type}")
    save(name, {"device": str(dev), "per_batch_s": per_batch, "local_ratio": ra, "round_ratio": rb,
                "clients": a.clients, "batches_per_client": n_local, "repeats": a.repeats})


if __name__ == "__main__":
    main()
