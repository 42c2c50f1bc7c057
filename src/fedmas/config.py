"""Run configuration, validated once at the edge (YAML file + ``--set key=value``).

Every error names the offending key and what would be accepted; everything
past :func:`load_config` trusts its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedmas.tasks import TASK_SETS, TASKS


class ConfigError(ValueError):
    """A bad configuration value; the message says which and what is accepted."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: str = Field("scenes", description="'scenes', 'taskonomy', or 'python:<module>:<function>'")
    buildings: int = Field(8, ge=1, le=1000)
    train_images: int = Field(48, ge=1)
    test_images: int = Field(16, ge=1)
    resolution: int = Field(64, ge=16, le=1024)
    views_per_room: int = Field(8, ge=1)
    seed: int = Field(0, description="seed of the rendered scenes (independent of the training seed)")
    root: str | None = None
    buildings_file: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    cache_dir: str | None = None

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
        return self


class ModelConfig(_Strict):
    encoder: Literal["small", "resnet18", "xception"] = "small"
    width: int = Field(16, ge=2, le=512)


class FederationConfig(_Strict):
    rounds: int = Field(20, ge=1, description="R: rounds per FL task lifetime (total for MAS)")
    clients_per_round: int = Field(4, ge=1)
    max_tasks_per_client: int = Field(1, ge=1)
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["poly", "constant"] = "poly"
    aggregation: Literal["fedavg", "fedprox"] = "fedavg"
    prox_mu: float = Field(0.01, ge=0)
    task_weighting: Literal["equal", "gradnorm"] = "equal"
    gradnorm_alpha: float = Field(1.5, ge=0)
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    round_deadline_s: float | None = Field(None, gt=0)
    min_replies: int = Field(1, ge=1)
    max_round_retries: int = Field(2, ge=0)


class MASConfig(_Strict):
    splits: int | Literal["auto"] = 2
    merge_rounds: int | Literal["auto"] = Field(10)
    affinity_window: int | None = Field(None, ge=1, description="rounds averaged; None = all merge rounds")
    lookahead_step: int = Field(10, ge=1)
    max_splits: int = Field(4, ge=1)
    auto_epsilon: float = Field(0.05, ge=0, description="splits: auto — smallest k within ε·|best| of the best")
    compute_budget_h: float | None = Field(None, gt=0)
    settle_threshold: float = Field(0.9, ge=-1, le=1)
    settle_patience: int = Field(2, ge=1)
    max_merge_rounds: int = Field(15, ge=1)
    min_merge_rounds: int = Field(3, ge=1)

    @field_validator("splits", "merge_rounds")
    @classmethod
    def _positive_or_auto(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be ≥ 1 or 'auto'")
        return v


class HOAConfig(_Strict):
    pair_rounds: int = Field(5, ge=1, description="rounds each single task and pair trains to estimate losses")


class CostConfig(_Strict):
    device_power_w: float = Field(15.0, gt=0, description="modelled device power while training")
    server_power_w: float = Field(50.0, gt=0)
    speed_factors: dict[str, float] = Field(default_factory=dict, description="client → slowdown factor")
    measure_energy: bool = True


class FlowerConfig(_Strict):
    nodes: int = Field(2, ge=1, description="SuperNodes: simulated (flower-sim) or expected to connect (flower)")
    superlink: str = Field("127.0.0.1:9093", description="host:port of the SuperLink (engine: flower)")
    root_certificates: str | None = Field(None, description="CA certificate (PEM) for TLS; None = insecure")
    connect_timeout_s: float = Field(120.0, gt=0)
    round_deadline_s: float = Field(300.0, gt=0, description="used when federation.round_deadline_s is unset")
    poll_s: float = Field(0.2, gt=0)


class Config(_Strict):
    name: str = "run"
    seed: int = 0
    method: str = "mas"
    plugins: list[str] = Field(default_factory=list, description="modules imported first (own tasks, datasets)")
    tasks: list[str] | str = "sdnkt"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    federation: FederationConfig = FederationConfig()
    mas: MASConfig = MASConfig()
    hoa: HOAConfig = HOAConfig()
    cost: CostConfig = CostConfig()
    engine: str = Field("inprocess", description="how messages travel: inprocess, flower-sim or flower")
    flower: FlowerConfig = FlowerConfig()
    threads: int = Field(2, ge=1, le=256)

    @field_validator("method", "engine")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        """A method or an engine must be registered (``fedmas.methods.PLANS``, ``fedmas.engines.ENGINES``)."""
        from fedmas.engines import ENGINES
        from fedmas.methods import PLANS

        known = PLANS if info.field_name == "method" else ENGINES
        if v not in known:
            raise ValueError(f"unknown {info.field_name} {v!r}; accepted: {', '.join(known)}")
        return v

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[str]) -> list[str]:
        import importlib

        for mod in v:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise ValueError(f"cannot import plugin module {mod!r} ({e})") from None
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
        from fedmas.methods import PLANS

        plan, n = PLANS[self.method], len(self.tasks)  # type: ignore[arg-type]
        if isinstance(self.mas.splits, int) and self.mas.splits > n and plan.splits:
            raise ValueError(f"mas.splits={self.mas.splits} is larger than the number of tasks ({n})")
        if self.data.dataset == "scenes" and self.federation.clients_per_round > self.data.buildings:
            raise ValueError(f"federation.clients_per_round={self.federation.clients_per_round} exceeds the "
                             f"number of clients (data.buildings={self.data.buildings})")
        r0 = self.mas.merge_rounds
        if isinstance(r0, int) and plan.continues and r0 >= self.federation.rounds:
            raise ValueError(f"mas.merge_rounds={self.mas.merge_rounds} must be smaller than "
                             f"federation.rounds={self.federation.rounds}")
        if self.federation.min_replies > self.federation.clients_per_round:
            raise ValueError("federation.min_replies cannot exceed federation.clients_per_round")
        return self

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(self.tasks)  # type: ignore[arg-type]


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
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
            msg += f" (got {err['input']!r})"
        lines.append(f"{loc}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _section(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; raises :class:`ConfigError` with a readable message."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
        raw.update(loaded)
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_error(e)) from None
