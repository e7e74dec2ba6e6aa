"""SystemSampler: process figures through psutil, its interval, and a bad interval."""

from __future__ import annotations

import pytest
from lrpilot.client.errors import MonitorConfigError
from lrpilot.client.system import SystemSampler


def test_poll_samples_once_per_interval() -> None:
    sampler = SystemSampler(interval=5.0, gpu=False)
    first = dict(sampler.poll(now=100.0))
    assert first["system/rss_mb"] > 1.0  # this very process: python + torch
    assert first["system/cpu_percent"] >= 0.0
    assert sampler.poll(now=104.9) == []
    assert "system/rss_mb" in dict(sampler.poll(now=105.0))
    sampler.close()
    sampler.close()


@pytest.mark.parametrize("interval", [0, -1.0, "5", True])
def test_bad_interval_is_refused_with_its_value(interval: object) -> None:
    with pytest.raises(MonitorConfigError, match=f"got {interval!r}"):
        SystemSampler(interval=interval)  # type: ignore[arg-type]
