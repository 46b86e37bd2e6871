"""The timing loops: one call at a time, and requests in flight on N streams (their window, counts
and arithmetic on a virtual clock; the thread and CUDA-shaped drivers with stand-ins); what they
keep, and statistics computed from the samples."""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
import time

import numpy as np
import pytest
import torch

from bench.streams import Completion, CudaStreams, Lane, Streams, ThreadedStreams, threads_each
from bench.timing import measure, measure_streams, summarize

CPU = torch.device("cpu")


def test_counts_first_run_warmup_and_iterations():
    calls = []
    timing = measure(lambda: calls.append(1), CPU, warmup=3, iters=7)
    assert len(calls) == 1 + 3 + 7
    assert len(timing.samples_ms) == 7
    assert timing.first_run_ms >= 0


def test_min_time_runs_until_the_time_is_filled():
    timing = measure(lambda: time.sleep(0.002), CPU, warmup=0, iters=1, min_time=0.05)
    assert sum(timing.samples_ms) >= 50
    assert len(timing.samples_ms) >= 10


def test_samples_measure_the_call():
    timing = measure(lambda: time.sleep(0.01), CPU, warmup=0, iters=3)
    assert all(9.5 <= s < 1000 for s in timing.samples_ms)


def test_summary_comes_from_the_samples():
    samples = [10.0, 20.0, 30.0, 40.0]
    stats = summarize(samples, 8)
    assert stats["throughput_ips"] == pytest.approx(8 * 4 / 0.1)  # one call at a time: the calls' own time
    lat = stats["latency_ms"]
    assert lat["mean"] == 25.0 and lat["min"] == 10.0 and lat["max"] == 40.0
    assert lat["p50"] == pytest.approx(np.percentile(samples, 50))
    assert lat["p99"] == pytest.approx(np.percentile(samples, 99))
    assert lat["p99.9"] == pytest.approx(np.percentile(samples, 99.9))
    assert lat["std"] == pytest.approx(np.std(samples, ddof=1))


def test_with_requests_in_flight_throughput_is_images_over_the_busy_window():
    # Four requests of 8 images, each 40 ms, two at a time: done in 80 ms of wall time.
    stats = summarize([40.0] * 4, 8, window_s=0.08)
    assert stats["throughput_ips"] == pytest.approx(8 * 4 / 0.08)
    assert stats["latency_ms"]["p50"] == 40.0


def test_single_sample_has_zero_spread():
    assert summarize([5.0], 1)["latency_ms"]["std"] == 0.0


class VirtualStreams(Streams):
    """Streams on a virtual clock: stream ``i`` serves its requests in order, each taking
    ``latency_ms[i]``. Completions are delivered in the order they end: while every request slot
    is taken the earliest is delivered at once (the next one cannot start before it ends); when
    slots stay free (the first call alone, the drain), it is delivered after a short idle wait."""

    def __init__(self, latency_ms: list[float], depth: int = 1):
        self.count, self.depth, self.how = len(latency_ms), depth, "virtual"
        self.latency_ms = latency_ms
        self.now = 0.0
        self.free_at = [0.0] * self.count
        self.heap: list = []
        self.seq = 0
        self.lock = threading.Condition()
        self.stop = False
        self.flusher = threading.Thread(target=self._flush, daemon=True)
        self.flusher.start()

    def submit(self, slot, inputs, done):
        with self.lock:
            start = max(self.now, self.free_at[slot])
            self.free_at[slot] = end = start + self.latency_ms[slot]
            heapq.heappush(self.heap, (end, self.seq, slot, done))
            self.seq += 1
            if len(self.heap) == self.count * self.depth:
                self._deliver()
            self.lock.notify()

    def _deliver(self):
        end, _, slot, done = heapq.heappop(self.heap)
        self.now = end
        done(Completion(self.latency_ms[slot], end / 1e3))

    def _flush(self):
        with self.lock:
            while not self.stop:
                if self.heap and not self.lock.wait(timeout=0.02):
                    self._deliver()
                elif not self.heap:
                    self.lock.wait(timeout=0.05)

    def close(self):
        with self.lock:
            self.stop = True
            self.lock.notify()
        self.flusher.join()


def test_the_window_opens_once_every_stream_is_warm_and_counts_iters_per_stream():
    """Stream 0 takes 10 ms a request, stream 1 30 ms. The first call runs alone (0-10), then both
    start at 10: stream 1's warm-up ends at 40, which opens the window; from there the requests
    ending at 50 60 70 70 80 90 100 100 110 120 are counted (5 per stream's worth, 10 in all)."""
    with VirtualStreams([10.0, 30.0]) as streams:
        measured = measure_streams(streams, None, warmup=1, iters=5)
    assert measured.first_run_ms == 10.0
    assert len(measured.samples_ms) == 10
    assert sorted(measured.samples_ms) == [10.0] * 8 + [30.0] * 2
    assert measured.window_s == pytest.approx(0.120 - 0.040)
    assert measured.throughput(8) == pytest.approx(8 * 10 / 0.080)
    # Little's law holds on the busy window: two requests in flight, 1/10 + 1/30 per ms between them.
    assert measured.throughput(1) == pytest.approx(1e3 * (1 / 10 + 1 / 30), rel=0.07)


