"""Gradient and parameter statistics computed on the tensors' own device, without host syncs.

A :class:`StatsCollector` is owned by the ``Monitor`` and used on the training thread:
``after_step(step)`` runs right after ``optimizer.step()`` and queues kernels only (foreach
norms, a few small reductions); its results stay on the device as one 1-D tensor per step.
``drain()`` hands them over at a flush, where the Monitor makes its single non-blocking copy
to the host. Nothing here reads a tensor's value on the host (no ``.item()``, ``.cpu()``,
``float()``, ``bool()``, ``nonzero`` or branch on data), so a CUDA stream never stalls.

Series (names are part of the protocol with the controller and the dashboard):

================================  ================================================  =======
name                              value                                             cadence
================================  ================================================  =======
``grad_norm``                     L2 norm of all gradients                          global
``cos_grad_update``               cosine(this step's gradient, previous update)     cos
``amp_scale``                     GradScaler scale                                  global
``amp_skipped``                   optimizer steps skipped so far (inf/NaN grads)    global
``grad_norm/<module>``            L2 norm of the module's own parameters' grads     layers
``param_norm/<module>``           L2 norm of the module's own parameters            layers
``update_ratio/<module>``         ||lr * update|| / ||w|| of the module             layers
``nonfinite_grad_frac``           fraction of gradient elements that are inf/NaN    layers
================================  ================================================  =======

"global" series are computed every ``grad_norm_every`` steps, "layers" series every
``layers_every`` steps (a step is due when ``step % every == 0``), the cosine every
``cos_every`` optimizer steps, or as often as a share of the step's time allows (see
:mod:`lrpilot.client.cadence`; :mod:`lrpilot.client.cosine` gives its definition, sources
and cost). A module's series cover the parameters it owns directly (``fc1`` ->
``fc1.weight`` and ``fc1.bias``); a parameter held by the root module is named by itself;
without a model, parameters are grouped by param group (``group0``...).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from .cadence import CosineCadence
from .cosine import UpdateCosine, cosines
from .errors import MonitorConfigError

__all__ = ["SERIES", "StatsCollector", "StatsConfig"]

#: Fixed series names (per-module series append ``/<module>``).
SERIES = (
    "grad_norm",
    "cos_grad_update",
    "amp_scale",
    "amp_skipped",
    "nonfinite_grad_frac",
    "grad_norm/",
    "param_norm/",
    "update_ratio/",
)

_Entry = tuple[int, tuple[str, ...], torch.Tensor | None, torch.Tensor | None]

# Entries kept between drains; beyond this the oldest are dropped (the Monitor drains at
# every flush, so this only bounds memory if it stops doing so).
_MAX_PENDING = 10_000


@dataclass(frozen=True)
class StatsConfig:
    """Which statistics to compute and how often.

    Reading every gradient once costs about as much as a few percent of a CPU training step
    (issue 6 measured 5-6% on a 10M-parameter MLP). So the defaults sample: global series
    every 20 steps (one point per default Monitor flush), per-module series every 100.
    bench/overhead.py measures the result (1-2% of that step on a loaded 2-core machine);
    ``grad_norm_every=1`` gives an every-step global norm.

    The cosine has its own cadence because automatic LR control needs it often (its
    detector tests 30 points after each LR change): ``Monitor(control="auto")`` computes it
    as often as ``cos_budget`` of the loop's time allows (``cos_every="budget"``: every
    step on a large model, every 2nd or 4th on a small CPU one, every step again after each
    LR change) unless ``cos_every`` says otherwise, and reads one chunk of each large
    tensor per step (``cos_sample``) to keep that cheap.

    Args:
        grad_norm: report the global gradient norm ``grad_norm``.
        grad_norm_every: cadence of the "global" series (grad_norm, amp_*). 1 reads every
            gradient every step.
        layers: report per-module gradient norms ``grad_norm/<module>``.
        layers_every: cadence of the per-module series and ``nonfinite_grad_frac``.
        param_norms: report per-module parameter norms ``param_norm/<module>``.
        update_ratio: report ``update_ratio/<module>`` = ||w_after - w_before|| / ||w_after||
            (= ||lr * update|| / ||w||, exact for any optimizer). Costs one copy of the
            optimized parameters (same dtypes), kept between sampled steps; off by default.
        nonfinite: report the fraction of non-finite gradient elements.
        cos_grad_update: report ``cos_grad_update``, the cosine between the gradient of an
            optimizer step and the previous update (positive: steps are too small;
            negative: they overshoot); none on the first step. Costs no memory with
            SGD/RMSprop with momentum (``momentum_buffer`` is exactly the previous update) or
            Adam/AdamW (the update rebuilt from ``exp_avg`` and ``exp_avg_sq``); other Adam
            variants use ``exp_avg`` (an approximation); any other optimizer (plain SGD,
            Adagrad...) measures the weights' change around the step before, in a copy of
            the sampled part of the parameters (1/``cos_sample`` of a large model).
        cos_every: compute the cosine every this many optimizer steps, or ``"budget"``:
            every 1, 2 or 4 steps, the most often that keeps its host time within
            ``cos_budget`` of the rest of the step (measured with the host clock, so on a
            GPU it counts kernel launches, never waits for them; decided again every 64
            steps), and every step for 32 steps after each LR change the controller makes
            (its cosine tests start afresh then; elsewhere they wait up to 4x as long).
            None (default): ``"budget"`` under ``Monitor(control="auto")``, else
            ``grad_norm_every``; a bare ``StatsCollector`` takes ``grad_norm_every``.
        cos_budget: the share of the step the ``"budget"`` cadence may spend on the
            cosine (default 0.03).
        cos_sample: of each tensor large enough (at least ``8 * cos_sample`` blocks of 1024
            elements), read one of ``cos_sample`` equal contiguous chunks, a different one
            each step, weighted ``cos_sample`` (1: read everything; the value is then exact).
            Smaller tensors are always read whole.
        amp: with a ``GradScaler``, report ``amp_scale`` and ``amp_skipped``.

    Example:
        >>> StatsConfig(grad_norm_every=1)            # every-step global norm
        >>> StatsConfig(cos_every=4, cos_sample=1)    # exact cosine every 4th step
        >>> StatsConfig(cos_every=1)                  # every step, whatever it costs
        >>> StatsConfig(layers=False, param_norms=False)  # global series only
    """

    grad_norm: bool = True
    grad_norm_every: int = 20
    layers: bool = True
    layers_every: int = 100
    param_norms: bool = True
    update_ratio: bool = False
    nonfinite: bool = True
    cos_grad_update: bool = True
    cos_every: int | Literal["budget"] | None = None
    cos_budget: float = 0.03
    cos_sample: int = 8
    amp: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cos_every" and value in (None, "budget"):
                continue
            if f.name == "cos_budget":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    value = None
                if value is None or not 0 < value < 1:
                    raise MonitorConfigError(
                        f"StatsConfig.cos_budget must be a share of the step in (0, 1), "
                        f"got {getattr(self, f.name)!r}"
                    )
                continue
            if f.name.endswith(("_every", "_sample")):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    alt = ' or "budget"' if f.name == "cos_every" else ""
                    raise MonitorConfigError(
                        f"StatsConfig.{f.name} must be an int >= 1{alt}, got {value!r}"
                    )
            elif not isinstance(value, bool):
                raise MonitorConfigError(
                    f"StatsConfig.{f.name} must be True or False, got {value!r}"
                )

    @classmethod
    def off(cls) -> StatsConfig:
        """A config that computes nothing."""
        return cls(
            grad_norm=False, layers=False, param_norms=False, update_ratio=False,
            nonfinite=False, cos_grad_update=False, amp=False,
        )  # fmt: skip


def _foreach_ok(device: torch.device) -> bool:
    try:
        from torch.utils._foreach_utils import _device_has_foreach_support
    except ImportError:  # pragma: no cover - very old or very new torch
        return device.type in ("cpu", "cuda")
    return _device_has_foreach_support(device)


class _Layout:
    """How to reduce a fixed list of tensors: grouped by (device, dtype) for the foreach
    kernels, as ``torch.nn.utils.get_total_norm`` does, then summed per layer.

    ``norms(tensors)`` returns the per-tensor L2 norms in float32 on ``home``, in
    ``self.order``; ``layer_norms(tn)`` the per-layer norms for ``self.layers`` (the layers
    that have at least one of the tensors, in layer order).
    """

    def __init__(self, positions: list[int], metas: list[tuple[torch.device, torch.dtype]],
                 layer_of: list[int], home: torch.device) -> None:  # fmt: skip
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for pos in positions:
            groups.setdefault(metas[pos], []).append(pos)
        self.groups = [(dev, dt, idx, _foreach_ok(dev)) for (dev, dt), idx in groups.items()]
        self.order = [pos for _, _, idx, _ in self.groups for pos in idx]
        present = sorted({layer_of[pos] for pos in self.order})
        compact = {layer: i for i, layer in enumerate(present)}
        self.layers = tuple(present)
        self.home = home
        self.layer_index = torch.tensor(
            [compact[layer_of[pos]] for pos in self.order], dtype=torch.long, device=home
        )

    def norms(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        parts = []
        for _, dtype, idx, foreach in self.groups:
            ts = [tensors[pos] for pos in idx]
            ns = _tensor_norms(ts, dtype, foreach)
            parts.append(torch.stack(ns).to(self.home, torch.float32, non_blocking=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def layer_norms(self, tensor_norms: torch.Tensor) -> torch.Tensor:
        sq = torch.zeros(len(self.layers), dtype=torch.float32, device=self.home)
        return sq.index_add_(0, self.layer_index, tensor_norms.square()).sqrt_()


class StatsCollector:
    """Computes the statistics chosen by a :class:`StatsConfig` after each optimizer step.

    Args:
        model: the model whose modules name the per-layer series, or None (then parameters
            are taken from the optimizer and grouped by param group).
        optimizer: the optimizer, or None. It is needed for ``cos_grad_update``,
            ``update_ratio`` and ``amp_skipped``: a step pre-hook (removed by :meth:`close`)
            sees the gradient and the optimizer state just before each update.
        config: what to compute and how often.
        scaler: a ``torch.amp.GradScaler`` when training with AMP, for ``amp_*``.

    Raises:
        MonitorConfigError: for arguments of the wrong type.

    Example:
        >>> stats = StatsCollector(model, opt, StatsConfig(grad_norm_every=1))
        >>> loss.backward(); opt.step(); stats.after_step(step)
        >>> for step, names, values in stats.drain(): ...   # values: 1-D, on the device
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None,
        config: StatsConfig | None = None,
        scaler: Any = None,
    ) -> None:
        config = StatsConfig() if config is None else config
        if not isinstance(config, StatsConfig):
            raise MonitorConfigError(f"config must be a StatsConfig, got {type(config).__name__}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise MonitorConfigError(
                f"model must be a torch.nn.Module or None, got {type(model).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise MonitorConfigError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if scaler is not None and not (hasattr(scaler, "is_enabled") and hasattr(scaler, "_scale")):
            raise MonitorConfigError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
            )
        self.config = config
        self._optimizer = optimizer
        self._scaler = scaler if scaler is not None and scaler.is_enabled() and config.amp else None
        self._params, layer_of, self._layer_names = _collect_params(model, optimizer)
        self._layer_of = layer_of
        self._metas = [(p.device, p.dtype) for p in self._params]
        self.home = self._params[0].device if self._params else torch.device("cpu")
        # (step, names, values, gram): the cosine's gram, if any, is the last name's value,
        # made a cosine at the drain for all the steps queued (a few ops per drain).
        self._pending: deque[_Entry] = deque()
        self.dropped = 0  # entries dropped because nobody drained them
        self._grad_layouts: dict[tuple[bool, ...], _Layout] = {}
        self._param_layout = (
            _Layout(list(range(len(self._params))), self._metas, layer_of, self.home)
            if self._params
            else None
        )
        self._names: dict[tuple[Any, ...], tuple[str, ...]] = {}
        # Optimizer-side state (filled only when there is an optimizer).
        self._opt_pos: list[int] = []  # positions in self._params of the optimized params
        self._update_layout: _Layout | None = None
        self._cos: UpdateCosine | None = None
        every = config.cos_every or config.grad_norm_every
        self._cadence = CosineCadence(config.cos_budget) if every == "budget" else None
        self._cos_every = every if isinstance(every, int) else 1
        self._snap: list[torch.Tensor] | None = None
        self._snap_state = ""  # "" | "pre" (holds w before this step) | "delta" (w_prev - w)
        self._hooked = False  # the optimizer stepped since the last after_step
        self._opt_steps = 0
        self._skipped = 0
        self._last_step: int | None = None
        self._pending_cos: torch.Tensor | None = None
        self._hooks: list[Any] = []
        if optimizer is not None:
            index = {id(p): i for i, p in enumerate(self._params)}
            self._opt_pos = [index[id(p)] for g in optimizer.param_groups for p in g["params"]]
            if config.update_ratio and self._opt_pos:
                self._update_layout = _Layout(self._opt_pos, self._metas, layer_of, self.home)
            if config.cos_grad_update:
                self._cos = UpdateCosine(optimizer, self.home, config.cos_sample)
                self._hooks.append(optimizer.register_step_post_hook(self._post_step))
            self._hooks.append(optimizer.register_step_pre_hook(self._pre_step))

    # ------------------------------------------------------------------ public API

    @property
    def cos_source(self) -> str:
        """Where the cosine's previous update comes from: "momentum_buffer", "adam",
        "exp_avg" or "copy" (see :mod:`lrpilot.client.cosine`); "off" without one."""
        return self._cos.source if self._cos is not None else "off"

    @property
    def cos_every(self) -> int:
        """The cosine's cadence in optimizer steps now (it moves under ``"budget"``)."""
        return self._cadence.every if self._cadence is not None else self._cos_every

    @property
    def cadence(self) -> CosineCadence | None:
        """The ``"budget"`` cadence with what it measured (``every``, ``cost``, ``rest``),
        or None under a fixed ``cos_every``."""
        return self._cadence

    @property
    def memory_bytes(self) -> int:
        """Device memory this collector holds between steps (parameter copies, if any)."""
        own = sum(t.numel() * t.element_size() for t in self._snap) if self._snap else 0
        return own + (self._cos.memory_bytes if self._cos is not None else 0)

    def lr_changed(self) -> None:
        """The controller changed the LR: under ``cos_every="budget"`` the cosine is computed
        every step for a while (the controller's tests start afresh after a change)."""
        if self._cadence is not None:
            self._cadence.lr_changed()

    def after_step(self, step: int) -> None:
        """Queue this step's statistics; call right after ``optimizer.step()``.

        Launches device kernels only when a cadence is due; never waits for the device.
        """
        hooked, self._hooked = self._hooked, False
        if self._scaler is not None and self._optimizer is not None and not hooked:
            self._skipped += 1  # GradScaler did not call optimizer.step(): inf/NaN grads
        self._last_step = step
        cfg = self.config
        glob = step % cfg.grad_norm_every == 0
        lay = step % cfg.layers_every == 0
        snap_pre = self._snap_state == "pre"
        if snap_pre and not hooked:  # the copy belongs to a step that did not happen
            self._snap_state = snap_pre = ""
        gram, self._pending_cos = self._pending_cos, None  # this step's cosine, if any
        if not (glob or lay or snap_pre):
            if gram is not None:  # the cosine alone (most steps under auto): no kernels
                self._queue((step, self._names_for(("c",)), None, gram))
            return
        with torch.no_grad():
            self._compute(step, glob, lay, snap_pre, gram)

    def drain(self) -> list[tuple[int, tuple[str, ...], torch.Tensor]]:
        """Everything queued since the last drain: ``(step, names, values)`` with ``values``
        a 1-D float32 tensor of ``len(names)`` on the collector's device, not yet synced."""
        pending = self._pending
        entries = [pending.popleft() for _ in range(len(pending))]
        grams = [e[3] for e in entries if e[3] is not None]
        if not grams:
            return [(step, names, values) for step, names, values, _ in entries]
        cos = iter(cosines(grams).split(1))
        out = []
        for step, names, values, gram in entries:
            if gram is not None:
                c = next(cos)
                values = c if values is None else torch.cat([values, c])
            assert values is not None
            out.append((step, names, values))
        return out

    def close(self) -> None:
        """Remove the optimizer hooks and free the parameter copies. Safe to call twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._cos = None
        self._snap = None
        self._snap_state = ""

    def __repr__(self) -> str:
        return (
            f"StatsCollector(params={len(self._params)}, layers={len(self._layer_names)}, "
            f"cos_source={self.cos_source!r}, memory_bytes={self.memory_bytes})"
        )

    # ------------------------------------------------------------------ per step

    def _compute(
        self, step: int, glob: bool, lay: bool, snap_pre: bool, gram: torch.Tensor | None
    ) -> None:
        cfg = self.config
        keys: list[Any] = []
        parts: list[torch.Tensor] = []
        grad_layout = gnorms = None
        need_grads = (glob and cfg.grad_norm) or (lay and (cfg.layers or cfg.nonfinite))
        if need_grads:
            grads = [p.grad for p in self._params]
            grad_layout = self._grad_layout(grads)
            if grad_layout is not None:
                gnorms = grad_layout.norms(grads)
        if glob and cfg.grad_norm and gnorms is not None:
            keys.append("g")
            parts.append(torch.linalg.vector_norm(gnorms).reshape(1))
        if glob and self._scaler is not None:
            scale = getattr(self._scaler, "_scale", None)
            if scale is not None:
                keys.append("s")
                parts.append(scale.reshape(1).to(self.home, torch.float32))
            if self._optimizer is not None:
                keys.append("k")
                parts.append(torch.full((1,), self._skipped, dtype=torch.float32, device=self.home))
        if lay and cfg.layers and gnorms is not None:
            keys.append(("gl", grad_layout.layers))
            parts.append(grad_layout.layer_norms(gnorms))
        if lay and cfg.nonfinite and grad_layout is not None:
            keys.append("n")
            parts.append(self._nonfinite(grad_layout))
        pnorms = None
        if lay and cfg.param_norms and self._param_layout is not None:
            pnorms = self._param_layout.norms(self._params)
            keys.append(("pl", self._param_layout.layers))
            parts.append(self._param_layout.layer_norms(pnorms))
        if snap_pre:
            assert self._snap is not None
            torch._foreach_sub_(self._snap, [self._params[i] for i in self._opt_pos])
            self._snap_state = "delta"  # w_{step-1} - w_{step} = lr * update of this step
            if lay and self._update_layout is not None:
                ul = self._update_layout
                num = ul.layer_norms(ul.norms(self._snap_by_pos()))
                den = ul.layer_norms(ul.norms(self._params))
                keys.append(("u", ul.layers))
                parts.append(num / den.clamp_min(torch.finfo(torch.float32).tiny))
        if gram is not None:
            keys.append("c")  # last: its value is appended at the drain
        if keys:
            names = self._names_for(tuple(keys))
            # Copied (cat), also for one part: amp_scale etc. change in place later.
            values = torch.cat(parts) if parts else None
            if values is not None and values.dtype != torch.float32:
                values = values.float()
            self._queue((step, names, values, gram))

    def _queue(self, entry: _Entry) -> None:
        if len(self._pending) >= _MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(entry)

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: the gradient and the optimizer state before the update."""
        self._hooked = True
        n = self._opt_steps
        self._opt_steps += 1
        if self._cos is not None:
            cadence = self._cadence
            if cadence is None:
                every = self._cos_every
                cos = self._cos.before_step(n % every == 0, (n + 1) % every == 0)
            else:
                start = time.perf_counter()
                cos = self._cos.before_step(cadence.tick(n, start), cadence.due_next(n))
                cadence.spent(time.perf_counter() - start)
            if cos is not None:
                self._pending_cos = cos
        if self._update_layout is None or not self._opt_pos:
            return None
        # update_ratio: copy the weights before a step that is due (the first step's number
        # is unknown until after_step, so it is always copied).
        if self._last_step is not None and (self._last_step + 1) % self.config.layers_every:
            return None
        with torch.no_grad():
            params = [self._params[i] for i in self._opt_pos]
            if self._snap is None:
                self._snap = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._snap, params)
            self._snap_state = "pre"
        return None

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._cos is not None:
            self._cos.after_update()

    # ------------------------------------------------------------------ helpers

    def _grad_layout(self, grads: list[torch.Tensor | None]) -> _Layout | None:
        mask = tuple(g is not None for g in grads)
        layout = self._grad_layouts.get(mask)
        if layout is None:
            if not any(mask):
                return None
            if len(self._grad_layouts) > 16:  # grads that come and go: keep the cache small
                self._grad_layouts.clear()
            positions = [i for i, has in enumerate(mask) if has]
            layout = _Layout(positions, self._metas, self._layer_of, self.home)
            self._grad_layouts[mask] = layout
        return layout

    def _snap_by_pos(self) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = [None] * len(self._params)
        for i, t in zip(self._opt_pos, self._snap or (), strict=True):
            out[i] = t
        return out

    def _nonfinite(self, layout: _Layout) -> torch.Tensor:
        grads = [self._params[i].grad for i in layout.order]
        total = sum(g.numel() for g in grads if g is not None)
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            if g is not None:
                # g*0 is 0 where g is finite and NaN where it is not; on CPU this is several
                # times faster than isfinite().sum(). One gradient-sized temporary at a time.
                bad = torch.mul(g, 0).nan_to_num_(nan=1.0).sum(dtype=torch.float32)
                by_device.setdefault(g.device, []).append(bad)
        counts = [torch.stack(c).sum().to(self.home, non_blocking=True) for c in by_device.values()]
        count = counts[0] if len(counts) == 1 else torch.stack(counts).sum()
        return (count.to(torch.float32) / max(total, 1)).reshape(1)

    def _names_for(self, key: tuple[Any, ...]) -> tuple[str, ...]:
        names = self._names.get(key)
        if names is None:
            out: list[str] = []
            fixed = {"g": "grad_norm", "c": "cos_grad_update", "s": "amp_scale",
                     "k": "amp_skipped", "n": "nonfinite_grad_frac"}  # fmt: skip
            prefix = {"gl": "grad_norm/", "pl": "param_norm/", "u": "update_ratio/"}
            for k in key:
                if isinstance(k, tuple):
                    out.extend(prefix[k[0]] + self._layer_names[layer] for layer in k[1])
                else:
                    out.append(fixed[k])
            names = self._names[key] = tuple(out)
        return names


