"""MLPerf LoadGen scenarios over any runner: LoadGen issues the queries, times them and judges the run.

The runner is wrapped as a LoadGen system under test (SUT). A backend with a queue and batcher of
its own (a server) gets each query as an asynchronous request the moment LoadGen issues it, split
at the batch size, and completes it when the answer arrives: latency is from send to receive, and
the server batches. For every other backend, queries go into one queue, and one
worker thread groups them into runner batches: up to ``max_batch`` samples, waiting at most
``max_queue_delay_ms`` for a batch to fill (the Server scenario's dynamic batcher; the other
scenarios do not wait). Runners take one static batch size, so a short batch is padded by cycling
its samples, as a static-shape deployment does. Each batch goes from host memory into the runner and
its logits back to host memory, as in a serving process. With the runner's streams (``--streams``
in the offline-loadgen scenario), the worker hands each batch to a free stream instead of waiting
for it, so N batches are in flight; their logits stay where the backend leaves them (performance
mode reads none).

| scenario | LoadGen issues | runner batch |
|---|---|---|
| single-stream | one sample, the next when it completes | 1 |
| multi-stream | groups of ``samples_per_query`` at a fixed interval | samples_per_query |
| server | single samples at Poisson arrivals, ``target_qps`` | up to max_batch |
| offline-loadgen | every sample at once | batch size |

LoadGen's own minimums (MLPerf's, minutes per run) are replaced by ``duration`` and a minimum query
count unless ``mlperf_rules`` is set; LoadGen still judges every run, and its verdict, the reasons
for an INVALID one and its early-stopping estimate go into the row, so a short run never passes
for a conclusive one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.streams import Streams
from resnet_perf.parity import cycled

SCENARIOS = ("single-stream", "multi-stream", "server", "offline-loadgen")
# Below this many queries LoadGen's percentiles rest on too few samples to say anything.
MIN_QUERIES = 100
# How long a server scenario's batcher waits to fill a batch when not told.
DEFAULT_QUEUE_DELAY_MS = 1.0

# A backend's asynchronous request: submit(batch, done), done(logits, error) when it completes.
Submit = Callable[[Tensor, Callable[[Tensor | None, BaseException | None], None]], None]


@dataclass(frozen=True)
class System:
    """What LoadGen's queries go to: the backend's call (host batch to host logits), or its own
    asynchronous requests (``submit``: a server, which queues and batches them itself), or its
    ``streams`` (with ``to_input``, the backend's input for a host batch)."""

    infer: Callable[[Tensor], Tensor]
    submit: Submit | None = None
    streams: Streams | None = None
    to_input: Callable[[Tensor], object] | None = None


@dataclass(frozen=True)
class ScenarioSettings:
    scenario: str
    duration_s: float = 5.0
    target_qps: float | None = None  # server
    p99_ms: float | None = None  # server: the latency bound LoadGen judges
    max_queue_delay_ms: float | None = None  # server: how long our batcher waits to fill a batch
    mlperf_rules: bool = False
    log_dir: Path | None = None  # keep LoadGen's logs here; else they go to a temporary folder


@dataclass
class ScenarioResult:
    """What LoadGen measured and judged, and the latencies our SUT saw (arrival to completion)."""

    valid: bool
    reasons: list[str]
    completed_samples_per_s: float
    latency_ms: dict
    early_stopping_ms: dict[float, float]  # LoadGen's early-stopping estimate, by percentile
    samples_ms: list[float]
    log_dir: str | None
    scheduled_samples_per_s: float | None = None
    details: dict = field(default_factory=dict)


class _BatchingSUT:
    """The system under test: a queue of LoadGen samples and one worker thread forming batches,
    each run by the runner's call, or handed to a free one of its streams."""

    def __init__(self, lg, system: System, inputs: Tensor, batch_size: int, max_delay_s: float,
                 device: torch.device):
        self.lg = lg
        self.system = system
        self.inputs = inputs
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.device = device
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.latencies_ms: list[float] = []
        self.error: BaseException | None = None
        self.stopping = False  # a stop signal ended the run: the samples still queued are dropped
        self.worker = threading.Thread(target=self._work, name="resnet-perf-sut", daemon=True)
        streams = system.streams
        # Every request slot of the streams, free until a batch takes it: slot i runs on stream i % count.
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for slot in range(0 if streams is None else streams.count * streams.depth):
            self.free.put(slot)

    def issue(self, samples) -> None:
        arrived = time.perf_counter()
        for sample in samples:
            self.pending.put((arrived, sample))

    def _next_batch(self) -> list | None:
        first = self.pending.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.batch_size:
            try:
                item = self.pending.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                self.pending.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        streams = self.system.streams
        while not self.stopping and (batch := self._next_batch()) is not None:
            # A short batch is padded: the runner's shape is static.
            padded = cycled(self.inputs[[sample.index for _, sample in batch]], self.batch_size)
            if streams is None:
                try:
                    self.system.infer(padded)
                except BaseException as exc:  # noqa: BLE001 - reported after the run; LoadGen must still finish
                    self.error = self.error or exc
                self._complete(batch)
                continue
            slot = self.free.get()
            try:
                inputs = self.system.to_input(padded)  # held by the closure until its request is done
            except BaseException as exc:  # noqa: BLE001 - as a failed call: LoadGen must still finish
                self._finished(slot, batch, exc)
                continue
            streams.submit(slot % streams.count, inputs,
                           lambda result, slot=slot, batch=batch, inputs=inputs: self._finished(slot, batch, result))

    def _finished(self, slot: int, batch: list, result) -> None:
        if isinstance(result, BaseException):
            self.error = self.error or result
        self._complete(batch)
        self.free.put(slot)

    def _complete(self, batch: list) -> None:
        done = time.perf_counter()
        self.latencies_ms.extend((done - arrived) * 1e3 for arrived, _ in batch)
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(sample.id, 0, 0) for _, sample in batch])

    def __enter__(self) -> _BatchingSUT:
        self.worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = exc[0] is not None
        self.pending.put(None)
        self.worker.join()
        streams = self.system.streams
        for _ in range(0 if streams is None else streams.count * streams.depth):  # every request back in
            self.free.get()


