"""A row's costs: its peak memory from setup to the end of its timed calls, the energy and clocks
of its timed window, and its achieved FLOP/s against this machine's GEMM peak.

``Gauges`` are the machine's readers, opened once per run; a ``RowMeter`` uses them for one row:

    with RowMeter(gauges) as meter:      # memory from here: the row's setup
        ...                              # build, prepare
        with meter.window():             # each timed window: energy, clocks, CPU time;
            ...                          # the first one ends setup's memory and starts running's
        costs = meter.costs()

What a reader cannot give is null in the row, with the reason beside it. One thread samples what
has no counter of its own (a sampled resident set, NVML's used memory, clocks) every 20 ms, and only
while a row is metered; where nothing needs sampling none runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch

from bench.costs import clocks, peak
from bench.costs.energy import NvmlEnergy, Rapl
from bench.costs.memory import HostMemory, NvmlMemory, TorchCudaMemory
from resnet_perf.util.cli import one_line
from resnet_perf.util.cpu import usable_cores

SAMPLE_S = 0.02


def nvml_handle(nvml, device: torch.device):
    """NVML's handle of the CUDA ``device``: by its UUID, since CUDA_VISIBLE_DEVICES renumbers the
    CUDA devices but not NVML's; by its index where torch gives no UUID."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)


class _Unreadable:
    def __init__(self, reason: str):
        self.reason = reason


class Gauges:
    """The readers of one machine and device: host memory, energy, clocks, and on CUDA the GPU's
    memory (PyTorch's allocator, or NVML for runtimes with their own)."""

    def __init__(self, device: torch.device, *, host: HostMemory | None = None, rapl: Rapl | None = None,
                 cpufreq: clocks.CpuFreq | None = None, nvml=None):
        self.device = device
        self.host = host or HostMemory()
        self.nvml = nvml
        self.torch_memory = TorchCudaMemory(device) if device.type == "cuda" else None
        self.gpu_memory = None
        if device.type != "cuda":
            energy, clock = rapl or Rapl(), cpufreq or clocks.CpuFreq()
        elif nvml is None:
            energy = clock = _Unreadable("NVML is not available (nvidia-ml-py and an NVIDIA driver)")
        else:
            handle = nvml_handle(nvml, device)
            self.gpu_memory = NvmlMemory(nvml, handle)
            energy, clock = NvmlEnergy(nvml, handle), clocks.NvmlClocks(nvml, handle)
        self.energy, self.energy_reason = (energy, None) if energy.reason is None else (None, energy.reason)
        self.clock, self.clock_reason = (clock, None) if clock.reason is None else (None, clock.reason)
        self.peaks: dict[str, dict] = {}

    def peak(self, precision: str) -> dict:
        """The GEMM probe of ``precision`` on this device, measured the first time a row asks."""
        if precision not in self.peaks:
            self.peaks[precision] = peak.probe(precision, self.device)
        return self.peaks[precision]

    def runtime_load(self, load: Callable[[], None]) -> dict:
        """``load`` a backend's runtime into the process, metered: {"runtime_load_mb": the host
        memory it added}, or {"runtime_load_error": why it failed} (its rows then fail on their own)."""
        self.host.start()
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - the backend's rows report their own failure
            return {"runtime_load_error": one_line(exc)}
        return {"runtime_load_mb": self.host.peaks_mb()[1]}

    @classmethod
    def open(cls, device: torch.device) -> Gauges:
        nvml = None
        if device.type == "cuda":
            with suppress(Exception):  # no nvidia-ml-py or no driver: the GPU figures say so
                import pynvml

                pynvml.nvmlInit()
                nvml = pynvml
        return cls(device, nvml=nvml)

    def close(self) -> None:
        if self.nvml is not None:
            with suppress(Exception):
                self.nvml.nvmlShutdown()
            self.nvml = None

    def describe(self) -> dict:
        """For env: where energy and clocks come from on this machine, or why they do not."""
        return {"energy": self.energy.source if self.energy else None, "energy_reason": self.energy_reason,
                "clock": self.clock.source if self.clock else None, "clock_reason": self.clock_reason}


