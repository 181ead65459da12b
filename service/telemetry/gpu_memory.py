"""GPU memory as Prometheus gauges, read through NVML (pynvml) at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily


class GpuMemoryCollector:
    """cnnserve_gpu_memory_{used,total}_bytes per GPU, read through NVML at scrape time."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "cnnserve_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "cnnserve_gpu_memory_total_bytes", "GPU memory size (NVML)", labels=["gpu"]
        )
        nvml = self._nvml
        for index in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
            used.add_metric([str(index)], float(info.used))
            total.add_metric([str(index)], float(info.total))
        yield used
        yield total


def register_gpu_memory(registry: CollectorRegistry) -> bool:
    """Add the GPU memory collector when NVML answers; False (nothing added) otherwise."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # no pynvml, no driver or no GPU: skip cleanly
        return False
    registry.register(GpuMemoryCollector(pynvml))
    return True
