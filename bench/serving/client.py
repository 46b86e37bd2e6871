"""A Triton Inference Server client for measurement: tritonclient's asyncio client (gRPC or HTTP)
on an event loop of its own thread.

Blocking calls (readiness, metadata, statistics, one inference for the fixed-batch loop and for
parity) wait on that loop; ``submit`` hands it a request and returns at once, the completion
arriving on a callback, so a load generator can keep any number of requests in flight from one
thread. Everything the client itself spends per request runs on the loop's thread, so that
thread's CPU time over a window is the client's own overhead.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from resnet_perf.precision import by_dtype
from resnet_perf.util.cli import one_line

# A request that has not come back after this long is failed: a dead server must not hang a run.
REQUEST_TIMEOUT_S = 60.0


class ServerError(Exception):
    """A server that cannot be measured as asked: unreachable, model not ready, or not the model asked for."""


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # grpc | http
    address: str  # host:port

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("grpc", "http") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: give grpc://HOST:PORT or http://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None:
            raise ValueError(f"{url!r}: give the port (Triton listens on 8001 for gRPC, 8000 for HTTP)")
        return cls(parts.scheme, f"{parts.hostname}:{port}")

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"


@dataclass(frozen=True)
class ModelInterface:
    """What a served model takes and returns, from the server's metadata and config."""

    input_name: str
    output_name: str
    datatype: str  # of the input: the client sends this
    input_shape: tuple[int, ...]  # without the batch axis when max_batch_size > 0; -1 where dynamic
    output_shape: tuple[int, ...]
    max_batch_size: int  # 0: the model is not batched by the server, input_shape is the request's
    max_queue_delay_ms: float | None  # the dynamic batcher's, or None where it has none
    platform: str