class _RequestSUT:
    """The system under test for a backend that batches requests itself: every query goes out at
    once, without waiting for earlier ones, as requests of at most ``batch_size`` samples."""

    def __init__(self, lg, submit: Submit, inputs: Tensor, batch_size: int):
        self.lg = lg
        self.submit = submit
        self.inputs = inputs
        self.batch_size = batch_size
        self.latencies_ms: list[float] = []
        self.error: BaseException | None = None

    def issue(self, samples) -> None:
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            sent = time.perf_counter()
            try:
                self.submit(self.inputs[[sample.index for sample in chunk]], partial(self._done, chunk, sent))
            except BaseException as exc:  # noqa: BLE001 - reported after the run; LoadGen must still finish
                self._done(chunk, sent, None, exc)

    def _done(self, chunk, sent: float, _logits, error: BaseException | None) -> None:
        done = time.perf_counter()
        if error is not None:
            self.error = self.error or error
        self.latencies_ms.extend([(done - sent) * 1e3] * len(chunk))
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(sample.id, 0, 0) for sample in chunk])

    def __enter__(self) -> _RequestSUT:
        return self

    def __exit__(self, *exc) -> None:
        pass


def run(system: System, inputs: Tensor, batch_size: int, settings: ScenarioSettings, device: torch.device,
        expected_latency_s: float) -> ScenarioResult:
    """One LoadGen run of ``settings.scenario`` over ``system`` (batches of ``batch_size``, its
    call a host batch to host logits; or its streams; or, given ``submit``, the backend's own
    asynchronous requests: ``submit(batch, done)``, ``done(logits, error)`` on completion), drawing
    samples from ``inputs``. ``expected_latency_s``, one batch's time (with streams, a batch over
    their throughput), sizes the offline and stream scenarios' query counts as LoadGen asks."""
    import mlperf_loadgen as lg

    test = lg.TestSettings()
    test.mode = lg.TestMode.PerformanceOnly
    if not settings.mlperf_rules:
        test.min_duration_ms = round(settings.duration_s * 1000)
        test.min_query_count = MIN_QUERIES
    delay = 0.0
    if settings.scenario == "single-stream":
        test.scenario = lg.TestScenario.SingleStream
        test.single_stream_expected_latency_ns = round(expected_latency_s * 1e9)
    elif settings.scenario == "multi-stream":
        test.scenario = lg.TestScenario.MultiStream
        test.multi_stream_samples_per_query = batch_size
        test.multi_stream_expected_latency_ns = round(expected_latency_s * 1e9)
    elif settings.scenario == "server":
        test.scenario = lg.TestScenario.Server
        test.server_target_qps = settings.target_qps
        # Without a bound from the user, one LoadGen cannot miss: the run reports latency, not a verdict on it.
        test.server_target_latency_ns = round((settings.p99_ms or 3.6e6) * 1e6)
        delay = (DEFAULT_QUEUE_DELAY_MS if settings.max_queue_delay_ms is None else settings.max_queue_delay_ms) / 1e3
    else:
        test.scenario = lg.TestScenario.Offline
        test.offline_expected_qps = batch_size / expected_latency_s
        if not settings.mlperf_rules:
            test.min_query_count = 1  # an offline run is one query holding every sample

    log_dir = settings.log_dir
    scratch = None if log_dir is not None else tempfile.TemporaryDirectory(prefix="resnet-perf-loadgen-")
    outdir = Path(log_dir or scratch.name)
    outdir.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False

    sut = (_RequestSUT(lg, system.submit, inputs, batch_size) if system.submit is not None
           else _BatchingSUT(lg, system, inputs, batch_size, delay, device))
    lg_sut = lg.ConstructSUT(sut.issue, lambda: None)
    qsl = lg.ConstructQSL(len(inputs), len(inputs), lambda _: None, lambda _: None)
    start = time.perf_counter()
    with sut:
        _run_loadgen(lambda: lg.StartTestWithLogSettings(lg_sut, qsl, test, log))
    lg.DestroyQSL(qsl)
    lg.DestroySUT(lg_sut)
    try:
        if sut.error is not None:
            raise sut.error
        return _result(read_detail_log(outdir / "mlperf_log_detail.txt"), sut.latencies_ms,
                       time.perf_counter() - start, None if log_dir is None else str(outdir))
    finally:
        if scratch is not None:
            scratch.cleanup()


