"""Client-side affinity equals a deliberately simple computation of the definition."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedmas import affinity
from fedmas.client import LocalConfig, train_local
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.scenes import SceneSpec, render_building
from fedmas.models import ModelSpec, build_model
from fedmas.tasks import get_task
from fedmas.testing import Float64, naive_train_with_affinity

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "edge_texture")


def _data() -> MultiTaskArrays:
    raw = render_building(SceneSpec(train_images=12, resolution=32, views_per_room=4), 0, "train")
    return MultiTaskArrays.from_raw(raw, TASKS)


@pytest.mark.parametrize("spec,scale", [(ModelSpec(width=8), 1.0), (ModelSpec(width=8), 3 ** -0.5),
                                        (ModelSpec(encoder="resnet18"), 3 ** -0.5)],
                         ids=["small", "small-inv-sqrt-n", "resnet18-inv-sqrt-n"])
def test_affinity_matches_naive_definition_with_momentum(spec: ModelSpec, scale: float):
    """Also with BatchNorm in encoder and heads (resnet18), in float64: a freshly initialised
    BatchNorm network trained on batches of 4 is so sensitive that float32 rounding alone
    (the per-task gradients summed in another order; even 1 vs 2 threads) moves its weights
    by ~0.1 within three steps, which would hide a real difference."""
    torch.manual_seed(0)
    data = _data()
    bn = spec.encoder == "resnet18"
    ds = Float64(data) if bn else data
    dtype = torch.float64 if bn else torch.float32
    model = build_model(TASKS, spec, seed=3).to(dtype)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    # 3 batches, a lookahead on every batch: batches 2 and 3 see a non-zero momentum buffer
    cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11,
                      encoder_grad_scale=scale)
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


def _spy_gram(monkeypatch) -> list[list[nn.Module]]:
    """Records, per lookahead batch, the convolutions that took the Gram route."""
    seen: list[list[nn.Module]] = []
    settle = affinity.Lookahead.settle

    def spy(self):
        out = settle(self)
        seen.append([g.module for g in self.gram])
        return out

    monkeypatch.setattr(affinity.Lookahead, "settle", spy)
    return seen


def test_gram_route_is_exact_and_skips_outputs_modified_in_place(monkeypatch):
    """Deep convolutions on small maps take the Gram route (bias included); one whose output
    a ReLU(inplace=True) overwrites, and the cheap ones, keep per-task weight gradients."""
    torch.manual_seed(0)
    data = _data()
    model = build_model(TASKS, ModelSpec(width=8), seed=3)
    gram_conv = nn.Conv2d(64, 256, 3, 2, 1)  # 32×32 input, batch 4: 64 output positions, 576·256 weights
    inplace_conv = nn.Conv2d(256, 256, 3, 1, 1)  # would pay too, but its output is overwritten in place
    model.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, 64, 3, 2, 1),
                                  nn.ReLU(), gram_conv, nn.ReLU(), inplace_conv, nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 32, 1))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _spy_gram(monkeypatch)
    cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11)
    fast = train_local(model, w0, data, cfg)
    assert seen == [[gram_conv]] * 3
    naive = copy.deepcopy(model)
    slow_w, slow_z = naive_train_with_affinity(naive, w0, data, cfg)
    torch.testing.assert_close(fast.affinity, slow_z, rtol=1e-3, atol=2e-5)
    for k in slow_w:
        torch.testing.assert_close(fast.weights[k], slow_w[k], rtol=1e-4, atol=1e-5)


def test_gram_route_on_resnet18_takes_the_deepest_stage(monkeypatch):
    """The benchmark's setting (64×64, batch 16): layer4's convolutions (2×2 maps, the last two
    blocks) take the Gram route, the shallower ones do not; with GradNorm the last block, whose
    per-task gradient norms GradNorm needs, keeps its weight gradients."""
    raw = render_building(SceneSpec(train_images=16, resolution=64, views_per_room=4), 0, "train")
    data = MultiTaskArrays.from_raw(raw, TASKS)
    model = build_model(TASKS, ModelSpec(encoder="resnet18"), seed=0)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _spy_gram(monkeypatch)
    train_local(model, w0, data, LocalConfig(batch_size=16, lookahead_step=1))

    def convs(*blocks: nn.Module) -> set[nn.Module]:
        return {m for b in blocks for m in b.modules() if isinstance(m, nn.Conv2d)}

    assert len(seen) == 1 and set(seen[0]) == convs(model.encoder[-2], model.encoder[-1])
    seen.clear()
    train_local(model, w0, data, LocalConfig(batch_size=16, lookahead_step=1, weighting="gradnorm",
                                                   weighting_args='{"alpha": 1.5, "lr": 0.025}'))
    assert len(seen) == 1 and set(seen[0]) == convs(model.encoder[-2])


def test_encoder_gradient_scale_against_a_hand_computation():
    """One SGD step (no momentum, no decay) with 1/√n: encoder −= lr·(1/√n)·Σ_i ∇L_i, heads −= lr·∇L_t."""
    torch.manual_seed(0)
    data = _data()
    model = build_model(TASKS, ModelSpec(width=8), seed=3)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    n, lr = len(TASKS), 0.5
    cfg = LocalConfig(lr=lr, momentum=0.0, weight_decay=0.0, batch_size=len(data), seed=1,
                      encoder_grad_scale=n ** -0.5)
    got = train_local(model, w0, data, cfg).weights
    hand = build_model(TASKS, ModelSpec(width=8))
    hand.load_state_dict(w0)
    x, targets, masks = data.batch(torch.arange(len(data)))
    preds = hand(x)
    total = sum(get_task(t).loss(preds[t], targets[t], masks.get(t)) for t in TASKS)
    names = [k for k, _ in hand.named_parameters()]
    grads = torch.autograd.grad(total, [p for _, p in hand.named_parameters()])
    for k, g in zip(names, grads):
        scale = n ** -0.5 if k.startswith("encoder.") else 1.0
        torch.testing.assert_close(got[k], w0[k] - lr * scale * g, rtol=1e-5, atol=1e-6)
    unscaled = train_local(model, w0, data, LocalConfig(**{**cfg.__dict__, "encoder_grad_scale": 1.0})).weights
    enc = next(k for k in names if k.startswith("encoder."))
    assert not torch.allclose(unscaled[enc], got[enc])


def test_bf16_lookahead_follows_the_bf16_step():
    """precision bf16: the lookahead runs under the same autocast as the real step; it matches the naive
    definition at that precision within bfloat16's rounding (measured: 1.5e-4 on |Z| ≤ 7.5e-3, against
    1.2e-7 in float32), and the messages of a float32 run do not change (the key is left out at its default)."""
    from fedmas.messages import LocalConfig as LC

    data = _data()
    model = build_model(TASKS, ModelSpec(width=8), seed=3)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11,
                      precision="bf16")
    fast = train_local(model, w0, data, cfg)
    _, slow = naive_train_with_affinity(build_model(TASKS, ModelSpec(width=8)), w0, data, cfg)
    torch.testing.assert_close(fast.affinity, slow, rtol=0.05, atol=5e-4)
    fp32 = train_local(model, w0, data, LocalConfig(**{**cfg.__dict__, "precision": "fp32"}))
    assert not torch.equal(fast.affinity, fp32.affinity)  # bf16 really ran
    assert "precision" not in LC().to_dict() and LC.from_dict(LC().to_dict()) == LC()
    assert LC.from_dict(cfg.to_dict()).precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        LC.from_dict({**cfg.to_dict(), "precision": "fp8"})
