"""Your own model: plugin encoders with fedmas's heads and whole plugin networks train end to end, the affinity
lookahead is exact for encoders fedmas does not special-case, and a model that does not fit is refused early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedmas.cli import main
from fedmas.client import LocalConfig, train_local
from fedmas.data.federated import MultiTaskArrays
from fedmas.data.scenes import SceneSpec, render_building
from fedmas.models import ModelSpec, build_model, check_model
from fedmas.plugins import PluginError
from fedmas.testing import Float64, naive_train_with_affinity

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASKS = ("segment_semantic", "depth_zbuffer", "normal")


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.mark.parametrize("encoder", ["bn_cnn", "vit", "mlp"])
def test_lookahead_is_exact_for_user_encoders(encoder):
    """BatchNorm; LayerNorm with attention; a plain MLP — against the naive definition, in float64."""
    raw = render_building(SceneSpec(train_images=12, resolution=32, views_per_room=4), 0, "train")
    ds = Float64(MultiTaskArrays.from_raw(raw, TASKS))
    spec = ModelSpec(encoder=f"python:own_model:{encoder}", probe_size=32)
    model = build_model(TASKS, spec, seed=3).double()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=4, lookahead_step=1, seed=11,
                      encoder_grad_scale=3 ** -0.5)
    fast = train_local(model, w0, ds, cfg)
    slow_w, slow_z = naive_train_with_affinity(build_model(TASKS, spec).double(), w0, ds, cfg)
    assert fast.metrics["lookahead_batches"] == 3
    torch.testing.assert_close(fast.affinity, slow_z, rtol=1e-6, atol=1e-9)
    assert (fast.affinity != 0).all()
    for k in slow_w:
        torch.testing.assert_close(fast.weights[k], slow_w[k], rtol=1e-6, atol=1e-9)


def _cfg(tiny_raw, tmp_path, **model) -> Path:
    raw = {**tiny_raw, "plugins": ["own_model"], "model": {**tiny_raw["model"], **model}}
    raw["federation"] = {**raw["federation"], "rounds": 2}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"encoder": "python:own_model:vit"}, {"network": "python:own_model:network"}],
                         ids=["own-encoder", "own-network"])
def test_own_model_trains_end_to_end(tiny_raw, tmp_path, model):
    out = tmp_path / "r"
    assert main(["run", str(_cfg(tiny_raw, tmp_path, **model)), "--out", str(out), "--quiet"]) == 0
    s = yaml.safe_load((out / "summary.json").read_text())
    assert set(s["test_loss"]) == set(TASKS) and s["groups"]
    assert (out / "plugins" / "own_model.py").exists()  # --resume finds the code the run started with


@pytest.mark.parametrize("body, needle", [
    ("import torch\ndef enc():\n    return torch.nn.Flatten()\n", "feature map"),
    ("import torch\ndef enc():\n    return torch.nn.Conv2d(3, 8, 3, 3, 1)\n", "power of two"),
    ("def enc():\n    return 42\n", "must return a torch.nn.Module"),
])
def test_an_encoder_that_does_not_fit_is_refused_before_the_folder(tiny_raw, tmp_path, monkeypatch, capsys, body,
                                                                   needle):
    (tmp_path / "badenc.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("badenc", None)
    raw = {**tiny_raw, "plugins": ["badenc"], "model": {"encoder": "python:badenc:enc"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    rc = main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_network_that_does_not_fit_is_refused_with_one_message():
    import own_model

    own_model.nohead = lambda tasks: (own_model.bn_cnn(), {})
    with pytest.raises(PluginError, match="no head module for"):
        check_model(ModelSpec(network="python:own_model:nohead"), TASKS, 32)
    own_model.as_network = lambda tasks: own_model.bn_cnn()  # an encoder alone is not a network
    with pytest.raises(PluginError, match="must return a module with .encoder and .heads"):
        check_model(ModelSpec(network="python:own_model:as_network"), TASKS, 32)

    class Wrong(own_model.Network):  # a head whose output is a quarter of the input size
        def __init__(self, tasks):
            super().__init__(tasks)
            self.heads["normal"] = torch.nn.Conv2d(32, 3, 1)

    own_model.wrong = lambda tasks: Wrong(tasks)
    with pytest.raises(PluginError, match=r"task 'normal' needs an output of shape \(2, 3, 32, 32\)"):
        check_model(ModelSpec(network="python:own_model:wrong"), TASKS, 32)


def test_device_and_threads(tiny_raw):
    from fedmas.config import Config, available_cores
    from fedmas.runtime import resolve_device

    cfg = Config.model_validate(tiny_raw)
    assert cfg.threads == "auto" and cfg.cpu_threads == available_cores() >= 1
    assert Config.model_validate({**tiny_raw, "threads": 3}).cpu_threads == 3
    assert cfg.device == "auto" and resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        Config.model_validate({**tiny_raw, "device": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:1")