# LoadGen runs abandoned to a stop signal, still running in their threads (see _run_loadgen).
_ABANDONED: list[threading.Thread] = []


def _run_loadgen(start: Callable[[], None]) -> None:
    """LoadGen's run in a thread of its own while this one waits, so that a stop signal (raised
    here, in Python, by the command's handler) ends the wait within a tenth of a second. Raised in
    LoadGen's own frames (our callbacks run on its threads), it would unwind C++ frames past threads
    LoadGen never joins, and the process died of SIGSEGV. LoadGen has no call to stop a run, so a
    stopped one is left running, its SUT and QSL never destroyed under it: the command then ends
    with ``os._exit`` (``abandoned``) after its own cleanup, before the interpreter's finalisation,
    which would wait on or abort that thread."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            start()
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="loadgen", daemon=True)
    thread.start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException:
        _ABANDONED.append(thread)
        raise
    if failure:
        raise failure[0]


def abandoned() -> bool:
    """Whether a LoadGen run was left running after a stop signal: the process must end with os._exit."""
    return any(thread.is_alive() for thread in _ABANDONED)


def read_detail_log(path: Path) -> dict:
    """LoadGen's detail log (one ``:::MLLOG {json}`` line per entry) as {key: value}, last one winning."""
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(":::MLLOG "):
            record = json.loads(line[len(":::MLLOG "):])
            entries[record["key"]] = record["value"]
    return entries


