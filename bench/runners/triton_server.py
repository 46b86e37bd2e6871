"""``triton-server``: the model behind a real Triton Inference Server, measured through its client.

With ``--server-url`` the server is one already running (a deployment, or one serving the
repository ``python -m export --format triton-repo`` writes); without it, a local server started
through PyTriton hosts another of our runners (``--served-backend``). Every call goes over gRPC or
HTTP: latency is from send to receive, and each measured window also carries the server's own
split of that time from its statistics (queue, compute), the client's share, and for a local
server the hosted backend's time when called directly, so a row shows what serving costs.

Requests in flight are concurrent requests from the client, as perf_analyzer's ``--concurrency-range``
keeps them; a local server then runs as many instances of the hosted backend.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench import timing
from bench.runners.base import RunContext, Runner
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS
from bench.serving import local
from bench.serving.client import Endpoint, ModelInterface, ServerError, TritonClient
from bench.streams import Completion, Done, Streams
from resnet_perf.parity import cycled
from resnet_perf.precision import PRECISIONS, by_triton
from resnet_perf.util.cli import UsageError, one_line


@dataclass(frozen=True)
class ServerOptions:
    """A running server to measure, or what a local one hosts."""

    url: str | None = None  # grpc://HOST:PORT or http://HOST:PORT; None starts a server locally
    model: str | None = None  # the model's name on that server (a local server names it after the model)
    served: type[Runner] | None = None  # the backend a local server hosts
    served_options: Any = None  # and that backend's own options
    max_queue_delay_ms: float = DEFAULT_QUEUE_DELAY_MS  # a local server's dynamic batcher


def hostable(runners: Mapping[str, type[Runner]]) -> list[str]:
    """The backends a server can host: every one that is not itself a server."""
    return [name for name, runner in runners.items() if not runner.serves_requests]


def check_interface(interface: ModelInterface, model: str, *, batch_size: int, image_size: int, classes: int,
                    precision: str) -> None:
    """Raise ServerError unless the served model ``model`` takes (3, image_size, image_size)
    images, returns ``classes`` logits, accepts a batch of ``batch_size``, and its input datatype
    fits ``precision``."""
    where = f"served model {model!r}"
    batched = interface.max_batch_size > 0
    head = () if batched else (batch_size,)
    want_in, want_out = (*head, 3, image_size, image_size), (*head, classes)

    def fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
        return len(shape) == len(wanted) and all(d in (-1, w) for d, w in zip(shape, wanted))

    if batched and batch_size > interface.max_batch_size:
        raise ServerError(f"{where} takes batches of at most {interface.max_batch_size}; this run asks for {batch_size}")
    if not batched and interface.input_shape and interface.input_shape[0] not in (-1, batch_size):
        raise ServerError(f"{where} is not batched by the server and takes batches of exactly "
                          f"{interface.input_shape[0]}: pass --batch-size {interface.input_shape[0]}")
    if not fits(interface.input_shape, want_in):
        raise ServerError(f"{where} takes {interface.input_name} of shape {list(interface.input_shape)}; "
                          f"this run's model takes {list(want_in)}")
    if not fits(interface.output_shape, want_out):
        raise ServerError(f"{where} returns {interface.output_name} of shape {list(interface.output_shape)}; "
                          f"this run's model returns {list(want_out)}")
    sent = by_triton(interface.datatype)
    if sent is None or sent.numpy is None:  # numpy, which the client sends, has no bf16
        raise ServerError(f"{where} takes {interface.datatype} inputs; resnet-perf sends FP32 or FP16")
    if interface.datatype == "FP16" and precision != "fp16":
        raise ServerError(f"{where} takes FP16 inputs: it is a fp16 model, run it with --precision fp16")


def check_remote(url: str, model: str, *, batch_sizes: tuple[int, ...], image_size: int, classes: int,
                 precisions: tuple[str, ...]) -> None:
    """Readiness and the served model's interface, checked before any row runs (ServerError if not)."""
    client = TritonClient(Endpoint.parse(url), model)
    try:
        client.check_ready()
        interface = client.interface()
        for batch_size in batch_sizes:
            for precision in precisions:
                check_interface(interface, model, batch_size=batch_size, image_size=image_size, classes=classes,
                                precision=precision)
    finally:
        client.close()


