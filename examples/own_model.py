"""Your own model in fedmas: an encoder of yours with fedmas's heads, or your whole network.

Run it:  .venv/bin/python examples/own_model.py  [--encoder vit|bn_cnn|mlp | --network] [--rounds N] [--out DIR]

1. **Your encoder.** ``model.encoder: "python:<module>:<function>"``: the function returns a
   ``torch.nn.Module`` mapping images (B, 3, H, W) to a feature map (B, C, H/s, W/s) with s a power of two.
   fedmas finds C and s with one forward pass (at ``data.resolution``) and adds its own head per task: one
   up-convolution per factor 2 of s, then a 1×1 convolution to the task's channels (a pooled linear layer for
   image-level tasks).
2. **Your whole network.** ``model.network: "python:<module>:<function>"``: ``function(tasks)`` returns a
   module with ``.encoder`` (shared by all tasks) and ``.heads`` (one module per task name, each mapping the
   encoder's output to that task's prediction), or the pair ``(encoder, heads)``. fedmas keys the weights
   ``encoder.*`` and ``heads.<task>.*``: a group's model after the split takes the merged model's encoder and
   its tasks' heads, so a head must not depend on which other tasks are in the model.

What does not fit (a wrong output shape, a missing head, a stride that is not a power of two) is refused
before the run folder exists, in one message. The affinity lookahead works for any encoder (BatchNorm,
LayerNorm, attention, plain MLPs): it evaluates the encoder with per-task parameters by
``torch.func.functional_call``; tests/test_own_model.py checks it against the naive definition for the
three encoders below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def bn_cnn() -> nn.Module:
    """A small CNN with BatchNorm, stride 4."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())


class TinyViT(nn.Module):
    """Patches of 4×4 pixels → tokens → one pre-norm transformer block (LayerNorm, multi-head attention, MLP)
    → back to a feature map (B, dim, H/4, W/4). A depthwise convolution gives the tokens their position."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        f = f + self.pos(f)
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)  # (B, h·w, C)
        q = self.norm1(t)
        t = t + self.attn(q, q, q, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


def vit() -> nn.Module:
    return TinyViT()


class PatchMLP(nn.Module):
    """An MLP on each 4×4 patch's pixels (no convolution): (B, 3, H, W) → (B, 32, H/4, W/4)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.pixel_unshuffle(x, 4)  # (B, 48, H/4, W/4)
        return self.mlp(p.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def mlp() -> nn.Module:
    return PatchMLP()


class Network(nn.Module):
    """A whole network of the user's: a shared encoder and one head per task (bilinear upsampling heads)."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        from fedmas.tasks import get_task

        self.encoder = bn_cnn()
        self.heads = nn.ModuleDict()
        for t in tasks:
            task = get_task(t)
            if task.dense:
                self.heads[t] = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, task.channels, 1),
                                              nn.Upsample(scale_factor=4, mode="bilinear"))
            else:
                self.heads[t] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, task.channels))


def network(tasks: list[str]) -> nn.Module:
    return Network(tasks)


def main() -> int:
    ap = argparse.ArgumentParser(description="MAS with your own encoder or your own whole network")
    ap.add_argument("--encoder", default="vit", choices=["vit", "bn_cnn", "mlp"])
    ap.add_argument("--network", action="store_true", help="use the whole network of this file instead")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="runs/own-model")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # so that "own_model" is importable by name
    from fedmas.cli import main as fedmas

    model = "model.network=python:own_model:network" if a.network else f"model.encoder=python:own_model:{a.encoder}"
    args = ["run", str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"), "--out", a.out,
            "--set", model, "--set", f"federation.rounds={a.rounds}", "--set", "plugins=[own_model]"]
    return fedmas(args + (["--force"] if a.force else []))


if __name__ == "__main__":
    sys.exit(main())