def _result(log: dict, latencies_ms: list[float], elapsed_s: float, log_dir: str | None) -> ScenarioResult:
    # LoadGen's reasons for an INVALID run.
    checks = [
        ("result_perf_constraints_met", "latency bound missed"),
        ("result_min_duration_met", "min duration not met"),
        ("result_min_queries_met", "too few queries"),
        ("early_stopping_met", "early stopping not met"),
    ]
    reasons = [reason for key, reason in checks if log.get(key) is False]
    if str(log.get("result_invalid_reason", "")).strip():
        reasons.append(str(log["result_invalid_reason"]).strip())
    # LoadGen states its early-stopping estimates in prose: "Early stopping 90.0th percentile estimate: <ns>".
    estimates = {float(p): int(ns) / 1e6 for p, ns in
                 re.findall(r"([\d.]+)th percentile estimate:\s*(\d+)", str(log.get("early_stopping_result", "")))}

    def ms(key: str) -> float | None:
        value = log.get(key)
        return None if value is None else value / 1e6

    # Multi-stream's metric is the latency of a whole query (all its samples), which it logs apart.
    per = "_per_query" if "result_99.00_percentile_per_query_latency_ns" in log else ""
    query = "_query" if per else ""
    latency = {"mean": ms(f"result_mean{query}_latency_ns"), "p50": ms(f"result_50.00_percentile{per}_latency_ns"),
               "p90": ms(f"result_90.00_percentile{per}_latency_ns"), "p95": ms(f"result_95.00_percentile{per}_latency_ns"),
               "p99": ms(f"result_99.00_percentile{per}_latency_ns"), "min": ms(f"result_min{query}_latency_ns"),
               "max": ms(f"result_max{query}_latency_ns"),
               "std": float(np.std(latencies_ms, ddof=1)) if len(latencies_ms) > 1 else 0.0}
    # LoadGen's throughput where the scenario defines one; else samples completed over the run's time.
    rate = next((log[k] for k in ("result_completed_samples_per_sec", "result_samples_per_second",
                                  "result_qps_with_loadgen_overhead") if log.get(k) is not None), None)
    return ScenarioResult(
        valid=log.get("result_validity") == "VALID",
        reasons=reasons,
        completed_samples_per_s=float(rate) if rate is not None else len(latencies_ms) / elapsed_s,
        latency_ms=latency,
        early_stopping_ms=estimates,
        samples_ms=latencies_ms,
        log_dir=log_dir,
        scheduled_samples_per_s=log.get("result_scheduled_samples_per_sec"),
        details={"loadgen_version": log.get("loadgen_version"), "query_count": log.get("result_query_count")},
    )


def find_max_qps(system: System, inputs: Tensor, batch_size: int, settings: ScenarioSettings,
                 device: torch.device, expected_latency_s: float, *,
                 window: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext, rounds: int = 6,
                 confirmations: int = 3) -> tuple[ScenarioResult, float, list[dict]]:
    """The highest Server rate whose p99 stays within ``settings.p99_ms``, by bisection over LoadGen
    runs, each judged by LoadGen itself, between 0 and a little above the runner's offline rate;
    then a confirming run at that rate (lowered by 10% and run again, up to ``confirmations`` times,
    if noise makes it miss). Each run is inside ``window``. Returns the confirming run, its rate,
    and every run of the search."""

    def attempt(rate: float, label: str) -> ScenarioResult:
        log_dir = None if settings.log_dir is None else settings.log_dir / f"{label}-{rate:.1f}qps"
        with window():
            return run(system, inputs, batch_size, replace(settings, target_qps=rate, log_dir=log_dir), device,
                       expected_latency_s)

    def record(label: str, rate: float, result: ScenarioResult) -> bool:
        met = "latency bound missed" not in result.reasons
        search.append({"run": label, "target_qps": rate, "p99_ms": result.latency_ms["p99"], "met": met,
                       "result": "VALID" if result.valid else "INVALID"})
        return met

    search: list[dict] = []
    low, high = 0.0, 1.2 * batch_size / expected_latency_s
    for i in range(rounds):
        rate = (low + high) / 2
        if record(f"search{i}", rate, attempt(rate, f"search{i}")):
            low = rate
        else:
            high = rate
    if low == 0.0:
        raise RuntimeError(f"no rate down to {high:.1f} queries/s kept p99 within {settings.p99_ms} ms")
    for i in range(confirmations):
        if i:
            low *= 0.9
        result = attempt(low, f"confirm{i}")
        if record(f"confirm{i}", low, result):
            break
    return result, low, search
