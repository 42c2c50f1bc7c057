"""The GPU check: run it when a GPU is at hand (``benchmarks/gpu_check.sh``); ``--device cpu --quick`` tries
every step on the CPU paths.

1. The quick start on the device and on the CPU: the same groups? (total test loss of both)
2. The affinity lookahead on the device against the naive definition (float64), for a built-in encoder and
   three user encoders (BatchNorm CNN, tiny ViT, patch MLP from examples/own_model.py).
3. fedmas's local training and whole round ÷ a plain PyTorch loop on the same device (benchmarks/overhead.py).
4. The paper-scale configuration (xception encoder, 256×256, 5 tasks): seconds per round and peak memory.

Writes benchmarks/results/gpu_check.json and a short gpu_check.txt (``--out-dir`` elsewhere), and prints the latter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))
from _common import machine  # noqa: E402

from fedmas.client import LocalConfig, train_local  # noqa: E402
from fedmas.config import Config, load_config  # noqa: E402
from fedmas.data.federated import MultiTaskArrays  # noqa: E402
from fedmas.data.scenes import SceneSpec, render_building  # noqa: E402
from fedmas.models import ModelSpec, build_model  # noqa: E402
from fedmas.run import execute  # noqa: E402
from fedmas.runtime import resolve_device  # noqa: E402
from fedmas.testing import Float64, naive_train_with_affinity  # noqa: E402


def quickstart(device: str, quick: bool, tmp: Path) -> dict:
    over = ["federation.rounds=6"] if quick else []
    procs = {}
    for dev in dict.fromkeys([device, "cpu"]):  # both at once: the CPU run on the host's cores
        out = tmp / f"quickstart-{dev.replace(':', '')}"
        args = [sys.executable, "-m", "fedmas.cli", "run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out),
                "--quiet", "--set", f"device={dev}"] + sum((["--set", o] for o in over), [])
        procs[dev] = (subprocess.Popen(args), out, time.perf_counter())
    res = {}
    for dev, (p, out, t0) in procs.items():
        rc = p.wait()
        s = json.loads((out / "summary.json").read_text()) if rc == 0 else {}
        res[dev] = {"rc": rc, "groups": s.get("groups"), "total_test_loss": s.get("total_test_loss"),
                    "mean_skill": s.get("mean_skill"), "wall_s": round(time.perf_counter() - t0, 1)}
    res["same_groups"] = res[device]["groups"] == res["cpu"]["groups"]
    return res


def exactness(device: str) -> dict:
    tasks = ("segment_semantic", "depth_zbuffer", "normal")
    raw = render_building(SceneSpec(train_images=12, resolution=32, views_per_room=4), 0, "train")
    ds = MultiTaskArrays.from_raw(raw, tasks)

    out = {}
    for enc in ("small", "python:own_model:bn_cnn", "python:own_model:vit", "python:own_model:mlp"):
        spec = ModelSpec(encoder=enc, width=8, probe_size=32)
        model = build_model(tasks, spec, seed=3).double().to(device)
        w0 = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11,
                          encoder_grad_scale=3 ** -0.5)
        fast = train_local(model, w0, Float64(ds), cfg)
        _, slow = naive_train_with_affinity(build_model(tasks, spec).double().to(device), w0, Float64(ds), cfg)
        err = float((fast.affinity - slow).abs().max())
        out[enc] = {"max_abs_diff": err, "exact": bool(torch.allclose(fast.affinity, slow, rtol=1e-6, atol=1e-9))}
    return out


def overhead(device: str, quick: bool) -> dict:
    args = [sys.executable, str(HERE / "overhead.py"), "--device", device, "--repeats", "2" if quick else "5"]
    p = subprocess.run(args, capture_output=True, text=True)
    print(p.stdout, p.stderr, file=sys.stderr)
    name = "overhead_small" + ("" if device == "cpu" else "_cuda")
    doc = json.loads((HERE / "results" / f"{name}.json").read_text()) if p.returncode == 0 else {}
    return {"rc": p.returncode, "local_ratio": doc.get("local_ratio"), "round_ratio": doc.get("round_ratio")}


def paper_scale(device: str, quick: bool, tmp: Path) -> dict:
    res = 64 if quick else 256
    cfg = load_config(None, [f"device={device}", "method=all-in-one", "tasks=sdnkt", "model.encoder=xception",
                             f"data.resolution={res}", "data.buildings=2", "data.train_images=32",
                             "data.test_images=8", "federation.rounds=2", "federation.clients_per_round=2",
                             "federation.batch_size=32", "federation.local_epochs=1"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    s = execute(cfg, tmp / "paper-scale", progress=False)
    wall = time.perf_counter() - t0
    rounds = [json.loads(x)["round_s"] for x in (tmp / "paper-scale" / "metrics.jsonl").read_text().splitlines()]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"resolution": res, "seconds_per_round": rounds, "run_s": round(wall, 1), "peak_gib": peak,
            "train_tflop": s["costs"]["train_flop"] / 1e12 if s else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (to try the script on the CPU)")
    ap.add_argument("--only", default="quickstart,exactness,overhead,paper_scale")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results",
                    help="where gpu_check[_quick_cpu].json and .txt go (default benchmarks/results)")
    a = ap.parse_args()
    device = resolve_device(a.device)
    Config.model_validate({"device": a.device})
    tmp = Path(tempfile.mkdtemp(prefix="fedmas-gpu-check-"))
    doc: dict = {"device": device, "name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                 "date": time.strftime("%Y-%m-%d"), "quick": a.quick}
    steps = a.only.split(",")
    for name in steps:
        t0 = time.perf_counter()
        if name == "quickstart":
            doc[name] = quickstart(device, a.quick, tmp)
        elif name == "exactness":
            doc[name] = exactness(device)
        elif name == "overhead":
            doc[name] = overhead(device, a.quick)
        elif name == "paper_scale":
            doc[name] = paper_scale(device, a.quick, tmp)
        doc.setdefault("step_s", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {name}: {json.dumps(doc[name])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if os.environ.get("FEDMAS_SETUP_S"):  # gpu_check.sh's setup, timed by the shell
        doc["setup_s"] = float(os.environ["FEDMAS_SETUP_S"])
    doc["torch"], doc["python"], doc["machine"] = torch.__version__, sys.version.split()[0], machine()
    stem = "gpu_check" + ("_quick_cpu" if a.quick and device == "cpu" else "")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (a.out_dir / f"{stem}.txt").write_text(summary_text(doc))
    print(summary_text(doc))
    return 0


def summary_text(doc: dict) -> str:
    """The check's figures in a few lines (the JSON holds every number)."""
    lines = [f"GPU check on {doc['name']} ({doc['device']}), torch {doc.get('torch')}, Python {doc.get('python')}, "
             f"{doc['date']}{' (quick sizes)' if doc.get('quick') else ''}"]
    if "setup_s" in doc:
        lines.append(f"setup: {doc['setup_s']:.0f} s")
    q = doc.get("quickstart")
    if q:
        lines.append("quick start: " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in q.items()))
    e = doc.get("exactness")
    if e:
        lines.append("lookahead vs the naive definition (float64), largest difference: " + json.dumps(e))
    o = doc.get("overhead")
    if o:
        lines.append("overhead vs a plain PyTorch loop: " + json.dumps(o))
    p = doc.get("paper_scale")
    if p:
        per = p.get("seconds_per_round") or []
        lines.append(f"paper scale ({p.get('resolution')}×{p.get('resolution')}): seconds per round "
                     f"{', '.join(f'{x:.1f}' for x in per)}; peak GPU memory "
                     + (f"{p['peak_gib']:.2f} GiB" if p.get("peak_gib") is not None else "n/a (CPU)"))
    lines.append("step seconds: " + json.dumps(doc.get("step_s", {})))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
