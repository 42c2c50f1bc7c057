"""Fuzzing the edges: configs, affinity files and client replies.

Whatever comes in, fedmas ends with exit 0 or with exit 2 and one line; never a
traceback, a hang or a file written outside the run folder; and no reply makes
the server raise.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmas.cli import main
from fedmas.messages import Message, Reply
from fedmas.server.replies import check_reply

BASE = {
    "name": "fuzz", "seed": 0, "method": "mas", "tasks": ["depth_zbuffer", "normal"],
    "data": {"buildings": 2, "train_images": 2, "test_images": 1, "resolution": 16, "views_per_room": 2},
    "model": {"width": 2}, "federation": {"rounds": 2, "clients_per_round": 2, "batch_size": 2},
    "mas": {"splits": 2, "merge_rounds": 1, "lookahead_step": 1}, "hoa": {"pair_rounds": 1},
}
# every key a user can set except those that name places outside the run (engine, data.root/cache_dir)
KEYS = ["name", "seed", "method", "tasks", "plugins", "threads", "data.dataset", "data.buildings",
        "data.train_images", "data.test_images", "data.resolution", "data.views_per_room", "data.seed",
        "data.test_fraction", "model.encoder", "model.width", "federation.rounds", "federation.clients_per_round",
        "federation.max_tasks_per_client", "federation.local_epochs", "federation.batch_size", "federation.lr",
        "federation.momentum", "federation.weight_decay", "federation.schedule", "federation.aggregation",
        "federation.prox_mu", "federation.task_weighting", "federation.gradnorm_alpha", "federation.eval_every",
        "federation.round_deadline_s", "federation.min_replies", "federation.max_round_retries", "mas.splits",
        "mas.merge_rounds", "mas.affinity_window", "mas.lookahead_step", "mas.max_splits", "mas.auto_epsilon",
        "mas.settle_threshold", "cost.device_power_w", "cost.speed_factors", "cost.measure_energy",
        "unknown_key", "data.unknown", "federation"]
JUNK = st.one_of(
    st.sampled_from([-1, 0, 10**12, -10**12, 2**63, 10**400, math.inf, -math.inf, math.nan, 1e308, -0.0, "",
                     "x" * 300, "auto", True, False, None, [], {}, [1, 2], {"a": 1}, "../..", "python:os:getcwd",
                     "python:nope:nothing", "xception", "gradnorm", "fedprox", "tag", "hoa", "one-by-one",
                     "random", "all-in-one", "sdnkt", ["normal", "normal"], ["rgb"], {"building_000": 2.0}]),
    st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)


@contextlib.contextmanager
def _alarm(seconds: int):
    def boom(*_):
        raise TimeoutError(f"no answer within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _cli(argv: list[str], timeout: int = 60) -> tuple[int, str]:
    err = io.StringIO()
    with _alarm(timeout), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def _assert_clean_exit(rc: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("fedmas: error:"), err


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run in ``folder``, an empty folder of the test's own (the checkout may change under other processes)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(KEYS), JUNK), min_size=1, max_size=3))
def test_fuzz_configs(tmp_path_factory, mutations):
    work = tmp_path_factory.mktemp("fuzz")
    raw = json.loads(json.dumps(BASE))
    for key, value in mutations:
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    cfg = work / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True))
    (work / "cwd").mkdir()  # the working directory of the run: nothing may appear there either
    work_before = _listing(work)
    with _inside(work / "cwd"):
        rc, err = _cli(["run", str(cfg), "--out", str(work / "run"), "--quiet"])
    _assert_clean_exit(rc, err)
    touched = _listing(work) - work_before
    assert all(t == "run" or t.startswith("run/") for t in touched), touched
    if rc == 2:
        assert not (work / "run").exists(), err


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
                    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=3), kids,
                                                                                         max_size=4)), max_leaves=20)
NAMES = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4)


@st.composite
def affinity_docs(draw):
    if draw(st.booleans()):
        return draw(JSON)
    tasks = draw(NAMES)
    cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), JSON)
    rows = {s: {t: draw(cells) for t in draw(NAMES)} for s in draw(NAMES)}
    return {"tasks": tasks, "affinity": rows, **draw(st.dictionaries(st.sampled_from(["rounds", "x"]), JSON))}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(affinity_docs(), st.integers(-1, 5), st.booleans())
def test_fuzz_affinity_files(tmp_path_factory, doc, k, exact):
    f = tmp_path_factory.mktemp("aff") / "a.json"
    f.write_text(json.dumps(doc))
    argv = ["split", "--affinity", str(f), "--splits", str(k), "--json"] + (["--exact"] if exact else [])
    rc, err = _cli(argv, timeout=30)
    _assert_clean_exit(rc, err)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool,
          torch.complex64]
EXPECTED = {"encoder.w": torch.zeros(2, 3), "heads.a.b": torch.zeros(3)}
EXPECTED_STATE = {"gradnorm.weights": torch.ones(2)}


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(2, 3), (3,), (3, 2), (), (0,), (2, 2)]))
    t = torch.zeros(shape, dtype=dtype)
    if dtype.is_floating_point and t.numel():
        t.view(-1)[0] = draw(st.floats(allow_nan=True, allow_infinity=True, width=16))
    if draw(st.integers(0, 9)) == 0 and t.dim() >= 1 and not dtype.is_complex and dtype != torch.bool:
        t = t.to_sparse()
    return t


VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20), st.none(),
                   st.booleans(), st.text(max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["encoder.w", "heads.a.b", "affinity", "extra", "gradnorm.weights"]),
                       st.one_of(tensors(), VALUES), max_size=5),
       st.dictionaries(st.sampled_from(["samples", "compute_s", "flop", "other"]), VALUES, max_size=4),
       st.one_of(st.dictionaries(st.sampled_from(["gradnorm.weights", "other"]), st.one_of(tensors(), VALUES),
                                 max_size=2), VALUES),
       st.one_of(st.none(), tensors(), VALUES))
def test_fuzz_replies_never_raise(arrays, metrics, state, aff):
    reply = Reply("c", "t", Message(arrays, {}, metrics, state, aff))  # type: ignore[arg-type]
    why = check_reply(reply, EXPECTED, 2, want_affinity=aff is not None, max_samples=100,
                      expected_state=EXPECTED_STATE)
    if why is None:  # accepted: exactly what was sent, finite, sane numbers
        for have, want in ((arrays, EXPECTED), (state, EXPECTED_STATE)):
            for k, ref in want.items():
                v = have[k]
                assert v.dtype == ref.dtype and v.shape == ref.shape and v.layout == torch.strided
                assert bool(torch.isfinite(v).all())
            assert set(have) == set(want)
        assert 1 <= metrics["samples"] <= 100 and 0 <= metrics["compute_s"] < math.inf


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch):
    """The fuzz tests check fedmas's one-line errors: FEDMAS_DEBUG (tracebacks instead) is unset for them."""
    monkeypatch.delenv("FEDMAS_DEBUG", raising=False)
