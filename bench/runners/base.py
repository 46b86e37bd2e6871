"""The one interface every backend implements.

Lifecycle, as in Polygraphy's runners: ``prepare`` (build, compile or load: the caller times it as
setup), ``run`` (the timed call, device work only), ``close``. The public methods keep the
bookkeeping; subclasses override the ``*_impl`` hooks. ``to_input`` and ``to_logits`` convert
between the harness's fp32 NCHW CPU tensors and the backend's own form, outside the timed region.

A backend also describes itself to the command line, as Polygraphy's argument groups do: the
flags it adds (``add_arguments``), their values checked against the run (``resolve_options``,
whose result reaches the runner as ``config.options``), whether it runs here and in which
precisions (both may depend on those options), and what must be checked before any row runs
(``check_ready``). So a new backend is one runner file and one line in ``bench.runners``.

Requests in flight (``--streams``): ``streams(n)`` keeps ``n`` at once, the backend's own way (see
bench.streams). By default that is one host thread per stream on CPU and one CUDA stream per
stream on CUDA, each calling a ``Lane``; ``lanes`` gives one per stream, sharing the runner's call
where its runtime allows calls from several threads at once (a torch module), else each with
resources of its own (an onnxruntime session, a TensorRT execution context). A backend with a
mechanism of its own (OpenVINO's AsyncInferQueue, a server's concurrent requests) overrides
``streams_impl``; one whose runtime picks its own number of requests says so in ``own_streams``.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from bench.streams import CudaStreams, Lane, Streams, ThreadedStreams, threads_each
from export.quantize import Calibration
from resnet_perf.mixed import keep_fp32
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.cpu import native_bf16

if TYPE_CHECKING:
    from bench.layers.profile import LayerProfile


@dataclass(frozen=True)
class RunContext:
    """What a backend's options and readiness are checked against: the run's models, device,
    precisions, batch sizes, image size and given artifacts, and, for a backend that hosts
    another (a server), the other backends and their options."""

    models: tuple[str, ...]
    device: torch.device
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    image_size: int
    classes: int  # the logits per image
    max_queue_delay_ms: float  # a dynamic batcher's wait (--max-queue-delay-ms or its default)
    scenario: str = "offline"  # the fixed-batch loop, or the LoadGen scenario that issues the queries
    artifacts: Mapping[str, Path] = field(default_factory=dict)  # as RunConfig.artifacts
    runners: Mapping[str, type[Runner]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # of every backend that hosts none


@dataclass(frozen=True)
class RunConfig:
    """Everything a runner needs besides the model. ``model_id`` names the model's weights (name
    and content hash), so that cached artifacts of one model are never served for another."""

    model_id: str
    device: torch.device
    precision: str
    batch_size: int
    image_size: int
    threads: int
    cache_dir: Path
    # Exported files to run instead of exporting one, by kind ("onnx": --onnx, "tensorrt": --engine).
    artifacts: Mapping[str, Path] = field(default_factory=dict)
    calibration: Calibration | None = None  # int8: what quantization is calibrated on
    keep_fp: tuple[str, ...] = ()  # fp16: the layers kept in fp32 (--keep-fp; int8 keeps its own in calibration)
    options: Any = None  # the backend's own, from its resolve_options
    # The row's requests in flight, N or "auto", for a runtime that compiles for them (OpenVINO's
    # streams); what runs them is ``Runner.streams``.
    streams: int | str = 1
    quantizer: str | None = None  # int8: which of the backend's quantizers made the model (Runner.quantizers)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision].dtype

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.image_size, self.image_size)

    def artifact_stem(self, precision: str | None = None) -> str:
        """The start of the name of every artifact cached for this configuration (at ``precision``,
        by default its own): the model and its weights, the batch, the image size, the precision,
        for int8 the calibration, and for fp16 the layers kept in fp32, if any."""
        precision = precision or self.precision
        stem = f"{self.model_id}-b{self.batch_size}-s{self.image_size}-{precision}"
        if precision == "int8":
            return f"{stem}-{self.calibration.key()}"
        if precision == "fp16" and self.keep_fp:
            return f"{stem}-keep{hashlib.sha256(','.join(self.keep_fp).encode()).hexdigest()[:12]}"
        return stem


class Runner(abc.ABC):
    name: ClassVar[str]
    # A backend with a queue and batcher of its own (a server) takes LoadGen's queries as they come,
    # through submit(), instead of the harness's batcher calling infer().
    serves_requests: ClassVar[bool] = False
    # The kinds of exported file this backend can run instead of exporting its own ("onnx" for
    # --onnx, "tensorrt" for --engine, "openvino" for --ir, "aoti" for --pt2).
    artifacts: ClassVar[tuple[str, ...]] = ()
    # How the backend allocates GPU memory, which decides how its peak is read: "torch" (PyTorch's
    # caching allocator, exact per row) or "nvml" (a runtime's own allocator, seen device-wide).
    device_memory: ClassVar[str] = "nvml"
    # The libraries whose versions the run's env records for this backend: env key -> the
    # distributions that provide it, first found wins ({"onnxruntime": ("onnxruntime-gpu", "onnxruntime")}).
    packages: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        """Whether its fp16 rows keep --keep-fp's layers in fp32 (RunConfig.keep_fp): a runner of the
        PyTorch model (resnet_perf.mixed) or of the fp16 ONNX export, which keeps them the same way."""
        return False

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this backend's own flags. Each is named after its ``dest`` (``--cuda-graph`` for
        cuda_graph), and a value other than its default means it was given. A subclass that does
        not override this shares its parent's flags; one that does adds only its own (argparse
        refuses a flag added twice, so it must not call super)."""

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> Any:
        """This backend's flags (by dest) checked against ``run``, as the value its runners get in
        ``config.options``; raises UsageError on a bad one."""
        return None

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        """None when this backend can run on ``device`` here, else the reason it cannot."""
        return None

    @classmethod
    @abc.abstractmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        """The precisions this backend runs on ``device``: only those it executes as labelled."""

    @classmethod
    def why_unsupported(cls, precision: str, device: torch.device, options: Any = None) -> str | None:
        """Why ``precision`` is not among ``precisions`` where the reason depends on the machine (a
        CPU without native bf16), for the skipped row's or the refused flag's message; None where
        the backend simply does not run it."""
        return None

    @classmethod
    def quantizers(cls, options: Any = None) -> tuple[str, ...]:
        """What quantizes the model of this backend's int8 rows, a row each: by default "qdq", the
        onnxruntime-quantized QDQ file (export.quantize)."""
        return ("qdq",)

    @classmethod
    def streams_limit(cls, device: torch.device, options: Any = None) -> tuple[int, str] | None:
        """The most requests this backend keeps in flight on ``device`` (with ``options``), and why,
        where its runtime bounds them (beyond the machine's cores); None where it does not."""
        return None

    @classmethod
    def check_ready(cls, options: Any, run: RunContext) -> None:
        """What must hold before any row runs and needs this backend's runtime to tell (a server's
        readiness, an engine's target); raises UsageError."""

    @classmethod
    def hosted(cls, options: Any) -> str | None:
        """The backend this one hosts with these options (a local server's), whose flags then
        apply to the run too; None for a backend that runs the model itself."""
        return None

    @classmethod
    def load_runtime(cls, device: torch.device) -> None:
        """Load what this backend's runtime loads once per process (its libraries, a compiler's
        first compile). bench calls it before the backend's first row, so that the row which
        happens to come first does not carry the process's one-time cost in its memory."""

    def __init__(self, model: nn.Module, config: RunConfig):
        # The reference model is shared by every runner: a runner copies before changing it.
        self.model = model
        self.config = config
        self.is_active = False
        self.is_built = False

    def stages(self) -> list[tuple[str, Any]] | None:
        """The model as named stages, each a callable on the previous one's output (for --profile);
        None where the backend runs the model as one opaque whole (an ONNX session, an engine)."""
        return None

    def profile_layers(self, inputs: Any, calls: int, trace: Path | None) -> LayerProfile:
        """``calls`` profiled calls on ``inputs`` (from ``to_input``), each layer's time from the
        runtime's own profiler, mapped to the model's modules; the raw trace written to ``trace``
        where given. Backends whose runtime reports no layers raise NotImplementedError saying so."""
        raise NotImplementedError(f"{self.name} reports no per-layer times")

    def line_outputs(self, inputs: Any) -> tuple[dict[str, Tensor], str]:
        """--parity layers: each model line's output on ``inputs`` (from ``to_input``), named by its
        anchor module (bench.layers.numerics), and how they were obtained. Backends that cannot give
        them raise NotImplementedError saying why."""
        raise NotImplementedError(f"{self.name} gives no per-layer outputs")

    @property
    def timing_note(self) -> str | None:
        """What a reader of the row's figures must know: timings that are not performance figures
        (an interpreter), or what one timed call holds where it is not one batch."""
        return None

    @property
    def memory_note(self) -> str | None:
        """What this process's memory figures leave out (a server in another process), or None."""
        return None

    def run_facts(self) -> dict | None:
        """What the runtime chose or reports for this row, after prepare (the precision it compiled
        for, its streams), for the row's ``runtime``; None where there is nothing beyond the row's own fields."""
        return None

    def build(self) -> None:
        """Build the artifacts ``prepare`` loads (an ONNX export, an engine), or check the cached
        ones. bench calls it before a row's costs are metered: an exporter's memory is not what the
        runtime holds when it serves. ``prepare`` calls it where no one has."""
        if not self.is_built:
            self.build_impl()
            self.is_built = True

    def prepare(self) -> None:
        if self.is_active:
            raise RuntimeError(f"{self.name}: prepare() called twice without close()")
        self.build()
        self.prepare_impl()
        self.is_active = True

    def to_input(self, batch: Tensor) -> Any:
        """The backend's own input for an fp32 NCHW CPU batch of the configured shape."""
        if tuple(batch.shape) != self.config.input_shape:
            raise ValueError(f"{self.name}: expected an input of shape {self.config.input_shape}, got {tuple(batch.shape)}")
        return self.to_input_impl(batch)

    def run(self, inputs: Any) -> Any:
        # Kept to one attribute check: this is the timed call.
        if not self.is_active:
            raise RuntimeError(f"{self.name}: run() before prepare()")
        return self.run_impl(inputs)

    def to_logits(self, outputs: Any) -> Tensor:
        """fp32 CPU logits, copied: runners may reuse their output buffers between calls."""
        return self.to_logits_impl(outputs).detach().to("cpu", torch.float32, copy=True)

    def infer(self, batch: Tensor) -> Tensor:
        """An fp32 NCHW CPU batch to fp32 CPU logits: conversion, the call, and the copy back."""
        return self.to_logits(self.run(self.to_input(batch)))

    def streams(self, n: int) -> Streams:
        """``n`` requests in flight on the prepared runner, until the streams are closed."""
        if not self.is_active:
            raise RuntimeError(f"{self.name}: streams() before prepare()")
        return self.streams_impl(n)

    def own_streams(self) -> tuple[int, str] | None:
        """For ``--streams auto``: the requests in flight this backend's runtime itself picks for
        the prepared model, and how it picked them; None where the harness searches instead."""
        return None

    def submit(self, batch: Tensor, done: Any) -> None:
        """Start inference on an fp32 NCHW CPU batch of any size up to the configured one without
        waiting; ``done(logits, None)`` or ``done(None, error)`` follows. Backends that serve requests."""
        raise NotImplementedError(f"{self.name} does not take requests asynchronously")

    def mark(self) -> None:
        """The start of a measured window, for ``window``."""

    def window(self) -> dict | None:
        """What the backend itself saw since ``mark`` (a server's own split of the time), or None."""
        return None

    def close(self) -> None:
        if self.is_active:
            self.close_impl()
            self.is_active = False

    def __enter__(self) -> Runner:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build_impl(self) -> None:
        """Backends that load a built artifact build it here; the rest build nothing."""

    def streams_impl(self, n: int) -> Streams:
        c = self.config
        if c.device.type == "cuda":
            return CudaStreams(self.lanes(n), c.device, f"{n} CUDA stream(s), calls enqueued ahead")
        each = threads_each(c.threads, n)
        return ThreadedStreams(self.lanes(n), each, f"{n} thread(s), {each} intra-op thread(s) each")

    def lanes(self, n: int) -> list[Lane]:
        """One Lane per stream. By default the runner's own call on every one: for a runtime whose
        call may run on several threads at once (a torch module under inference_mode)."""
        return [Lane(self.run)] * n

    @abc.abstractmethod
    def prepare_impl(self) -> None: ...

    @abc.abstractmethod
    def run_impl(self, inputs: Any) -> Any: ...

    def to_input_impl(self, batch: Tensor) -> Any:
        return batch.to(self.config.device, self.config.dtype)

    def to_logits_impl(self, outputs: Any) -> Tensor:
        return outputs

    def close_impl(self) -> None:
        pass


