"""StatsCollector: values against a direct reference computation, sampling, the cosine's
sign on a quadratic, AMP signals, and the no-sync property over a real training loop."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import torch
from lrpilot.client import stats as stats_module
from lrpilot.client.cosine import _bias_correction, _bias_corrections
from lrpilot.client.errors import MonitorConfigError
from lrpilot.client.stats import StatsCollector, StatsConfig
from torch import nn
from torch.overrides import TorchFunctionMode

EVERY_STEP = StatsConfig(grad_norm_every=1, layers_every=1, update_ratio=True)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only contend on a shared CI core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    """fc1, fc2 (frozen bias), a root-level parameter, and a layer that never gets a grad."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.fc2.bias.requires_grad_(False)
        self.unused = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) * self.scale


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


def drained(stats: StatsCollector) -> dict[int, dict[str, float]]:
    """{step: {name: value}} (the test may sync; the collector may not)."""
    out: dict[int, dict[str, float]] = {}
    for step, names, values in stats.drain():
        assert values.dim() == 1 and values.numel() == len(names)
        out.setdefault(step, {}).update(zip(names, values.tolist(), strict=True))
    return out


def layer_of(name: str) -> str:
    module, _, _ = name.rpartition(".")
    return module or name


def grouped_norm(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-module L2 norm, computed the plain way."""
    sq: dict[str, float] = {}
    for name, t in tensors.items():
        layer = layer_of(name)
        sq[layer] = sq.get(layer, 0.0) + torch.linalg.vector_norm(t.double()).item() ** 2
    return {layer: math.sqrt(v) for layer, v in sq.items()}


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_values_match_reference(opt_name: str) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = OPTIMIZERS[opt_name]([p for p in model.parameters() if p.requires_grad])
    stats = StatsCollector(model, opt, EVERY_STEP)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    prev_update: dict[str, torch.Tensor] | None = None
    expected: dict[int, dict[str, float]] = {}
    for step in range(6):
        x = torch.randn(16, 6)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        before = {n: p.detach().clone() for n, p in trainable}
        prev = prev_update  # what the previous step subtracted from the weights
        opt.step()
        stats.after_step(step)
        exp = {"grad_norm": torch.linalg.vector_norm(flat(list(grads.values()))).item()}
        exp |= {f"grad_norm/{k}": v for k, v in grouped_norm(grads).items()}
        exp |= {
            f"param_norm/{k}": v for k, v in grouped_norm(dict(model.named_parameters())).items()
        }
        exp["nonfinite_grad_frac"] = 0.0
        update = {n: before[n] - p.detach() for n, p in trainable}
        after = grouped_norm({n: p.detach() for n, p in trainable})
        exp |= {f"update_ratio/{k}": v / after[k] for k, v in grouped_norm(update).items()}
        if prev is not None:
            names = [n for n in grads if n in prev]
            exp["cos_grad_update"] = (
                flat([grads[n] for n in names]) @ flat([prev[n] for n in names])
            ).item() / (
                torch.linalg.vector_norm(flat(list(grads.values())))
                * torch.linalg.vector_norm(flat([prev[n] for n in names]))
            ).item()
        prev_update = update
        expected[step] = exp
    got = drained(stats)
    assert sorted(got) == sorted(expected)
    for step, exp in expected.items():
        assert set(got[step]) == set(exp), f"step {step}: series differ"
        for name, value in exp.items():
            assert got[step][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
                f"wrong {name} at step {step}: expected {value}, got {got[step][name]}"
            )
    # Layers: a module without gradients has no grad norm but keeps its parameter norm.
    assert "grad_norm/unused" not in got[3] and "param_norm/unused" in got[3]
    assert "grad_norm/scale" in got[3]  # a root-level parameter is named by itself
    expected_source = {"sgd": "copy", "sgd-momentum": "momentum_buffer", "adam": "adam"}
    assert stats.cos_source == expected_source[opt_name]
    n_bytes = sum(p.numel() * p.element_size() for _, p in trainable)
    # update_ratio is on: one copy of the trainable; plain SGD's cosine measures the weights'
    # change in a copy of its own (whole here: no tensor is large enough to be sampled).
    assert stats.memory_bytes == n_bytes * (2 if opt_name == "sgd" else 1)
    stats.close()


def test_momentum_state_costs_no_copy() -> None:
    model = Net()
    opt = OPTIMIZERS["sgd-momentum"](model.parameters())
    stats = StatsCollector(model, opt, StatsConfig(grad_norm_every=1))
    for step in range(4):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        stats.after_step(step)
    assert "cos_grad_update" in drained(stats)[3]
    assert stats.memory_bytes == 0


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_cosine_sign_on_a_quadratic(opt_name: str) -> None:
    """f(w) = ||w||^2 / 2: a tiny LR keeps successive steps aligned (cos > 0); an LR past
    the stability limit makes each step overshoot the minimum (cos < 0)."""
    small, large = {"sgd": (1e-3, 1.9), "sgd-momentum": (1e-3, 3.0), "adam": (1e-4, 3.0)}[opt_name]
    medians = []
    for lr in (small, large):
        torch.manual_seed(1)
        w = nn.Parameter(torch.randn(20))
        opt = OPTIMIZERS[opt_name]([w])
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = 0.0
        stats = StatsCollector(None, opt, StatsConfig(grad_norm_every=1, layers=False))
        for step in range(40):
            opt.zero_grad()
            (w.square().sum() / 2).backward()
            opt.step()
            stats.after_step(step)
        cos = [v["cos_grad_update"] for s, v in sorted(drained(stats).items()) if s >= 10]
        assert len(cos) == 30 and all(math.isfinite(c) for c in cos)
        medians.append(sorted(cos)[len(cos) // 2])
    assert medians[0] > 0.5, f"tiny LR: median cosine {medians[0]:.3f}, expected > 0"
    assert medians[1] < -0.1, f"overshooting LR: median cosine {medians[1]:.3f}, expected < 0"


@pytest.mark.parametrize("opt_name", ["sgd", "sgd-momentum"])
def test_sampling_cadence(opt_name: str) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = OPTIMIZERS[opt_name](p for p in model.parameters() if p.requires_grad)
    cfg = StatsConfig(grad_norm_every=3, layers_every=4, update_ratio=True)
    stats = StatsCollector(model, opt, cfg)
    for step in range(13):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        stats.after_step(step)
    got = drained(stats)

    def steps_with(name: str) -> list[int]:
        return [s for s in sorted(got) if name in got[s]]

    assert steps_with("grad_norm") == [0, 3, 6, 9, 12]
    assert steps_with("cos_grad_update") == [3, 6, 9, 12]  # step 0 has no previous update
    assert steps_with("grad_norm/fc1") == [0, 4, 8, 12]
    assert steps_with("param_norm/fc1") == [0, 4, 8, 12]
    assert steps_with("nonfinite_grad_frac") == [0, 4, 8, 12]
    assert steps_with("update_ratio/fc1") == [0, 4, 8, 12]
    assert sorted(got) == [0, 3, 4, 6, 8, 9, 12]  # nothing on steps that are not due


def test_everything_off_records_nothing() -> None:
    model = Net()
    opt = OPTIMIZERS["sgd"](model.parameters())
    stats = StatsCollector(model, opt, StatsConfig.off())
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        stats.after_step(step)
    assert stats.drain() == []
    assert stats.memory_bytes == 0


def test_nonfinite_fraction() -> None:
    model = Net()
    opt = OPTIMIZERS["sgd"](p for p in model.parameters() if p.requires_grad)
    stats = StatsCollector(model, opt, StatsConfig(grad_norm_every=1, layers_every=1))
    model(torch.randn(4, 6)).sum().backward()
    model.fc1.weight.grad[0, :2] = float("nan")
    model.scale.grad[1] = float("inf")
    total = sum(p.grad.numel() for p in model.parameters() if p.grad is not None)
    opt.step()
    stats.after_step(0)
    got = drained(stats)[0]
    assert got["nonfinite_grad_frac"] == pytest.approx(3 / total)
    assert math.isnan(got["grad_norm"])
    assert math.isnan(got["grad_norm/fc1"]) and math.isinf(got["grad_norm/scale"])
    assert math.isfinite(got["grad_norm/fc2"])


def test_optimizer_without_model_groups_by_param_group() -> None:
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1, momentum=0.5)
    stats = StatsCollector(None, opt, EVERY_STEP)
    for step in range(3):
        opt.zero_grad()
        ((a**2).sum() + (b**3).sum()).backward()
        opt.step()
        stats.after_step(step)
    got = drained(stats)[2]
    assert got["grad_norm/group0"] == pytest.approx(a.grad.norm().item(), rel=1e-5)
    assert got["grad_norm/group1"] == pytest.approx(b.grad.norm().item(), rel=1e-5)
    assert got["param_norm/group1"] == pytest.approx(b.norm().item(), rel=1e-5)
    assert {"cos_grad_update", "update_ratio/group0", "update_ratio/group1"} <= set(got)


def test_model_without_optimizer_reports_norms_only() -> None:
    model = Net()
    stats = StatsCollector(model, None, EVERY_STEP)
    for step in range(3):
        model.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        stats.after_step(step)
    got = drained(stats)
    assert set(got[2]) == {
        "grad_norm", "grad_norm/fc1", "grad_norm/fc2", "grad_norm/scale", "nonfinite_grad_frac",
        "param_norm/fc1", "param_norm/fc2", "param_norm/unused", "param_norm/scale",
    }  # fmt: skip
    assert stats.memory_bytes == 0


class MixedDtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4).double()
        self.b = nn.Linear(4, 3)
        self.c = nn.Linear(3, 2).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.a(x.double()).float())
        return self.c(h.bfloat16()).float()


def test_several_dtypes_are_grouped_like_torch() -> None:
    torch.manual_seed(0)
    model = MixedDtypes()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = StatsCollector(model, opt, EVERY_STEP)
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        stats.after_step(step)
    got = drained(stats)[2]
    grads = [p.grad for p in model.parameters()]
    assert got["grad_norm"] == pytest.approx(flat(grads).norm().item(), rel=1e-3)
    for name in ("a", "b", "c"):
        layer = getattr(model, name)
        ref = flat([layer.weight.grad, layer.bias.grad]).norm().item()
        assert got[f"grad_norm/{name}"] == pytest.approx(ref, rel=1e-3)
    assert -1.0 <= got["cos_grad_update"] <= 1.0
    assert all(v.dtype == torch.float32 for _, _, v in stats.drain())


def test_amp_scale_and_skipped_steps() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    stats = StatsCollector(model, opt, StatsConfig(grad_norm_every=1, layers=False), scaler)
    scales = []
    for step in range(6):
        opt.zero_grad()
        scaler.scale(model(torch.randn(4, 4)).sum()).backward()
        if step in (2, 4):
            model.weight.grad[0, 0] = float("inf")  # GradScaler must skip these steps
        scaler.step(opt)
        scaler.update()
        stats.after_step(step)
        scales.append(scaler.get_scale())
    got = drained(stats)
    assert [got[s]["amp_scale"] for s in range(6)] == scales
    assert scales[2] == scales[1] / 2  # the skip really happened
    assert [got[s]["amp_skipped"] for s in range(6)] == [0, 0, 1, 1, 2, 2]


def test_bad_config_and_arguments_raise_with_the_value() -> None:
    with pytest.raises(MonitorConfigError, match=r"grad_norm_every must be an int >= 1, got 0"):
        StatsConfig(grad_norm_every=0)
    with pytest.raises(MonitorConfigError, match=r"layers_every.*got 2\.5"):
        StatsConfig(layers_every=2.5)  # type: ignore[arg-type]
    with pytest.raises(
        MonitorConfigError, match=r'cos_every must be an int >= 1 or "budget", got 0'
    ):
        StatsConfig(cos_every=0)
    with pytest.raises(MonitorConfigError, match=r"cos_every.*got 'fast'"):
        StatsConfig(cos_every="fast")  # type: ignore[arg-type]
    for bad in (0, 1.5, True, "0.1"):
        with pytest.raises(MonitorConfigError, match=r"cos_budget must be a share of the step"):
            StatsConfig(cos_budget=bad)  # type: ignore[arg-type]
    with pytest.raises(MonitorConfigError, match=r"cos_sample must be an int >= 1, got None"):
        StatsConfig(cos_sample=None)  # type: ignore[arg-type]
    with pytest.raises(MonitorConfigError, match=r"layers must be True or False, got 'yes'"):
        StatsConfig(layers="yes")  # type: ignore[arg-type]
    with pytest.raises(MonitorConfigError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        StatsCollector(nn.Linear(2, 2), "sgd", StatsConfig())  # type: ignore[arg-type]
    with pytest.raises(MonitorConfigError, match=r"model must be a torch\.nn\.Module"):
        StatsCollector(object(), None, StatsConfig())  # type: ignore[arg-type]


def test_close_removes_the_optimizer_hook() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = StatsCollector(model, opt, EVERY_STEP)
    stats.close()
    stats.close()
    before = stats._opt_steps
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert stats._opt_steps == before


# ---------------------------------------------------------------------------- no host sync

_SYNCS = {
    "item", "tolist", "numpy", "cpu", "nonzero", "equal", "allclose", "is_nonzero",
    "__float__", "__int__", "__bool__", "__index__", "__complex__", "__array__",
}  # fmt: skip
_STATS_FILE = stats_module.__file__


class CountHostReads(TorchFunctionMode):
    """Counts device-to-host conversions, split by whether client/stats.py is on the stack."""

    def __init__(self) -> None:
        super().__init__()
        self.in_stats: list[str] = []
        self.elsewhere = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        moves_to_host = name == "to" and _to_host(args, kwargs)
        if name in _SYNCS or moves_to_host:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename != _STATS_FILE:
                frame = frame.f_back
            if frame is None:
                self.elsewhere += 1
            else:
                self.in_stats.append(f"{name} at line {frame.f_lineno}")
        return func(*args, **kwargs)


def _to_host(args: tuple, kwargs: dict) -> bool:
    src = args[0] if args and isinstance(args[0], torch.Tensor) else None
    targets = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
    return (
        src is not None
        and src.device.type != "cpu"
        and any(torch.device(t).type == "cpu" for t in targets)
    )


def _train(
    stats_cfg: StatsConfig, opt_name: str, steps: int, amp: bool, width: int = 32
) -> CountHostReads:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 4))  # fmt: skip
    opt = OPTIMIZERS[opt_name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp else None
    stats = StatsCollector(model, opt, stats_cfg, scaler)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    counter = CountHostReads()
    drained_steps = 0
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        # Counted: the optimizer step (the collector's pre-hook runs in it) and after_step.
        with counter:
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # GradScaler reads found_inf on the host itself: counted "elsewhere"
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            stats.after_step(step)
            if step % 20 == 19:
                drained_steps += len(stats.drain())  # the Monitor's flush copies these
    with counter:
        drained_steps += len(stats.drain())
        torch.ones(1).item()  # proves the mode is live: one conversion outside stats.py
    assert drained_steps == steps
    stats.close()
    return counter


@pytest.mark.parametrize(
    ("opt_name", "amp", "width"),
    [("sgd-momentum", False, 32), ("sgd", True, 32), ("adam", False, 32),
     ("sgd", True, 256), ("adam", False, 256)],  # 256: the cosine reads sampled blocks
)  # fmt: skip
def test_no_host_sync_over_200_steps(opt_name: str, amp: bool, width: int) -> None:
    counter = _train(EVERY_STEP, opt_name, steps=200, amp=amp, width=width)
    assert counter.in_stats == [], f"host conversions inside stats: {counter.in_stats[:5]}"
    assert counter.elsewhere >= 1


def test_sync_counter_catches_a_conversion_inside_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    original = StatsCollector._nonfinite

    def syncing(self: StatsCollector, layout: object) -> torch.Tensor:
        frac = original(self, layout)  # type: ignore[arg-type]
        if frac.sum() > 0:  # a data-dependent branch: the kind of sync this test must catch
            pass
        return frac

    monkeypatch.setattr(StatsCollector, "_nonfinite", syncing)
    counter = _train(EVERY_STEP, "sgd", steps=3, amp=False)
    assert len(counter.in_stats) == 3 and counter.in_stats[0].startswith("__bool__")


# ---------------------------------------------------------------------------- the cosine
# Reference: cos(g_t, u_{t-1}) with g_t the gradients the optimizer step t applies and
# u_{t-1} = w_{t-2} - w_{t-1}, what the last optimizer step that ran did to the weights,
# over the parameters that have a gradient at step t; no value before a first update.

COS_ONLY = StatsConfig(grad_norm=False, layers=False, param_norms=False, nonfinite=False,
                       amp=False, cos_every=1)  # fmt: skip

COS_OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.05),
    "sgd-momentum-wd-dampening": lambda groups: torch.optim.SGD(
        groups, lr=0.05, momentum=0.9, weight_decay=1e-2, dampening=0.2
    ),
    "rmsprop-momentum": lambda groups: torch.optim.RMSprop(groups, lr=1e-2, momentum=0.5),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-2),
    "adam-amsgrad-l2": lambda groups: torch.optim.Adam(
        groups, lr=1e-2, amsgrad=True, weight_decay=0.1
    ),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.5),
    "adagrad": lambda groups: torch.optim.Adagrad(groups, lr=0.1),
}
COS_SOURCES = {"sgd": "copy", "sgd-momentum-wd-dampening": "momentum_buffer",
               "rmsprop-momentum": "momentum_buffer", "adam": "adam", "adam-amsgrad-l2": "adam",
               "adamw": "adam", "adagrad": "copy"}  # fmt: skip


class LateNet(nn.Module):
    """fc1 and fc2 in two param groups with different LRs; ``late`` gets gradients only once
    ``use_late`` is set; fc2's bias is frozen (no gradient ever)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.fc2 = nn.Linear(width, 3)
        self.fc2.bias.requires_grad_(False)
        self.late = nn.Linear(width, 3)
        self.use_late = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        out = self.fc2(h)
        return out + self.late(h) if self.use_late else out

    def groups(self) -> list[dict[str, object]]:
        first = list(self.fc1.parameters())
        rest = [self.fc2.weight, *self.late.parameters()]
        return [{"params": first}, {"params": rest, "lr_scale": 4.0}]


def make_optimizer(name: str, model: LateNet) -> torch.optim.Optimizer:
    opt = COS_OPTIMIZERS[name](model.groups())
    opt.param_groups[1]["lr"] *= 4  # param groups with different LRs
    return opt


def run_with_reference(
    model: LateNet, opt: torch.optim.Optimizer, stats: StatsCollector, steps: int, *,
    scaler: torch.amp.GradScaler | None = None, inf_at: tuple[int, ...] = (),
    accumulate: int = 1, late_from: int | None = None, seed: int = 0,
    before_step: Callable[[int], None] | None = None,
) -> tuple[dict[int, float], dict[int, float]]:  # fmt: skip
    """Train, computing the reference cosine by hand at every optimizer step; return
    ({step: expected}, {step: reported}). ``before_step(step)`` runs before each step."""
    torch.manual_seed(seed)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    prev: dict[str, torch.Tensor] | None = None
    expected: dict[int, float] = {}
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        model.use_late = late_from is not None and step >= late_from
        if step % accumulate == 0:
            opt.zero_grad()
        loss = model(torch.randn(16, 6)).pow(2).mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if step in inf_at:
            model.fc1.weight.grad[0, 0] = float("inf")  # GradScaler skips this step
        if (step + 1) % accumulate == 0:
            grads = {n: p.grad.double().clone() for n, p in named if p.grad is not None}
            before = {n: p.detach().double().clone() for n, p in named}
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if step not in inf_at:
                if prev is not None:
                    g = flat(list(grads.values()))
                    u = flat([prev[n] for n in grads])
                    expected[step] = cosine(g, u)
                prev = {n: before[n] - p.detach().double() for n, p in named}
        stats.after_step(step)
    got = {s: v["cos_grad_update"] for s, v in drained(stats).items() if "cos_grad_update" in v}
    return expected, got


def assert_same(expected: dict[int, float], got: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected), "cosine reported at the wrong steps"
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-4, abs=2e-5), (
            f"wrong cos_grad_update at step {step}: expected {value:.6f}, got {got[step]:.6f}"
        )


