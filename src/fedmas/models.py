"""Multi-task models: a shared encoder plus one head per task, for any subset of tasks.

Encoders: ``small`` (a compact CNN that trains fast on CPU; the default; its heads hold
most of the parameters), ``deep`` (a deeper CNN with light heads: the encoder holds ~90% of a
5-task model's parameters, like the paper's Xception model, and still trains fast on CPU),
``resnet18`` (the layout of the MAS reference implementation's ResNet-18
model — BatchNorm encoder, decoders of up-convolution + 3×3 convolution stages —
for comparisons with the reference's CPU measurements) and ``xception`` (the
Xception-style Taskonomy network of Standley et al., ICML 2020, with
up-convolution decoders; meant for GPU runs at 256×256).
State-dict keys are ``encoder.*`` and ``heads.<task>.*`` so a model for tasks S
can be initialised from a model for tasks T ⊇ S by copying keys
(:func:`build_model` with ``init_from``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedmas.flops import FlopCounter
from fedmas.plugins import PluginError, call_plugin, import_plugin
from fedmas.tasks import get_task


@dataclass(frozen=True)
class ModelSpec:
    encoder: str = "small"  # "small" | "deep" | "resnet18" | "xception" | "python:<module>:<function>"
    width: int = 16  # base channel width of the small CNN
    device: str = "cpu"  # where the models of a ModelCache live (build_model always builds on the CPU)
    network: str | None = None  # "python:<module>:<function>": the user's whole model (encoder + heads)
    probe_size: int = 64  # input size of the probe pass that finds a plugin encoder's channels and stride


def model_spec(cfg: Any, device: str = "cpu") -> ModelSpec:
    """The model a run config (:class:`fedmas.config.Config`) describes: built-in, or the user's encoder or whole
    network, on ``device``."""
    return ModelSpec(cfg.model.encoder, cfg.model.width, device, cfg.model.network, cfg.data.resolution)


def _user_function(ref: str):
    _, module, func = ref.split(":")
    fn = getattr(import_plugin(module), func, None)
    if not callable(fn):
        raise PluginError(f"{ref}: {module} has no function {func!r}")
    return fn


_PROBED: dict[tuple[str, int], tuple[int, int]] = {}


def _probe(ref: str, encoder: nn.Module, size: int) -> tuple[int, int]:
    """A plugin encoder's output channels and stride, from one forward pass on a (2, 3, size, size) input."""
    key = (ref, size)
    if key not in _PROBED:
        was = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                out = call_plugin(encoder, f"model.encoder {ref}: its forward on a (2, 3, {size}, {size}) input",
                                  torch.zeros(2, 3, size, size))
        finally:
            encoder.train(was)
        if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != 2:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise PluginError(f"model.encoder {ref}: must map (B, 3, H, W) to a feature map (B, C, h, w); for a "
                              f"(2, 3, {size}, {size}) input it returned {got}")
        h, w = out.shape[-2:]
        stride = size // h if h else 0
        if h != w or stride < 1 or stride * h != size or stride & (stride - 1):
            raise PluginError(f"model.encoder {ref}: its feature map must be the input size divided by a power of two "
                              f"(1, 2, 4, ...); a {size}×{size} input gave {h}×{w}")
        _PROBED[key] = (int(out.shape[1]), stride)
    return _PROBED[key]


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(c if c < 8 else math.gcd(8, c), c)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _gn(cout), nn.ReLU(inplace=True))


class SmallEncoder(nn.Sequential):
    """Four 3×3 conv stages, three of them stride 2: (3, H, W) → (4w, H/8, W/8)."""

    def __init__(self, width: int):
        w = width
        super().__init__(_conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w, 2))
        self.out_channels, self.stride = 4 * w, 8


class DeepEncoder(nn.Sequential):
    """Four stages of two 3×3 convs (widths w, 2w, 4w, 8w; the first three end at stride 2):
    (3, H, W) → (8w, H/8, W/8). With :class:`LightDecoder` heads it holds ~90% of a 5-task
    model's parameters, like the Xception encoder of the MAS paper (~88%)."""

    def __init__(self, width: int):
        w = width
        super().__init__(_conv(3, w), _conv(w, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
                         _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w), _conv(4 * w, 8 * w, 2), _conv(8 * w, 8 * w))
        self.out_channels, self.stride = 8 * w, 8


class LightDecoder(nn.Sequential):
    """A 1×1 reduction to w channels, then three narrow up-convolutions to input resolution."""

    def __init__(self, cin: int, channels: int, width: int):
        w, h = width, max(2, width // 2)
        super().__init__(nn.Conv2d(cin, w, 1, bias=False), _gn(w), nn.ReLU(inplace=True),
                         *UpDecoder(w, channels, (h, h, h)))


class UpDecoder(nn.Sequential):
    """Up-convolutions back to input resolution, then a 1×1 conv to the task's channels."""

    def __init__(self, cin: int, channels: int, stages: Sequence[int]):
        layers: list[nn.Module] = []
        for cout in stages:
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), _gn(cout), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, channels, 1))
        super().__init__(*layers)


