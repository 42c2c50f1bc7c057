"""Flower engine on a real loopback deployment: parity with in-process, and a SuperNode killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flwr")

from fedmas.config import Config  # noqa: E402
from fedmas.engines.flower_deploy import submit  # noqa: E402
from fedmas.engines.flower_rehearsal import Loopback, running, signal_each  # noqa: E402
from fedmas.run import execute  # noqa: E402
from fedmas.runfolder import DRIVE_LOCK  # noqa: E402

pytestmark = pytest.mark.slow


def _cfg(tiny_raw, **fed) -> Config:
    raw = dict(tiny_raw)
    raw["federation"] = {**raw["federation"], "rounds": 3, **fed}
    raw["mas"] = {**raw["mas"], "merge_rounds": 1}
    return Config.model_validate(raw)


def _patient(cfg: Config) -> Config:
    """``cfg`` for a test whose numbers must equal an uninterrupted in-process run's: no client is dropped
    for being slow (a busy machine, or a server held stopped, is not a fault here; the straggler rule has
    its own tests), so the only fault is the one the test makes; the deadline only ends a hung round."""
    cfg.federation.round_deadline_s = 900
    cfg.flower.straggler_multiple = None
    return cfg


def _cli_run(cfg: Config, config_path, out, timeout: float = 600) -> subprocess.CompletedProcess:
    """``fedmas run CONFIG --out OUT`` as a user types it, in its own process."""
    config_path.write_text(yaml.safe_dump(cfg.model_dump()))
    return subprocess.run([sys.executable, "-m", "fedmas.cli", "run", str(config_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout)


def _wait_for_checkpoint(out, rounds: int, going, bound_s: float = 900):
    """Wait until the run in ``out`` has checkpointed ``rounds`` rounds, or ``going()`` is false; the bound
    only ends a hung test. Returns the checkpoint's state file."""
    st, end = out / "checkpoint" / "state.json", time.time() + bound_s
    while time.time() < end and going():
        try:
            if st.exists() and json.loads(st.read_text())["round"] >= rounds:
                break
        except (json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.1)
    return st


def _inprocess_and_loopback(cfg: Config, tmp_path) -> tuple[dict, dict]:
    """The summaries of ``cfg`` run in-process (``tmp_path/inprocess``) and through the CLI on a 2-node
    loopback deployment (``tmp_path/fl``)."""
    ref = execute(cfg, tmp_path / "inprocess", progress=False)
    with Loopback(tmp_path / "flower", nodes=2) as lb:
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, 2
        proc = _cli_run(cfg, tmp_path / "fl.yaml", tmp_path / "fl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ref, json.loads((tmp_path / "fl" / "summary.json").read_text())


def test_cli_run_on_loopback_deployment_matches_inprocess(tiny_raw, tmp_path):
    """engine: flower through the CLI against a real SuperLink and SuperNodes on 127.0.0.1."""
    ref, got = _inprocess_and_loopback(_cfg(tiny_raw), tmp_path)
    assert got["groups"] == ref["groups"]
    # Same code, seeds and thread count on both sides; only the transport differs.
    # Allow float-summation-order differences anyway (none were observed: the match is exact here).
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-5)
    assert got["costs"]["bytes_up"] > 0 and got["faults"] == {}


def test_partial_labels_and_an_arriving_task_on_loopback_match_inprocess(tiny_raw, tmp_path):
    """Partial labels and a task arriving mid-run through a real deployment: the nodes load the
    newcomer's data, receive only the heads they hold labels for, and the run ends as in-process."""
    cfg = _cfg(tiny_raw, rounds=5)
    cfg.data.label_coverage = {"normal": 0.5, "depth_zbuffer": 0.7}
    cfg.arrival.tasks = {"edge_texture": 1}
    ref, got = _inprocess_and_loopback(Config.model_validate(cfg.model_dump()), tmp_path)
    assert got["groups"] == ref["groups"] and got["owner"] == ref["owner"]
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-5)
    placed = json.loads((tmp_path / "fl" / "arrivals.json").read_text())["edge_texture"]["placed"]
    assert placed == json.loads((tmp_path / "inprocess" / "arrivals.json").read_text())["edge_texture"]["placed"]
    assert got["faults"] == ref["faults"]


