"""The environment a run measured, as the contract's ``env`` object: versions, CPU, GPU, driver."""

from __future__ import annotations

import platform
import sys

import torch

from export.manifest import installed_version


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu(device: torch.device) -> tuple[str | None, str | None]:
    """(GPU name, driver version). NVML gives the driver; torch alone gives the name."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return name, pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (or no nvidia-ml-py) only loses the driver field
        return name, None


def collect(device: torch.device, threads: int) -> dict:
    gpu, driver = _gpu(device)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "triton": installed_version("triton"),
        "onnx": installed_version("onnx"),
        "onnxruntime": installed_version("onnxruntime-gpu", "onnxruntime"),
        "tensorrt": installed_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "gpu": gpu,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "driver": driver,
    }
