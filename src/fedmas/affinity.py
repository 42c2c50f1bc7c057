"""The inter-task affinity lookahead (TAG, Fifty et al., NeurIPS 2021; as used by MAS).

    Z(i→j) = 1 − L_j(batch; θ_enc − η·u_i, θ_j) / L_j(batch; θ_enc, θ_j)

where u_i is the SGD update the optimiser would apply to the shared encoder if
the gradient were that of L_i alone (weight decay and the momentum buffer
included). On a lookahead batch the per-task encoder gradients are computed
once (:meth:`fedmas.weighting.TaskGrads.per_task`) and reused: the task weighting combines them into the
real step's gradient, so the ordinary backward pass is skipped there; then
:func:`measure` evaluates every task's loss after every task's lookahead step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from fedmas.models import MultiTaskModel
from fedmas.tasks import task_losses


class PatchGram:
    """A convolution whose per-task weight gradients the lookahead never forms.

    With U the rows of input patches of the real forward (P positions × fan-in) and
    dY_i task i's gradient at the layer's output (P × C_out), g_i = dY_iᵀ·U, so the
    lookahead layer on its own input h' (patches U') is
        conv(h', S − c·g_i) = conv(h', S) − c·(U'·Uᵀ)·dY_i
    which costs P'·P·(fan-in + C_out) instead of P·fan-in·C_out for g_i alone (plus the
    same again to use it). Deep layers on small maps have few positions and many
    weights: there the real step then needs one weight gradient (of Σ_i w_i·dY_i)
    instead of n, and the lookahead never materialises those layers' n weight sets.
    """

    def __init__(self, module: nn.Conv2d, k: int, h: Tensor, y: Tensor):
        self.module, self.k, self.h, self.y = module, k, h, y
        self.u: Tensor | None = None

    def patches(self, h: Tensor) -> Tensor:
        m = self.module
        u = F.unfold(h, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, fan-in, L)
        return u.transpose(1, 2).reshape(-1, u.shape[1])

    def correction(self, h: Tensor, dy: Tensor) -> Tensor:
        """conv(h, g) for g = the weight gradient of output gradient ``dy`` on the recorded input."""
        if self.u is None:
            self.u = self.patches(self.h.detach())
        cout, ho, wo = dy.shape[1:]
        corr = (self.patches(h) @ self.u.T) @ dy.permute(0, 2, 3, 1).reshape(-1, cout)
        return corr.view(h.shape[0], ho, wo, cout).permute(0, 3, 1, 2)

    def weight_grad(self, dy: Tensor) -> Tensor:
        m = self.module
        return torch.nn.grad.conv2d_weight(self.h.detach(), m.weight.shape, dy, m.stride, m.padding, m.dilation)

    @staticmethod
    def capable(m: nn.Module) -> bool:
        return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"  # type: ignore[union-attr]
                and not isinstance(m.padding, str) and m.weight.requires_grad)  # type: ignore[union-attr]

    @staticmethod
    def pays(m: nn.Conv2d, y: Tensor) -> bool:
        """The Gram route costs at most half of one weight gradient."""
        positions, fan_in = y.numel() // y.shape[1], m.weight[0].numel()
        return 2 * positions * (fan_in + m.out_channels) <= fan_in * m.out_channels


class Lookahead:
    """θ_enc − lr·u_i for each task i, where u_i is the SGD-with-momentum update the optimiser
    would apply for gradient g_i (weight decay and momentum buffer included; optimiser state untouched).

    The part of u_i that does not depend on g_i (momentum and weight decay) is computed once
    per lookahead batch: θ'_i = shared − c·g_i, with c = lr·(1 − dampening) once a momentum
    buffer exists and lr before (PyTorch starts the buffer at the first gradient, undamped).
    The buffers are allocated once and reused for every task and lookahead batch: fresh
    allocations of this size cost page faults that were measured to matter on CPU.
    Convolutions where it pays (:class:`PatchGram`) take the shared weights plus a
    correction from their output gradients instead of per-task weights.
    """

    def __init__(self, encoder: nn.Module, keep_full: Sequence[Tensor] = (), grad_scale: float = 1.0):
        self.encoder = encoder
        self.grad_scale = grad_scale  # the real step scales the encoder's gradient by this: so does the lookahead
        self.names = [k for k, _ in encoder.named_parameters()]
        self.live = [p for _, p in encoder.named_parameters()]
        self.buffers = dict(encoder.named_buffers())
        # on CPU the lookahead passes (inference only) run in channels_last, like the heads' copy
        self.fmt = torch.channels_last if next(encoder.parameters()).device.type == "cpu" else torch.preserve_format
        self.shared = [torch.empty_like(p, memory_format=self._fmt(p)) for p in self.live]
        self.scratch = [torch.empty_like(p, memory_format=self._fmt(p)) for p in self.live]
        self.coef = [0.0] * len(self.live)
        full = {id(p) for p in keep_full}  # parameters whose per-task gradients are needed (GradNorm's norms)
        self.candidates = [m for m in encoder.modules() if PatchGram.capable(m) and id(m.weight) not in full]
        self._index = {id(p): k for k, p in enumerate(self.live)}
        self.gram: list[PatchGram] = []
        self._gram_ks: set[int] = set()  # indices (in ``live``) of the Gram-route weights
        self._seen: dict[nn.Module, list[tuple[Tensor, int, Tensor, int]]] = {}
        self.inputs: list[Tensor] = list(self.live)  # what each task's backward differentiates

    def forward(self, x: Tensor) -> Tensor:
        """The real forward of a lookahead batch, recording each candidate convolution's input
        and output; :meth:`settle` then picks the ones that take the Gram route."""
        self._seen = {}

        def record(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            self._seen.setdefault(m, []).append((inp[0], inp[0]._version, out, out._version))

        handles = [m.register_forward_hook(record) for m in self.candidates]
        try:
            return self.encoder(x)
        finally:
            for hd in handles:
                hd.remove()

    def settle(self) -> list[Tensor]:
        """After the heads' forward, before the per-task backward passes: the convolutions that
        were called once, whose input and output nothing modified in place since (so autograd's
        gradient at that output is the layer's), and where :meth:`PatchGram.pays`, take the Gram
        route. Returns what each task's backward differentiates (:attr:`inputs`)."""
        self.gram = [PatchGram(m, self._index[id(m.weight)], h, y)  # type: ignore[arg-type]
                     for m, calls in self._seen.items() if len(calls) == 1
                     for h, hv, y, yv in calls
                     if h._version == hv and y._version == yv and y.requires_grad and PatchGram.pays(m, y)]
        self._seen = {}
        self._gram_ks = {g.k for g in self.gram}
        self.inputs = [p for k, p in enumerate(self.live) if k not in self._gram_ks] + [g.y for g in self.gram]
        return self.inputs

    def _split(self, grads: Sequence[Tensor | None]) -> tuple[Sequence[Tensor | None], Sequence[Tensor | None]]:
        """Gradients aligned with :attr:`inputs` → (those of the parameters, those at the Gram-route outputs)."""
        cut = len(grads) - len(self.gram)
        return grads[:cut], grads[cut:]

    def set_grads(self, grads: Sequence[Tensor | None]) -> None:
        """``.grad`` of the encoder parameters from gradients aligned with :attr:`inputs`."""
        of_params, at_outputs = self._split(grads)
        for p, g in zip(self.inputs, of_params):
            p.grad = g
        for pg, dy in zip(self.gram, at_outputs):
            pg.module.weight.grad = None if dy is None else pg.weight_grad(dy)

    def release(self) -> None:
        """Drop the recorded tensors (they hold the batch's autograd graph)."""
        self.gram, self.inputs, self._seen, self._gram_ks = [], list(self.live), {}, set()

    @torch.no_grad()
    def prepare(self, opt: torch.optim.SGD) -> None:
        group = opt.param_groups[0]
        if group.get("nesterov"):
            raise ValueError("the affinity lookahead implements SGD without Nesterov momentum")
        lr, mom, wd, damp = group["lr"], group["momentum"], group["weight_decay"], group["dampening"]
        for k, (p, s) in enumerate(zip(self.live, self.shared)):
            buf = opt.state.get(p, {}).get("momentum_buffer") if mom else None
            c = lr if buf is None else lr * (1 - damp)
            torch.mul(p, 1 - c * wd, out=s)
            if buf is not None:
                s.add_(buf, alpha=-lr * mom)
            self.coef[k] = c * self.grad_scale if self.grad_scale != 1.0 else c

    @torch.no_grad()
    def features(self, x: Tensor, grads: Sequence[Tensor | None]) -> Tensor:
        """The encoder's output on ``x`` with the lookahead parameters for one task's gradients
        (aligned with :attr:`inputs`); BatchNorm running statistics are updated on copies, so
        the model's stay untouched."""
        of_params, at_outputs = self._split(grads)
        rest = iter(of_params)
        params = [s if k in self._gram_ks else self._step(s, c, next(rest), o)
                  for k, (s, c, o) in enumerate(zip(self.shared, self.coef, self.scratch))]
        state = dict(zip(self.names, params)) | {k: v.clone() for k, v in self.buffers.items()}
        handles = []
        for pg, dy in zip(self.gram, at_outputs):
            if dy is not None:
                c = self.coef[pg.k]
                handles.append(pg.module.register_forward_hook(
                    lambda m, inp, out, pg=pg, dy=dy, c=c: out.sub_(pg.correction(inp[0], dy), alpha=c)))
        try:
            return functional_call(self.encoder, state, (x.contiguous(memory_format=self._fmt(x)),))
        finally:
            for hd in handles:
                hd.remove()

    def _fmt(self, t: Tensor) -> torch.memory_format:
        return self.fmt if t.dim() == 4 else torch.preserve_format

    @staticmethod
    def _step(s: Tensor, c: float, g: Tensor | None, out: Tensor) -> Tensor:
        return s if g is None else torch.add(s, g, alpha=-c, out=out)


class HeadMirror:
    """A copy of the heads for the lookahead forwards (they run without autograd, and a
    head's running statistics, if it has any, must not see the lookahead batches).

    On CPU the copy is kept in ``channels_last`` memory format, which runs these
    inference-only forwards faster (measured for all three encoders' heads, see
    docs/benchmarks.md); training keeps the default format, whose backward is faster.
    The copy is refreshed from the live heads before each lookahead batch.
    """

    def __init__(self, model: MultiTaskModel):
        self.channels_last = next(model.parameters()).device.type == "cpu"
        self.heads = copy.deepcopy(model.heads)
        if self.channels_last:
            self.heads.to(memory_format=torch.channels_last)
        self._dst = list(self.heads.parameters()) + list(self.heads.buffers())
        self._src = list(model.heads.parameters()) + list(model.heads.buffers())

    @torch.no_grad()
    def refresh(self) -> nn.ModuleDict:
        torch._foreach_copy_(self._dst, self._src)
        return self.heads

    def features(self, feats: Tensor) -> Tensor:
        return feats.contiguous(memory_format=torch.channels_last) if self.channels_last and feats.dim() == 4 else feats


@torch.no_grad()
def measure(tasks: Sequence[str], look: Lookahead, mirror: HeadMirror, x: Tensor, targets, masks,
              opt: torch.optim.SGD, base: Tensor, per_task: list[tuple[Tensor | None, ...]]) -> Tensor:
    """Z(i→j) for all ordered pairs, from the per-task encoder gradients of this batch.

    (Stacking the n lookahead feature maps into one n-times larger batch per head
    was measured slower on CPU than this loop; see docs/benchmarks.md.)
    """
    look.prepare(opt)
    heads = mirror.refresh()
    z = torch.zeros(len(tasks), len(tasks), device=base.device)
    for i, grads in enumerate(per_task):
        feats = mirror.features(look.features(x, grads))
        after = torch.stack(task_losses(heads, tasks, feats, targets, masks))
        z[i] = 1.0 - after / base.clamp_min(1e-12)
    return z
