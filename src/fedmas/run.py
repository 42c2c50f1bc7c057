"""One run of one method: data → engine → plan → round loop → summary, resumable.

Run folder: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoint/``,
``affinity.json`` / ``affinity.png`` (methods that measure affinity),
``split.json`` (the split decision and each candidate's objective),
``arrivals.json`` (tasks that arrived mid-training: probes, gains, placement),
``costs.json``, ``losses.png`` and, only once the run is complete, ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedmas import arrivals, trivial, weighting
from fedmas.accounting import CostLedger
from fedmas.checks import check_config
from fedmas.config import VALIDATES, Config, ConfigError, format_error, load_config
from fedmas.console import ConsoleLog, RoundTimer, header, learned_lines, render_summary, split_line  # noqa: F401
from fedmas.data import FederatedData, load_federated
from fedmas.engines import EngineFactory, launch, preflight
from fedmas.methods import PLANS, make_plan
from fedmas.models import check_model, model_spec
from fedmas.runfolder import DriveLock, RunLock, check_new_run_dir, clean_partial_writes, prepare_run_dir, resume_config
from fedmas.runtime import configure_cpu, deterministic, resolve_device
from fedmas.server.bookkeeping import TORN, round_of
from fedmas.server.loop import Engine, RoundLoop, Server, print_progress, truncate_metrics
from fedmas.server.state import (
    TRIVIAL,
    CheckpointError,
    ServerState,
    atomic_write_text,
    change_config,
    load_checkpoint,
    recorded_trivial_sha256,
)
from fedmas.summary import (  # noqa: F401 - importable from fedmas.run as before
    RunFailed,
    failed_line,
    failures,
    finish,
    finished_summary,
    read_summary,
    write_affinity,
)
from fedmas.tensorboard import RoundCurves


def execute(cfg: Config | None, run_dir: Path, resume: bool = False, progress: bool = True,
            engine: Engine | None = None, stop_after: int | None = None,
            engine_factory: EngineFactory | None = None, force: bool = False,
            allow_plugins: tuple[str, ...] = (), data: FederatedData | None = None,
            add_tasks: tuple[str, ...] = (), threads: int | str | None = None) -> dict[str, Any] | None:
    """Run (or resume) to the end; returns the summary, or ``None`` if stopped early by ``stop_after``.

    The config and the data are checked before the run folder is created (once, here); then the
    engine named by ``cfg.engine`` is launched (:func:`fedmas.engines.launch`) and drives
    :func:`drive` wherever it runs the server side. ``engine`` / ``engine_factory`` bypass that
    choice (tests, benchmarks). ``data``: the federated data of ``cfg.data`` when the caller has it
    loaded already (a comparison loads it once); it is checked against the method all the same.
    The folder is locked for this process while it runs. ``add_tasks`` (with ``resume``): tasks that
    arrive now, at the checkpoint's round (written into the run's config.yaml as ``arrival.tasks``).
    ``threads`` (with ``resume``): the torch threads of this process instead of the saved config's — they
    change float order only, and a comparison resuming with another ``--jobs`` must not oversubscribe."""
    run_dir = Path(run_dir)
    if resume:
        cfg = check_config(resume_config(run_dir, allow_plugins), str(run_dir / "config.yaml"))
        if threads is not None:
            cfg = cfg.model_copy(update={"threads": threads})
        with RunLock(run_dir):
            check_resumable(run_dir)
            done = finished_summary(run_dir)
            if add_tasks:
                if done is not None:
                    raise ConfigError(f"{run_dir} has finished; a task can only be added to a run still in progress")
                cfg = add_arrivals(cfg, run_dir, add_tasks)
            if done is not None:
                if progress:
                    print(f"[fedmas] {run_dir} finished earlier; its results:", file=sys.stderr)
                    print(render_summary(done, run_dir), file=sys.stderr)
                if done.get("failed"):
                    raise RunFailed(failed_line(run_dir, done))
                return done
            with ConsoleLog(run_dir):
                return _launch(cfg, run_dir, load_data(cfg, data), resolve_device(cfg.device), progress,
                               stop_after, engine, engine_factory)
    assert cfg is not None
    check_config(cfg)
    check_new_run_dir(run_dir, force)
    if engine is None and engine_factory is None:
        preflight(cfg)  # the engine's needs (Ray, a SuperLink) are here before anything is written
    device = resolve_device(cfg.device)  # a device that is not here is refused before anything is written
    check_model(model_spec(cfg), cfg.task_list, _input_size(data or None, cfg))
    data = load_data(cfg, data)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        prepare_run_dir(run_dir, cfg, force)
        with ConsoleLog(run_dir):
            if progress:
                print(header(cfg, run_dir, data, device), file=sys.stderr, flush=True)
                note = PLANS[cfg.method].cost_note(cfg)
                if note:
                    print(note, file=sys.stderr, flush=True)
            return _launch(cfg, run_dir, data, device, progress, stop_after, engine, engine_factory)


def _input_size(data: FederatedData | None, cfg: Config) -> int:
    """The side of the model's input: the data's own images when loaded, else ``data.resolution``."""
    if data is not None:
        x = data.test[0][0]  # type: ignore[index]
        return int(x.shape[-1])
    return cfg.data.resolution


def add_arrivals(cfg: Config, run_dir: Path, names: tuple[str, ...]) -> Config:
    """The run's config with ``names`` arriving at the checkpoint's round, checked, and saved as its config.yaml."""
    sp = run_dir / "checkpoint" / "state.json"
    r = int(json.loads(sp.read_text())["round"]) if sp.exists() else 0
    if r < 1:
        raise ConfigError(f"{run_dir} has not finished a round yet; put {', '.join(names)} in its config's tasks "
                          f"and start it again instead")
    raw = cfg.model_dump()
    known = set(cfg.task_list)
    for n in names:
        if n in known:
            raise ConfigError(f"--add-task {n}: the run has that task already")
        raw["arrival"]["tasks"][n] = r
        known.add(n)
    try:
        new = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"--add-task {', '.join(names)}: {format_error(e)}") from None
    change_config(run_dir, yaml.safe_dump(new.model_dump(), sort_keys=False))
    return new


def _launch(cfg: Config, run_dir: Path, data: FederatedData, device: str, progress: bool, stop_after: int | None,
            engine: Engine | None, engine_factory: EngineFactory | None) -> dict[str, Any] | None:
    """Hand the prepared run to its engine; ``device``: ``cfg.device`` as resolved in this process (the
    process that drives the rounds, here or in a Flower ServerApp, resolves its own: :func:`drive`)."""
    if engine is not None:
        engine_factory = lambda _cfg, _data, _spec: engine  # noqa: E731
    if engine_factory is not None:
        return drive(cfg, run_dir, engine_factory, progress, stop_after, data)
    launch(cfg, run_dir, lambda factory: drive(cfg, run_dir, factory, progress, stop_after, data), device)
    return finished_summary(run_dir)


def check_resumable(run_dir: Path) -> None:
    """A run that has trained must resume from its checkpoint: a missing one is a refusal, never a restart —
    unless nothing was ever checkpointed (killed during round 0 or while writing the first checkpoint: then
    only round 0's metric lines and perhaps the first weights file exist, and starting over is the same run)."""
    sp = run_dir / "checkpoint" / "state.json"
    if sp.exists() or (run_dir / "summary.json").exists():
        return
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(errors="replace").splitlines() if metrics.is_file() else []
    later = [ln for ln in lines if 1 <= round_of(ln) < TORN]  # written after the first checkpoint (a torn one: no)
    weights = [p for p in (run_dir / "checkpoint").glob("weights-*.safetensors") if p.name != FIRST_WEIGHTS]
    if later or weights:
        raise CheckpointError(f"{sp} is missing, but {run_dir} has trained rounds (metrics.jsonl or checkpoint "
                              f"weights): the run cannot be resumed without it; start a new run instead")


FIRST_WEIGHTS = "weights-00001.safetensors"  # the first checkpoint's weights, written before its state.json


def load_data(cfg: Config, data: FederatedData | None = None) -> FederatedData:
    """The run's federated data (loaded unless given), checked against what the method needs (before
    any run folder exists)."""
    if data is None:
        data = load_federated(cfg.data, cfg.task_list, cfg.arrival_tasks)
    unknown = sorted(set(cfg.cost.speed_factors) - set(data.clients))
    if unknown:
        some = ", ".join(sorted(data.clients)[:6]) + (", ..." if len(data.clients) > 6 else "")
        raise ConfigError(f"cost.speed_factors names client(s) {unknown[:3]} that data.dataset does not have; its "
                          f"clients are {some}")
    n, per = len(data.clients), cfg.federation.clients_per_round
    if per > n:
        raise ConfigError(f"federation.clients_per_round={per} exceeds the {n} clients of data.dataset "
                          f"{cfg.data.dataset!r}; choose at most {n}")
    if data.validation is None and (cfg.method in VALIDATES or cfg.federation.select == "best_val"):
        raise ConfigError("no validation data (every client has fewer than two samples, or "
                          "data.validation_fraction is 0): HOA, the exhaustive method and federation.select: "
                          "best_val need it")
    return data


def drive(cfg: Config, run_dir: Path, engine_factory: EngineFactory, progress: bool = True,
          stop_after: int | None = None, data: FederatedData | None = None) -> dict[str, Any] | None:
    """The server side of a prepared run folder: load data and checkpoint, run the round loop, finish
    (in one process at a time: :class:`~fedmas.runfolder.DriveLock`)."""
    with DriveLock(run_dir):
        return _drive(cfg, run_dir, engine_factory, progress, stop_after, data)


def _drive(cfg: Config, run_dir: Path, engine_factory: EngineFactory, progress: bool = True,
           stop_after: int | None = None, data: FederatedData | None = None) -> dict[str, Any] | None:
    clean_partial_writes(run_dir)
    kind = PLANS[cfg.method].State  # the method's typed decisions
    state = load_checkpoint(run_dir, kind) if (run_dir / "checkpoint" / "state.json").exists() else None
    if state is None:  # nothing checkpointed (check_resumable): round 0's lines, if any, are written again
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    configure_cpu(cfg.cpu_threads)
    device = resolve_device(cfg.device)  # once, where the rounds are driven: the server and its models use it
    deterministic(device)
    if data is None:
        data = load_data(cfg)
    if state is None:
        state = ServerState(plan=kind(), costs=CostLedger(cfg.cost.device_power_w,
                                                          device_flops_per_s=cfg.cost.device_flops_per_s))
    truncate_metrics(run_dir, state.round)
    if data.holds is not None and not weighting.get(cfg.federation.task_weighting).supports_partial_labels:
        raise ConfigError(f"federation.task_weighting: {cfg.federation.task_weighting} is not supported with "
                          "partial labels (data.label_coverage < 1 or a dataset that declares holds); use 'equal'")
    server = Server(cfg, state, data.client_ids, run_dir, {c: len(ds) for c, ds in data.clients.items()},
                    {c: data.held(c) for c in data.clients} if data.holds is not None else None, device)
    server.check_weights()
    triv = _trivial(run_dir, data, cfg)
    server.val_baseline = dict(triv.val_loss)
    _write_derived(server)
    engine = engine_factory(cfg, data, server.spec)
    plan = make_plan(cfg.method)

    total, r0 = plan.expected_rounds(server), state.round
    _check_progress(run_dir, state, total)
    if progress and r0 > 0:
        print(f"[fedmas] resuming {run_dir} after round {r0 - 1} (rounds count from 0, as in the files)"
              + (f"; {total - r0} of {total} rounds to go" if total else ""), file=sys.stderr, flush=True)
    eta = RoundTimer()
    had_groups = state.plan.groups is not None
    curves = RoundCurves(run_dir, triv.test_loss) if cfg.tensorboard else None

    def on_round(srv: Server) -> None:
        nonlocal had_groups
        write_affinity(srv)
        if curves is not None:
            curves.after_round(srv.state.round - 1, srv.state.costs.totals())
        if progress:
            if not had_groups and srv.state.plan.groups is not None and srv.state.round >= 2:  # chosen just now
                print(split_line(srv), file=sys.stderr, flush=True)
            placed = arrivals.console_line(srv) if getattr(srv.state.plan, "arrivals", None) else None
            if placed:
                print(placed, file=sys.stderr, flush=True)
            print_progress(srv, total, eta.tick())
        had_groups = srv.state.plan.groups is not None

    loop = RoundLoop(server, engine, plan, data.test, on_round, data.validation)
    try:
        if not loop.run(stop_after):
            return None
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    return finish(server, plan, progress, triv)


def _trivial(run_dir: Path, data: FederatedData, cfg: Config) -> trivial.Trivial:
    """The run's trivial predictor: fitted when the run starts and written to trivial.json; a resumed run reads
    it back instead of fitting it again (it depends only on the data, which the config fixes). A file that no
    longer matches the hash the checkpoint recorded is accepted only if it is what fedmas itself writes (a
    task arrived, and the run was stopped before its next checkpoint); otherwise it was edited: refused."""
    p = run_dir / TRIVIAL
    recorded = recorded_trivial_sha256(run_dir)
    if p.is_file():
        text = p.read_bytes()
        if recorded is None or hashlib.sha256(text).hexdigest() == recorded:
            try:
                got = trivial.Trivial.from_json(json.loads(text))
                if set(cfg.task_list) <= set(got.test_loss):
                    return got
            except (ValueError, TypeError, AttributeError):
                pass  # damaged: fitted again below, and rewritten
        else:
            fitted = trivial.fit(data, cfg.task_list, cfg.federation.eval_batch_size)
            if text == _trivial_text(fitted).encode():
                return fitted
            raise CheckpointError(f"{p} was changed after the run started (it matches neither the hash in "
                                  f"{run_dir / 'checkpoint' / 'state.json'} nor the constant predictor fitted on "
                                  f"the run's data): skill is measured against it; put it back, or delete it to "
                                  f"have it fitted again")
    triv = trivial.fit(data, cfg.task_list, cfg.federation.eval_batch_size)
    atomic_write_text(p, _trivial_text(triv))
    return triv


def _trivial_text(triv: trivial.Trivial) -> str:
    return json.dumps(triv.to_json(), indent=1)


def _check_progress(run_dir: Path, state: ServerState, total: int | None) -> None:
    """A checkpoint's round counts must be possible for this run (a tampered round is refused, naming the file)."""
    sp = run_dir / "checkpoint" / "state.json"
    if total and state.round > total:
        raise CheckpointError(f"{sp}: round {state.round} is beyond the {total} rounds this run has in all")
    bad = [t.name for t in state.active + state.finished if not 0 <= t.done_rounds <= min(t.rounds, state.round)]
    if bad:
        raise CheckpointError(f"{sp}: FL task(s) {bad[:3]} report more rounds done than possible")


def serve_run_folder(run_dir: Path, engine_factory: EngineFactory, config: str | None = None,
                     overrides: list[str] | None = None) -> dict[str, Any] | None:
    """A deployed ServerApp's entry: drive the run in ``run_dir`` (prepared by ``fedmas run``), or
    prepare it first from ``config`` when ``flwr run`` was called directly."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        if not config:
            raise ConfigError(f"{run_dir} is not a fedmas run folder and no config was given")
        check_new_run_dir(run_dir)
        prepare_run_dir(run_dir, check_config(load_config(config, overrides or []), config))
    with DriveLock(run_dir):  # an earlier ServerApp of this run may still be driving it: wait for it to end
        done = finished_summary(run_dir)  # ... it may have finished the run
        if done is not None:
            return done
        # the submitter checked it
        return _drive(load_config(run_dir / "config.yaml", saved=True), run_dir, engine_factory)


def _write_derived(server: Server) -> None:
    """Rewrite what derives from the state (affinity.json, split.json) from the checkpoint just loaded,
    so a kill between the checkpoint and these files never leaves a stale one."""
    write_affinity(server, always=True)
    split = server.state.plan.split
    if split is not None:
        atomic_write_text(server.run_dir / "split.json", json.dumps(split, indent=1))
    if getattr(server.state.plan, "arrivals", None):
        arrivals.write(server)
