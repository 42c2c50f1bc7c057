"""PCGrad and FAMO against hand computations, and through local training (on lookahead batches too)."""

from __future__ import annotations

import math

import pytest
import torch

from fedmas import weighting
from fedmas.client import LocalConfig, train_local
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.scenes import SceneSpec, render_building
from fedmas.models import ModelSpec, build_model
from fedmas.weighting.famo import FAMO, logit_gradient
from fedmas.weighting.pcgrad import project


@pytest.fixture(scope="module")
def tiny_model_and_data():
    tasks = ("segment_semantic", "depth_zbuffer", "normal")
    data = MultiTaskArrays.from_raw(render_building(SceneSpec(train_images=8, resolution=32, views_per_room=4), 0,
                                                    "train"), tasks)
    model = build_model(tasks, ModelSpec(width=8), seed=3)
    return model, {k: v.clone() for k, v in model.state_dict().items()}, data


def test_pcgrad_projects_two_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = −1 < 0: they conflict
    out = project([(g1,), (g2,)], [[0, 1], [1, 0]])
    # by hand: g1' = g1 − (−1/2)·g2 = (0.5, 0.5); g2' = g2 − (−1/1)·g1 = (0, 1); sum (0.5, 1.5)
    assert out[0].tolist() == pytest.approx([0.5, 1.5])
    assert torch.equal(g1, torch.tensor([1.0, 0.0])) and torch.equal(g2, torch.tensor([-1.0, 1.0]))  # inputs kept


def test_pcgrad_leaves_agreeing_gradients_and_handles_missing_parts():
    g1, g2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])  # g1·g2 = 5 > 0: plain sum
    assert project([(g1, None), (g2, None)], [[1], [0]])[0].tolist() == [4.0, 3.0]
    a, b = (torch.tensor([1.0]), None), (torch.tensor([-2.0]), torch.tensor([1.0]))
    # a·b = −2 with ‖b‖² = 5: a' = a + (2/5)·b = (1 − 0.8, 0.4); b' = b − (−2/1)·a = (0, 1): sum (0.2, 1.4)
    out = project([a, b], [[1], [0]])
    assert out[0].tolist() == pytest.approx([0.2]) and out[1].tolist() == pytest.approx([1.4])


def test_famo_logit_update_on_two_tasks_by_hand():
    f = FAMO(2, {"lr": 0.025, "decay": 0.0}, {}, torch.device("cpu"))
    assert f.w.tolist() == [1.0, 1.0]
    f.after_step(torch.tensor([1.0, 4.0]), torch.ones(2))  # the first batch: remembered only
    assert f.logits.tolist() == [0.0, 0.0]
    f.after_step(torch.tensor([0.5, 3.0]), torch.ones(2))
    # δ = (log 1 − log 0.5, log 4 − log 3) = (0.6931, 0.2877); z = (½, ½); Jᵀδ = ¼·(δ1 − δ2)·(1, −1)
    d = 0.25 * (math.log(2) - math.log(4 / 3))
    assert logit_gradient(torch.zeros(2), torch.tensor([1.0, 4.0]), torch.tensor([0.5, 3.0])).tolist() == \
        pytest.approx([d, -d], abs=1e-6)
    # Adam's first step moves each logit by lr·sign(gradient): the task that fell faster gets less weight
    assert f.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)


def test_famo_step_weights_are_z_over_c_times_loss():
    f = FAMO(2, {}, {"famo.logits": torch.tensor([0.0, math.log(3.0)])}, torch.device("cpu"))  # z = (¼, ¾)
    x = torch.tensor([1.0, 1.0], requires_grad=True)
    losses = [x[0] * 2.0, x[1] * 0.5]  # L = (2, 0.5)
    shared = [x]
    grads = weighting.TaskGrads(losses, shared, [[], []], lambda g: setattr(x, "grad", g[0]))
    f.backward(grads)
    # z/L = (1/8, 3/2), c = 13/8: weights (1/13, 12/13); ∇ = (2/13, 0.5·12/13)
    assert x.grad.tolist() == pytest.approx([2 / 13, 6 / 13])


@pytest.mark.parametrize("name", ["pcgrad", "famo"])
@pytest.mark.parametrize("lookahead", [0, 2])
def test_local_training_runs_each_weighting(name, lookahead, tiny_model_and_data):
    model, weights, data = tiny_model_and_data
    cfg = LocalConfig(tasks=",".join(model.tasks), lr=0.05, batch_size=4, local_epochs=1, weighting=name,
                      weighting_args=weighting.encode_args(weighting.get(name).local_args(None)),
                      lookahead_step=lookahead)
    res = train_local(model, weights, data, cfg, weighting.get(name).initial_state(len(model.tasks)))
    assert all(torch.isfinite(v).all() for v in res.weights.values() if v.is_floating_point())
    assert any(not torch.equal(res.weights[k], weights[k]) for k in weights)
    assert (res.affinity is not None) == bool(lookahead)
    if name == "famo":
        assert not torch.equal(res.state["famo.logits"], torch.zeros(len(model.tasks)))


def test_pcgrad_on_a_lookahead_batch_equals_pcgrad_on_an_ordinary_one(tiny_model_and_data):
    """The per-task gradients the lookahead computes (all kept whole for PCGrad) give the same step."""
    model, weights, data = tiny_model_and_data
    out = []
    for step in (0, 1):
        cfg = LocalConfig(tasks=",".join(model.tasks), lr=0.05, batch_size=4, local_epochs=1, weighting="pcgrad",
                          weighting_args='{"seed": 0}', lookahead_step=step)
        out.append(train_local(model, weights, data, cfg).weights)
    for k in out[0]:
        assert torch.allclose(out[0][k].float(), out[1][k].float(), rtol=1e-4, atol=1e-6), k


def test_the_cosine_signal_a_client_reports_is_the_cosine_of_the_tasks_encoder_gradients(tiny_model_and_data):
    """One lookahead batch holding every sample: the client's cosine matrix against a hand computation of each
    task's encoder gradient at the starting weights (autograd on a copy), whatever the samples' order."""
    import copy

    from fedmas.data.federated import batches
    from fedmas.tasks import task_losses

    model, weights, data = tiny_model_and_data
    n = len(data)
    cfg = LocalConfig(tasks=",".join(model.tasks), lr=0.05, batch_size=n, local_epochs=1, lookahead_step=1,
                      signals="lookahead,cosine")
    res = train_local(model, weights, data, cfg)
    got = res.signals["cosine"]
    ref = copy.deepcopy(model)
    ref.load_state_dict(weights)
    ref.train()
    x, targets, masks = next(batches(data, n, shuffle=False))
    losses = task_losses(ref.heads, ref.tasks, ref.encoder(x), targets, masks)
    enc = list(ref.encoder.parameters())
    g = [torch.cat([gi.flatten() for gi in torch.autograd.grad(li, enc, retain_graph=True)]) for li in losses]
    want = torch.stack([torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for b in g]) for a in g])
    assert torch.allclose(got, want, atol=2e-4), (got, want)
    assert res.affinity is not None and res.affinity.shape == (3, 3)  # the reference's lookahead beside it
