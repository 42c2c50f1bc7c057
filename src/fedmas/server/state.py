"""Explicit server state and its crash-safe checkpoint (safetensors + JSON, never pickle).

Layout inside ``<run>/checkpoint/``: ``weights-<round>.safetensors`` holds every
FL task's weights (keys ``<fl task>/<param>``) and the torch RNG state;
``state.json`` holds everything else and names the weights file it belongs to.
Both are written to a temporary file and renamed, and ``state.json`` is renamed
last, so a SIGKILL at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedmas.accounting import CostLedger
from fedmas.files import atomic_write_bytes
from fedmas.messages import STATE  # the weighting state's names: the same on the wire and in the weights file


@dataclass
class FLTaskState:
    """One federated learning task in flight (a model over a group of tasks)."""

    name: str
    tasks: list[str]
    rounds: int  # rounds this FL task trains
    role: str = "final"  # "final": its losses are reported; "merged", "probe": intermediate phases
    measure_affinity: bool = False
    affinity_rounds: int | None = None  # measure during N rounds only (None: every round)
    affinity_skip: int = 0  # ... starting after this many rounds (0: the first N; rounds − N: the last N)
    schedule_offset: int = 0  # poly schedule position of its first round
    schedule_total: int = 0  # R of the poly schedule
    done_rounds: int = 0
    started_round: int = 0
    finished_round: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)  # test losses and metrics (reported, never read)
    last_val: dict[str, float] = field(default_factory=dict)  # validation losses (what decisions read)
    best_val: float | None = None  # federation.select: best_val — lowest validation total loss so far
    best_round: int | None = None
    selected_round: int | None = None  # the round whose model is reported
    needs: list[str] = field(default_factory=list)  # with partial labels, only clients holding these train it
    started_from: str | None = None  # the FL task whose weights it started from (a group: the merged model)
    start_val: float | None = None  # validation total of those starting weights (best_val: round 0's candidate)
    start_val_loss: dict[str, float] = field(default_factory=dict)  # ... and per task
    best_val_loss: dict[str, float] = field(default_factory=dict)  # validation losses of the kept best model

    def reported_val_loss(self, task: str) -> float | None:
        """The validation loss of ``task`` under the model this FL task reports: its last round's, or its kept
        best-validation model's; None without validation data (or for a best model kept by an older version)."""
        if self.selected_round == self.done_rounds and f"loss/{task}" in self.last_val:
            return self.last_val[f"loss/{task}"]
        return self.best_val_loss.get(task)

    @property
    def measuring(self) -> bool:
        """Whether this round's clients measure the grouping signals (the one place that decides when)."""
        return self.measure_affinity and len(self.tasks) > 1 and self.done_rounds >= self.affinity_skip and (
            self.affinity_rounds is None or self.done_rounds < self.affinity_skip + self.affinity_rounds)

    def measured_by(self, n_held: int) -> bool:
        """Whether a client holding labels of ``n_held`` of this FL task's tasks measures this round: a signal
        between tasks needs two of them."""
        return self.measuring and n_held > 1


