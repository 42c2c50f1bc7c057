"""No decision reads test data: changing only the test set changes no group, no split, no selected model."""

from __future__ import annotations

import json

import pytest

from fedmas.config import Config
from fedmas.run import execute

pytestmark = pytest.mark.slow

PLUGIN = '''
import torch
from fedmas.data import FederatedData, MultiTaskArrays, load_federated


def original(cfg, tasks):
    # the scenes data without its own hold-out: fedmas holds out validation from what this returns
    return load_federated(cfg.model_copy(update={"dataset": "scenes", "validation_fraction": 0.0}), tasks)


def other_test(cfg, tasks):
    d = original(cfg, tasks)
    g = torch.Generator().manual_seed(123)
    t = d.test
    perm = torch.randperm(len(t), generator=g)
    targets = {k: v[perm] for k, v in t.targets.items()}  # labels no longer belong to their images
    masks = {k: v[perm] for k, v in t.masks.items()}
    test = MultiTaskArrays(t.x + 0.5 * torch.randn(t.x.shape, generator=g), targets, masks)
    return FederatedData(clients=d.clients, test=test, tasks=d.tasks)
'''


def _run(tiny_raw, tmp_path, method: str, fn: str, extra: dict) -> tuple[dict, dict]:
    raw = json.loads(json.dumps(tiny_raw))
    raw["method"] = method
    raw["data"]["dataset"] = f"python:decisionsdata:{fn}"
    raw["federation"].update(select="best_val", rounds=4)
    raw["hoa"] = {"pair_rounds": 2}
    for k, v in extra.items():
        raw[k].update(v)
    run = tmp_path / f"{method}-{fn}"
    s = execute(Config.model_validate(raw), run, progress=False)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    return s, state


AUTO = {"mas": {"splits": "auto", "merge_rounds": "auto", "min_merge_rounds": 1, "max_merge_rounds": 3}}


@pytest.mark.parametrize("method,extra", [("mas", AUTO), ("hoa", {}), ("all-in-one", {})])
def test_changing_the_test_data_changes_no_decision(tiny_raw, tmp_path, monkeypatch, method, extra):
    (tmp_path / "decisionsdata.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    a, sa = _run(tiny_raw, tmp_path, method, "original", extra)
    b, sb = _run(tiny_raw, tmp_path, method, "other_test", extra)
    assert a["total_test_loss"] != pytest.approx(b["total_test_loss"], rel=1e-3)  # the test data did change
    assert a["groups"] == b["groups"]
    assert sa["plan"] == sb["plan"]  # split.json, HOA's estimates, merge stop: all the same
    assert [(f["name"], f["selected_round"], f["rounds"]) for f in a["fl_tasks"]] == \
           [(f["name"], f["selected_round"], f["rounds"]) for f in b["fl_tasks"]]
    assert any(f["selected_round"] is not None for f in a["fl_tasks"])
    # what decisions read — validation losses — is the same, to the bit
    assert [(f["best_val"], f["last_val"]) for f in sa["finished"]] == [(f["best_val"], f["last_val"])
                                                                        for f in sb["finished"]]
