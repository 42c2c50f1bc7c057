"""Models for task subsets, initialisation from a larger model, task losses and metrics."""

from __future__ import annotations

import numpy as np
import torch

from fedmas.models import ModelSpec, build_model, subset_state
from fedmas.tasks import get_task, masked_l1


def test_subset_model_from_larger_copies_encoder_and_heads():
    big = build_model(["segment_semantic", "depth_zbuffer", "normal"], ModelSpec(width=8), seed=1)
    small = build_model(["normal", "depth_zbuffer"], ModelSpec(width=8), init_from=big.state_dict(), seed=2)
    bs, ss = big.state_dict(), small.state_dict()
    assert set(ss) == {k for k in bs if not k.startswith("heads.segment_semantic.")}
    for k, v in ss.items():
        torch.testing.assert_close(v, bs[k])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = big(x), small(x)
    torch.testing.assert_close(a["normal"], b["normal"])
    assert b["depth_zbuffer"].shape == (2, 1, 32, 32)


def test_init_from_model_without_the_head_fails():
    big = build_model(["depth_zbuffer"], ModelSpec(width=8))
    try:
        subset_state(big.state_dict(), ["normal"])
    except KeyError as e:
        assert "normal" in str(e)
    else:
        raise AssertionError("expected KeyError")


def test_xception_shapes():
    m = build_model(["segment_semantic", "normal"], ModelSpec(encoder="xception"))
    out = m(torch.randn(1, 3, 64, 64))
    assert out["segment_semantic"].shape == (1, 18, 64, 64)
    assert out["normal"].shape == (1, 3, 64, 64)


def test_masked_l1_ignores_invalid_pixels():
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [100.0, 100.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert float(masked_l1(pred, target, mask)) == 1.0


def test_depth_decoding_masks_holes_and_normalises():
    t = get_task("depth_zbuffer")
    raw = {"depth_zbuffer": np.array([[[1500, 2500], [65535, 9000]]], np.uint16)}
    target, mask = t.decode(raw)
    np.testing.assert_allclose(target[0, 0, 0], [0.0, 1.0])
    np.testing.assert_array_equal(mask[0, 0], [[1, 1], [0, 0]])


def test_segmentation_ignores_class_zero_and_reports_miou():
    t = get_task("segment_semantic")
    target = torch.tensor([[[0, 1], [2, 2]]])
    pred = torch.zeros(1, 18, 2, 2)
    pred[0, 1, 0, 1] = 10
    pred[0, 2, 1, :] = 10
    pred[0, 7, 0, 0] = 50  # the unlabelled pixel is wrong but ignored
    assert float(t.loss(pred, target, None)) < 0.05
    m = t.finalize(t.metric_sums(pred, target, None))
    assert m["miou"] == 1.0


def test_normal_angular_error():
    t = get_task("normal")
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2] = 1
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2, 0, 0] = 1
    pred[0, 0, 0, 1] = 1
    m = t.finalize(t.metric_sums(pred, target, None))
    assert abs(m["angular_err_deg"] - 45.0) < 1e-4


def test_deep_encoder_holds_most_parameters_like_the_papers_model():
    from fedmas.models import encoder_share
    from fedmas.tasks import TASK_SETS

    for w in (8, 16, 24):
        assert encoder_share(TASK_SETS["sdnkt"], ModelSpec("deep", w)) >= 0.8
    assert encoder_share(TASK_SETS["sdnkt"], ModelSpec("small", 16)) < 0.5
    m = build_model(TASK_SETS["sdnkt"], ModelSpec("deep", 8))
    out = m(torch.zeros(2, 3, 32, 32))
    assert out["normal"].shape == (2, 3, 32, 32) and out["segment_semantic"].shape == (2, 18, 32, 32)