# Why a backend that replays CUDA graphs (torch.compile's reduce-overhead and max-autotune) keeps one
# request in flight: every replay of a graph runs in the same static memory, so replays on two
# streams at once would overwrite each other's activations. One stream still enqueues ahead.
CUDA_GRAPH_LIMIT = "its CUDA graph replays share one static memory pool, so they cannot overlap on two streams"


class TorchRunner(Runner):
    packages = {"triton": ("triton",)}  # inductor's and our kernels' code generator
    """A backend that runs an nn.Module: a private copy in the run precision, channels_last
    (the layout oneDNN and cuDNN convolutions are fastest in), under inference_mode."""

    device_memory = "torch"

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        # CPU fp16 convolutions exist in PyTorch but run through slow reference kernels, so a
        # figure for them would answer no deployment question.
        return ("fp32", "bf16") if device.type == "cpu" else ("fp32", "fp16", "bf16")

    def make_module(self) -> nn.Module:
        c = self.config
        return keep_fp32(self.model, c.keep_fp, c.dtype).eval().to(c.device, memory_format=torch.channels_last)

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(self.config.device, self.config.dtype).contiguous(memory_format=torch.channels_last)

    @property
    def timing_note(self) -> str | None:
        # oneDNN runs CPU bf16 on AMX or AVX-512 bf16; without them it converts around every op
        # (measured 2026-12-02 on an AVX2-only EPYC: resnet50 eager bf16 at 0.15x fp32).
        if self.config.device.type == "cpu" and self.config.precision == "bf16" and not native_bf16():
            return "emulated bf16: no avx512_bf16 or amx_bf16 on this CPU"
        return None

    def stages(self) -> list[tuple[str, Any]] | None:
        return self.module.stages()
