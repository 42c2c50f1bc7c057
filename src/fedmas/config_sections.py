"""The sections of a run configuration (``data:``, ``model:``, ``federation:``, ``mas:``, ``hoa:``, ``arrival:``,
``cost:``, ``flower:``): each a schema whose values are validated once, at the edge, with errors naming the key
and what is accepted. :class:`fedmas.config.Config` puts them together."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedmas.tasks import TASKS
from fedmas.yamlio import one_line


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
    aggregation: str = Field("fedavg", max_length=100, description="a registered aggregation: fedavg, fedprox "
                                                                     "(or a plugin's)")
    prox_mu: float = Field(0.01, ge=0, le=1e6)
    task_weighting: str = Field("equal", max_length=100, description="a registered task weighting: equal, "
                                                                       "gradnorm (or a plugin's)")
    gradnorm_alpha: float = Field(1.5, ge=0, le=100)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes of training and of the affinity lookahead under bfloat16 "
                            "autocast (weights, optimiser and aggregation stay float32)")
    eval_every: int = Field(1, ge=1, le=1_000_000)
    eval_batch_size: int = Field(64, ge=1, le=1_000_000)
    round_deadline_s: float | None = Field(None, gt=0, le=1e7)
    min_replies: int = Field(1, ge=1, le=1_000_000)
    max_round_retries: int = Field(2, ge=0, le=1000)
    max_share_without_update: float = Field(
        0.5, ge=0, le=1, description="an FL task that got no accepted client update in more than this share of its "
                                     "rounds trained on nothing: the run fails (exit 2, summary.json says why)")
    select: Literal["last", "best_val"] = Field(
        "last", description="the reported model of each FL task: its last round's, or the one with the lowest "
                            "validation loss (as the MAS reference reports)")


class MASConfig(_Strict):
    """The defaults are fedmas's, chosen on validation data and confirmed on 10 fresh seeds (docs/results.md):
    the merged model trains only the affinity window, R0 = 0.1·R rounds, the split is decided from the mean
    lookahead affinity of those rounds, and each group trains afresh for R rounds (``start: scratch``).
    ``start: merged`` is the MAS reference: R0 = 0.7·R merged rounds (the split still from the first 0.1·R),
    then each group continues the merged model for R − R0 rounds (add ``split_schedule: restart`` for the
    reference's learning-rate schedule)."""

    splits: int | Literal["auto"] = 2
    merge_rounds: int | float | Literal["auto"] = Field(
        0.1, description="R0: rounds of the merged phase; an integer, a fraction of federation.rounds, or auto. "
                         "Unset: the affinity window (affinity_rounds; 0.1 when that is 'all') with start: "
                         "scratch, 0.7 with start: merged")
    affinity_rounds: int | float | Literal["all"] = Field(
        0.1, description="the split uses the mean affinity of the first N merge rounds (an integer or a fraction "
                         "of federation.rounds); measuring stops after them. 'all': every merge round")
    affinity_window: Literal["first", "last"] = Field(
        "first", description="which merged rounds affinity_rounds counts: first (the reference: measure the "
                             "first N, then stop) or last (measure only the N rounds just before the split)")
    split_rounds: int | None = Field(None, ge=1, le=1_000_000,
                                     description="rounds each group trains after the split with start: merged; None = "
                                                 "R − R0 (groups from scratch train R rounds)")
    split_schedule: Literal["restart", "continue"] = Field(
        "continue", description="continue (default, chosen on validation evidence: docs/results.md): the groups "
                                "take the poly schedule on from round R0 of R; restart (the reference "
                                "implementation): each group runs it afresh over its rounds from the base lr")
    start: Literal["merged", "scratch"] = Field(
        "scratch", description="where the groups start: scratch (fedmas's default, as TAG: afresh for R rounds, "
                               "the merged phase only measures) or merged (the MAS reference: from the merged "
                               "model of round R0, for R − R0 rounds). A single group always continues the "
                               "merged model. Unset with arrival.tasks: merged (tasks arriving mid-training join "
                               "the merged model)")
    lookahead_step: int = Field(10, ge=1, le=1_000_000)
    signal: str = Field("lookahead", description="the grouping signal that decides the split (fedmas.signals: "
                                                 "lookahead, the reference's affinity; cosine; or a plugin's)")
    record: list[str] = Field(default_factory=list, max_length=64,
                              description="further grouping signals measured beside it, for study (affinity.json "
                                          "holds them under 'signals'); each costs time on lookahead batches")
    groups: list[list[str]] | None = Field(
        None, max_length=64, description="a fixed partition of the tasks into groups (every task once): the split "
                                          "uses it instead of deciding (the split time and schedule still apply)")
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="the split is sure when its groups win again in at least this share of "
                                     "bootstrap resamples of the client replies the affinity was measured on")
    unsure: Literal["split", "merged"] = Field(
        "split", description="when the split is not sure (mas.min_confidence): split (the reference: the groups "
                             "chosen, said to be unsure) or merged (no split: the merged model continues)")
    max_splits: int = Field(4, ge=1, le=64)
    auto_epsilon: float = Field(0.05, ge=0, le=100, description="splits: auto — smallest k within ε·|best| of the best")
    compute_budget_h: float | None = Field(None, gt=0, le=1e9)
    settle_threshold: float = Field(0.9, ge=-1, le=1)
    settle_patience: int = Field(2, ge=1, le=10_000)
    max_merge_rounds: int = Field(15, ge=1, le=1_000_000)
    min_merge_rounds: int = Field(3, ge=1, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _merge_rounds_follow_start(cls, data: Any) -> Any:
        """An unset ``merge_rounds`` is the affinity window with ``start: scratch`` (the merged phase only
        measures) and the reference's 0.7·R with ``start: merged``."""
        if isinstance(data, dict) and data.get("merge_rounds") is None:
            window = data.get("affinity_rounds", 0.1)
            scratch = data.get("start", "scratch") == "scratch"
            data = {**data, "merge_rounds": (0.1 if window == "all" else window) if scratch else 0.7}
        return data

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


class ExhaustiveConfig(_Strict):
    start: Literal["scratch", "merged", "both"] = Field(
        "scratch", description="where each subset's FL task starts: scratch (a new model trained "
                               "federation.rounds rounds), merged (the all-in-one model after mas.merge_rounds "
                               "rounds, then the rest of the rounds, as MAS's groups), or both (every subset both "
                               "ways; each chosen group takes the start its validation losses favour)")


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
            raise ValueError(f"slowdown factors must be in (0, 1e6]: {one_line(repr(bad), 80)}")
        return v


class FlowerConfig(_Strict):
    nodes: int = Field(2, ge=1, le=100_000,
                       description="SuperNodes: simulated (flower-sim) or expected to connect (flower)")
    superlink: str = Field("127.0.0.1:9093", description="host:port of the SuperLink (engine: flower)")
    root_certificates: str | None = Field(None, description="CA certificate (PEM) for TLS; None = insecure")
    connect_timeout_s: float = Field(
        120.0, gt=0, le=1e6, description="the wait for `nodes` SuperNodes to connect (their answers to which "
                                         "partition they hold are then waited for under a round's rules)")
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


