"""Local training on one client: (weights, data, instructions) → (weights, metrics, affinity).

Nothing here knows about servers, transports or methods. One round of local
training is :class:`LocalTraining`: ``__init__`` (load the weights, build the
optimiser), ``step`` (one batch: the task weighting of :mod:`fedmas.weighting` sets the
gradients, the aggregation's client part of :mod:`fedmas.aggregation` adjusts them, and on every
``lookahead_step``-th batch the inter-task affinity of :mod:`fedmas.affinity` is measured from the
per-task gradients the weighting then combines), ``finish`` (the reply). :func:`handle_train` is what
every engine runs on a client: a train message in, a reply message out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fedmas import affinity, aggregation, signals, weighting
from fedmas.data.federated import batches, select_tasks, to_device
from fedmas.flops import FlopCounter, counter_for
from fedmas.messages import LocalConfig, Message, autocast, decode_args
from fedmas.models import ModelCache, MultiTaskModel
from fedmas.tasks import task_losses


@dataclass
class LocalResult:
    weights: dict[str, Tensor]
    metrics: dict[str, float]
    signals: dict[str, Tensor]  # each grouping signal's (n, n) mean over the lookahead batches (row = source task)
    state: dict[str, Tensor]  # the task weighting's state (GradNorm's task weights), averaged by the server

    @property
    def affinity(self) -> Tensor | None:
        """The lookahead affinity (the reference's signal), where measured."""
        return self.signals.get(signals.REFERENCE)


class LocalTraining:
    """The state of one round of local training, advanced one batch at a time."""

    def __init__(self, model: MultiTaskModel, weights: Mapping[str, Tensor], cfg: LocalConfig,
                 state: Mapping[str, Tensor] | None = None, flops: FlopCounter | None = None):
        self.t0 = time.perf_counter()
        self.flops = flops if flops is not None else counter_for(model)
        self.flop = 0
        self.device = dev = next(model.parameters()).device
        model.load_state_dict(weights)
        model.train()
        self.model, self.cfg, self.tasks = model, cfg, model.tasks
        n = len(self.tasks)
        self.head_params = {t: list(model.heads[t].parameters()) for t in self.tasks}
        self.encoder_params = list(model.encoder.parameters())
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.params = list(model.parameters())
        self.aggregation = aggregation.get(cfg.aggregation).client_part(decode_args(cfg.aggregation_args))
        if self.aggregation is not None:
            self.aggregation.start(self.params)
        kind = weighting.for_tasks(cfg.weighting, n)  # a client holding one task's labels trains it plainly
        self.weighting = kind(n, decode_args(cfg.weighting_args), state or {}, dev)
        last = _last_shared(model.encoder)
        # who measures is the server's decision (FLTaskState.measured_by): lookahead_step 0 when not
        names = [x for x in cfg.signals.split(",") if x] if cfg.lookahead_step > 0 else []
        self.signals = [signals.get(x)() for x in names]
        self.full = self.weighting.full_gradients(self.encoder_params, last) + [
            p for sig in self.signals for p in sig.full_gradients(self.encoder_params, last)]
        self.initial_losses: Tensor | None = None
        self.loss_sums = torch.zeros(n, device=dev)
        self.sums = {sig.name: torch.zeros(n, n, device=dev) for sig in self.signals}
        self.aff_count = 0
        self.look: tuple[affinity.Lookahead, affinity.HeadMirror] | None = None  # built at the first lookahead
        self.batches = self.samples = 0

    def _lookahead_parts(self) -> tuple[affinity.Lookahead, affinity.HeadMirror] | None:
        """The lookahead parts when this batch measures affinity, else None."""
        step = self.cfg.lookahead_step
        if not (step > 0 and self.signals and self.batches % step == 0):
            return None
        if self.look is None:
            self.look = (affinity.Lookahead(self.model.encoder, self.full, self.cfg.encoder_grad_scale),
                         affinity.HeadMirror(self.model))
        return self.look

    def step(self, batch) -> None:
        batch = to_device(batch, self.device)
        x = batch[0]
        look = self._lookahead_parts()
        key = ("lookahead" if look else "train", self.tasks, tuple(x.shape), self.cfg.aggregation,
               self.aggregation is not None, self.weighting.name)
        with self.flops.count(key):
            self._step(batch, look)
        self.flop += self.flops[key]

    def _step(self, batch, look: tuple[affinity.Lookahead, affinity.HeadMirror] | None) -> None:
        model, opt = self.model, self.opt
        x, targets, masks = select_tasks(batch, self.tasks)
        opt.zero_grad(set_to_none=True)
        with autocast(self.cfg.precision, self.device):
            feats = look[0].forward(x) if look else model.encoder(x)
            losses = task_losses(model.heads, self.tasks, feats, targets, masks)
        lvec = torch.stack([loss.detach() for loss in losses])
        if self.initial_losses is None:
            self.initial_losses = lvec.clamp_min(1e-8)
        heads = [self.head_params[t] for t in self.tasks]
        if look:  # each task's gradients are needed for the lookahead: the weighting combines them
            grads = weighting.TaskGrads(losses, look[0].settle(), heads, look[0].set_grads)
            grads.per_task()
            self.weighting.backward(grads)
            batch_view = signals.LookaheadBatch(self.tasks, x, targets, masks, lvec, grads, opt, look)
            with autocast(self.cfg.precision, self.device):  # the lookahead at the precision of the real step
                for sig in self.signals:
                    self.sums[sig.name] += sig.measure(batch_view).float()
            look[0].release()
            self.aff_count += 1
        else:
            self.weighting.backward(weighting.TaskGrads(losses, self.encoder_params, heads, self._set_encoder))
        if self.cfg.encoder_grad_scale != 1.0:  # the encoder's share of the gradient, scaled (1/√n)
            for p in self.encoder_params:
                if p.grad is not None:
                    p.grad.mul_(self.cfg.encoder_grad_scale)
        if self.aggregation is not None:
            self.aggregation.adjust(self.params)
        opt.step()
        self.weighting.after_step(lvec, self.initial_losses)
        self.loss_sums += lvec * len(x)
        self.samples += len(x)
        self.batches += 1

    def _set_encoder(self, grads) -> None:
        for p, g in zip(self.encoder_params, grads):
            p.grad = g

    def finish(self) -> LocalResult:
        n = max(self.samples, 1)
        metrics = {f"train_loss/{t}": float(self.loss_sums[i] / n) for i, t in enumerate(self.tasks)}
        metrics.update(samples=float(self.samples), batches=float(self.batches),
                       lookahead_batches=float(self.aff_count), compute_s=time.perf_counter() - self.t0,
                       flop=float(self.flop))
        out = {k: _to_cpu(v) for k, v in self.model.state_dict().items()}
        means = {k: _to_cpu(v / self.aff_count) for k, v in self.sums.items()} if self.aff_count else {}
        return LocalResult(out, metrics, means, {k: _to_cpu(v) for k, v in self.weighting.state().items()})


def train_local(model: MultiTaskModel, weights: Mapping[str, Tensor], data: Dataset,
                cfg: LocalConfig, state: Mapping[str, Tensor] | None = None,
                flops: FlopCounter | None = None) -> LocalResult:
    """Run ``cfg.local_epochs`` epochs of SGD on ``data`` starting from ``weights`` (and the task weighting's
    ``state``, e.g. GradNorm's task weights)."""
    run = LocalTraining(model, weights, cfg, state, flops)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _epoch in range(cfg.local_epochs):
        for batch in batches(data, cfg.batch_size, gen):
            run.step(batch)
    return run.finish()


def handle_train(msg: Message, data: Dataset, models: ModelCache) -> Message:
    """Client side of a train message: local training, then a reply with weights and metrics."""
    cfg = LocalConfig.from_dict(msg.config)
    result = train_local(models.get(cfg.task_tuple), msg.arrays, data, cfg, msg.state, models.flops)
    others = {k: v for k, v in result.signals.items() if k != signals.REFERENCE}
    return Message(arrays=result.weights, config={"tasks": cfg.tasks}, metrics=result.metrics,
                   state=result.state, affinity=result.affinity, signals=others)


def _last_shared(encoder: torch.nn.Module) -> list[Tensor]:
    """The encoder's last layer's parameters (GradNorm's norms are taken there): the last stage of a
    ``Sequential`` encoder, else the last module (in registration order) that holds parameters of its own."""
    if isinstance(encoder, torch.nn.Sequential) and len(encoder):
        return list(encoder[-1].parameters())
    owners = [m for m in encoder.modules() if any(True for _ in m.parameters(recurse=False))]
    return list(owners[-1].parameters(recurse=False)) if owners else []


def _to_cpu(t: Tensor) -> Tensor:
    return t.detach().clone() if t.device.type == "cpu" else t.detach().to("cpu")