def test_supernode_killed_mid_run(tiny_raw, tmp_path):
    # a generous deadline: a busy machine's slow clients must not be dropped; the dead node is found by
    # Flower's liveness (it leaves the SuperLink's node list, or its messages come back as errors)
    cfg = _cfg(tiny_raw, clients_per_round=4, rounds=3, round_deadline_s=900, max_round_retries=0)
    out = tmp_path / "fl"
    with Loopback(tmp_path / "flower", nodes=2) as lb:
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, 2
        rc: list[int] = []
        t = threading.Thread(target=lambda: rc.append(submit(cfg, out, home=lb.root / "cli", timeout_s=1100)))
        t.start()
        _wait_for_checkpoint(out, 1, t.is_alive)
        lb.kill("node1")  # a real SIGKILL, while the next round is under way
        t.join(1200)
    assert rc == [0]
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds"] == 3
    dropouts = sum(v for k, v in s["faults"].items() if k.startswith("client error"))
    assert dropouts >= 2, s["faults"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = {r: sum(ln["accepted"] for ln in lines if ln["round"] == r) for r in range(3)}
    assert per_round[0] == 4  # before the kill every client replied
    assert per_round[1] == per_round[2] == 2  # after it, the surviving node's two clients still did


def test_server_restart_resumes_from_the_last_checkpoint(tiny_raw, tmp_path):
    """The server machine goes down mid-run (SuperLink and ServerApp killed with SIGKILL after a
    checkpoint); the SuperLink comes back on the same port and database, the SuperNodes reconnect by
    themselves, and ``fedmas run --resume RUN_DIR`` continues from the checkpoint to the numbers of an
    uninterrupted run."""
    cfg = _patient(_cfg(tiny_raw, rounds=4))
    ref = execute(cfg, tmp_path / "inprocess", progress=False)
    out = tmp_path / "fl"
    with Loopback(tmp_path / "flower", nodes=2) as lb:
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, 2
        (tmp_path / "fl.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
        first = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "run", str(tmp_path / "fl.yaml"), "--out",
                                  str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        st = _wait_for_checkpoint(out, 1, lambda: first.poll() is None)
        assert first.poll() is None, "the run ended before the server could be killed"
        server_side = lb.descendants("superlink")  # its SuperExec and the ServerApp (read from /proc)
        assert server_side or not Path("/proc").is_dir()
        lb.kill("superlink")  # the server machine is gone: SuperLink, its SuperExec and the ServerApp
        assert not [pid for pid in server_side if running(pid)]
        first.kill()  # the submitting terminal went with it
        first.wait(60)
        done = json.loads(st.read_text())["round"]
        assert 1 <= done < 4
        lb.start_superlink()
        proc = subprocess.run([sys.executable, "-m", "fedmas.cli", "run", "--resume", str(out)], capture_output=True,
                              text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads((out / "summary.json").read_text())
    assert got["faults"] == {} and got["rounds"] == 4 and got["groups"] == ref["groups"]
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-5)
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(rounds)) == [0, 1, 2, 3]
    assert len(rounds) == len([json.loads(x) for x in (tmp_path / "inprocess" / "metrics.jsonl").read_text()
                               .splitlines()])  # no round written twice


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_supernode_auth_over_tls(tiny_raw, tmp_path):
    """A TLS deployment with --enable-supernode-auth: registered nodes join and train over TLS; a node whose key
    was never registered is refused by the SuperLink (its process exits) and never gets work."""
    from fedmas.engines.flower_rehearsal import make_certificates, make_node_key

    cfg = _cfg(tiny_raw, rounds=2, clients_per_round=4)
    cfg.method = "all-in-one"
    with Loopback(tmp_path / "flower", nodes=2, tls=True, auth=True) as lb:
        lb.start_node(0, key=make_node_key(lb.root / "keys" / "stranger"), name="stranger")
        refused = lb.procs["stranger"].wait(600)  # Flower ends a refused node; the bound is not a margin
        cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, 2
        cfg.flower.root_certificates = make_certificates(lb.root / "certs")["ca"]
        assert submit(cfg, tmp_path / "fl", home=lb.root / "cli", timeout_s=900) == 0
        assert lb.procs["node0"].poll() is None and lb.procs["node1"].poll() is None
    assert refused != 0
    assert "Failed to activate SuperNode" in (lb.root / "stranger.log").read_text()
    assert "No SuperNode found with the given public key" in (lb.root / "superlink.log").read_text()
    lines = [json.loads(x) for x in (tmp_path / "fl" / "metrics.jsonl").read_text().splitlines()]
    assert [sum(ln["accepted"] for ln in lines if ln["round"] == r) for r in range(2)] == [4, 4]
    assert json.loads((tmp_path / "fl" / "summary.json").read_text())["faults"] == {}


def test_cli_run_simulation_engine_matches_inprocess(tiny_raw, tmp_path):
    """engine: flower-sim through the CLI (needs the fedmas[flower-sim] extra: Ray); the run folder is
    prepared once and keeps what the run wrote."""
    pytest.importorskip("ray")
    cfg = _cfg(tiny_raw)
    ref = execute(cfg, tmp_path / "inprocess", progress=False)
    cfg.engine, cfg.flower.nodes = "flower-sim", 2
    proc = _cli_run(cfg, tmp_path / "sim.yaml", tmp_path / "sim")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "sim" / "summary.json").read_text())
    written = {p.name for p in (tmp_path / "sim").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "split.json", "affinity.json"} <= written
    assert got["groups"] == ref["groups"]
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-5)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the ServerApps' processes in /proc")
def test_a_serverapp_that_outlives_its_superlink_and_the_resumed_run_take_turns(tiny_raw, tmp_path):
    """Only the SuperLink dies, and its SuperExec has not noticed yet (stopped, as on a busy machine): the
    earlier ServerApp lives on, and once the SuperLink is back on the same port and database it reconnects
    and goes on running rounds. The resumed run's ServerApp, started while the earlier one holds the rounds
    (it is held stopped until the new one has the rounds' lock file open), waits for it, saying so, and
    continues from where it stops: the numbers of an uninterrupted run, each round written once."""
    cfg = _patient(_cfg(tiny_raw, rounds=4))
    ref = execute(cfg, tmp_path / "inprocess", progress=False)
    out = tmp_path / "fl"
    left: list[int] = []
    try:
        with Loopback(tmp_path / "flower", nodes=2) as lb:
            cfg.engine, cfg.flower.superlink, cfg.flower.nodes = "flower", lb.address, 2
            (tmp_path / "fl.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
            first = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "run", str(tmp_path / "fl.yaml"),
                                      "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_checkpoint(out, 1, lambda: first.poll() is None)
            assert first.poll() is None, "the run ended before the SuperLink could be killed"
            left = lb.descendants("superlink")
            execs = [pid for pid in left if "flower-superexec" in _command(pid)]
            apps = [pid for pid in left if "flwr-serverapp" in _command(pid)]
            assert execs and apps, [_command(pid) for pid in left]
            signal_each(execs + apps, signal.SIGSTOP)
            lb.kill("superlink", tree=False)
            first.kill()
            first.wait(60)
            lb.start_superlink()
            resume = subprocess.Popen([sys.executable, "-m", "fedmas.cli", "run", "--resume", str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            lock, end = (out / DRIVE_LOCK).resolve(), time.time() + 900  # the bound only ends a hung test
            while resume.poll() is None and time.time() < end and not any(
                    _holds_open(pid, lock) for pid in lb.descendants("superlink")
                    if "flwr-serverapp" in _command(pid)):
                time.sleep(0.2)
            signal_each(apps, signal.SIGCONT)  # the earlier ServerApp goes on (its SuperExec stays stopped)
            stdout, stderr = resume.communicate(timeout=900)
    finally:
        signal_each(left, signal.SIGKILL)
    assert resume.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert "being run by another fedmas process" in stdout + stderr  # the user is told why it waits
    got = json.loads((out / "summary.json").read_text())
    assert got["faults"] == {} and got["rounds"] == 4 and got["groups"] == ref["groups"]
    assert got["total_test_loss"] == pytest.approx(ref["total_test_loss"], rel=1e-5)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(ln["round"], ln["fl_task"]) for ln in lines]
    assert len(keys) == len(set(keys)) and sorted({r for r, _ in keys}) == [0, 1, 2, 3], keys
