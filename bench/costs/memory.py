"""Peak memory over one row: the host process's resident set, and the GPU's memory, each split
into setup (build, export, compile: once per deployment) and running (what serving holds).

Host: Linux keeps the process's high-water mark of resident memory (VmHWM) and resets it when
"5" is written to /proc/self/clear_refs, so the peak between a row's setup and the end of its
timed calls is exact. Where that file cannot be written, the resident set (/proc/self/statm) is
sampled instead, and a peak shorter than the sampling period can be missed; the source says which.
Freed heap is handed back to the kernel (glibc's malloc_trim) before each row, so that what an
earlier row freed but the allocator kept does not hide this row's growth.

CUDA: PyTorch's caching allocator counts what it hands out (max_memory_allocated, reset per row);
runtimes with allocators of their own (onnxruntime, TensorRT) are seen only through NVML's used
memory, which is device-wide: another process's allocations count too.
"""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import torch

_MB = 2**20


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


class HostMemory:
    """This process's peak resident set above its level when ``start`` was called: during setup
    (up to ``mark``), and while running (after it)."""

    def __init__(self, proc: str | Path = "/proc/self", reset_peak: bool = True):
        self.proc = Path(proc)
        self.reset_peak = reset_peak
        self.exact = False
        self.base = self.sampled = self.setup = 0

    @property
    def sampled_peak(self) -> bool:
        return not self.exact

    @property
    def source(self) -> str:
        return ("host RSS peak (VmHWM, reset per row)" if self.exact
                else "host RSS sampled every 20 ms (VmHWM could not be reset)")

    def _rss(self) -> int:
        resident_pages = int((self.proc / "statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")

    def _hwm(self) -> int:
        for line in (self.proc / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no VmHWM in {self.proc / 'status'}")

    def _reset(self) -> bool:
        """The high-water mark brought down to the current resident set, where the kernel allows."""
        try:
            (self.proc / "clear_refs").write_text("5")
            self._hwm()
        except OSError:
            return False
        return True

    def _peak(self) -> int:
        return self._hwm() if self.exact else max(self.sampled, self._rss())

    def start(self) -> None:
        gc.collect()
        _trim_heap()
        self.base = self.sampled = self.setup = self._rss()
        self.exact = self.reset_peak and self._reset()

    def mark(self) -> None:
        self.setup = self._peak()
        if self.exact:
            self._reset()
        self.sampled = self._rss()

    def sample(self) -> None:
        self.sampled = max(self.sampled, self._rss())

    def peaks_mb(self) -> tuple[float, float]:
        """The peak during setup and the peak while running, each above the level at ``start``."""
        return max(self.setup - self.base, 0) / _MB, max(self._peak() - self.base, 0) / _MB


class TorchCudaMemory:
    """What PyTorch's allocator handed out on ``device`` at its peak, above its level at ``start``."""

    source = "torch.cuda.max_memory_allocated"
    sampled_peak = False

    def __init__(self, device: torch.device):
        self.device = device
        self.base = self.setup = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = self.setup = torch.cuda.memory_allocated(self.device)

    def mark(self) -> None:
        torch.cuda.synchronize(self.device)
        self.setup = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def sample(self) -> None:
        pass

    def peaks_mb(self) -> tuple[float, float]:
        run = torch.cuda.max_memory_allocated(self.device)
        return max(self.setup - self.base, 0) / _MB, max(run - self.base, 0) / _MB


class NvmlMemory:
    """The GPU's used memory (NVML, device-wide) at its sampled peak, above its level at ``start``."""

    source = "NVML used memory, device-wide, sampled every 20 ms"
    sampled_peak = True

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        self.base = self.sampled = self.setup = 0

    def _used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def start(self) -> None:
        self.base = self.sampled = self.setup = self._used()

    def mark(self) -> None:
        self.setup = max(self.sampled, self._used())
        self.sampled = self._used()

    def sample(self) -> None:
        self.sampled = max(self.sampled, self._used())

    def peaks_mb(self) -> tuple[float, float]:
        run = max(self.sampled, self._used())
        return max(self.setup - self.base, 0) / _MB, max(run - self.base, 0) / _MB