def _delta(before: dict, after: dict, key: str) -> tuple[int, float]:
    """Requests counted and their mean milliseconds in one of Triton's inference statistics."""
    def read(stats: dict) -> tuple[int, int]:
        entry = stats.get("inference_stats", {}).get(key, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    (c0, ns0), (c1, ns1) = read(before), read(after)
    return c1 - c0, ((ns1 - ns0) / (c1 - c0) / 1e6 if c1 > c0 else float("nan"))


def _counted(stats: dict | str) -> int | None:
    """Requests the server has finished, failed ones included; None where it gave no statistics."""
    if isinstance(stats, str):
        return None
    return sum(_delta({}, stats, key)[0] for key in ("success", "fail"))


class TritonServerRunner(Runner):
    name = "triton-server"
    packages = {"tritonclient": ("tritonclient",), "pytriton": ("nvidia-pytriton",)}
    serves_requests = True

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--server-url", default=None, metavar="grpc://HOST:PORT|http://HOST:PORT",
                           help="measure the Triton Inference Server running there (default: start one locally)")
        group.add_argument("--server-model", default=None, help="the model's name on --server-url (default: --model)")
        group.add_argument("--served-backend", default=None,
                           help="the backend a locally started Triton server hosts (default onnxruntime)")

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> ServerOptions:
        url, served = flags["server_url"], flags["served_backend"]
        if url is None:
            if flags["server_model"] is not None:
                raise UsageError("--server-model names a model on the server at --server-url: give --server-url too")
            served = served or "onnxruntime"
            if served not in hostable(run.runners):
                raise UsageError(f"--served-backend {served!r}: choose from {', '.join(hostable(run.runners))}")
            return ServerOptions(served=run.runners[served], served_options=run.options.get(served),
                                 max_queue_delay_ms=run.max_queue_delay_ms)
        try:
            Endpoint.parse(url)
        except ValueError as exc:
            raise UsageError(f"--server-url {exc}") from None
        if served is not None:
            raise UsageError("--served-backend is what a locally started server hosts; the server at --server-url "
                             "runs what it was given")
        if len(run.models) > 1:
            raise UsageError("--server-url measures one served model: give exactly one --model")
        return ServerOptions(url=url, model=flags["server_model"] or run.models[0])

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: ServerOptions | None = None) -> str | None:
        if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("aiohttp") is None:
            return "tritonclient is not installed (pip install 'tritonclient[grpc,http]', or -e '.[serve]')"
        if options is not None and options.url is None:
            # A server started here also needs PyTriton, and the backend it hosts.
            hosted = options.served.unavailable_reason(device, options.served_options)
            return local.missing_reason() or (hosted and f"its hosted backend {options.served.name}: {hosted}")
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: ServerOptions | None = None) -> tuple[str, ...]:
        # A remote server runs whatever it was given (check_ready compares its datatype with the
        # run's); a local one what its hosted backend runs.
        if options is not None and options.url is None:
            return options.served.precisions(device, options.served_options)
        return tuple(PRECISIONS)

    @classmethod
    def hosted(cls, options: ServerOptions) -> str | None:
        return options.served.name if options.url is None else None

    @classmethod
    def quantizers(cls, options: ServerOptions | None = None) -> tuple[str, ...]:
        """A local server's int8 rows run what its hosted backend's would, a row each; a server at
        --server-url says nothing of how its model was quantized."""
        if options is not None and options.url is None:
            return options.served.quantizers(options.served_options)
        return ("unknown",)

    @classmethod
    def check_ready(cls, options: ServerOptions, run: RunContext) -> None:
        if options.url is None:
            return
        try:
            check_remote(options.url, options.model, batch_sizes=run.batch_sizes, image_size=run.image_size,
                         classes=run.classes, precisions=run.precisions)
        except ServerError as exc:
            raise UsageError(str(exc)) from None

    @property
    def memory_note(self) -> str | None:
        if self.config.options.url is None:
            return "the hosted model runs in this process; tritonserver's own process is not counted"
        return "this client process only: the remote server's memory is not counted"

    def build_impl(self) -> None:
        options = self.config.options
        if options.url is None:  # what the local server will host, built as that backend's own row would be
            self.served = options.served(self.model, replace(self.config, options=options.served_options))
            self.served.build()

    def prepare_impl(self) -> None:
        self.hosted = self.local = self.client = None
        self.direct_before: float | None = None
        self.request_ms: list[float] = []
        self.marked: tuple | None = None
        self._connect(self.config.streams if isinstance(self.config.streams, int) else 1)

    def _connect(self, instances: int) -> None:
        """Reach the server (for a local one: start it, with ``instances`` of the hosted backend)
        and check the model it serves."""
        c, options = self.config, self.config.options
        try:
            if options.url is None:
                self._start_local(options, instances)
                endpoint, model = self.local.grpc, self.local.name
            else:
                endpoint, model = Endpoint.parse(options.url), options.model
            self.client = TritonClient(endpoint, model)
            self.client.check_ready()
            self.interface = self.client.interface()
            check_interface(self.interface, model, batch_size=c.batch_size, image_size=c.image_size,
                            classes=self.model.fc.out_features, precision=c.precision)
        except BaseException:
            self.close_impl()
            raise
        self.dtype = by_triton(self.interface.datatype).numpy
        # The server's count of requests before this runner sent any to it (others may share the
        # server; a local one started again counts from zero).
        self.counted_before = (_counted(self._statistics()) or 0) - len(self.request_ms)

    def _start_local(self, options: ServerOptions, instances: int) -> None:
        """The hosted backend prepared and timed on its own (the direct time), then served."""
        c = self.config
        if self.hosted is None:
            self.hosted = self.served
            self.hosted.prepare()
        self.local = local.LocalServer(self.hosted, c.model_id, options.max_queue_delay_ms, instances)
        self.local.start()

    def streams_impl(self, n: int) -> Streams:
        if self.local is not None and self.local.instances != n:
            # A local server runs as many instances as there are requests in flight: started again.
            self.client.close()
            self.local.stop()
            self.client = self.local = None
            self._connect(n)
        return ClientStreams(self, n)

    def _padded(self, batch: Tensor) -> np.ndarray:
        # A model the server does not batch takes one shape: a short request is padded by cycling.
        if self.interface.max_batch_size == 0 and len(batch) < self.config.batch_size:
            batch = cycled(batch, self.config.batch_size)
        return batch.numpy().astype(self.dtype, copy=False)

    def to_input_impl(self, batch: Tensor) -> np.ndarray:
        return self._padded(batch)

    def run_impl(self, inputs: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        outputs = self.client.infer(self.interface, inputs)
        self.request_ms.append((time.perf_counter() - start) * 1e3)
        return outputs

    def to_logits_impl(self, outputs: np.ndarray) -> Tensor:
        return torch.tensor(outputs)  # the client's arrays are read-only views of its buffers

    def submit(self, batch: Tensor, done: Any) -> None:
        n, start = len(batch), time.perf_counter()

        def finished(outputs: np.ndarray | None, error: BaseException | None) -> None:
            self.request_ms.append((time.perf_counter() - start) * 1e3)
            done(None if outputs is None else torch.tensor(outputs[:n]), error)

        self.client.submit(self.interface, self._padded(batch), finished)

    def _direct_ms(self) -> float | None:
        """The hosted backend's median time called directly, host batch to host logits as the server
        calls it (a local server only: a remote one's backend is not here)."""
        if self.hosted is None:
            return None
        batch = torch.randn(self.config.input_shape, generator=torch.Generator().manual_seed(0))
        direct = timing.measure(lambda: self.hosted.infer(batch), torch.device("cpu"), warmup=3, iters=10)
        return float(np.median(direct.samples_ms))

    def mark(self) -> None:
        # The direct time is measured on both sides of the window: on a VM that drifts by a quarter
        # within minutes, one measurement before the window made serving's overhead negative.
        self.direct_before = self._direct_ms()
        self.marked = (len(self.request_ms), self._settled_statistics(), self.client.cpu_seconds(), time.perf_counter())

    def _statistics(self) -> dict | str:
        """The model's statistics, or why the server would not give them (a deployment may restrict them)."""
        try:
            return self.client.statistics()
        except Exception as exc:  # noqa: BLE001 - the row keeps its timing without the server's split
            return f"statistics unavailable: {one_line(exc, first_line=True)}"

    def _settled_statistics(self) -> dict | str:
        """The statistics once the server has counted every request this runner completed: Triton
        counts a request a moment after it answers, so a read right after the last answer can miss
        it (and the next window would count it). Waits at most a second: a request that never
        reached the server is never counted."""
        deadline = time.perf_counter() + 1.0
        while True:
            stats = self._statistics()
            counted = _counted(stats)
            if (counted is None or counted >= self.counted_before + len(self.request_ms)
                    or time.perf_counter() > deadline):
                return stats
            time.sleep(0.002)

    def window(self) -> dict | None:
        first, before, cpu_before, start = self.marked
        wall_s = time.perf_counter() - start
        cpu_s = self.client.cpu_seconds() - cpu_before
        after = self._settled_statistics()
        requests = self.request_ms[first:]
        client_ms = float(np.mean(requests)) if requests else float("nan")
        direct = None if self.direct_before is None else (self.direct_before, self._direct_ms())
        direct_ms = None if direct is None else sum(direct) / 2
        report = {
            "url": self.client.endpoint.url,
            "model": self.client.model,
            "platform": self.interface.platform,
            "hosted_backend": None if self.hosted is None else self.hosted.name,
            "max_batch_size": self.interface.max_batch_size,
            "max_queue_delay_ms": self.interface.max_queue_delay_ms,
            "requests": len(requests),
            "client_ms": client_ms,
            # CPU the client's own thread spent (building, sending, receiving, decoding requests).
            "client_cpu_ms": cpu_s / len(requests) * 1e3 if requests else float("nan"),
            "client_busy": cpu_s / wall_s,
            "direct_ms": direct_ms,
            "direct_before_after_ms": direct,
            "overhead_ms": None if direct is None else client_ms - direct_ms,
        }
        if isinstance(before, str) or isinstance(after, str):
            report["server"] = before if isinstance(before, str) else after
            return report
        served, server_ms = _delta(before, after, "success")
        executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
        inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
        report["server"] = {
            "requests": served,
            "batches": executions,
            "mean_batch": inferences / executions if executions else float("nan"),
            "request_ms": server_ms,
            **{f"{key}_ms": _delta(before, after, key)[1]
               for key in ("queue", "compute_input", "compute_infer", "compute_output")},
            "failed": _delta(before, after, "fail")[0],
        }
        # What the client waited beyond the server's own time: the network, (de)serialisation, the client.
        report["transport_ms"] = client_ms - server_ms
        return report

    @property
    def timing_note(self) -> str | None:
        if self.local is not None and self.local.instances > 1:
            return f"the local server runs {self.local.instances} instances of {self.hosted.name}"
        return None

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        raise NotImplementedError("a served model answers with its logits alone; the row of the backend it "
                                  "serves gives the same file's lines")

    def close_impl(self) -> None:
        # The client first, then the server, then what it hosted: each even if an earlier one fails.
        with contextlib.ExitStack() as stack:
            for part, stop in ((self.hosted, "close"), (self.local, "stop"), (self.client, "close")):
                if part is not None:
                    stack.callback(getattr(part, stop))
            self.client = self.local = self.hosted = None


class ClientStreams(Streams):
    """``n`` requests open at once from the client, each sent the moment the previous one on its
    stream came back; latency is from send to receive."""

    def __init__(self, runner: TritonServerRunner, n: int):
        self.runner, self.count = runner, n
        self.how = f"{n} concurrent request(s) from the {runner.client.endpoint.protocol} client"

    def submit(self, slot: int, inputs: np.ndarray, done: Done) -> None:
        start = time.perf_counter()

        def finished(outputs: np.ndarray | None, error: BaseException | None) -> None:
            end = time.perf_counter()
            self.runner.request_ms.append((end - start) * 1e3)
            done(error if error is not None else Completion((end - start) * 1e3, end))

        self.runner.client.submit(self.runner.interface, inputs, finished)
