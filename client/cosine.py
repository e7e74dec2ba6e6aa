"""The gradient/update cosine ``cos_grad_update``: cos(g_t, u_{t-1}) at each optimizer step.

It is the sign of the hypergradient: dL(w_t)/d lr = -g_t . u_{t-1} / lr, so it is positive
when successive steps agree (the LR is too small) and negative when they overshoot.

Definitions (what the numbers mean, in the corner cases too):

* t counts optimizer steps, i.e. calls of ``optimizer.step()``: with gradient accumulation
  one value per optimizer step, however many micro-batches (and ``Monitor.step`` calls) it
  took; a step that ``GradScaler`` skips (inf/NaN gradients) does not call the optimizer, so
  it gets no value and is not "previous" to anything.
* g_t: the gradient the optimizer is about to apply (``p.grad`` in a step pre-hook: summed
  over accumulated micro-batches, already unscaled by ``GradScaler``), over the optimized
  parameters that have one; negated for a param group with ``maximize=True``. A parameter
  without a gradient is left out of both vectors (the optimizer leaves it alone too).
* u_{t-1}: the previous update, w_{t-2} - w_{t-1}: what the last optimizer step that ran
  subtracted from the weights, with each param group's own LR. A parameter with a gradient
  but no update yet (no optimizer state) counts with u = 0. The first optimizer step has no
  previous update at all: no value is sent (not a zero).

Where u_{t-1} comes from (``source``), cheapest first:

* ``"momentum_buffer"`` (SGD, RMSprop with momentum > 0): lr * buffer, exactly the update
  (weight decay and dampening included); with ``nesterov=True`` the update also had a
  gradient term, so it is an approximation.
* ``"adam"`` (``torch.optim.Adam``/``AdamW``, amsgrad too): lr * m_hat / (sqrt(v_hat) + eps)
  rebuilt from ``exp_avg`` and ``exp_avg_sq`` (and, for decoupled weight decay, the decay
  term recovered from the current weights): exact up to rounding, with the current LR. The
  bias corrections use each parameter's own ``step`` tensor, on whatever device it lives.
* ``"exp_avg"`` (other optimizers with ``betas``: NAdam, RAdam, Adamax...): lr * exp_avg, the
  momentum before the optimizer's own scaling: an approximation.
* ``"copy"`` (plain SGD, Adagrad, anything else): the weights' change measured around the
  previous step; exact, and costs memory (see ``memory_bytes``).

Cost: three reductions (g.u, |g|^2, |u|^2) over what is read; the state sources copy
nothing of a large model (a small one, up to 1M elements read, is gathered into one matrix
and reduced in a single matmul: a few kernel launches instead of a few per tensor, which on
a CPU, where a foreach op is a loop over the tensors, is most of the cost; with Adam the
update is rebuilt in that matrix too. The matrix is kept between steps, at most 8 MiB in
float32, 20 MiB for Adam, and is not in ``memory_bytes``, which counts what grows with the
model). A step yields the 2 x 2 gram of (g, u); the division that makes it a cosine runs
once per flush for all the steps in it (:func:`cosines`).
A tensor of at least ``8 * sample * 1024`` elements is cut into ``sample`` equal contiguous
chunks (whole blocks of 1024 elements; the tail after them is read in full) and only one is
read, a different one at each step, its sums weighted by ``sample``. That reads about
1/sample of a large model's memory per step, and over ``sample`` steps all of it; the
estimate's error is far below the per-step noise of the cosine itself (tests compare it with
the full computation). Smaller tensors are read whole, so small models get the exact value.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

__all__ = ["UpdateCosine", "cos_source", "cosines"]

_BLOCK = 1024  # elements per block (4 KiB in float32: whole cache lines and pages)
_MIN_BLOCKS = 8  # a tensor is sampled only if at least this many blocks get read
_GATHER_MAX = 1 << 20  # elements: up to this many, whole pieces are reduced in one matmul
_HALF = (torch.float16, torch.bfloat16)
_TINY = torch.finfo(torch.float32).tiny
_MAX_GATHERS = 8  # distinct layouts kept (a model whose layout keeps changing rebuilds)
_Pair = tuple[torch.Tensor, torch.Tensor | None]  # (g piece, u piece or None: no update)


def cos_source(optimizer: torch.optim.Optimizer) -> str:
    """Where the previous update of ``optimizer`` is read from (see the module docstring)."""
    groups = optimizer.param_groups
    if groups and all(float(g.get("momentum", 0) or 0) > 0 for g in groups):
        return "momentum_buffer"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    if groups and all("betas" in g for g in groups):
        return "exp_avg"
    return "copy"


class UpdateCosine:
    """Computes cos(g_t, u_{t-1}) for one optimizer, on the parameters' devices, never syncing.

    Driven by :class:`~lrpilot.client.stats.StatsCollector` from optimizer step hooks:
    :meth:`before_step` runs in the pre-hook (gradients present, weights and state not yet
    updated), :meth:`after_update` in the post-hook (only the ``"copy"`` source needs it).

    Args:
        optimizer: the optimizer whose steps are followed.
        home: the device the value is returned on.
        sample: read one chunk in this many of large tensors (1: read everything).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, home: torch.device, sample: int) -> None:
        self._opt = optimizer
        self.home = home
        self.sample = sample
        self.source = cos_source(optimizer)
        self._steps = 0  # optimizer steps seen (pre-hook calls)
        # "copy": per parameter (by id) the pieces of w_before - w_after at _snap_offset.
        self._snap: dict[int, list[torch.Tensor]] = {}
        self._snap_offset = -1
        self._snap_valid = False  # holds the update of the latest optimizer step
        self._snap_pending = False  # taken in this step's pre-hook, finished in its post-hook
        self._gathers: dict[tuple[Any, ...], _Gather] = {}  # small models' gather buffers

    @property
    def memory_bytes(self) -> int:
        """Device memory held between steps: the ``"copy"`` source's sampled weight change."""
        return sum(t.numel() * t.element_size() for ts in self._snap.values() for t in ts)

    def before_step(self, due: bool, snap_next: bool) -> torch.Tensor | None:
        """In the optimizer's pre-hook: when ``due`` and a previous update is known, the gram
        [[|g|^2, g.u], [u.g, |u|^2]] as a 2 x 2 float32 tensor on ``home`` (the cosine is
        ``cosines([gram])``), else None. ``snap_next``: the next optimizer step will be due
        (the ``"copy"`` source must measure this one)."""
        n = self._steps
        self._steps += 1
        value = None
        with torch.no_grad():
            if due:
                value = self._cosine(n % self.sample)
            if self.source == "copy":
                self._snap_valid = False  # this step changes the weights again
                if snap_next:
                    self._take_snapshot((n + 1) % self.sample)
        return value

    def after_update(self) -> None:
        """In the optimizer's post-hook: finish the ``"copy"`` source's measurement."""
        if not self._snap_pending:
            return
        self._snap_pending = False
        with torch.no_grad():
            for p, pieces in self._param_pieces(self._snap_offset):
                torch._foreach_sub_(self._snap[id(p)], pieces)
        self._snap_valid = True

    # ------------------------------------------------------------------ internals

    def _cosine(self, offset: int) -> torch.Tensor | None:
        opt, k = self._opt, self.sample
        groups: list[tuple[torch.Tensor, float, Any]] = []  # (gram, sign, scale) per group
        any_update = False
        if self.source == "copy" and (not self._snap_valid or offset != self._snap_offset):
            return None
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            full: list[_Pair] = []
            sampled: list[_Pair] = []
            sign = -1.0 if group.get("maximize", False) else 1.0
            lr = group["lr"]
            scale = 1.0  # u = scale * the u pieces
            if self.source == "copy":
                for p in params:
                    snap = self._snap.get(id(p))
                    sampled_p = _plan(k, p, p.grad)
                    u = None  # no snapshot, or grads laid out unlike the weights: left out
                    if snap is not None and (len(snap) == 2) == sampled_p:
                        u = (snap[0], snap[1]) if sampled_p else (None, snap[0])
                    _add(full, sampled, _split(p.grad, k, offset, sampled_p), u)
                    any_update = any_update or u is not None
            elif self.source == "adam":
                gathered = self._adam_gram(group, params)
                if gathered is not None:  # a small model: one buffer, a few ops in all
                    groups.append((gathered[0], sign, gathered[1]))
                    any_update = True
                    continue
                found = self._adam_pieces(group, params, offset, full, sampled)
                if found is not None:
                    scale = found
                    any_update = True
            else:
                key = "exp_avg" if self.source == "exp_avg" else "momentum_buffer"
                small = _min_sampled(k)  # fewer elements: read whole, never sampled
                for p in params:
                    state = opt.state.get(p)
                    buf = state.get(key) if state else None
                    if state and buf is None:
                        return self._missing(key)
                    g = p.grad
                    if g.numel() < small:  # the common case of a small model, inlined
                        full.append((g, buf))
                        any_update = any_update or buf is not None
                        continue
                    sampled_p = _plan(k, g, buf)
                    _add(full, sampled, _split(g, k, offset, sampled_p),
                         None if buf is None else _split(buf, k, offset, sampled_p))  # fmt: skip
                    any_update = any_update or buf is not None
                scale = lr
            gram = _sums(full, sampled, k, self.home, self._gathers)
            groups.append((gram, sign, scale))
        if not groups or not any_update:
            return None
        gram, sign, scale = groups[0]
        if len(groups) == 1 and sign > 0 and isinstance(scale, (int, float)) and scale > 0:
            return gram  # one group and a positive LR (the usual case): the LR cancels out
        # The groups' updates in one frame: u = scale * the u pieces, g.u signed.
        total = torch.stack(
            [torch.stack([g[0, 0], g[0, 1] * (sn * sc), g[1, 1] * (sc * sc)])
             for g, sn, sc in groups]
        ).sum(0)  # fmt: skip
        gsq, dot, usq = total.unbind()
        return torch.stack([gsq, dot, dot, usq]).view(2, 2)

    def _adam_gram(
        self, group: dict[str, Any], params: list[torch.Tensor]
    ) -> tuple[torch.Tensor, float] | None:
        """The gram of (g, update / scale) and ``scale`` for a small model whose parameters all
        have Adam state on ``home`` (their ``step`` tensors too: capturable/fused Adam on a
        GPU, any Adam on the CPU), from one buffer; None otherwise (the general path)."""
        opt = self._opt
        state = opt.state
        small = _min_sampled(self.sample) if self.sample > 1 else _GATHER_MAX + 1
        v_key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        device = self.home
        beta1, beta2 = group["betas"]
        if not (isinstance(beta1, (int, float)) and isinstance(beta2, (int, float))):
            return None  # tensor betas: the general path keeps them on their device
        gs, ms, vs, steps, shapes = [], [], [], [], []
        total = 0
        any_f64 = False
        for p in params:  # one pass: this runs every step
            s = state.get(p)
            n = p.numel()
            total += n
            if not s or n >= small:  # no update yet, or read in sampled blocks
                return None
            step = s["step"]
            if not isinstance(step, torch.Tensor) or step.device != device:
                return None
            if p.device != device:
                return None
            gs.append(p.grad)
            ms.append(s["exp_avg"])
            vs.append(s[v_key])
            steps.append(step)
            shapes.append(p.shape)
            any_f64 = any_f64 or p.dtype == torch.float64
        if total > _GATHER_MAX:
            return None
        wd, scale = _adam_decay(opt, group)
        dtype = torch.float64 if any_f64 else torch.float32
        key = ("adam", device, dtype, bool(wd), *shapes)
        gather = self._gathers.get(key)
        if gather is None:
            if len(self._gathers) >= _MAX_GATHERS:
                self._gathers.clear()
            gather = self._gathers[key] = _AdamGather(params, device, dtype, bool(wd))
        sources = gs + ms + vs + params if wd else gs + ms + vs
        gram = gather.gram(sources, steps, beta1, beta2, group["eps"], wd)
        return gram, scale

    def _adam_pieces(
        self, group: dict[str, Any], params: list[torch.Tensor], offset: int,
        full: list[_Pair], sampled: list[_Pair],
    ) -> float | None:  # fmt: skip
        """Fill ``full``/``sampled`` with (g, update / scale) pieces and return ``scale``;
        None when no parameter has state yet.

        Adam's update of a parameter is lr * m_hat / (sqrt(v_hat) + eps) with its own step
        count s: = lr * f * m / (sqrt(v) + eps * sqrt(bc2)), f = sqrt(bc2) / bc1, bc = 1 -
        beta**s (:func:`_bias_correction`). They are computed from the state's ``step``
        tensors, wherever those live: nothing is read on the host.
        """
        opt, k = self._opt, self.sample
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        wd, scale = _adam_decay(opt, group)
        gs, ms, vs, ws, steps, dests = [], [], [], [], [], []
        for p in params:
            s = opt.state.get(p)
            if not s:  # no update yet: g still counts in |g|
                _add(full, sampled, _split(p.grad, k, offset, _plan(k, p.grad)), None)
                continue
            m = s["exp_avg"]
            v = s["max_exp_avg_sq"] if group.get("amsgrad", False) else s["exp_avg_sq"]
            step = s["step"]
            if not isinstance(step, torch.Tensor):
                step = torch.tensor(float(step))
            sampled_p = _plan(k, p.grad, m, v, p)
            splits = [_split(t, k, offset, sampled_p) for t in (p.grad, m, v, p)]
            for j, dest in ((0, sampled), (1, full)):
                g_, m_, v_, w_ = (sp[j] for sp in splits)
                if g_ is not None and g_.numel():
                    gs.append(g_)
                    ms.append(m_)
                    vs.append(v_)
                    ws.append(w_)
                    steps.append(step)
                    dests.append(dest)
        if not ms:
            return None
        if len({t.device for t in steps}) == 1:  # usual: all on the host, or all on one GPU
            st = torch.stack(steps).to(torch.float32)
            sbc2 = _bias_correction(st, beta2).sqrt_()
            c, f = (sbc2 * eps).unbind(), (sbc2 / _bias_correction(st, beta1)).unbind()
        else:  # per tensor, each on its own device
            sbc2_l = _bias_corrections(steps, beta2)
            torch._foreach_sqrt_(sbc2_l)
            bc1 = _bias_corrections(steps, beta1)
            c, f = torch._foreach_mul(sbc2_l, eps), torch._foreach_div(sbc2_l, bc1)
        us = torch._foreach_sqrt(vs)
        torch._foreach_add_(us, c)
        torch._foreach_reciprocal_(us)
        torch._foreach_mul_(us, ms)
        torch._foreach_mul_(us, f)  # now m_hat / (sqrt(v_hat) + eps)
        if wd:
            torch._foreach_add_(us, ws, alpha=wd)
        for g_, u_, dest in zip(gs, us, dests, strict=True):
            dest.append((g_, u_))
        return scale

    def _missing(self, key: str) -> None:
        # The state exists but keeps its update elsewhere: measure the weights instead.
        warnings.warn(
            f"lrpilot: {type(self._opt).__name__} has no {key!r} state; cos_grad_update falls "
            "back to measuring the weights' change (a sampled copy of the parameters)",
            RuntimeWarning,
            stacklevel=5,
        )
        self.source = "copy"
        return None

    def _param_pieces(self, offset: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        out = []
        for group in self._opt.param_groups:
            for p in group["params"]:
                main, rest = _split(p, self.sample, offset, _plan(self.sample, p, p.grad))
                out.append((p, [rest] if main is None else [main, rest]))
        return out

    def _take_snapshot(self, offset: int) -> None:
        for p, pieces in self._param_pieces(offset):
            bufs = self._snap.get(id(p))
            if bufs is None or [b.shape for b in bufs] != [t.shape for t in pieces]:
                bufs = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in pieces]
                self._snap[id(p)] = bufs
            torch._foreach_copy_(bufs, pieces)
        self._snap_offset = offset
        self._snap_pending = True


