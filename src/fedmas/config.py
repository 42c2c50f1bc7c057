"""Run configuration, validated once at the edge (YAML file + ``--set key=value``).

Every error names the offending key and what would be accepted; everything
past :func:`load_config` trusts its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fedmas.config_sections import (  # noqa: E402, F401 - the sections, importable from fedmas.config as before
    ArrivalConfig,
    CostConfig,
    DataConfig,
    ExhaustiveConfig,
    FederationConfig,
    FlowerConfig,
    HOAConfig,
    MASConfig,
    ModelConfig,
    _Strict,
)
from fedmas.runtime import available_cores  # noqa: F401 - importable from fedmas.config as before
from fedmas.tasks import TASK_SETS, TASKS
from fedmas.yamlio import (  # noqa: F401 - importable from fedmas.config as before
    MAX_YAML_BYTES,
    ConfigError,
    add_import_path,
    apply_overrides,
    one_line,
    read_yaml_mapping,
    safe_yaml,
)

VALIDATES = ("hoa", "exhaustive")  # methods whose group choice reads validation losses


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
    exhaustive: ExhaustiveConfig = ExhaustiveConfig()
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

    @model_validator(mode="before")
    @classmethod
    def _arrivals_join_the_merged_model(cls, data: Any) -> Any:
        """With tasks arriving mid-training an unset ``mas.start`` is ``merged``: the newcomers join the merged
        model, which groups trained afresh would not continue."""
        if isinstance(data, dict) and isinstance(data.get("arrival"), dict) and data["arrival"].get("tasks"):
            return _start_merged_unless_set(data)
        return data

    @model_validator(mode="after")
    def _cross(self) -> Config:
        """Checks across keys that need nothing registered; the method's and engine's names, and what the method
        implies (``fedmas.checks.check_config``), are checked once plugins are imported, at the run's start."""
        if self.data.dataset == "scenes" and self.federation.clients_per_round > self.data.buildings:
            raise ValueError(f"federation.clients_per_round={self.federation.clients_per_round} exceeds the "
                             f"number of clients (data.buildings={self.data.buildings})")
        if self.data.validation_fraction == 0 and (self.method in VALIDATES or self.federation.select == "best_val"):
            raise ValueError("data.validation_fraction is 0, but the group choice of HOA and of the exhaustive "
                             "method and federation.select: best_val "
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
            msg += f" (got {one_line(repr(err['input']), 80)})"
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


def _start_merged_unless_set(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``mas.start: merged`` where it names no start (a ``mas`` that is not a mapping is left for
    validation to name)."""
    mas = raw.get("mas") or {}
    if isinstance(mas, dict) and "start" not in mas:
        return {**raw, "mas": {**mas, "start": "merged"}}
    return raw


def as_saved(raw: dict[str, Any]) -> dict[str, Any]:
    """A run folder's config.yaml as the fedmas that wrote it meant it. A run folder's config is written
    resolved, every key present; one without ``mas.start`` was written before that key existed, when the
    groups continued the merged model — read so, a resumed run goes on as it began."""
    return _start_merged_unless_set(raw) if isinstance(raw.get("mas"), dict) else raw


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, saved: bool = False) -> Config:
    """Read, override and validate a config; raises :class:`ConfigError` with a readable message.
    ``saved``: ``path`` is a run folder's config.yaml (:func:`as_saved`)."""
    raw: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        raw.update(read_yaml_mapping(p, "config file"))
        add_import_path(p.parent)  # plugins may live beside their config, no PYTHONPATH needed
    if saved:
        raw = as_saved(raw)
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_error(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
