"""The environment a run measured, as the contract's ``env`` object: versions, CPU, GPU, driver."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

import torch

from bench.costs.meter import Gauges, nvml_handle
from resnet_perf.util.cpu import speed_features, usable_cores
from resnet_perf.util.versions import installed_version


def _cpu_name() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_state() -> dict:
    """What decides CPU figures besides the model: the frequency governor (``performance`` holds the
    clock; ``powersave`` and ``ondemand`` let it wander between calls), the cores this process may
    use, and the thread-count variables the math libraries read."""
    return {
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_cores_usable": usable_cores(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }


def _gpu(device: torch.device) -> dict:
    """The GPU's name, and from NVML its driver, clocks, power limit and temperature at the start of
    the run: a GPU at its thermal or power limit, or with clocks locked low, gives other figures."""
    state = {"gpu": None, "driver": None, "gpu_state": None}
    if device.type != "cuda":
        return state
    state["gpu"] = torch.cuda.get_device_name(device)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = nvml_handle(pynvml, device)
            clock = pynvml.nvmlDeviceGetClockInfo
            max_clock = pynvml.nvmlDeviceGetMaxClockInfo
            state["driver"] = pynvml.nvmlSystemGetDriverVersion()
            state["gpu_state"] = {
                "sm_clock_mhz": clock(handle, pynvml.NVML_CLOCK_SM),
                "sm_clock_max_mhz": max_clock(handle, pynvml.NVML_CLOCK_SM),
                "memory_clock_mhz": clock(handle, pynvml.NVML_CLOCK_MEM),
                "memory_clock_max_mhz": max_clock(handle, pynvml.NVML_CLOCK_MEM),
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                "power_draw_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML (or no nvidia-ml-py) only loses these fields
        pass
    return state


def collect(device: torch.device, threads: int, packages: Mapping[str, tuple[str, ...]]) -> dict:
    """The contract's ``env`` fields, then the CPU and GPU state that figures depend on. ``packages``:
    the backends' libraries (Runner.packages), each recorded by its key, None where not installed."""
    gpu = _gpu(device)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        # What decides which precision is fast on this CPU (AMX: bf16 and int8; VNNI: int8).
        "cpu_features": speed_features(),
        "threads": threads,
        "torch": torch.__version__,
        **{key: installed_version(*distributions) for key, distributions in packages.items()},
        "gpu": gpu["gpu"],
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "driver": gpu["driver"],
        **_cpu_state(),
        "gpu_state": gpu["gpu_state"],
        "costs": _costs(device),
    }


def _costs(device: torch.device) -> dict:
    """Where this machine's energy and clock figures come from, or why there are none."""
    gauges = Gauges.open(device)
    try:
        return gauges.describe()
    finally:
        gauges.close()