def _adam_decay(opt: torch.optim.Optimizer, group: dict[str, Any]) -> tuple[float, float]:
    """``(wd, scale)``: the decoupled weight decay of an Adam group (0.0 for none or L2), and
    the factor that turns the rebuilt direction d + wd w into the update.

    Decoupled decay: w_{t-1} = w_{t-2} (1 - lr wd) - lr d, so the update
    w_{t-2} - w_{t-1} = lr (d + wd w_{t-1}) / (1 - lr wd), exactly, from today's w.
    """
    lr = group["lr"]
    if not group.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)):
        return 0.0, lr
    wd = group.get("weight_decay", 0.0)
    return wd, (lr / (1.0 - lr * wd) if wd else lr)


def _log_beta(beta: float) -> float:
    """ln beta, with ln 0 = -inf so that a zero beta gives a bias correction of exactly 1."""
    return math.log(beta) if beta > 0 else -math.inf


def _bias_correction(steps: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Adam's 1 - beta**s, computed as -expm1(s ln beta): in float32, 1 - beta**s cancels
    for beta near 1 at small s (at beta2 = 0.999, s = 1 it loses three of seven digits)."""
    # A tensor beta stays on its device (no host read); torch.log(0) is already -inf.
    log_beta = torch.log(beta) if isinstance(beta, torch.Tensor) else _log_beta(beta)
    return torch.expm1(steps * log_beta).neg_()


def _bias_corrections(steps: list[torch.Tensor], beta: float | torch.Tensor) -> list[torch.Tensor]:
    """:func:`_bias_correction` of each step tensor, on its own device: three foreach ops
    for a float beta, not three ops per tensor."""
    floats = [t.float() for t in steps]  # Adam keeps float32 steps: no copy then
    if isinstance(beta, torch.Tensor):
        return [_bias_correction(t, beta) for t in floats]
    out = torch._foreach_mul(floats, _log_beta(beta))
    torch._foreach_expm1_(out)
    torch._foreach_neg_(out)
    return out


def _min_sampled(k: int) -> int:
    """The fewest elements a tensor has for ``k``-way sampling (``_MIN_BLOCKS`` blocks each)."""
    return k * _BLOCK * _MIN_BLOCKS


def _plan(k: int, *tensors: torch.Tensor | None) -> bool:
    """Whether tensors of this shape are read in sampled blocks: large enough, and all of
    them contiguous (so that a flat view of each lines up with the others)."""
    t = tensors[0]
    assert t is not None
    if k == 1 or t.numel() < _min_sampled(k):
        return False
    return all(o is None or o.is_contiguous() for o in tensors)


def _split(
    t: torch.Tensor, k: int, offset: int, sampled: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(main, rest)``: when ``sampled``, chunk ``offset`` of the ``k`` equal contiguous
    chunks (whole blocks) the flat tensor divides into, and the tail after them; otherwise
    ``(None, t)``."""
    if not sampled:
        return None, t
    chunk = t.numel() // (k * _BLOCK) * _BLOCK
    flat = t.view(-1)
    return flat[offset * chunk : (offset + 1) * chunk], flat[k * chunk :]


def _add(
    full: list[_Pair], sampled: list[_Pair],
    g: tuple[torch.Tensor | None, torch.Tensor],
    u: tuple[torch.Tensor | None, torch.Tensor] | None,
) -> None:  # fmt: skip
    """Append one parameter's (g, u) pieces; ``u`` None: no previous update."""
    g_main, g_rest = g
    u_main, u_rest = u if u is not None else (None, None)
    if g_main is not None:
        sampled.append((g_main, u_main))
    if g_rest.numel():
        full.append((g_rest, u_rest))


def _sums(
    full: list[_Pair], sampled: list[_Pair], k: int, home: torch.device,
    gathers: dict[tuple[Any, ...], _Gather],
) -> torch.Tensor:  # fmt: skip
    """[[sum |g|^2, sum g.u], [sum u.g, sum |u|^2]] in float32 on ``home``: the full pieces
    plus ``k`` times the sampled chunks. No host sync."""
    grams: list[torch.Tensor] = []
    for pairs, weight in ((full, 1), (sampled, k)):
        by_device: dict[torch.device, list[_Pair]] = {}
        for pair in pairs:
            by_device.setdefault(pair[0].device, []).append(pair)
        for device, dev_pairs in by_device.items():
            gram = _gram(dev_pairs, device, gathers)
            if weight != 1:
                gram = gram * weight
            grams.append(gram if device == home else gram.to(home, non_blocking=True))
    if not grams:
        return torch.zeros((2, 2), dtype=torch.float32, device=home)
    return grams[0] if len(grams) == 1 else torch.stack(grams).sum(0)


class _Gather:
    """A 2 x N buffer for one layout of small pieces: a step copies g into row 0 and u into
    row 1 with one foreach copy and reduces both with one matmul (a missing u stays 0)."""

    __slots__ = ("buffer", "dests")

    def __init__(self, pairs: list[_Pair], device: torch.device, dtype: torch.dtype) -> None:
        n = sum(g.numel() for g, _ in pairs)
        self.buffer = torch.zeros((2, n), dtype=dtype, device=device)
        g_dests, u_dests = [], []
        at = 0
        for g, u in pairs:
            size = g.numel()
            g_dests.append(self.buffer[0, at : at + size].view(g.shape))
            if u is not None:
                u_dests.append(self.buffer[1, at : at + size].view(u.shape))
            at += size
        self.dests = g_dests + u_dests

    def gram(self, pairs: list[_Pair]) -> torch.Tensor:
        """The pieces' gram matrix, in float32."""
        sources = [g for g, _ in pairs] + [u for _, u in pairs if u is not None]
        torch._foreach_copy_(self.dests, sources)  # casts half pieces, follows any strides
        m = self.buffer
        return (m @ m.T).float()


class _AdamGather:
    """Rows g, d, m, v (and w, with decoupled decay) of a small model under Adam in one
    buffer: a step copies g, m, v (w) in with one foreach copy, rebuilds the update
    direction d = m_hat / (sqrt(v_hat) + eps) (+ wd w) in row 1 with whole-row ops (the
    per-tensor bias corrections with one foreach op each, over views of the row), and
    reduces rows 0-1 with one matmul."""

    __slots__ = ("betas", "buffer", "d_views", "dests", "log_betas", "rows")

    def __init__(
        self, params: list[torch.Tensor], device: torch.device, dtype: torch.dtype, wd: bool
    ) -> None:
        sizes = [p.numel() for p in params]
        self.buffer = torch.zeros((5 if wd else 4, sum(sizes)), dtype=dtype, device=device)
        views: dict[int, list[torch.Tensor]] = {}
        for row in (0, 1, 2, 3, 4) if wd else (0, 1, 2, 3):
            at = 0
            views[row] = []
            for p, size in zip(params, sizes, strict=True):
                views[row].append(self.buffer[row, at : at + size].view(p.shape))
                at += size
        self.d_views = views.pop(1)
        self.dests = [t for row in views.values() for t in row]  # g, m, v (, w) in order
        b = self.buffer
        self.rows = (b[1], b[2], b[3], b[4] if wd else None, b[:2], b[:2].T)
        self.betas: tuple[float, float] | None = None
        self.log_betas = torch.zeros((2, 1), dtype=dtype, device=device)

    def gram(
        self, sources: list[torch.Tensor], steps: list[torch.Tensor],
        beta1: float, beta2: float, eps: float, wd: float,
    ) -> torch.Tensor:  # fmt: skip
        """[[|g|^2, g.d], [d.g, |d|^2]] in float32, d = m_hat / (sqrt(v_hat) + eps) + wd w."""
        b = self.buffer
        if self.betas != (beta1, beta2):  # filled from host floats: no copy, no sync
            for row, beta in enumerate((beta1, beta2)):
                self.log_betas[row].fill_(_log_beta(beta))
            self.betas = (beta1, beta2)
        torch._foreach_copy_(self.dests, sources)  # casts half state, follows any strides
        # Adam: d = f m / (sqrt(v) + c), f = sqrt(bc2) / bc1, c = eps sqrt(bc2), per tensor,
        # bc = 1 - beta**s = -expm1(s ln beta): exact where 1 - beta**s would cancel.
        st = torch.stack(steps)
        if st.dtype != b.dtype:
            st = st.to(b.dtype)
        bc1, bc2 = torch.expm1(st * self.log_betas).neg_().unbind()
        sbc2 = bc2.sqrt_()
        c, f = (sbc2 * eps).unbind(), (sbc2 / bc1).unbind()
        d, m, v, w, gd, gd_t = self.rows
        torch.sqrt(v, out=d)
        torch._foreach_add_(self.d_views, c)
        torch.div(m, d, out=d)
        torch._foreach_mul_(self.d_views, f)
        if wd:
            d.add_(w, alpha=wd)
        gram = gd @ gd_t
        return gram if gram.dtype == torch.float32 else gram.float()


def _gram(
    pairs: list[_Pair], device: torch.device, gathers: dict[tuple[Any, ...], _Gather]
) -> torch.Tensor:
    """[[sum |g|^2, sum g.u], [sum u.g, sum |u|^2]] in float32 (a missing u counts as 0)."""
    if sum(g.numel() for g, _ in pairs) <= _GATHER_MAX:
        # Small: gathered into a 2 x N matrix and reduced in one matmul, a few ops in all.
        # An update kept on another device (offloaded state) is brought over first.
        pairs = [(g, u if u is None or u.device == device else u.to(device)) for g, u in pairs]
        dtype = torch.float64 if any(g.dtype == torch.float64 for g, _ in pairs) else None
        key = (device, dtype, *((g.shape, None if u is None else u.shape) for g, u in pairs))
        gather = gathers.get(key)
        if gather is None:
            if len(gathers) >= _MAX_GATHERS:
                gathers.clear()
            gather = gathers[key] = _Gather(pairs, device, dtype or torch.float32)
        return gather.gram(pairs)
    # Large: per-tensor dot products and foreach norms, no copy.
    gs = [g.float() if g.dtype in _HALF else g for g, _ in pairs]
    us = [None if u is None else u.to(device, g.dtype) for g, (_, u) in zip(gs, pairs, strict=True)]
    with_u = [(g, u) for g, u in zip(gs, us, strict=True) if u is not None]
    gsq = _sq(torch._foreach_norm(gs))
    if with_u:
        usq = _sq(torch._foreach_norm([u for _, u in with_u]))
        dot = torch.stack([torch.dot(g.reshape(-1), u.reshape(-1)) for g, u in with_u]).sum()
    else:
        usq = dot = torch.zeros((), dtype=gsq.dtype, device=gsq.device)
    return torch.stack([gsq, dot.to(gsq.dtype), dot.to(gsq.dtype), usq]).view(2, 2).float()


def cosines(grams: list[torch.Tensor]) -> torch.Tensor:
    """cos = g.u / (|g| |u|) of each gram from :meth:`UpdateCosine.before_step`, for a batch
    of steps at once: a few ops per flush instead of a few per step. Shape (len(grams),)."""
    sums = torch.stack(grams).view(-1, 4)
    return sums[:, 1] / (sums[:, 0] * sums[:, 3]).sqrt().clamp_min(_TINY)


def _sq(norms: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    dtype = torch.promote_types(norms[0].dtype, torch.float32)
    return torch.stack([n.to(dtype) for n in norms]).square().sum()