def test_every_stream_warms_up_before_the_window_and_min_time_extends_it():
    with VirtualStreams([10.0, 10.0, 10.0]) as streams:
        measured = measure_streams(streams, None, warmup=3, iters=1, min_time=0.1)
    # All three streams in step: their third warm-up requests end together at 40 ms, and the window
    # opens on the last of them; the others ending at that instant are not in it. It then counts
    # three completions every 10 ms, and closes on the first that reaches 100 ms: 9 * 3 + 1.
    assert measured.window_s == pytest.approx(0.1) and len(measured.samples_ms) == 28


def test_queued_requests_per_stream_keep_the_device_busy():
    """depth 2 (CUDA's enqueue-ahead): two requests queued on one stream run back to back."""
    with VirtualStreams([10.0], depth=2) as streams:
        measured = measure_streams(streams, None, warmup=1, iters=4)
    assert measured.throughput(1) == pytest.approx(100.0)  # one request per 10 ms, no gap between them


def test_a_failed_request_stops_the_run_after_the_others_drain():
    calls = []

    def lane(inputs):
        calls.append(inputs)
        if len(calls) == 5:
            raise RuntimeError("device lost")
        time.sleep(0.001)

    streams = ThreadedStreams([Lane(lane), Lane(lane)], threads=None, how="test")
    with streams, pytest.raises(RuntimeError, match="device lost"):
        measure_streams(streams, "x", warmup=1, iters=100)
    assert all(not worker.is_alive() for worker in streams.workers)


def test_threaded_streams_run_each_lane_on_its_own_thread_with_its_share_of_threads():
    seen = {}

    def lane(name):
        def call(inputs):
            seen.setdefault(name, set()).add((threading.get_ident(), torch.get_num_threads()))
            time.sleep(0.002)
        return Lane(call)

    before = torch.get_num_threads()
    with ThreadedStreams([lane("a"), lane("b")], threads=threads_each(4, 2), how="test") as streams:
        measured = measure_streams(streams, None, warmup=1, iters=3)
    assert len(measured.samples_ms) == 6 and all(s >= 2.0 for s in measured.samples_ms)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1  # one thread each, always the same
    assert {threads for (_, threads) in seen["a"] | seen["b"]} == {2}
    assert seen["a"] != seen["b"]
    assert torch.get_num_threads() == before
    assert threads_each(2, 4) == 1 and threads_each(8, 3) == 2


class FakeCuda:
    """The part of torch.cuda the enqueue-ahead driver uses, on CPU: each stream a thread that runs
    the work queued on it in order (a kernel is a sleep); events are recorded when the stream
    reaches them. A call queues work and returns at once, as a CUDA launch does."""

    class Stream:
        def __init__(self, device=None):
            self.work: queue.SimpleQueue = queue.SimpleQueue()
            self.queued = self.most_queued = 0
            self.lock = threading.Lock()
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self):
            while True:
                item = self.work.get()
                item()
                with self.lock:
                    self.queued -= 1

        def enqueue(self, item):
            with self.lock:
                self.queued += 1
                self.most_queued = max(self.most_queued, self.queued)
            self.work.put(item)

        def wait_stream(self, other):
            if other is not self:
                marker = FakeCuda.Event()
                marker.record(other)
                self.enqueue(marker.synchronize)

    class Event:
        def __init__(self, enable_timing=False):
            self.reached = threading.Event()
            self.at = None

        def record(self, stream=None):
            stream = stream or FakeCuda.current

            def reach():
                self.at = time.perf_counter()
                self.reached.set()

            stream.enqueue(reach)

        def synchronize(self):
            self.reached.wait()

        def elapsed_time(self, end):
            return (end.at - self.at) * 1e3

    default = current = None

    def __init__(self):
        FakeCuda.default = FakeCuda.current = FakeCuda.Stream()
        self.host_syncs = 0

    def current_stream(self, device=None):
        return FakeCuda.current

    @contextlib.contextmanager
    def stream(self, stream):
        before, FakeCuda.current = FakeCuda.current, stream
        try:
            yield
        finally:
            FakeCuda.current = before

    def synchronize(self, device=None):
        self.host_syncs += 1
        done = FakeCuda.Event()
        done.record(FakeCuda.current)
        done.synchronize()


def test_cuda_streams_enqueue_ahead_without_a_host_sync_per_call():
    cuda = FakeCuda()
    kernel_s = 0.005

    def launch(inputs):  # a CUDA call: its kernel queued on the current stream, the host back at once
        cuda.current_stream().enqueue(lambda: time.sleep(kernel_s))

    own = FakeCuda.Stream()  # a runtime told to compute on a stream of its own (onnxruntime's user stream)
    lanes = [Lane(launch), Lane(launch, stream=own)]
    with CudaStreams(lanes, torch.device("cuda"), "test", depth=2, cuda=cuda) as streams:
        assert streams.streams[1] is own and streams.streams[0] is not own
        start = time.perf_counter()
        streams.submit(0, None, lambda result: None)
        streams.submit(0, None, lambda result: None)
        queued_s = time.perf_counter() - start
        syncs_before = cuda.host_syncs
        measured = measure_streams(streams, None, warmup=1, iters=4)
    assert queued_s < kernel_s  # two calls queued in less than one kernel's time: nothing waited
    assert cuda.host_syncs == syncs_before  # the loop never synchronized the device
    assert max(s.most_queued for s in streams.streams) >= 2  # more than one call queued ahead per stream
    assert len(measured.samples_ms) == 8
    assert all(s >= kernel_s * 1e3 * 0.9 for s in measured.samples_ms)  # each request's own time, from its events
