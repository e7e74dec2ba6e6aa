"""Process and GPU memory and utilisation, sampled every few seconds off the hot path.

``SystemSampler.sample()`` returns plain ``(name, value)`` pairs; the Monitor calls
``poll(now)`` from its sender thread (or at a flush), never per step. psutil gives the
process figures; NVML (``pynvml``, from the ``nvidia-ml-py`` package) gives GPU utilisation
and memory where it is importable and a GPU is present. Neither is required: what cannot be
read is left out, with one warning. ``torch.cuda.memory_allocated`` reads the caching
allocator's counters and does not synchronise the device.

Series: ``system/rss_mb``, ``system/cpu_percent``, ``system/cuda<i>_allocated_mb``,
``system/cuda<i>_reserved_mb``, ``system/gpu<i>_util_percent``, ``system/gpu<i>_mem_used_mb``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Any

from .errors import MonitorConfigError

__all__ = ["SystemSampler"]

_MB = 1024 * 1024


class SystemSampler:
    """Samples process and GPU figures at most once every ``interval`` seconds.

    Args:
        interval: seconds between samples (> 0), e.g. 5.0.
        gpu: query NVML for GPU utilisation and memory when ``pynvml`` is importable.

    Example:
        >>> sampler = SystemSampler(interval=5.0)
        >>> points = sampler.poll(time.monotonic())   # [] until the interval has passed
    """

    def __init__(self, interval: float = 5.0, gpu: bool = True) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise MonitorConfigError(f"system interval must be a number > 0, got {interval!r}")
        self.interval = float(interval)
        self._next = 0.0
        self._warned: set[str] = set()
        self._proc: Any = None
        try:
            import psutil

            self._proc = psutil.Process(os.getpid())
            self._proc.cpu_percent(None)  # the first call only starts the measurement
        except ImportError:
            self._warn_once("psutil", "psutil is not installed: no process memory or CPU figures")
        self._nvml: Any = None
        self._handles: list[Any] = []
        if gpu:
            self._init_nvml()

    def poll(self, now: float | None = None) -> list[tuple[str, float]]:
        """``sample()`` if ``interval`` seconds have passed since the last one, else []."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return []
        self._next = now + self.interval
        return self.sample()

    def sample(self) -> list[tuple[str, float]]:
        """Read every available figure now."""
        out: list[tuple[str, float]] = []
        if self._proc is not None:
            try:
                out.append(("system/rss_mb", self._proc.memory_info().rss / _MB))
                out.append(("system/cpu_percent", float(self._proc.cpu_percent(None))))
            except Exception as exc:  # process figures are best effort, never fatal
                self._warn_once("psutil-read", f"could not read process figures: {exc}")
        out.extend(self._torch_cuda())
        for i, handle in enumerate(self._handles):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU that vanished or a driver hiccup
                self._warn_once("nvml-read", f"could not read NVML figures: {exc}")
                continue
            out.append((f"system/gpu{i}_util_percent", float(util.gpu)))
            out.append((f"system/gpu{i}_mem_used_mb", mem.used / _MB))
        return out

    def close(self) -> None:
        """Release NVML. Safe to call twice."""
        if self._nvml is not None:
            with contextlib.suppress(Exception):  # shutdown errors cannot matter to the user
                self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = []

    def _torch_cuda(self) -> list[tuple[str, float]]:
        torch = sys.modules.get("torch")  # never import torch just for this
        if torch is None or not torch.cuda.is_initialized():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            out.append((f"system/cuda{i}_allocated_mb", torch.cuda.memory_allocated(i) / _MB))
            out.append((f"system/cuda{i}_reserved_mb", torch.cuda.memory_reserved(i) / _MB))
        return out

    def _init_nvml(self) -> None:
        try:
            import pynvml
        except ImportError:
            return  # no NVML bindings: GPU figures come from torch's allocator only
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception:  # no driver or no GPU (NVMLError_*): simply no NVML figures
            self._handles = []

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"lrpilot: {message}", RuntimeWarning, stacklevel=3)