def _tensor_norms(
    tensors: list[torch.Tensor], dtype: torch.dtype | None, foreach: bool
) -> list[torch.Tensor]:
    """Per-tensor L2 norms; half-precision inputs are reduced in float32 (no overflow)."""
    if foreach and dtype is not None:
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        return list(torch._foreach_norm(tensors, 2, dtype=wide))
    out = []
    for t in tensors:
        wide = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
        out.append(torch.linalg.vector_norm(t, dtype=wide))
    return out


def _collect_params(
    model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None
) -> tuple[list[torch.nn.Parameter], list[int], list[str]]:
    """Unique parameters (model order, then optimizer-only ones), each one's layer index, and
    the layer names."""
    params: list[torch.nn.Parameter] = []
    layer_of: list[int] = []
    layer_names: list[str] = []
    layer_ids: dict[str, int] = {}
    seen: set[int] = set()

    def add(p: torch.nn.Parameter, layer: str) -> None:
        if id(p) in seen:
            return
        seen.add(id(p))
        if layer not in layer_ids:
            layer_ids[layer] = len(layer_names)
            layer_names.append(layer)
        params.append(p)
        layer_of.append(layer_ids[layer])

    if model is not None:
        for name, p in model.named_parameters():
            module, _, _ = name.rpartition(".")
            add(p, module or name)
    if optimizer is not None:
        for gi, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                add(p, f"group{gi}")
    return params, layer_of, layer_names
