"""The console explains itself: header, labelled round lines numbered as in the files, the split line,
the final table with metrics and files, run.log, fedmas show, --version, split --splits auto."""

from __future__ import annotations

import json

import pytest
import yaml

import fedmas.run
from fedmas.cli import main


def test_a_run_explains_itself_and_keeps_its_log(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))  # mas, 4 rounds, merge 2
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(run)]) == 0
    out = capsys.readouterr()
    text = out.err + out.out
    assert (f"[fedmas] mas on 3 tasks (seg, depth, normal), 4 clients, 2 per round, R=4, engine inprocess "
            f"on cpu → {run}") in text
    assert "[fedmas] short names: seg = segment_semantic, depth = depth_zbuffer\n" in text
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "round   0 (1/4 done) | test loss Σ tasks: merged " in text and min(rounds) == 0  # same numbering
    split = json.loads((run / "split.json").read_text())
    assert split["round"] == 2 and "[fedmas] split after round 1: {" in text  # merged rounds 0, 1
    assert text.index("split after round 1") < text.index("round   2 (3/4 done)")
    assert "group1{" in text.split("round   2 (3/4 done)")[1].splitlines()[0]  # the groups' tasks, named
    assert "| task " in text and "test metric" in text and "miou " in text and "angular_err_deg " in text
    assert f"files in {run}: summary.json" in text
    log = (run / "run.log").read_text()
    assert "split after round 1" in log and "TOTAL" in log  # the console, kept
    # a finished run, resumed or shown, prints its table again
    assert main(["run", "--resume", str(run)]) == 0
    again = capsys.readouterr()
    assert "finished earlier" in again.err and "TOTAL" in again.err
    assert main(["show", str(run)]) == 0
    assert "TOTAL" in capsys.readouterr().out
    assert main(["show", str(tmp_path)]) == 2 and "holds no fedmas run" in capsys.readouterr().err
    # fedmas split takes the config's word for automatic k
    assert main(["split", "--affinity", str(run / "affinity.json"), "--splits", "auto"]) == 0
    assert "auto: the fewest groups" in capsys.readouterr().out
    assert main(["split", "--affinity", str(run / "affinity.json"), "--splits", "many"]) == 2
    assert "expected auto or an integer" in capsys.readouterr().err


def test_version_and_interrupt_name_the_run_folder(tiny_raw, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("fedmas ")

    def interrupted(cfg, out, **kw):
        out.mkdir(parents=True)
        (out / "config.yaml").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(fedmas.run, "execute", interrupted)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 130
    assert f"continue with fedmas run --resume {tmp_path / 'r'}" in capsys.readouterr().err
