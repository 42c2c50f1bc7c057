"""fedmas compare: every method charged its full cost, resumable, figure and table written."""

from __future__ import annotations

import json

import pytest
import yaml

from fedmas.cli import main
from fedmas.compare import parse_methods
from fedmas.config import ConfigError

pytestmark = pytest.mark.slow


def test_compare_runs_and_resumes(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    tiny_raw["hoa"] = {"pair_rounds": 1}
    cfg.write_text(yaml.safe_dump(tiny_raw))
    out = tmp_path / "cmp"
    methods = "mas:2,all-in-one,all-in-one-fedprox,one-by-one,tag:2,hoa:2,random:2"
    assert main(["compare", str(cfg), "--methods", methods, "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "comparison.json").read_text())
    res = {r["key"]: r for r in doc["results"]}
    assert set(res) == set(methods.split(","))
    assert (out / "comparison.png").stat().st_size > 5000 and (out / "energy.png").stat().st_size > 5000
    md = (out / "comparison.md").read_text()
    assert "MAS 2 splits" in md and "total loss" in md
    # full cost of every phase: TAG pays its affinity phase, HOA its probes, one-by-one 3× the rounds
    tag = json.loads((out / "tag-2" / "summary.json").read_text())
    assert any(f["role"] == "merged" for f in tag["fl_tasks"])
    assert tag["costs"]["train_s"] == pytest.approx(sum(f["costs"]["train_s"] for f in tag["fl_tasks"]))
    hoa = json.loads((out / "hoa-2" / "summary.json").read_text())
    assert sum(f["role"] == "probe" for f in hoa["fl_tasks"]) == 6
    assert res["one-by-one"]["rounds"] == 3 * tiny_raw["federation"]["rounds"]
    before = (out / "mas-2" / "summary.json").stat().st_mtime_ns
    assert main(["compare", str(cfg), "--methods", "mas:2,all-in-one", "--out", str(out), "--quiet"]) == 0
    assert (out / "mas-2" / "summary.json").stat().st_mtime_ns == before  # not run again


def test_parse_methods_errors():
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        parse_methods("magic", 3)
    with pytest.raises(ConfigError, match="split count 1..3"):
        parse_methods("mas:9", 3)
    assert parse_methods("mas:auto,all-in-one-gradnorm", 3)[1][2] == {"federation": {"task_weighting": "gradnorm"}}
