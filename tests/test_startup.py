"""Commands that draw nothing import no matplotlib (which would write its cache into a fresh HOME), and those
that train nothing import no torch either: they start at once on a busy machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CODE = """
import sys
from fedmas.cli import main
try:
    rc = main({args!r})
except SystemExit as e:
    rc = e.code
print(json.dumps({{"rc": rc, "loaded": sorted(m for m in ("torch", "matplotlib") if m in sys.modules)}}))
"""


def _run(args: list[str], home) -> dict:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": "", "XDG_CACHE_HOME": "", "XDG_CONFIG_HOME": ""}
    env = {k: v for k, v in env.items() if v}
    p = subprocess.run([sys.executable, "-c", "import json\n" + CODE.format(args=args)], capture_output=True,
                       text=True, env=env, timeout=300)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("what", ["help", "split", "show", "refused"])
def test_commands_that_draw_nothing_leave_home_alone(tmp_path, what):
    home = tmp_path / "home"
    home.mkdir()
    aff = tmp_path / "a.json"
    z = {"a": {"a": 0.1, "b": 0.2, "c": -0.1}, "b": {"a": 0.2, "b": 0.1, "c": -0.1},
         "c": {"a": -0.1, "b": -0.1, "c": 0.1}}
    aff.write_text(json.dumps({"tasks": ["a", "b", "c"], "affinity": z}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "method": "all-in-one", "rounds": 2, "tasks": ["normal"], "test_loss": {"normal": 0.3}, "groups": None,
        "owner": {"normal": "all-in-one"}, "total_test_loss": 0.3, "energy_source": "modelled", "costs": {
            "train_s": 1.0, "train_flop": 1e9, "energy_j": 1.0, "bytes_down": 1.0, "bytes_up": 1.0,
            "sim_wallclock_s": 1.0}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("federation: {lr: -1}\n")
    args = {"help": ["--help"], "split": ["split", "--affinity", str(aff), "--splits", "2"],
            "show": ["show", str(run)], "refused": ["run", str(bad), "--out", str(tmp_path / "x")]}[what]
    got = _run(args, home)
    assert got["rc"] == (2 if what == "refused" else 0), got
    assert "matplotlib" not in got["loaded"], got
    if what != "refused":  # a run imports torch to check its model; these three need none
        assert "torch" not in got["loaded"], got
    assert not list(home.iterdir()), [p.name for p in home.iterdir()]  # no cache, no config written
