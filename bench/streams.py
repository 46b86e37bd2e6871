"""Requests in flight: N streams on one prepared runner, each backend keeping them its runtime's own way.

A throughput figure means something only with the number of requests in flight beside it: the tools
our figures are held against all keep several (benchmark_app's THROUGHPUT hint runs streams fed by
an AsyncInferQueue, trtexec ``--infStreams`` enqueues ahead on CUDA streams, perf_analyzer keeps
``--concurrency-range`` requests open). ``Streams`` is what the harness sees of that: ``submit``
starts one request on a stream and returns at once; ``done`` follows from whatever thread the
runtime finishes on, with the request's own latency and the moment it finished. How the requests
are kept in flight is the backend's:

- ``ThreadedStreams``: one host thread per stream, each calling its own ``Lane`` (a call that
  releases the GIL inside: torch ops, onnxruntime's ``run``). The intra-op threads are split
  between the streams, so the cores are shared, not oversubscribed.
- ``CudaStreams``: one CUDA stream per stream, each call bracketed by CUDA events and enqueued
  ahead (``depth`` calls queued per stream) with no host synchronization between calls, as trtexec
  does; a watcher thread per stream waits on the end events, and the events give each request's
  device time and, against an origin event, when it finished.
- the runner's own (OpenVINO's AsyncInferQueue, a Triton client's asynchronous requests).

``bench.timing.measure_streams`` drives any of them in a closed loop.
"""

from __future__ import annotations

import abc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Completion:
    """One finished request."""

    latency_ms: float  # the request's own time: from its start to its end (CUDA: its device time)
    end_s: float  # when it finished, on time.perf_counter's clock


# What a stream calls when its request is over: the Completion, or the exception it failed with.
Done = Callable[[Completion | BaseException], None]


@dataclass(frozen=True)
class Lane:
    """One stream's own call, on its own resources where the runtime needs them (an onnxruntime
    session, a TensorRT execution context): the backend's input in, its output out."""

    call: Callable[[Any], Any]
    stream: Any = None  # CUDA: the torch.cuda.Stream its runtime was told to run on (None: any)


class Streams(abc.ABC):
    """``count`` streams, each taking up to ``depth`` requests at once."""

    count: int
    depth: int = 1
    how: str  # how the requests are kept in flight, for the row

    @abc.abstractmethod
    def submit(self, slot: int, inputs: Any, done: Done) -> None:
        """Start one request on stream ``slot`` with the backend's ``inputs`` (held by the caller
        until ``done``), without waiting for it."""

    def close(self) -> None:
        """Free what the streams hold; requests still in flight finish first."""

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def threads_each(threads: int, streams: int) -> int:
    """The intra-op threads each of ``streams`` gets out of ``threads``: an even share, at least one."""
    return max(1, threads // streams)


class ThreadedStreams(Streams):
    """A host thread per lane. Each sets its own intra-op threads (PyTorch's count is per thread:
    OpenMP's and MKL's settings are thread-local, and a new thread starts from the process's);
    ``close`` gives the process back the count it had."""

    def __init__(self, lanes: list[Lane], threads: int | None, how: str):
        self.count, self.how = len(lanes), how
        self.restore = torch.get_num_threads()
        self.inbox: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in lanes]
        self.workers = [threading.Thread(target=self._work, args=(lane, inbox, threads), daemon=True,
                                         name=f"resnet-perf-stream-{i}") for i, (lane, inbox) in
                        enumerate(zip(lanes, self.inbox))]
        for worker in self.workers:
            worker.start()

    @staticmethod
    def _work(lane: Lane, inbox: queue.SimpleQueue, threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        while (job := inbox.get()) is not None:
            inputs, done = job
            start = time.perf_counter()
            try:
                lane.call(inputs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who stops the run
                done(exc)
                continue
            end = time.perf_counter()
            done(Completion((end - start) * 1e3, end))

    def submit(self, slot: int, inputs: Any, done: Done) -> None:
        self.inbox[slot].put((inputs, done))

    def close(self) -> None:
        for inbox in self.inbox:
            inbox.put(None)
        for worker in self.workers:
            worker.join()
        torch.set_num_threads(self.restore)


class CudaStreams(Streams):
    """A CUDA stream per lane, ``depth`` calls enqueued ahead on each. ``submit`` only queues work:
    the start event, the lane's call (whose kernels go to the lane's stream, the current one
    inside), the end event; the stream first waits for the submitting thread's current stream, so
    an input copied there is complete. A watcher thread per stream waits on each end event in turn
    and reports the call. ``cuda`` is the ``torch.cuda`` module (a stand-in in the tests)."""

    def __init__(self, lanes: list[Lane], device: torch.device, how: str, depth: int = 2, cuda: Any = torch.cuda):
        self.count, self.depth, self.how = len(lanes), depth, how
        self.cuda, self.device = cuda, device
        self.lanes = lanes
        self.streams = [cuda.Stream(device) if lane.stream is None else lane.stream for lane in lanes]
        # The events' clock, tied to the host's: an event recorded once the device is idle.
        cuda.synchronize(device)
        self.origin = cuda.Event(enable_timing=True)
        self.origin.record(cuda.current_stream(device))
        self.origin.synchronize()
        self.origin_s = time.perf_counter()
        self.pending: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in lanes]
        self.watchers = [threading.Thread(target=self._watch, args=(pending,), daemon=True,
                                          name=f"resnet-perf-cuda-stream-{i}") for i, pending in enumerate(self.pending)]
        for watcher in self.watchers:
            watcher.start()

    def submit(self, slot: int, inputs: Any, done: Done) -> None:
        cuda, stream = self.cuda, self.streams[slot]
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        stream.wait_stream(cuda.current_stream(self.device))
        try:
            with cuda.stream(stream):
                start.record(stream)
                self.lanes[slot].call(inputs)
                end.record(stream)
        except BaseException as exc:  # noqa: BLE001 - a call that failed to enqueue is a failed request
            done(exc)
            return
        self.pending[slot].put((start, end, done))

    def _watch(self, pending: queue.SimpleQueue) -> None:
        while (job := pending.get()) is not None:
            start, end, done = job
            try:
                end.synchronize()
                completion = Completion(start.elapsed_time(end), self.origin_s + self.origin.elapsed_time(end) / 1e3)
            except BaseException as exc:  # noqa: BLE001 - an asynchronous CUDA error surfaces here
                done(exc)
                continue
            done(completion)

    def close(self) -> None:
        for pending in self.pending:
            pending.put(None)
        for watcher in self.watchers:
            watcher.join()