def mean_matrix(matrices: list[list[list[float | None]]]) -> np.ndarray:
    """The mean of per-round matrices, each pair over the rounds that measured it; NaN where none did
    (partial labels: no client held both tasks)."""
    stack = np.asarray(matrices, dtype=np.float64)  # None -> NaN
    seen = ~np.isnan(stack)
    count = seen.sum(0)
    total = np.where(seen, stack, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def aligned_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """The task names of affinity rows: the first row's, then any that later rows add, in order."""
    tasks: list[str] = []
    for a in rows:
        tasks += [t for t in a["tasks"] if t not in tasks]
    return tasks


def _aligned(row: dict[str, Any], tasks: list[str]) -> list[list[float | None]]:
    """``row``'s matrix laid out over ``tasks`` (None where the row has no such pair)."""
    if row["tasks"] == tasks:
        return row["matrix"]
    at = [row["tasks"].index(t) if t in row["tasks"] else None for t in tasks]
    m = row["matrix"]
    return [[None if i is None or j is None else m[i][j] for j in at] for i in at]


@dataclass
class AffinityLog:
    """The server's per-round affinity matrices (each the sample-weighted mean over that round's clients)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def append(self, round_index: int, fl_task: str, tasks: list[str], matrix: list[list[float]], clients: int,
               samples: float, replies: list[tuple[list[list[float]], list[int], float]] | None = None,
               signal: str | None = None) -> None:
        """``replies``: each client's own matrix, the FL task's indices of its tasks and its sample count (what
        the split's confidence resamples); ``signal``: the grouping signal measured (None: the lookahead
        affinity, the reference's)."""
        row = {"round": round_index, "fl_task": fl_task, "tasks": list(tasks), "matrix": matrix, "clients": clients,
               "samples": samples}
        if replies is not None:
            row["replies"] = [[m, list(idx), float(n)] for m, idx, n in replies]
        if signal is not None:
            row["signal"] = signal
        self.rows.append(row)

    def replies(self, fl_task: str, first: int | None = None, signal: str | None = None
                ) -> list[tuple[list[list[float]], list[str], float]]:
        """Every client reply of :meth:`of`'s rows: its matrix, the names of its rows' tasks, its sample count
        (empty for rows written before replies were kept)."""
        return [(m, [a["tasks"][i] for i in idx], n) for a in self.of(fl_task, first, signal) for m, idx, n in
                a.get("replies", [])]

    def signals(self, fl_task: str) -> list[str]:
        """The grouping signals other than the lookahead affinity measured for ``fl_task``."""
        return sorted({a["signal"] for a in self.rows if a["fl_task"] == fl_task and "signal" in a})

    def of(self, fl_task: str, first: int | None = None, signal: str | None = None) -> list[dict[str, Any]]:
        """``fl_task``'s rows of ``signal`` (None: the lookahead affinity) in round order (only those of its
        first ``first`` rounds when given)."""
        rows = [a for a in self.rows if a["fl_task"] == fl_task and a.get("signal") == signal]
        if first is None or not rows:
            return rows
        return [a for a in rows if a["round"] < rows[0]["round"] + first]

    def mean(self, fl_task: str, first: int | None = None, signal: str | None = None
             ) -> tuple[list[str], np.ndarray] | None:
        """Task names and the mean matrix over :meth:`of`'s rows, or None when nothing was measured.
        When a task joined the FL task midway (an arrival), rows are aligned by task name: the names are
        those of the first row followed by the ones that joined, and a pair counts only the rows that have it."""
        rows = self.of(fl_task, first, signal)
        if not rows:
            return None
        tasks = aligned_tasks(rows)
        return tasks, mean_matrix([_aligned(a, tasks) for a in rows])

    def to_doc(self, fl_task: str, first: int | None = None, signal: str | None = None) -> dict[str, Any] | None:
        """The affinity file: ``{"tasks", "affinity": {source: {target: Z}}, "rounds", "clients", "history"}``;
        ``affinity`` is the mean over the rows used (``rounds`` of them, ``clients`` replies in all)."""
        measured = self.mean(fl_task, first, signal)
        if measured is None:
            return None
        tasks, z = measured
        rows = self.of(fl_task, first, signal)
        missing = [[s, t] for i, s in enumerate(tasks) for j, t in enumerate(tasks) if np.isnan(z[i, j])]
        return {"tasks": list(tasks), "affinity": {s: {t: None if np.isnan(z[i, j]) else float(z[i, j])
                                                       for j, t in enumerate(tasks)}
                                                   for i, s in enumerate(tasks)},
                **({"missing": missing} if missing else {}),
                "rounds": len(rows), "clients": sum(a["clients"] for a in rows),
                "history": [{"round": a["round"], "clients": a["clients"], "matrix": _aligned(a, tasks)}
                            for a in self.of(fl_task, None, signal)]}


P = TypeVar("P", bound="PlanState")


@dataclass
class PlanState:
    """What a method has decided so far, checkpointed whole and read back on resume. Each method keeps its
    own fields in a subclass (:attr:`fedmas.methods.Plan.State`); those here are the ones every reader (the
    console, the summary, the figures) shares."""

    started: bool = False  # the method has created its first FL tasks
    groups: list[list[str]] | None = None  # the task groups it ended with (once chosen)
    assignment: dict[str, str] | None = None  # task → the FL task that reports it, where not group<i>
    split: dict[str, Any] | None = None  # the split decision, as split.json holds it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls: type[P], doc: dict[str, Any]) -> P:
        """The state from a checkpoint's ``plan``. The base class (a reader that does not know the method)
        keeps the shared fields; a method's class refuses fields it does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown and cls is not PlanState:
            raise ValueError(f"the plan state of this method has no field(s) {unknown}")
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class ServerState:
    round: int = 0
    active: list[FLTaskState] = field(default_factory=list)
    finished: list[FLTaskState] = field(default_factory=list)
    weights: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    strategy: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # per FL task: the weighting's state
    plan: PlanState = field(default_factory=PlanState)
    affinity: AffinityLog = field(default_factory=AffinityLog)
    faults: dict[str, int] = field(default_factory=dict)
    costs: CostLedger = field(default_factory=lambda: CostLedger(15.0))
    rng: dict[str, Any] = field(default_factory=dict)
    torch_rng: Tensor | None = None

    def task(self, name: str) -> FLTaskState:
        for t in self.active + self.finished:
            if t.name == name:
                return t
        raise KeyError(name)

    def retire(self, fl: FLTaskState, finished_round: int | None = None) -> None:
        """``fl`` trains no more: move it to the finished list (its last round: the current one unless given)."""
        fl.finished_round = self.round if finished_round is None else finished_round
        self.active.remove(fl)
        self.finished.append(fl)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(run_dir: Path, state: ServerState) -> None:
    ck = run_dir / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    tensors = {f"{fl}/{k}": v.contiguous() for fl, w in state.weights.items() for k, v in w.items()}
    tensors.update({f"{fl}/{STATE}{k}": v.contiguous() for fl, w in state.strategy.items() for k, v in w.items()})
    tensors["__rng__/torch"] = torch.get_rng_state()
    wname = f"weights-{state.round:05d}.safetensors"
    tmp = ck / (wname + ".tmp")
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ck / wname)
    doc = {
        "format": FORMAT, "weights_file": wname, "weights_sha256": _file_sha256(ck / wname),
        "config_sha256": config_sha256(run_dir), "trivial_sha256": file_sha256_or_none(run_dir / TRIVIAL),
        "round": state.round,
        "active": [asdict(t) for t in state.active], "finished": [asdict(t) for t in state.finished],
        "plan": state.plan.to_json(), "affinity": state.affinity.rows, "faults": state.faults,
        "costs": state.costs.to_json(), "rng": state.rng,
    }
    _write_state_doc(ck / "state.json", doc)
    for old in ck.glob("weights-*.safetensors"):
        if old.name != wname:
            old.unlink(missing_ok=True)


class CheckpointError(ValueError):
    pass


FORMAT = 2  # checkpoints of format 2 and later must carry every checksum (CHECKSUMS); format 1 may lack them
CHECKSUMS = ("state_sha256", "weights_sha256", "config_sha256", "trivial_sha256")
TRIVIAL = "trivial.json"  # the run's constant predictor, which skill and "learned" are measured against


def file_sha256_or_none(path: Path) -> str | None:
    return _file_sha256(path) if path.is_file() else None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_sha256(run_dir: Path) -> str | None:
    """The hash of the run's config.yaml as written when the run started (None without one)."""
    p = run_dir / "config.yaml"
    return _file_sha256(p) if p.is_file() else None


def _doc_sha256(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_state_doc(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps({**doc, "state_sha256": _doc_sha256(doc)}))


def change_config(run_dir: Path, text: str) -> None:
    """fedmas itself changes the run's config.yaml (a task added with ``--add-task``) so that a kill at any
    instant leaves a run that resumes: the checkpoint first records the new config's hash as pending, then
    config.yaml is replaced, then the hash becomes the run's. A resume accepts the config the checkpoint names
    or the pending one (:func:`verify_config`)."""
    sp = run_dir / "checkpoint" / "state.json"
    if not sp.is_file():
        atomic_write_text(run_dir / "config.yaml", text)
        return
    doc = _verified_doc(sp)
    doc["pending_config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    _write_state_doc(sp, doc)
    atomic_write_text(run_dir / "config.yaml", text)
    doc["config_sha256"] = doc.pop("pending_config_sha256")
    _write_state_doc(sp, doc)


def verify_config(run_dir: Path) -> None:
    """Before anything of a resumed run's config is used (its plugins imported): config.yaml is the one the run
    started with (the hash its checkpoint recorded), else :class:`CheckpointError` naming it."""
    sp = run_dir / "checkpoint" / "state.json"
    if not sp.is_file():
        return
    _check_config_hash(_verified_doc(sp), run_dir, sp)


def _check_config_hash(doc: dict[str, Any], run_dir: Path, sp: Path) -> None:
    now = config_sha256(run_dir)
    if "config_sha256" in doc and now not in (doc["config_sha256"], doc.get("pending_config_sha256")):
        raise CheckpointError(f"{run_dir / 'config.yaml'} does not match the hash in {sp}: config.yaml was changed "
                              f"after the run started, or checkpoint/ was copied in from another run (another seed "
                              f"or config); a resumed run must be the run that was started: put back the config or "
                              f"the checkpoint that belong together, or start a new run")


def _verified_doc(sp: Path) -> dict[str, Any]:
    if sp.stat().st_size > MAX_STATE_BYTES:
        raise CheckpointError(f"{sp}: larger than {MAX_STATE_BYTES >> 20} MiB; not a fedmas checkpoint")
    try:
        doc = json.loads(sp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise CheckpointError(f"unreadable checkpoint {sp}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weights_file"), str):
        raise CheckpointError(f"{sp}: not a fedmas checkpoint (no weights_file)")
    fmt = doc.get("format", 1)
    missing = [k for k in CHECKSUMS if k not in doc] if isinstance(fmt, int) and fmt >= 2 else []
    if missing:
        raise CheckpointError(f"{sp}: checksum field(s) {missing} missing (edited or damaged); the run cannot be "
                              f"resumed from it")
    if "state_sha256" in doc and doc["state_sha256"] != _doc_sha256(doc):
        raise CheckpointError(f"{sp}: its contents do not match its checksum (edited or damaged); the run cannot "
                              f"be resumed from it")
    return doc


def recorded_trivial_sha256(run_dir: Path) -> str | None:
    """The hash of trivial.json the run's checkpoint recorded (None: no checkpoint, or an older one)."""
    sp = run_dir / "checkpoint" / "state.json"
    return _verified_doc(sp).get("trivial_sha256") if sp.is_file() else None


def load_checkpoint(run_dir: Path, plan_state: type[PlanState] = PlanState) -> ServerState:
    """The state saved in ``run_dir/checkpoint``, the method's decisions read as ``plan_state`` (its
    :attr:`~fedmas.methods.Plan.State`); :class:`CheckpointError` naming the file when it is missing,
    unreadable, not a regular file, or holds fields of the wrong kind."""
    ck = run_dir / "checkpoint"
    sp = ck / "state.json"
    if not sp.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (missing {sp})")
    doc = _verified_doc(sp)
    name = doc["weights_file"]
    wpath = ck / name
    if "/" in name or "\\" in name or name.startswith(".") or not wpath.is_file():
        raise CheckpointError(f"checkpoint weights file missing or not a regular file: {wpath}")
    if "weights_sha256" in doc and doc["weights_sha256"] != _file_sha256(wpath):
        raise CheckpointError(f"{wpath}: its bytes do not match the checksum in {sp} (damaged or altered)")
    _check_config_hash(doc, run_dir, sp)
    try:
        flat = load_file(str(wpath))  # safetensors: plain tensors only, no code
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for malformed files
        raise CheckpointError(f"unreadable checkpoint weights {wpath}: {e}") from None
    try:
        return _state_from(doc, flat, plan_state)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed field is a refusal naming the file
        raise CheckpointError(f"{sp}: malformed checkpoint ({type(e).__name__}: {e})") from None


MAX_STATE_BYTES = 256 << 20
_OLD_STATE_NAMES = ("gradnorm.weights",)  # kept among the model weights before the weighting had its own state
MAX_ROUND = 10**9  # far above any schedule the schema admits (a tampered 10^20 is refused)


def _state_from(doc: dict[str, Any], flat: dict[str, Tensor], plan_state: type[PlanState]) -> ServerState:
    weights: dict[str, dict[str, Tensor]] = {}
    strategy: dict[str, dict[str, Tensor]] = {}
    torch_rng = flat.pop("__rng__/torch", None)
    if torch_rng is not None:
        torch.Generator().set_state(torch_rng)  # raises on a malformed state
    for key, v in flat.items():
        fl, name = key.split("/", 1)
        if name.startswith(STATE) or name in _OLD_STATE_NAMES:  # the latter: older checkpoints
            strategy.setdefault(fl, {})[name.removeprefix(STATE)] = v
        else:
            weights.setdefault(fl, {})[name] = v
    if not isinstance(doc["round"], int) or isinstance(doc["round"], bool) or not 0 <= doc["round"] <= MAX_ROUND:
        raise ValueError(f"round must be an integer in [0, {MAX_ROUND}], got {doc['round']!r}")
    rng = doc["rng"]
    if rng:
        np.random.default_rng().bit_generator.state = rng  # raises on a malformed state
    tasks = [FLTaskState(**t) for t in doc["active"]] + [FLTaskState(**t) for t in doc["finished"]]
    for t in tasks:
        if not (isinstance(t.name, str) and isinstance(t.tasks, list) and all(isinstance(x, str) for x in t.tasks)
                and all(isinstance(x, int) for x in (t.rounds, t.done_rounds, t.schedule_offset, t.schedule_total))):
            raise ValueError(f"FL task entry {t.name!r} has fields of the wrong type")
    if not isinstance(doc["plan"], dict) or not isinstance(doc["affinity"], list):
        raise ValueError("plan must be a mapping and affinity a list")
    n_active = len(doc["active"])
    return ServerState(
        round=doc["round"], active=tasks[:n_active], finished=tasks[n_active:], weights=weights,
        strategy={fl: strategy.get(fl, {}) for fl in weights}, plan=plan_state.from_json(doc["plan"]),
        affinity=AffinityLog(doc["affinity"]), faults=dict(doc.get("faults", {})),
        costs=CostLedger.from_json(doc["costs"]), rng=rng, torch_rng=torch_rng)
