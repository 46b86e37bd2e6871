"""Timing a callable: untimed warm-up, then one sample per call, every sample kept.

Only the call is timed. On CUDA each call sits between two CUDA events on the current stream,
recorded after a synchronize, so the clock measures device work, not how fast the host queued it.
A backend that runs on its own stream (onnxruntime) returns only when its outputs are ready, so the
end event still comes after its work. On CPU, perf_counter_ns brackets each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Timing:
    first_run_ms: float  # the first call after setup, kept out of the statistics
    samples_ms: list[float]


def measure(
    run: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    min_time: float | None = None,
    before_timed: Callable[[], None] = lambda: None,
) -> Timing:
    """Time ``run``: once alone (first_run_ms), ``warmup`` times untimed, then ``iters`` timed
    calls, or with ``min_time`` as many calls as fill that many seconds (at least ``iters``).
    ``before_timed`` is called between the warm-up and the timed calls."""
    clock = _cuda_call_ms if device.type == "cuda" else _cpu_call_ms
    first = clock(run)
    for _ in range(warmup):
        run()
    before_timed()
    samples: list[float] = []
    elapsed_ms = 0.0
    while len(samples) < iters or (min_time is not None and elapsed_ms < min_time * 1e3):
        samples.append(clock(run))
        elapsed_ms += samples[-1]
    return Timing(first_run_ms=first, samples_ms=samples)


def _cpu_call_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    run()
    return (time.perf_counter_ns() - start) / 1e6


def _cuda_call_ms(run: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def summarize(samples_ms: list[float], batch_size: int) -> dict:
    """Throughput (images/s over all timed calls) and latency percentiles per batch, from the samples."""
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
    return {
        "throughput_ips": batch_size * len(s) / (s.sum() / 1e3),
        "latency_ms": {
            "mean": float(s.mean()),
            "p50": float(p50),
            "p90": float(p90),
            "p95": float(p95),
            "p99": float(p99),
            "min": float(s.min()),
            "max": float(s.max()),
            "std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
        },
    }