class TritonClient:
    def __init__(self, endpoint: Endpoint, model: str):
        self.endpoint = endpoint
        self.model = model
        self.protocol = importlib.import_module(f"tritonclient.{endpoint.protocol}")
        self.loop = asyncio.new_event_loop()
        self.in_flight: set[asyncio.Task] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, name="resnet-perf-triton-client", daemon=True)
        self.thread.start()
        aio = importlib.import_module(f"tritonclient.{endpoint.protocol}.aio")
        self.client = self.call(self._make(aio))

    async def _make(self, aio) -> Any:
        # The aio clients bind to the running loop: they must be created on it.
        return aio.InferenceServerClient(self.endpoint.address)

    def call(self, coroutine: Coroutine, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """Run ``coroutine`` on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.client.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()

    # --- checks -------------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise ServerError unless the server answers, is ready, and has the model ready."""
        where = f"Triton server at {self.endpoint.url}"
        try:
            ready = self.call(self.client.is_server_ready(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - every way of not answering is the same answer
            raise ServerError(f"{where} does not answer: {one_line(exc, first_line=True)}") from None
        if not ready:
            raise ServerError(f"{where} answers but is not ready")
        # Readiness is an HTTP status only, which any web server gives: the server's metadata is the
        # first answer that only a server speaking Triton's (KServe v2) protocol gives.
        try:
            metadata = self._json(self.client.get_server_metadata)
        except Exception as exc:  # noqa: BLE001 - whatever it answered, it was not the protocol
            raise ServerError(f"{self.endpoint.url} answers, but not in Triton's (KServe v2) protocol: "
                              f"{one_line(exc, first_line=True)}") from None
        if not (isinstance(metadata, dict) and {"name", "version"} <= metadata.keys()):
            raise ServerError(f"{self.endpoint.url} answers, but not in Triton's (KServe v2) protocol: its server "
                              f"metadata is {str(metadata)[:80]!r}")
        try:
            model_ready = self.call(self.client.is_model_ready(self.model), timeout=10)
        except Exception as exc:  # noqa: BLE001
            raise ServerError(f"{where}: model {self.model!r}: {one_line(exc, first_line=True)}") from None
        if not model_ready:
            raise ServerError(f"{where} has no model {self.model!r} ready (see its /v2/repository/index)")

    def interface(self) -> ModelInterface:
        """The served model's inputs, outputs and batching, from its metadata and config."""
        try:
            return self._interface()
        except ServerError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reply without the fields the protocol promises
            raise ServerError(f"model {self.model!r} on {self.endpoint.url}: its metadata or config is not what Triton "
                              f"sends: {one_line(exc, first_line=True)}") from None

    def _interface(self) -> ModelInterface:
        metadata = self._json(lambda **kw: self.client.get_model_metadata(self.model, **kw))
        config = self._json(lambda **kw: self.client.get_model_config(self.model, **kw))
        config = config.get("config", config)  # gRPC wraps the config in a response message
        if len(metadata.get("inputs", [])) != 1 or len(metadata.get("outputs", [])) != 1:
            raise ServerError(f"model {self.model!r} has {len(metadata.get('inputs', []))} inputs and "
                              f"{len(metadata.get('outputs', []))} outputs; a ResNet has one of each")
        source, result = metadata["inputs"][0], metadata["outputs"][0]
        max_batch = int(config.get("max_batch_size", 0))
        batcher = config.get("dynamic_batching")
        delay_us = None if batcher is None else int(batcher.get("max_queue_delay_microseconds", 0))

        def dims(tensor: dict) -> tuple[int, ...]:
            shape = tuple(int(d) for d in tensor["shape"])
            return shape[1:] if max_batch > 0 else shape  # metadata shows the batch axis as -1

        return ModelInterface(source["name"], result["name"], source["datatype"], dims(source), dims(result),
                              max_batch, None if delay_us is None else delay_us / 1e3,
                              metadata.get("platform") or config.get("platform") or config.get("backend", ""))

    def statistics(self) -> dict:
        """The model's cumulative inference statistics (Triton's statistics extension)."""
        answer = self._json(lambda **kw: self.client.get_inference_statistics(self.model, **kw))
        return answer["model_stats"][0]

    def _json(self, request: Callable[..., Coroutine]) -> dict:
        # The gRPC client answers in protobuf unless asked for JSON; the HTTP client always in JSON.
        return self.call(request(as_json=True) if self.endpoint.protocol == "grpc" else request())

    # --- inference ------------------------------------------------------------------------------

    async def _infer(self, interface: ModelInterface, array: np.ndarray) -> np.ndarray:
        # Both protocols send tensors as binary data by default (HTTP's JSON encoding is far slower).
        precision = by_dtype(array.dtype)
        if precision is None:
            raise TypeError(f"no Triton datatype for {array.dtype}")
        tensor = self.protocol.InferInput(interface.input_name, list(array.shape), precision.triton)
        tensor.set_data_from_numpy(array)
        outputs = [self.protocol.InferRequestedOutput(interface.output_name)]
        result = await self.client.infer(self.model, [tensor], outputs=outputs)
        return result.as_numpy(interface.output_name)

    def infer(self, interface: ModelInterface, array: np.ndarray) -> np.ndarray:
        return self.call(self._infer(interface, array))

    def submit(self, interface: ModelInterface, array: np.ndarray,
               done: Callable[[np.ndarray | None, BaseException | None], None]) -> None:
        """Send ``array`` without waiting; ``done(outputs, None)`` or ``done(None, error)`` is called
        on the client's thread when the answer (or the failure) arrives."""
        async def request() -> None:
            try:
                outputs = await asyncio.wait_for(self._infer(interface, array), REQUEST_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who decides
                done(None, exc)
            else:
                done(outputs, None)

        def start() -> None:
            # The loop keeps only weak references to its tasks: hold each until it is done.
            task = self.loop.create_task(request())
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

        self.loop.call_soon_threadsafe(start)

    def cpu_seconds(self) -> float:
        """CPU time the client's thread has used so far: its own overhead, request by request."""
        async def now() -> float:
            return time.thread_time()

        return self.call(now())

