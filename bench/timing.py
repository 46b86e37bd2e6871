"""Timing: one call at a time (``measure``), or requests kept in flight on N streams (``measure_streams``).
Warm-ups are untimed, every sample is kept, and the statistics come from the samples.

One call at a time, only the call is timed. On CUDA each call sits between two CUDA events on the
current stream, recorded after a synchronize, so the clock measures device work, not how fast the
host queued it. A backend that runs on its own stream (onnxruntime) returns only when its outputs
are ready, so the end event still comes after its work. On CPU, perf_counter_ns brackets each call.

With requests in flight, throughput is images completed over the wall time of the window in which
every stream was busy, and each request's latency is its own under that load (see measure_streams).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.streams import Completion, Streams

# The window around the timed calls: the row's cost meter (energy, clocks, CPU time) in a run.
Window = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class Timing:
    first_run_ms: float  # the first call after setup, kept out of the statistics
    samples_ms: list[float]  # each timed request's latency
    # The wall time the samples' requests completed in: with one call at a time, the calls' own
    # time; with requests in flight, the window in which every stream was busy.
    window_s: float
    cpu_s: float | None = None  # the process's CPU time over the window (requests in flight)

    def throughput(self, images_per_request: int) -> float:
        return images_per_request * len(self.samples_ms) / self.window_s


def measure(
    run: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    min_time: float | None = None,
    window: Window = contextlib.nullcontext,
) -> Timing:
    """Time ``run``: once alone (first_run_ms), ``warmup`` times untimed, then ``iters`` timed
    calls, or with ``min_time`` as many calls as fill that many seconds (at least ``iters``).
    ``window`` is entered right before the first timed call and left right after the last."""
    clock = _cuda_call_ms if device.type == "cuda" else _cpu_call_ms
    first = clock(run)
    for _ in range(warmup):
        run()
    samples: list[float] = []
    elapsed_ms = 0.0
    with window():
        while len(samples) < iters or (min_time is not None and elapsed_ms < min_time * 1e3):
            samples.append(clock(run))
            elapsed_ms += samples[-1]
    return Timing(first_run_ms=first, samples_ms=samples, window_s=elapsed_ms / 1e3)


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


def measure_streams(
    streams: Streams,
    inputs: Any,
    *,
    warmup: int,
    iters: int,
    min_time: float | None = None,
    window: Window = contextlib.nullcontext,
) -> Timing:
    """Keep every stream of ``streams`` busy with requests on ``inputs`` (a closed loop: each
    completion starts the stream's next request at once, as perf_analyzer's concurrency and
    benchmark_app do), and time the window in which all of them were busy.

    - first_run_ms: one request alone on stream 0, before the others start.
    - Ramp-up: every stream completes ``warmup`` requests (at least one) untimed. The window opens
      when the last stream completes its last warm-up request; from then on every stream is busy.
    - The window counts the requests that complete in it, ``iters`` per stream (with ``min_time``,
      at least that many seconds), and closes at the completion of the last one counted.
    - Drain: the requests still in flight then finish outside the window, uncounted.

    Throughput is counted images over the window's wall time (``Timing.throughput``), each request's
    latency its own; ``window`` is entered when the window opens and left when it closes, and the
    process's CPU time over it is kept (how many cores the mode kept busy)."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    in_flight = 0

    def submit(slot: int) -> None:
        nonlocal in_flight
        streams.submit(slot, inputs, lambda result: finished.put((slot, result)))
        in_flight += 1

    def wait() -> tuple[int, Completion]:
        nonlocal in_flight
        slot, result = finished.get()
        in_flight -= 1
        if isinstance(result, BaseException):
            raise result
        return slot, result

    warmed = [0] * streams.count
    counted: list[Completion] = []
    target = iters * streams.count
    try:
        submit(0)
        first = wait()[1].latency_ms
        for slot in range(streams.count):
            for _ in range(streams.depth):
                submit(slot)
        with contextlib.ExitStack() as metered:
            opened_s = None
            while True:
                slot, done = wait()
                if opened_s is None:
                    warmed[slot] += 1
                    if min(warmed) >= max(warmup, 1):
                        metered.enter_context(window())
                        opened_s, cpu_start = done.end_s, time.process_time()
                elif done.end_s > opened_s:
                    counted.append(done)
                    if len(counted) >= target and (min_time is None or done.end_s - opened_s >= min_time):
                        break
                submit(slot)
        cpu_s = time.process_time() - cpu_start
    finally:
        # Drain: every request in flight finishes before the streams may be closed; a failure
        # among them changes nothing now.
        while in_flight:
            finished.get()
            in_flight -= 1
    return Timing(first_run_ms=first, samples_ms=[c.latency_ms for c in counted],
                  window_s=counted[-1].end_s - opened_s, cpu_s=cpu_s)


PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p99.9": 99.9}


def summarize(samples_ms: list[float], images_per_request: int, window_s: float | None = None) -> dict:
    """Throughput (images/s over ``window_s``, by default the samples' own sum: one call at a time)
    and latency percentiles per request, from the samples."""
    s = np.asarray(samples_ms, dtype=np.float64)
    window_s = s.sum() / 1e3 if window_s is None else window_s
    return {
        "throughput_ips": images_per_request * len(s) / window_s,
        "latency_ms": {
            "mean": float(s.mean()),
            **{name: float(np.percentile(s, q)) for name, q in PERCENTILES.items()},
            "min": float(s.min()),
            "max": float(s.max()),
            "std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
        },
    }
