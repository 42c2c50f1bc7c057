"""The own-task example runs end to end: an image-level task, a dense task and custom data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_own_task_example(tmp_path):
    path = Path(__file__).parents[1] / "examples" / "own_task.py"
    spec = importlib.util.spec_from_file_location("own_task", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["own_task"] = mod
    spec.loader.exec_module(mod)
    s = mod.main(["--rounds", "2", "--out", str(tmp_path / "run")])
    assert set(s["test_loss"]) == {"dominant_object", "depth_m", "normal"}
    assert "accuracy" in s["test_metrics"]["dominant_object"]
    assert s["rounds"] == 3  # fedmas's default MAS: 1 merged round (the affinity window), then 2 per group