class RowMeter:
    """One row's memory, energy, clocks and CPU time. ``device_memory`` is how the row's backend
    allocates on a GPU: "torch" (PyTorch's allocator) or "nvml" (a runtime's own, seen device-wide)."""

    def __init__(self, gauges: Gauges, device_memory: str = "nvml"):
        self.gauges = gauges
        self.memory = gauges.host
        if gauges.device.type == "cuda":
            self.memory = gauges.torch_memory if device_memory == "torch" else gauges.gpu_memory
        self.joules = self.seconds = self.cpu_seconds = 0.0
        self.windows = 0
        self.samples: list[tuple[float, int]] = []
        self.in_window = False
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def _meters(self) -> set:
        return {self.memory, self.gauges.host} - {None}

    def _sample(self, meters: list) -> None:
        while not self.done.wait(SAMPLE_S):
            for meter in meters:
                meter.sample()
            if self.in_window and self.gauges.clock is not None:
                self.samples.append(self.gauges.clock.sample())

    def __enter__(self) -> RowMeter:
        """Before the row's setup: memory levels are taken from here."""
        for meter in self._meters():
            meter.start()
        # Only the meters without a peak of their own need the thread (and the clock, in windows).
        meters = [m for m in self._meters() if m.sampled_peak]
        if meters or self.gauges.clock is not None:
            self.thread = threading.Thread(target=self._sample, args=(meters,), name="row-meter", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """The sampling thread stopped, whatever happened to the row."""
        self.done.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    @contextmanager
    def window(self, fresh: bool = False) -> Iterator[None]:
        """A timed window: its energy, seconds, clocks and the process's CPU time. The first one
        ends setup (the peak from here on is the running one); ``fresh`` forgets the windows
        before it (a rate search's trials)."""
        if self.windows == 0:
            for meter in self._meters():
                meter.mark()
        if fresh:
            self.joules = self.seconds = self.cpu_seconds = 0.0
            self.samples = []
        energy = self.gauges.energy
        counter, started, cpu = energy.read() if energy else None, time.perf_counter(), time.process_time()
        self.in_window = True
        try:
            yield
        finally:
            self.in_window = False
            self.seconds += time.perf_counter() - started
            self.cpu_seconds += time.process_time() - cpu
            if energy is not None:
                self.joules += energy.joules(counter, energy.read())
            self.windows += 1

    def costs(self) -> dict:
        """After the row's last timed window: its peak memory, energy, clocks and CPU, as the row's costs."""
        self.__exit__()
        if self.gauges.clock is not None and not self.samples:
            self.samples.append(self.gauges.clock.sample())  # a window shorter than one sampling period
        setup, run = self.memory.peaks_mb() if self.memory else (None, None)
        costs = {"peak_mem_mb": None if run is None else max(setup, run), "setup_peak_mem_mb": setup,
                 "run_peak_mem_mb": run, "mem_source": self.memory.source if self.memory else "NVML is not available"}
        if self.memory is not self.gauges.host:
            host_setup, host_run = self.gauges.host.peaks_mb()
            costs.update(host_peak_mem_mb=max(host_setup, host_run), host_run_peak_mem_mb=host_run,
                         host_mem_source=self.gauges.host.source)
        measured = self.gauges.energy is not None and self.seconds > 0
        costs.update({
            "energy_j": self.joules if measured else None,
            "window_s": self.seconds,
            "mean_power_w": self.joules / self.seconds if measured else None,
            "energy_source": self.gauges.energy.source if self.gauges.energy else None,
            "energy_reason": None if measured else self.gauges.energy_reason or "no timed window",
            **clocks.summary(self.samples),
            "clock_source": self.gauges.clock.source if self.gauges.clock else None,
            "clock_reason": self.gauges.clock_reason,
            # How many cores the timed windows kept busy: the process's CPU time (all its threads,
            # the runtimes' own pools included) over their wall time.
            "cpu_cores_busy": self.cpu_seconds / self.seconds if self.seconds > 0 else None,
            "cpu_cores_usable": usable_cores(),
        })
        return costs


def complete(costs: dict, throughput_ips: float | None, gmac_per_image: float, probe: dict) -> dict:
    """The row's costs with what needs its throughput: energy per image (the window's mean power
    over its images per second) and achieved FLOP/s (2 per multiply-accumulate) against the GEMM
    probe of the row's precision."""
    achieved = 2 * gmac_per_image * throughput_ips if throughput_ips else None
    power = costs.get("mean_power_w")
    return {
        **costs,
        "energy_j_per_img": power / throughput_ips if power is not None and throughput_ips else None,
        "gmac_per_image": gmac_per_image,
        "achieved_gflops": achieved,
        "peak_probe_gflops": probe["gflops"],
        "peak_probe": probe["how"],
        "peak_gemms": probe.get("gemms"),
        "pct_of_peak": 100 * achieved / probe["gflops"] if achieved and probe["gflops"] else None,
    }