@pytest.mark.parametrize("opt_name", list(COS_OPTIMIZERS))
def test_cosine_every_step_is_the_gradient_against_the_previous_weight_change(
    opt_name: str,
) -> None:
    """Two param groups with different LRs, a frozen parameter, and a layer that gets its
    first gradients at step 4 (no optimizer state yet: a zero previous update)."""
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer(opt_name, model)
    stats = StatsCollector(model, opt, COS_ONLY)
    expected, got = run_with_reference(model, opt, stats, 10, late_from=4)
    assert 0 not in got  # the first step has no previous update: no value, not a zero
    assert len(got) == 9
    assert_same(expected, got)
    assert stats.cos_source == COS_SOURCES[opt_name]
    assert stats.memory_bytes == (0 if COS_SOURCES[opt_name] != "copy" else 4 * sum(
        p.numel() for p in model.parameters() if p.requires_grad))  # fmt: skip
    stats.close()


@pytest.mark.parametrize("opt_name", ["sgd", "sgd-momentum-wd-dampening", "adam"])
def test_a_skipped_amp_step_has_no_cosine_and_is_not_the_previous_update(opt_name: str) -> None:
    """GradScaler skips steps 2 and 5 (inf gradients): no value there; steps 3 and 6 compare
    with the update of steps 1 and 4, the last ones that changed the weights."""
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer(opt_name, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    stats = StatsCollector(model, opt, COS_ONLY, scaler)
    expected, got = run_with_reference(model, opt, stats, 8, scaler=scaler, inf_at=(2, 5))
    assert sorted(got) == [1, 3, 4, 6, 7]
    assert_same(expected, got)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_gradient_accumulation_gives_one_cosine_per_optimizer_step(opt_name: str) -> None:
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer(opt_name, model)
    stats = StatsCollector(model, opt, COS_ONLY)
    expected, got = run_with_reference(model, opt, stats, 12, accumulate=3)
    assert sorted(got) == [5, 8, 11]  # optimizer steps at 2, 5, 8, 11; 2 is the first
    assert_same(expected, got)


def test_cos_every_counts_optimizer_steps() -> None:
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer("sgd", model)  # the copy source: it measures the step before
    stats = StatsCollector(model, opt, replace(COS_ONLY, cos_every=3))
    expected, got = run_with_reference(model, opt, stats, 16, accumulate=2)
    # Optimizer steps 0..7 end at training steps 1, 3, ..., 15; due: 3 and 6 (0 has none).
    assert sorted(got) == [7, 13]
    assert_same({s: expected[s] for s in got}, got)


class TickingClock:
    """A host clock that moves one second per reading: the cosine then always costs as
    much as the rest of the step, far over its budget."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("opt_name", ["sgd", "sgd-momentum-wd-dampening", "adam"])
def test_the_budget_cadence_thins_out_a_costly_cosine_and_keeps_it_exact(
    opt_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step for the first 64 optimizer steps, then every 4th (the cap), every step
    again for 32 steps after an LR change; each value still the reference cosine, including
    plain SGD's, which copies the weights the step before a due one."""
    monkeypatch.setattr(stats_module.time, "perf_counter", TickingClock().perf_counter)
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer(opt_name, model)
    stats = StatsCollector(model, opt, replace(COS_ONLY, cos_every="budget"))

    def lr_change(step: int) -> None:  # as Monitor applies the controller's command
        if step == 130:
            for group in opt.param_groups:
                group["lr"] *= 0.5
            stats.lr_changed()

    expected, got = run_with_reference(model, opt, stats, 200, before_step=lr_change)
    assert stats.cos_every == 4
    # Dense from the step after the change's (130 was not prepared), for 32 steps.
    assert sorted(got) == [*range(1, 64), *range(64, 131, 4), *range(131, 163), *range(164, 200, 4)]
    assert_same({s: expected[s] for s in got}, got)
    stats.close()


ONE_GROUP = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.5),
    "adam-maximize": lambda ps: torch.optim.Adam(ps, lr=1e-2, maximize=True),
    "adam-no-momentum": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.0, 0.99)),
    "sgd-momentum-maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9,
                                                        maximize=True),
}  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opt_name", list(ONE_GROUP))
def test_one_param_group_of_a_small_model_takes_the_gathered_path(
    opt_name: str, dtype: torch.dtype
) -> None:
    """One param group (the usual case): Adam's update is rebuilt in one buffer with each
    tensor's own bias correction (``late`` gets its state 4 steps after the others); with
    ``maximize`` the applied gradient is -p.grad. All against the reference."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        model = LateNet()
        opt = ONE_GROUP[opt_name](model.parameters())
        stats = StatsCollector(model, opt, COS_ONLY)
        expected, got = run_with_reference(model, opt, stats, 10, late_from=4)
    finally:
        torch.set_default_dtype(before)
    if "maximize" in opt_name:  # the gradient the optimizer applies is -p.grad
        expected = {step: -value for step, value in expected.items()}
    assert_same(expected, got)
    if opt_name.startswith("adam"):  # the gathered path ran (not only the general one)
        assert any(key[0] == "adam" for key in stats._cos._gathers)  # type: ignore[union-attr]


@pytest.mark.parametrize("beta", [0.999, 0.9, 0.5])
def test_adams_bias_correction_keeps_float32_precision_at_small_step_counts(beta: float) -> None:
    """1 - beta**s in float32 cancels when beta**s is near 1 (at beta = 0.999, s = 1 it is off
    by 2e-5, relatively); the client's -expm1(s ln beta) stays within float32 rounding, for
    a float beta and a tensor one alike; beta 0 gives exactly 1."""
    st = torch.tensor([1.0, 2.0, 3.0, 10.0, 100.0, 3000.0])
    for b in (beta, torch.tensor(beta)):
        exact_beta = float(b)  # a tensor beta is float32's nearest value to ``beta``
        exact = torch.tensor([1.0 - exact_beta**s for s in st.tolist()], dtype=torch.float64)
        got = _bias_correction(st, b)
        assert got.dtype == torch.float32
        assert ((got.double() - exact) / exact).abs().max().item() < 3e-7
    assert _bias_correction(st, 0.0).tolist() == [1.0] * len(st)
    assert _bias_correction(st, torch.tensor(0.0)).tolist() == [1.0] * len(st)
    # The per-tensor form (state on several devices) gives the same values, bit for bit.
    for b in (beta, torch.tensor(beta), 0.0):
        each = _bias_corrections(list(st.unbind()), b)
        assert torch.equal(torch.stack(each), _bias_correction(st, b))


def test_adam_with_tensor_betas_takes_the_general_path() -> None:
    """Tensor betas stay on their device: the update is rebuilt tensor by tensor (the general
    path, not the gathered one), and matches the reference."""
    torch.manual_seed(0)
    model = LateNet()
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=betas)  # type: ignore[arg-type]
    stats = StatsCollector(model, opt, COS_ONLY)
    expected, got = run_with_reference(model, opt, stats, 10, late_from=4)
    assert_same(expected, got)
    assert not any(key[0] == "adam" for key in stats._cos._gathers)  # type: ignore[union-attr]


def test_resumed_adam_uses_its_step_count_for_bias_correction() -> None:
    torch.manual_seed(0)
    model = LateNet()
    opt = make_optimizer("adam", model)
    for _ in range(3):  # trained before the collector existed (e.g. loaded from a checkpoint)
        opt.zero_grad()
        model(torch.randn(16, 6)).pow(2).mean().backward()
        opt.step()
    stats = StatsCollector(model, opt, COS_ONLY)
    expected, got = run_with_reference(model, opt, stats, 5)
    expected[0] = got[0]  # the update before our first step is not in the reference's record
    assert_same(expected, got)


def sampled_cosine(g: dict[str, torch.Tensor], u: dict[str, torch.Tensor], k: int, o: int) -> float:
    """The sampled estimate, by hand: a tensor of at least 8 * k blocks of 1024 elements is
    cut into k equal chunks of whole blocks; chunk o counts k times, the tail after the k
    chunks once; smaller tensors count whole."""
    dot = gg = uu = 0.0
    for name in g:
        a, b = g[name].reshape(-1), u[name].reshape(-1)
        blocks = a.numel() // (k * 1024)
        parts = [(a, b, 1)]
        if blocks >= 8:
            n = blocks * 1024
            parts = [(a[o * n : (o + 1) * n], b[o * n : (o + 1) * n], k),
                     (a[k * n :], b[k * n :], 1)]  # fmt: skip
        for x, y, weight in parts:
            dot += weight * (x @ y).item()
            gg += weight * (x @ x).item()
            uu += weight * (y @ y).item()
    return dot / math.sqrt(gg * uu)


@pytest.mark.parametrize("opt_name", ["sgd-momentum-wd-dampening", "adam", "sgd"])
def test_large_tensors_are_read_in_sampled_blocks(opt_name: str) -> None:
    """fc1 (6 x 12,000 = 72,000 weights) is sampled: 8 chunks of 8 blocks of 1024, one read
    per step, plus a tail of 6,464; the rest is read whole. The estimate matches the
    hand-made one exactly and the full cosine closely; with cos_sample=1 it is the full
    cosine."""
    results = {}
    for sample in (8, 1):
        torch.manual_seed(0)
        model = LateNet(width=12_000)
        opt = make_optimizer(opt_name, model)
        for group in opt.param_groups:  # 12,000 hidden units: a stable LR is smaller
            group["lr"] /= 20
        stats = StatsCollector(model, opt, replace(COS_ONLY, cos_sample=sample))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        prev = None
        got_steps, sampled_ref, full_ref = [], [], []
        for step in range(6):
            opt.zero_grad()
            model(torch.randn(16, 6)).pow(2).mean().backward()
            grads = {n: p.grad.double().clone() for n, p in named if p.grad is not None}
            before = {n: p.detach().double().clone() for n, p in named}
            opt.step()
            stats.after_step(step)
            if prev is not None:
                got_steps.append(step)
                sampled_ref.append(sampled_cosine(grads, prev, 8, step % 8))
                full_ref.append(cosine(flat(list(grads.values())), flat(list(prev.values()))))
            prev = {n: before[n] - p.detach().double() for n, p in named if n in grads}
        got = {s: v["cos_grad_update"] for s, v in drained(stats).items()}
        assert sorted(got) == got_steps
        results[sample] = [got[s] for s in got_steps]
    assert results[8] == pytest.approx(sampled_ref, rel=1e-4, abs=2e-5)
    assert results[1] == pytest.approx(full_ref, rel=1e-4, abs=2e-5)
    assert results[8] == pytest.approx(full_ref, abs=0.05)
