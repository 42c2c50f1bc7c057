"""Client-side affinity equals a deliberately simple computation of the definition."""

from __future__ import annotations

import pytest
import torch

from fedmas.client import LocalConfig, train_local
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.scenes import SceneSpec, render_building
from fedmas.models import ModelSpec, build_model
from fedmas.testing import naive_train_with_affinity

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "edge_texture")


def _data() -> MultiTaskArrays:
    raw = render_building(SceneSpec(train_images=12, resolution=32, views_per_room=4), 0, "train")
    return MultiTaskArrays.from_raw(raw, TASKS)


class _Float64:
    """The same data in float64."""

    def __init__(self, ds: MultiTaskArrays):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, idx):
        x, t, m = self.ds.batch(idx)
        return x.double(), {k: v.double() if v.is_floating_point() else v for k, v in t.items()}, m


@pytest.mark.parametrize("spec", [ModelSpec(width=8), ModelSpec(encoder="resnet18")], ids=["small", "resnet18"])
def test_affinity_matches_naive_definition_with_momentum(spec: ModelSpec):
    """Also with BatchNorm in encoder and heads (resnet18), in float64: a freshly initialised
    BatchNorm network trained on batches of 4 is so sensitive that float32 rounding alone
    (the per-task gradients summed in another order; even 1 vs 2 threads) moves its weights
    by ~0.1 within three steps, which would hide a real difference."""
    torch.manual_seed(0)
    data = _data()
    bn = spec.encoder == "resnet18"
    ds = _Float64(data) if bn else data
    dtype = torch.float64 if bn else torch.float32
    model = build_model(TASKS, spec, seed=3).to(dtype)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    # 3 batches, a lookahead on every batch: batches 2 and 3 see a non-zero momentum buffer
    cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11)
    fast = train_local(model, w0, ds, cfg)
    slow_w, slow_z = naive_train_with_affinity(build_model(TASKS, spec).to(dtype), w0, ds, cfg)
    assert fast.metrics["lookahead_batches"] == 3
    assert fast.affinity is not None and slow_z is not None
    torch.testing.assert_close(fast.affinity, slow_z, rtol=1e-3, atol=2e-5)
    assert (fast.affinity != 0).all()
    # the lookahead never disturbed the real training: same weights (and running statistics) as plain training
    plain = train_local(model, w0, ds, LocalConfig(**{**cfg.__dict__, "lookahead_step": 0}))
    for k in slow_w:
        torch.testing.assert_close(fast.weights[k], slow_w[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast.weights[k], plain.weights[k], rtol=1e-4, atol=1e-5)


def test_momentum_changes_the_affinity():
    """Guard against ignoring the momentum buffer (a defect of the reference)."""
    data = _data()
    model = build_model(TASKS, ModelSpec(width=8), seed=3)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    with_m = train_local(model, w0, data, LocalConfig(lr=0.05, momentum=0.9, batch_size=4, lookahead_step=1))
    no_m = train_local(model, w0, data, LocalConfig(lr=0.05, momentum=0.0, batch_size=4, lookahead_step=1))
    assert not torch.allclose(with_m.affinity, no_m.affinity, atol=1e-5)


def test_affinity_keeps_negative_values_and_is_off_when_not_asked():
    data = _data()
    model = build_model(TASKS, ModelSpec(width=8), seed=5)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_local(model, w0, data, LocalConfig(lr=0.3, batch_size=4, lookahead_step=1))
    assert res.affinity.min() < 0 < res.affinity.max()
    off = train_local(model, w0, data, LocalConfig(lr=0.3, batch_size=4, lookahead_step=0))
    assert off.affinity is None and off.metrics["lookahead_batches"] == 0