class ImageHead(nn.Sequential):
    """Global average pooling and a linear layer, for image-level tasks."""

    def __init__(self, cin: int, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, channels))


class SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False))


class XceptionBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), SeparableConv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(),
                                  SeparableConv(cout, cout), nn.BatchNorm2d(cout),
                                  nn.MaxPool2d(3, stride, 1) if stride > 1 else nn.Identity())
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride > 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class XceptionEncoder(nn.Sequential):
    """Xception-style Taskonomy encoder (entry flow, middle blocks): (3, H, W) → (512, H/16, W/16)."""

    def __init__(self, middle: int = 4):
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                   XceptionBlock(64, 128, 2), XceptionBlock(128, 256, 2), XceptionBlock(256, 512, 2)]
        layers += [XceptionBlock(512, 512, 1) for _ in range(middle)]
        super().__init__(*layers)
        self.out_channels, self.stride = 512, 16


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride > 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18Encoder(nn.Sequential):
    """ResNet-18 layout (stem + 4×2 basic blocks, 64→512 channels, BatchNorm): (3, H, W) → (512, H/32, W/32)."""

    def __init__(self):
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        super().__init__(*layers)
        self.out_channels, self.stride = 512, 32


class ResNetDecoder(nn.Sequential):
    """The reference's ResNet-18 decoder: per stage a 2×2 up-convolution and a 3×3 convolution
    (each with BatchNorm and ReLU); the last stage's 3×3 convolution gives the task's channels."""

    def __init__(self, cin: int, channels: int, stages: Sequence[int] = (256, 128, 64, 48, 32)):
        layers: list[nn.Module] = []
        for k, cout in enumerate(stages):
            layers += [nn.ConvTranspose2d(cin, cout, 2, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if k < len(stages) - 1:
                layers += [nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, channels, 3, padding=1))
        super().__init__(*layers)


ENCODERS = ("small", "deep", "resnet18", "xception")


def _encoder(spec: ModelSpec) -> nn.Module:
    if spec.encoder.startswith("python:"):
        enc = call_plugin(_user_function(spec.encoder), f"model.encoder {spec.encoder}()")
        if not isinstance(enc, nn.Module):
            raise PluginError(f"model.encoder {spec.encoder}() must return a torch.nn.Module, got {type(enc).__name__}")
        enc.out_channels, enc.stride = _probe(spec.encoder, enc, spec.probe_size)  # type: ignore[assignment]
        return enc
    if spec.encoder == "small":
        return SmallEncoder(spec.width)
    if spec.encoder == "deep":
        return DeepEncoder(spec.width)
    if spec.encoder == "resnet18":
        return ResNet18Encoder()
    if spec.encoder == "xception":
        return XceptionEncoder()
    raise ValueError(f"unknown encoder {spec.encoder!r}; accepted: {', '.join(ENCODERS)}")


def _head(spec: ModelSpec, encoder: nn.Module, task: str) -> nn.Module:
    t = get_task(task)
    cin = encoder.out_channels  # type: ignore[attr-defined]
    if not t.dense:
        return ImageHead(cin, t.channels)
    if spec.encoder == "small":
        w = spec.width
        return UpDecoder(cin, t.channels, (2 * w, w, w))
    if spec.encoder == "deep":
        return LightDecoder(cin, t.channels, spec.width)
    if spec.encoder == "resnet18":
        return ResNetDecoder(cin, t.channels)
    if spec.encoder.startswith("python:"):  # one up-convolution per factor 2 of the stride, halving the width
        ups = int(math.log2(encoder.stride))  # type: ignore[attr-defined]
        return UpDecoder(cin, t.channels, tuple(max(16, min(256, cin) >> (k + 1)) for k in range(ups)))
    return UpDecoder(cin, t.channels, (256, 128, 64, 32))


class MultiTaskModel(nn.Module):
    def __init__(self, tasks: Sequence[str], spec: ModelSpec = ModelSpec()):
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        self.tasks = tuple(tasks)
        self.spec = spec
        if spec.network:
            self.encoder, heads = _network(spec.network, self.tasks)
            self.heads = nn.ModuleDict({t: heads[t] for t in self.tasks})
        else:
            self.encoder = _encoder(spec)
            self.heads = nn.ModuleDict({t: _head(spec, self.encoder, t) for t in self.tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.encoder(x)
        return {t: self.heads[t](feats) for t in self.tasks}


def _network(ref: str, tasks: tuple[str, ...]) -> tuple[nn.Module, Mapping[str, nn.Module]]:
    """The user's whole model for ``tasks``: ``fn(tasks)`` returns a module with ``encoder`` and ``heads``
    (one module per task, keyed by task name), or the pair ``(encoder, heads)``."""
    got = call_plugin(_user_function(ref), f"model.network {ref}({list(tasks)})", list(tasks))
    enc, heads = (got.encoder, got.heads) if isinstance(got, nn.Module) and hasattr(got, "encoder") \
        and hasattr(got, "heads") else (got if isinstance(got, tuple) and len(got) == 2 else (None, None))
    if not isinstance(enc, nn.Module) or not isinstance(heads, Mapping | nn.ModuleDict):
        raise PluginError(f"model.network {ref}(tasks) must return a module with .encoder and .heads (one module "
                          f"per task) or a pair (encoder, heads); got {type(got).__name__}")
    missing = [t for t in tasks if t not in heads or not isinstance(heads[t], nn.Module)]
    if missing:
        raise PluginError(f"model.network {ref}(tasks): no head module for {missing}")
    return enc, heads


def check_model(spec: ModelSpec, tasks: Sequence[str], size: int | None = None) -> None:
    """Before a run folder exists: the model a spec describes builds and maps a (2, 3, size, size) input to each
    task's target shape; :class:`PluginError` (a ValueError) with one message naming what does not fit."""
    size = size or spec.probe_size
    what = spec.network or spec.encoder
    try:
        model = MultiTaskModel(tasks, spec)
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's modules failed to assemble
        raise PluginError(f"model {what}: building the model for {list(tasks)} raised "
                          f"{type(e).__name__}: {e}") from None
    model.eval()
    with torch.no_grad():
        x = torch.zeros(2, 3, size, size)
        users = bool(spec.network) or str(spec.encoder).startswith("python:")  # built-in models need no guard
        out = call_plugin(model, f"model {what}: its forward on a (2, 3, {size}, {size}) input", x) if users \
            else model(x)
    for t in tasks:
        want = (2, *get_task(t).target_shape((size, size)))
        if get_task(t).integer_target:  # class scores: (B, classes, ...) for a target of class ids
            want = (2, get_task(t).channels, *want[1:])
        got = tuple(out[t].shape) if isinstance(out, dict) and isinstance(out.get(t), Tensor) else None
        if got != want:
            raise PluginError(f"model {what}: task {t!r} needs an output of shape {want} for a (2, 3, {size}, {size}) "
                              f"input; the model gives {got}")


def build_model(tasks: Sequence[str], spec: ModelSpec = ModelSpec(),
                init_from: Mapping[str, Tensor] | None = None, seed: int | None = None,
                fresh: Sequence[str] = ()) -> MultiTaskModel:
    """A model for ``tasks``; with ``init_from`` (the state dict of a model whose tasks
    include these), the encoder and these tasks' heads are copied from it, except the heads of
    ``fresh`` (tasks new to that model), which keep their seeded initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    model = MultiTaskModel(tasks, spec)
    if init_from is not None:
        copied = subset_state(init_from, [t for t in tasks if t not in fresh])
        missing, unexpected = model.load_state_dict(copied, strict=False)
        left = [k for k in missing if not k.startswith(tuple(f"heads.{t}." for t in fresh))]
        if left or unexpected:
            raise KeyError(f"the source model does not fit: missing {left[:3]}, unexpected {unexpected[:3]}")
    return model


def subset_state(state: Mapping[str, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
    """The encoder and ``tasks``' heads of a multi-task state dict (copies)."""
    missing = [t for t in tasks if not any(k.startswith(f"heads.{t}.") for k in state)]
    if missing:
        raise KeyError(f"the source model has no head for {missing}")
    keep = ("encoder.",) + tuple(f"heads.{t}." for t in tasks)
    return {k: v.clone() for k, v in state.items() if k.startswith(keep)}


class ModelCache:
    """One model instance per task tuple, reused across rounds (weights are loaded each time)."""

    def __init__(self, spec: ModelSpec, flops: FlopCounter | None = None):
        self.spec = spec
        self._models: dict[tuple[str, ...], MultiTaskModel] = {}
        self.flops = flops if flops is not None else FlopCounter()  # FLOPs per kind of batch, counted once

    def get(self, tasks: tuple[str, ...]) -> MultiTaskModel:
        if tasks not in self._models:
            self._models[tasks] = MultiTaskModel(tasks, self.spec).to(self.spec.device)
        return self._models[tasks]


def encoder_share(tasks: Sequence[str], spec: ModelSpec) -> float:
    """The shared encoder's fraction of the parameters of a model over ``tasks``."""
    m = build_model(tasks, spec)
    return sum(p.numel() for p in m.encoder.parameters()) / sum(p.numel() for p in m.parameters())
