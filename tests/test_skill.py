"""Trivial predictors against hand computations; skill and the not-learned / not-converged marks in every output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from fedmas import trivial
from fedmas.cli import main
from fedmas.config import Config
from fedmas.data.federated import FederatedData, MultiTaskArrays
from fedmas.run import execute
from fedmas.tasks import (
    ImageClassificationTask,
    ImageRegressionTask,
    L1Task,
    SegmentationTask,
    get_task,
    weighted_median,
)


def test_l1_median_is_masked_as_the_loss_masks():
    task = L1Task("x", 2)
    # two batches; the masked-out pixels hold huge values that would move an unmasked median
    t1 = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]], [[10.0, 20.0], [30.0, 100.0]]]])  # (1, 2, 2, 2)
    m1 = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    t2 = torch.tensor([[[[4.0, 5.0], [100.0, 100.0]], [[40.0, 50.0], [100.0, 100.0]]]])
    m2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    c = task.fit_trivial([(t1, m1), (t2, m2)])
    # valid values: channel 0 {1,2,3,4,5} → 3; channel 1 {10,20,30,40,50} → 30
    assert c.tolist() == [3.0, 30.0]
    # without masks every value counts: channel 0 {1,2,3,100,4,5,100,100} → lower median 4
    assert task.fit_trivial([(t1, None), (t2, None)]).tolist()[0] == 4.0


def test_weighted_median_is_the_l1_minimiser():
    rng = np.random.default_rng(0)
    v = torch.tensor(rng.normal(size=(1, 41)))
    w = torch.tensor(rng.uniform(0.1, 2, size=41))
    m = float(weighted_median(v, w)[0])
    cost = lambda c: float((w * (v[0] - c).abs()).sum())  # noqa: E731
    assert all(cost(m) <= cost(float(c)) + 1e-12 for c in v[0])


def test_segmentation_frequencies_respect_ignore_index():
    task = SegmentationTask("s", 3, ignore_index=0)
    tgt = torch.tensor([[[0, 0, 1, 1], [1, 2, 0, 0]]])  # valid: 1,1,1,2 → p(1) = 3/4, p(2) = 1/4, p(0) floor
    logits = task.fit_trivial([(tgt, None)])
    p = logits.softmax(0)
    assert p[1].item() == pytest.approx(0.75, abs=1e-5) and p[2].item() == pytest.approx(0.25, abs=1e-5)
    assert p[0].item() < 1e-5
    # its cross-entropy on the same data is the entropy of those frequencies
    ce = task.loss(logits.view(1, 3, 1, 1).expand(1, 3, 2, 4), tgt, None)
    assert float(ce) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-5)
    # without ignore_index class 0 counts too
    p = SegmentationTask("s", 3).fit_trivial([(tgt, None)]).softmax(0)
    assert p.tolist() == pytest.approx([0.5, 3 / 8, 1 / 8], abs=1e-5)


def test_image_level_tasks():
    cls = ImageClassificationTask("c", 3, label_fn=None)
    p = cls.fit_trivial([(torch.tensor([0, 2, 2, 2]), None)]).softmax(0)
    assert p.tolist() == pytest.approx([0.25, 0.0, 0.75], abs=1e-5)
    reg = ImageRegressionTask("r", 2, label_fn=None)
    assert reg.fit_trivial([(torch.tensor([[1.0, 5.0], [2.0, 7.0], [9.0, 6.0]]), None)]).tolist() == [2.0, 6.0]


def _arrays(n: int, seed: int, offset: float) -> MultiTaskArrays:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    depth = torch.rand(n, 1, 4, 4, generator=g) + offset
    mask = (torch.rand(n, 1, 4, 4, generator=g) > 0.3).float()
    seg = torch.randint(0, 18, (n, 4, 4), generator=g)
    return MultiTaskArrays(x, {"depth_zbuffer": depth, "segment_semantic": seg}, {"depth_zbuffer": mask})


def test_fit_uses_training_data_only_and_scores_with_the_evaluation():
    tasks = ("depth_zbuffer", "segment_semantic")
    # test and validation data far from the training data: fitted on them, the constant would differ
    data = FederatedData(clients={"a": _arrays(6, 0, 0.0), "b": _arrays(5, 1, 0.0)}, test=_arrays(7, 2, 5.0),
                         tasks=tasks, validation=_arrays(3, 3, 9.0))
    tr = trivial.fit(data, tasks)
    train = [data.clients["a"], data.clients["b"]]
    d = torch.cat([ds.targets["depth_zbuffer"] for ds in train]).reshape(-1)
    m = torch.cat([ds.masks["depth_zbuffer"] for ds in train]).reshape(-1) > 0
    med = float(d[m].sort().values[(int(m.sum()) - 1) // 2])  # the lower median of the valid training values
    assert tr.constants["depth_zbuffer"] == [pytest.approx(med)]
    t = data.test
    want = float(get_task("depth_zbuffer").loss(torch.full_like(t.targets["depth_zbuffer"], med),
                                                t.targets["depth_zbuffer"], t.masks["depth_zbuffer"]))
    assert tr.test_loss["depth_zbuffer"] == pytest.approx(want, rel=1e-5)
    assert set(tr.val_loss) == set(tasks)
    assert trivial.fit(data, tasks) is tr  # fitted once per dataset


def test_skill_marks_and_still_falling():
    sk = trivial.skills({"a": 0.5, "b": 0.99, "c": 1.0}, {"a": 1.0, "b": 1.0})
    assert sk == {"a": pytest.approx(0.5), "b": pytest.approx(0.01), "c": None}
    assert trivial.not_learned(sk) == ["b"] and trivial.mean_skill(sk) == pytest.approx(0.255)
    assert trivial.still_falling([10, 8, 6, 5, 4.5, 4.0, 3.5, 3.0])
    assert not trivial.still_falling([10, 8, 6, 5, 4.0, 4.01, 3.99, 4.0])
    assert not trivial.still_falling([10, 8, 6, 5, 4.0, 4.1, 4.2, 4.3])  # rising: overfitting, not unconverged
    assert not trivial.still_falling([3, 2, 1])  # too short to tell


@pytest.mark.slow
def test_skill_in_summary_show_and_compare(tiny_raw, tmp_path, capsys):
    cfg = Config.model_validate({**tiny_raw, "method": "all-in-one"})
    s = execute(cfg, tmp_path / "run", progress=False)
    tr = json.loads((tmp_path / "run" / "trivial.json").read_text())
    for t in cfg.task_list:
        assert s["test_skill"][t] == pytest.approx(1 - s["test_loss"][t] / tr["test_loss"][t])
    assert s["mean_skill"] == pytest.approx(np.mean(list(s["test_skill"].values())))
    assert s["not_learned"] == [t for t in cfg.task_list if s["test_skill"][t] < 0.05]
    assert isinstance(s["not_converged"], list)
    # fedmas show: the skill column and the mark of a task not learned
    doctored = dict(s, test_skill={**s["test_skill"], "normal": 0.01}, not_learned=["normal"],
                    not_converged=["merged"])
    (tmp_path / "run" / "summary.json").write_text(json.dumps(doctored))
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "skill" in out and "0.010 NOT LEARNED" in out and "not learned: normal" in out
    assert "not converged" in out and f"mean {s['mean_skill']:.3f}" in out
    # compare: skill per task, mean skill, and the words when a task was not learned
    c = tmp_path / "c.yaml"
    tiny_raw["federation"]["rounds"] = 2
    tiny_raw["mas"]["merge_rounds"] = 1
    c.write_text(yaml.safe_dump(tiny_raw))
    assert main(["compare", str(c), "--methods", "all-in-one,one-by-one", "--out", str(tmp_path / "cmp"),
                 "--quiet"]) == 0
    doc = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all("mean_skill" in r and set(r["skill"]) == set(cfg.task_list) for r in doc["results"])
    assert "mean skill" in md
    low = {t for r in doc["results"] for t, v in r["skill"].items() if v < 0.05}
    assert set(doc["not_learned"]) == low
    if low:  # two rounds of training: some task is no better than a constant
        assert "**Not learned**" in md and "noise" in md


@pytest.mark.slow
def test_tensorboard_curves_are_written_and_read_back(tiny_raw, tmp_path):
    from fedmas.tensorboard import crc32c, read_scalars

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    raw = {**tiny_raw, "tensorboard": True}
    raw["federation"] = {**raw["federation"], "rounds": 3}
    raw["mas"] = {**raw["mas"], "merge_rounds": 2}
    run = tmp_path / "r"
    execute(Config.model_validate(raw), run, progress=False, stop_after=2)
    execute(None, run, resume=True, progress=False)  # a resumed run continues the curves
    sc = read_scalars(run / "tensorboard")
    assert [s for s, _ in sc["merged/test_loss/normal"]] == [0, 1]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in metrics if r["fl_task"] == "merged" and r["round"] == 0)
    assert sc["merged/test_loss/normal"][0][1] == pytest.approx(first["loss/normal"], rel=1e-6)
    tr = json.loads((run / "trivial.json").read_text())["test_loss"]["normal"]
    assert sc["merged/skill/normal"][0][1] == pytest.approx(1 - first["loss/normal"] / tr, rel=1e-5)
    assert [s for s, _ in sc["run/fl_tasks_trained"]] == [0, 1, 2]
    assert [v for _, v in sc["run/fl_tasks_trained"]] == [1, 1, 2]  # the merged model, then two groups
    assert any(k.startswith("group") and "/test_loss/" in k for k in sc)
    assert sc["run/train_tflop"][-1][1] > sc["run/train_tflop"][0][1] > 0


def test_loss_figure_draws_the_constant_and_the_reported_round(tmp_path):
    """The constant's line and the circled reported rounds (one FL task's own round, and round 0: the
    weights a group started from, circled where the merged curve ends) change the picture; without them it
    is the plain figure."""
    from PIL import Image

    from fedmas.report import loss_curves

    rows = [{"round": r, "fl_task": "merged", "fl_round": r + 1, "tasks": ["a", "b"], "total_loss": 2.0 - r / 10,
             "loss/a": 1.0 - r / 20, "loss/b": 1.0 - r / 20} for r in range(4)]
    rows += [{"round": r, "fl_task": f"g{i}", "fl_round": r - 3, "tasks": [t], "total_loss": 0.9 - r / 50,
              f"loss/{t}": 0.9 - r / 50} for r in range(4, 7) for i, t in ((1, "a"), (2, "b"))]
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pics = {}
    for name, args in {"plain": (None, None), "constant": ({"a": 1.2, "b": None}, None),
                       "constant2": ({"a": 1.1, "b": None}, None), "reported": (None, {"g1": 2, "g2": 0}),
                       "reported0": (None, {"g2": 0}), "no_such_round": (None, {"g1": 99})}.items():
        loss_curves(m, tmp_path / f"{name}.png", *args)
        pics[name] = np.asarray(Image.open(tmp_path / f"{name}.png").convert("L"), dtype=float)
    assert pics["plain"].shape == pics["constant"].shape == pics["reported"].shape
    def differ(a: str, b: str) -> bool:
        return bool(np.abs(pics[a] - pics[b]).sum() > 0)

    assert differ("constant", "plain") and differ("constant", "constant2")  # the line, where the constant is
    assert differ("reported", "no_such_round") and differ("reported0", "no_such_round")  # the circles
