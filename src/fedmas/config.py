"""Run configuration, validated once at the edge (YAML file + ``--set key=value``).

Every error names the offending key and what would be accepted; everything
past :func:`load_config` trusts its input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmas.files import read_small_text
from fedmas.tasks import TASK_SETS, TASKS


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one), at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ConfigError(ValueError):
    """A bad configuration value; the message says which and what is accepted."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        """``true``/``yes`` where a number belongs is refused (pydantic would read it as 1)."""
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                v = data.get(name)
                if isinstance(v, bool) and not _admits_bool(f.annotation):
                    raise ValueError(f"{name}: a number or a name is expected here, got the boolean {str(v).lower()}")
        return data


def _admits_bool(annotation: Any) -> bool:
    import typing

    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(a) for a in typing.get_args(annotation))


class DataConfig(_Strict):
    dataset: str = Field("scenes", description="'scenes', 'taskonomy', or 'python:<module>:<function>'")
    buildings: int = Field(8, ge=1, le=1000)
    train_images: int = Field(48, ge=1, le=100_000)
    test_images: int = Field(16, ge=1, le=100_000)
    resolution: int = Field(64, ge=16, le=1024)
    views_per_room: int = Field(8, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**32 - 1,
                      description="seed of the rendered scenes (independent of the training seed)")
    root: str | None = None
    buildings_file: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of every client's training data held out as validation data: the "
                                     "only data that decisions (HOA's groups, best_val selection) read")
    cache_dir: str | None = None
    label_coverage: float | dict[str, float] = Field(
        1.0, description="partial labels: each client holds each task's labels with this probability (one "
                         "number, or one per task), drawn once per client from data.seed; a client left with "
                         "none holds one task drawn at random. 1.0: every client holds every task")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="a plugin dataset's own settings, passed to it unchecked "
                                                "as data_config.options")

    @field_validator("label_coverage")
    @classmethod
    def _coverage(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        for p in (v.values() if isinstance(v, dict) else [v]):
            if not 0 <= p <= 1:
                raise ValueError(f"a coverage is a probability in [0, 1], got {p}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v in ("scenes", "taskonomy") or (v.startswith("python:") and v.count(":") == 2):
            return v
        raise ValueError("accepted: 'scenes', 'taskonomy', or 'python:<module>:<function>'")

    @model_validator(mode="after")
    def _resolution(self) -> DataConfig:
        if self.resolution % 16:
            raise ValueError(f"data.resolution must be a multiple of 16, got {self.resolution}")
        if self.dataset == "taskonomy" and not self.root:
            raise ValueError("data.root is required when data.dataset is 'taskonomy'")
        if self.options and not self.dataset.startswith("python:"):
            raise ValueError(f"data.options is for a plugin dataset ('python:<module>:<function>'); "
                             f"{self.dataset!r} takes its settings from the other data.* keys")
        return self


_PLUGIN_REF = r"^python:[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class ModelConfig(_Strict):
    encoder: str = Field(
        "small", description="small (light encoder, heavy heads), deep (encoder ~90% of the parameters, like the "
                             "paper's), resnet18, xception (GPU scale), or python:<module>:<function> (your own "
                             "encoder: a module mapping (B, 3, H, W) to a feature map; fedmas adds one head per task)")
    network: str | None = Field(None, pattern=_PLUGIN_REF,
                                description="python:<module>:<function>: your whole model; function(tasks) returns a "
                                            "module with .encoder and .heads (one module per task)")
    width: int = Field(16, ge=2, le=512)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        import re

        if v not in ("small", "deep", "resnet18", "xception") and not re.match(_PLUGIN_REF, v):
            raise ValueError(f"model.encoder {v!r}: expected small, deep, resnet18, xception or "
                             f"python:<module>:<function>")
        return v
    encoder_grad_scale: Literal["inv_sqrt_n", "none"] = Field(
        "inv_sqrt_n", description="scale of the shared encoder's gradient in a model of n tasks: 1/√n "
                                  "(as the Taskonomy multi-task code MAS builds on) or none (plain sum)")


class FederationConfig(_Strict):
    rounds: int = Field(20, ge=1, le=1_000_000, description="R: rounds per FL task lifetime (total for MAS)")
    clients_per_round: int = Field(4, ge=1, le=1_000_000)
    max_tasks_per_client: int = Field(1, ge=1, le=1000)
    local_epochs: int = Field(1, ge=1, le=10_000)
    batch_size: int = Field(16, ge=1, le=1_000_000)
    lr: float = Field(0.1, gt=0, le=1e3)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=1e3)
    schedule: Literal["poly", "constant"] = "poly"
    aggregation: Literal["fedavg", "fedprox"] = "fedavg"
    prox_mu: float = Field(0.01, ge=0, le=1e6)
    task_weighting: Literal["equal", "gradnorm"] = "equal"
    gradnorm_alpha: float = Field(1.5, ge=0, le=100)
    eval_every: int = Field(1, ge=1, le=1_000_000)
    eval_batch_size: int = Field(64, ge=1, le=1_000_000)
    round_deadline_s: float | None = Field(None, gt=0, le=1e7)
    min_replies: int = Field(1, ge=1, le=1_000_000)
    max_round_retries: int = Field(2, ge=0, le=1000)
    select: Literal["last", "best_val"] = Field(
        "last", description="the reported model of each FL task: its last round's, or the one with the lowest "
                            "validation loss (as the MAS reference reports)")


class MASConfig(_Strict):
    """Defaults follow the MAS reference implementation: the merged model trains R0 = 0.7·R rounds, the
    split is decided from the mean affinity of its first 0.1·R rounds (measuring stops after them), and
    each group trains R − R0 rounds with the poly schedule restarted from the base learning rate."""

    splits: int | Literal["auto"] = 2
    merge_rounds: int | float | Literal["auto"] = Field(
        0.7, description="R0: rounds of the merged phase; an integer, a fraction of federation.rounds, or auto")
    affinity_rounds: int | float | Literal["all"] = Field(
        0.1, description="the split uses the mean affinity of the first N merge rounds (an integer or a fraction "
                         "of federation.rounds); measuring stops after them. 'all': every merge round")
    affinity_window: Literal["first", "last"] = Field(
        "first", description="which merged rounds affinity_rounds counts: first (the reference: measure the "
                             "first N, then stop) or last (measure only the N rounds just before the split)")
    split_rounds: int | None = Field(None, ge=1, le=1_000_000,
                                     description="rounds each group trains after the split; None = R − R0")
    split_schedule: Literal["restart", "continue"] = Field(
        "restart", description="restart: each group runs the poly schedule afresh over its rounds from the base "
                               "lr; continue: the groups take the schedule on from round R0 of R")
    lookahead_step: int = Field(10, ge=1, le=1_000_000)
    max_splits: int = Field(4, ge=1, le=64)
    auto_epsilon: float = Field(0.05, ge=0, le=100, description="splits: auto — smallest k within ε·|best| of the best")
    compute_budget_h: float | None = Field(None, gt=0, le=1e9)
    settle_threshold: float = Field(0.9, ge=-1, le=1)
    settle_patience: int = Field(2, ge=1, le=10_000)
    max_merge_rounds: int = Field(15, ge=1, le=1_000_000)
    min_merge_rounds: int = Field(3, ge=1, le=1_000_000)

    @field_validator("splits")
    @classmethod
    def _positive_or_auto(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be ≥ 1 or 'auto'")
        return v

    @field_validator("merge_rounds", "affinity_rounds")
    @classmethod
    def _rounds_or_fraction(cls, v: int | float | str) -> int | float | str:
        if isinstance(v, bool):
            raise ValueError("must be a number of rounds, a fraction in (0, 1), or a word")
        if isinstance(v, float) and not (0 < v < 1 or (v.is_integer() and v >= 1)):
            raise ValueError("a fraction of federation.rounds must lie in (0, 1)")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, int) and not 1 <= v <= 1_000_000:
            raise ValueError("must be between 1 and 1000000 rounds")
        return v

    def rounds_of(self, value: int | float, total: int) -> int:
        """An integer round count, or a fraction of ``total`` rounded (at least 1)."""
        return int(value) if isinstance(value, int) else max(1, int(round(value * total)))


class HOAConfig(_Strict):
    pair_rounds: int | Literal["full"] = Field(
        "full", description="rounds each single task and pair trains to estimate losses; full = federation.rounds "
                            "(the paper's HOA, charged in full); a small number is a cheaper probe")

    @field_validator("pair_rounds")
    @classmethod
    def _pair_rounds(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1_000_000:
            raise ValueError("must be between 1 and 1000000, or 'full'")
        return v


class ArrivalConfig(_Strict):
    """FL tasks that arrive while the others train (method mas): each named task joins at its round."""

    tasks: dict[str, int | float] = Field(
        default_factory=dict, max_length=64,
        description="task → the round it arrives: a round index (from 0, as in the files) or a fraction of "
                    "federation.rounds; its data is loaded from the start, it trains from that round on")
    policy: Literal["probe", "alone"] = Field(
        "probe", description="probe: measure its affinity with each current group on a copy of that group's "
                             "model for probe_rounds rounds, then join the group whose split objective it raises "
                             "most, or open a group of its own when none gains; alone: train it as a single-task "
                             "FL task from scratch for federation.rounds rounds")
    probe_rounds: int = Field(2, ge=1, le=10_000, description="rounds of the probe (policy probe)")

    @field_validator("tasks")
    @classmethod
    def _rounds(cls, v: dict[str, int | float]) -> dict[str, int | float]:
        unknown = [t for t in v if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; accepted: {', '.join(sorted(TASKS))}")
        for t, r in v.items():
            if isinstance(r, bool) or (isinstance(r, float) and not (0 < r < 1 or (r.is_integer() and r >= 1))) \
                    or (isinstance(r, int) and not 1 <= r <= 1_000_000):
                raise ValueError(f"{t}: the arrival round must be a round index ≥ 1 or a fraction in (0, 1), "
                                 f"got {r!r}")
        return {t: int(r) if isinstance(r, float) and r.is_integer() else r for t, r in v.items()}

    def round_of(self, task: str, total: int) -> int:
        """The round index at which ``task`` arrives (a fraction of ``total`` rounded, at least 1)."""
        r = self.tasks[task]
        return int(r) if isinstance(r, int) else max(1, int(round(r * total)))


class CostConfig(_Strict):
    device_power_w: float = Field(15.0, gt=0, le=1e6, description="modelled device power while training")
    server_power_w: float = Field(50.0, gt=0, le=1e7)
    device_flops_per_s: float = Field(1e11, gt=0, le=1e18, description="assumed effective FLOP/s of a client "
                                      "device; modelled energy = FLOPs / this × device_power_w")
    speed_factors: dict[str, float] = Field(default_factory=dict, max_length=1_000_000,
                                            description="client → slowdown factor (> 0)")
    measure_energy: bool = True

    @field_validator("speed_factors")
    @classmethod
    def _speeds(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not 0 < x <= 1e6}
        if bad:
            raise ValueError(f"slowdown factors must be in (0, 1e6]: {_one_line(repr(bad), 80)}")
        return v


class FlowerConfig(_Strict):
    nodes: int = Field(2, ge=1, le=100_000,
                       description="SuperNodes: simulated (flower-sim) or expected to connect (flower)")
    superlink: str = Field("127.0.0.1:9093", description="host:port of the SuperLink (engine: flower)")
    root_certificates: str | None = Field(None, description="CA certificate (PEM) for TLS; None = insecure")
    connect_timeout_s: float = Field(120.0, gt=0, le=1e6)
    round_deadline_s: float = Field(300.0, gt=0, le=1e7, description="used when federation.round_deadline_s is unset")
    liveness_s: float = Field(2.0, gt=0, le=3600, description="how often a round asks the SuperLink which nodes are "
                                                             "connected: a reply owed by a node that left is a "
                                                             "dropout at once, whatever the deadline")
    straggler_multiple: float | None = Field(
        5.0, ge=1, le=1e6, description="once half of a round's replies are in, a client that has not replied "
                                       "within this multiple of the round's median reply time (and at least "
                                       "straggler_min_s) is a straggler and counts as a dropout; null: only "
                                       "the round deadline and liveness end a wait")
    straggler_min_s: float = Field(60.0, ge=0, le=1e7, description="the straggler deadline is never shorter")
    poll_s: float = Field(0.2, gt=0, le=60)
    node_threads: int | None = Field(None, ge=1, le=1024, description="torch threads of the training on each "
                                                                       "node (null: threads); 1 when several "
                                                                       "SuperNodes share one machine's cores")
    worker_idle_s: float = Field(1800.0, gt=0, le=1e7, description="engine: flower. A node's warm worker started "
                                                                   "by its first message stops after this many "
                                                                   "seconds without a message (or with its SuperNode)")
    client_work: Literal["train", "train-here", "none", "echo"] = Field(
        "train", description="engine: flower. train: a warm fedmas worker beside each SuperNode trains (started "
                             "by the node's first message); train-here: the ClientApp process trains (torch, data "
                             "and model set up for every message); none: reply at once with the weights received, "
                             "each changed in its last place, without training (measures Flower's own cost, with "
                             "as many new bytes sent up as training sends; the run learns nothing); echo: the same "
                             "but with the very bytes received, which Flower does not send again (optimistic)")


class Config(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$",
                      description="run name: letters, digits and _ . : + - (it names the default run folder)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="training seed (client selection, initialisation)")
    # plugins come first: their modules are imported before the method, tasks and engine are checked against
    # the registries they may add to (pydantic validates fields in this order)
    plugins: list[str] = Field(default_factory=list, max_length=64,
                               description="modules imported first (own tasks, datasets, methods)")
    method: str = "mas"
    tasks: list[str] | str = Field("sdnkt", validate_default=True)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    federation: FederationConfig = FederationConfig()
    mas: MASConfig = MASConfig()
    hoa: HOAConfig = HOAConfig()
    arrival: ArrivalConfig = ArrivalConfig()
    cost: CostConfig = CostConfig()
    engine: str = Field("inprocess", description="how messages travel: inprocess, flower-sim or flower")
    flower: FlowerConfig = FlowerConfig()
    threads: int | Literal["auto"] = Field("auto", description="torch threads of training; auto: the cores this "
                                                                "process may use (its CPU affinity)")
    tensorboard: bool = Field(False, description="write TensorBoard event files (live curves) into the run folder")
    device: str = Field("auto", description="where training, the affinity lookahead and evaluation run: auto "
                                            "(a GPU when there is one), cpu, cuda, cuda:N or mps")

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[str]) -> list[str]:
        from fedmas.plugins import import_plugin

        for mod in v:
            import_plugin(mod)  # a PluginError is a ValueError: reported as this key's error
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str] | str) -> list[str]:
        names = list(TASK_SETS[v]) if isinstance(v, str) and v in TASK_SETS else v
        if isinstance(names, str):
            names = [s.strip() for s in names.split(",") if s.strip()]
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; accepted: {', '.join(sorted(TASKS))} "
                             f"or a set name ({', '.join(TASK_SETS)})")
        if len(set(names)) != len(names) or not names:
            raise ValueError("tasks must be a non-empty list without repeats")
        return list(names)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        """Checks across keys that need nothing registered; the method's and engine's names, and what the method
        implies (``fedmas.checks.check_config``), are checked once plugins are imported, at the run's start."""
        if self.data.dataset == "scenes" and self.federation.clients_per_round > self.data.buildings:
            raise ValueError(f"federation.clients_per_round={self.federation.clients_per_round} exceeds the "
                             f"number of clients (data.buildings={self.data.buildings})")
        if self.data.validation_fraction == 0 and (self.method == "hoa" or self.federation.select == "best_val"):
            raise ValueError("data.validation_fraction is 0, but HOA's group choice and federation.select: best_val "
                             "read validation data (never test data); hold out a fraction, e.g. 0.1")
        if self.federation.min_replies > self.federation.clients_per_round:
            raise ValueError("federation.min_replies cannot exceed federation.clients_per_round")
        self._check_arrivals()
        return self

    def _check_arrivals(self) -> None:
        a, R = self.arrival, self.federation.rounds
        if not a.tasks:
            return
        if self.method != "mas":
            raise ValueError(f"arrival.tasks: tasks that arrive mid-training are supported by method mas, "
                             f"not {self.method!r}")
        twice = [t for t in a.tasks if t in self.tasks]  # type: ignore[operator]
        if twice:
            raise ValueError(f"arrival.tasks names {twice}, which are among the starting tasks already")
        if self.federation.task_weighting == "gradnorm":
            raise ValueError("arrival.tasks is not supported with federation.task_weighting: gradnorm")
        late = {t: a.round_of(t, R) for t in a.tasks}
        bad = {t: r for t, r in late.items() if r >= R}
        if bad:
            raise ValueError(f"arrival.tasks: {bad} arrive at or after the last round of federation.rounds={R}")

    @property
    def start_tasks(self) -> tuple[str, ...]:
        """The tasks trained from round 0 (the ``tasks`` key)."""
        return tuple(self.tasks)  # type: ignore[arg-type]

    @property
    def arrival_tasks(self) -> tuple[str, ...]:
        """The tasks that arrive later (``arrival.tasks``), in arrival order (ties by name)."""
        R = self.federation.rounds
        return tuple(sorted(self.arrival.tasks, key=lambda t: (self.arrival.round_of(t, R), t)))

    @property
    def cpu_threads(self) -> int:
        """``threads`` as a number: ``auto`` is the cores this process may use, not the machine's total."""
        return self.threads if isinstance(self.threads, int) else available_cores()

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1024:
            raise ValueError(f"threads={v}: expected auto or an integer in 1..1024")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", v):
            raise ValueError(f"device {v!r}: expected auto, cpu, cuda, cuda:N or mps")
        return v

    @property
    def task_list(self) -> tuple[str, ...]:
        """Every task of the run: the starting tasks, then those that arrive (their data is loaded at the start)."""
        return self.start_tasks + self.arrival_tasks


MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """YAML without aliases and at most :data:`MAX_YAML_DEPTH` levels deep: an alias bomb or a deeply
    nested document is refused while it is read, before anything walks it."""

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                     f"fedmas does not guess which one you meant")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases (*name) are not accepted in fedmas files (line {mark.line + 1})")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_yaml(text: str, source: str) -> Any:
    """Parse bounded YAML (size, depth, no aliases); :class:`ConfigError` naming ``source`` otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES // 1024} KiB; not a fedmas config")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({_one_line(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_value(text: str) -> Any:
    try:
        return safe_yaml(text, "--set value")
    except ConfigError:
        if len(text) > MAX_YAML_BYTES:
            raise
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=10")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def format_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _section(err["loc"][:-1])
            if parent is not None:
                msg += f"; accepted keys here: {', '.join(parent.model_fields)}"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg += f" (got {_one_line(repr(err['input']), 80)})"
        lines.append(f"{loc}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def _section(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def add_import_path(folder: Path, first: bool = False) -> None:
    """Make modules in ``folder`` importable (after everything else, or ``first``)."""
    d = str(Path(folder).resolve())
    if d in sys.path:
        if not first or sys.path[0] == d:
            return
        sys.path.remove(d)
    sys.path.insert(0, d) if first else sys.path.append(d)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; raises :class:`ConfigError` with a readable message."""
    raw: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        raw.update(read_yaml_mapping(p, "config file"))
        add_import_path(p.parent)  # plugins may live beside their config, no PYTHONPATH needed
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_error(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def read_yaml_mapping(p: Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a non-empty mapping; :class:`ConfigError` naming the file otherwise."""
    loaded = safe_yaml(read_small_text(p, what, MAX_YAML_BYTES, ConfigError), str(p))
    if loaded is None:
        raise ConfigError(f"{p}: the file is empty; a config needs at least 'tasks:' or 'method:'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return loaded
