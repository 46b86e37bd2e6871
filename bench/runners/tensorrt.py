"""``tensorrt``: a serialized TensorRT engine, run with execute_async_v3 on torch CUDA tensors.

The engine is the one given with ``--engine`` (its manifest checked first), or one built from the
model's ONNX export for this batch size, precision, GPU and TensorRT version and cached, with a
timing cache beside it so a rebuild takes seconds. ``--cuda-graph`` captures the engine's launches
once and replays them as one CUDA graph, which removes the per-kernel launch cost that dominates
small batches. Requests in flight are an execution context per CUDA stream, as trtexec's
``--infStreams`` runs them, each enqueued ahead without a host synchronization between calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.artifacts import cached_engine, engine_path
from bench.layers.numerics import added_outputs_how
from bench.layers.onnx_nodes import attribute, line_reads, node_lines
from bench.layers.profile import LayerProfile, RuntimeLayer, mean_wall_ms
from bench.runners.base import RunContext, Runner
from bench.streams import Lane
from export import tensorrt
from export.manifest import ManifestError, check_engine_target, load_manifest, sha256_file
from export.onnx import BatchRange
from resnet_perf.util.atomic import write_text
from resnet_perf.util.cli import UsageError


@dataclass(frozen=True)
class TensorRTOptions:
    cuda_graph: bool = False  # replay the engine's launches as one CUDA graph


class TensorRTRunner(Runner):
    name = "tensorrt"
    packages = {"tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12")}
    artifacts = ("tensorrt",)

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        # TensorRT 10 builds fp16 from the fp32 graph with its FP16 flag, choosing each layer's type.
        return tensorrt.missing_reason() is None and tensorrt.strongly_typed(tensorrt.version())

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--cuda-graph", action="store_true", help="replay the engine as one CUDA graph")

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> TensorRTOptions:
        return TensorRTOptions(flags["cuda_graph"])

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        missing = tensorrt.missing_reason()
        if missing:
            return missing
        if device.type != "cuda":
            return "needs --device cuda (TensorRT runs on NVIDIA GPUs)"
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        return ("fp32", "fp16", "int8")

    @classmethod
    def check_ready(cls, options: TensorRTOptions, run: RunContext) -> None:
        # An --engine built with another TensorRT or for another GPU would fail every row it is in.
        if "tensorrt" in run.artifacts:
            manifest = load_manifest(run.artifacts["tensorrt"])
            try:
                check_engine_target(manifest, tensorrt_version=tensorrt.version(), gpu=tensorrt.gpu_target(run.device))
            except ManifestError as exc:
                raise UsageError(f"--engine {exc}") from None

    def plan_path(self) -> Path:
        return engine_path(self.config)

    def _settings(self) -> tensorrt.BuildSettings:
        c = self.config
        return tensorrt.BuildSettings(c.precision, BatchRange.static(c.batch_size), c.image_size,
                                      timing_cache=c.cache_dir / "tensorrt" / "timing.cache", keep_fp=c.keep_fp)

    def build_impl(self) -> None:
        if "tensorrt" not in self.config.artifacts:  # a given --engine was checked by check_ready already
            cached_engine(self.model, self.config, self._settings())

    def prepare_impl(self) -> None:
        c = self.config
        self.engine = tensorrt.Engine(self.plan_path(), c.device)
        self.launch = Launch(self.engine, (c.options or TensorRTOptions()).cuda_graph)

    def lanes(self, n: int) -> list[Lane]:
        return [Lane(self.launch), *(Lane(Launch(self.engine.sibling(), self.launch.cuda_graph)) for _ in range(n - 1))]

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(self.config.device, self.engine.input_dtype).contiguous()

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """TensorRT's IProfiler on an engine of its own (the row's plan deserialized again: a
        profiler and CUDA graphs do not mix, and the row's engine stays as it was timed), the warm
        run left out. Layers are mapped to ONNX nodes by the engine inspector's metadata, else by
        the node names in the layer's own (TensorRT names a fused layer ``node_Conv_291 +
        node_relu``), against the engine's source ONNX written again (the export is deterministic)."""
        c = self.config
        engine = tensorrt.Engine(self.plan_path(), c.device)
        engine(inputs)
        times = engine.profile()
        engine(inputs)
        torch.cuda.synchronize(c.device)
        times.clear()  # the profiler's first run
        wall_ms = mean_wall_ms(lambda: engine(inputs), calls, c.device)
        from_inspector = engine.layer_nodes()
        with self._source_onnx() as source:
            nodes = node_lines(source, self.model)
            same = sha256_file(source) == engine.manifest["tensorrt"].get("source_onnx_sha256")
        claimed = {name: from_inspector.get(name) or re.findall(r"[\w./:-]+", name) for name in times}
        mapped = attribute(claimed, nodes)
        if trace is not None:
            write_text(trace, json.dumps({"layer_ms_per_call": {n: ms / calls for n, ms in times.items()},
                                          "onnx_nodes": from_inspector}, indent=1))
        return LayerProfile(
            source="TensorRT IProfiler, per layer of the engine", calls=calls, wall_ms=wall_ms,
            layers=[RuntimeLayer(name, "TensorRT layer", ms / calls, *mapped[name]) for name, ms in times.items()],
            trace=trace,
            notes=[] if same else ["the ONNX written again differs from the engine's source: names may not match"])

    @contextlib.contextmanager
    def _source_onnx(self) -> Iterator[Path]:
        """The ONNX the row's engine is built from, written again in a temporary folder (the export
        is deterministic: it names the same nodes and tensors)."""
        c = self.config
        with tempfile.TemporaryDirectory(prefix="resnet-perf-") as folder:
            source = Path(folder) / "source.onnx"
            tensorrt.write_source_onnx(self.model, source, self._settings(), calibration=c.calibration,
                                       calibration_cache=c.cache_dir / "calibration")
            yield source

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        """The engine's source ONNX written again, and an engine of its own built from it with each
        line's end marked as an output (export.tensorrt.run_marked); in an int8 engine the line is
        marked at the graph's Dequantize after its Quantize, as the next layer reads it."""
        c = self.config
        with self._source_onnx() as source:
            reads, requantized = line_reads(source, self.model)
            marked = tensorrt.run_marked(source, tuple(dict.fromkeys(reads.values())), self._settings(), c.device, inputs)
        outputs = {line: marked[tensor].float().cpu() for line, tensor in reads.items()}
        return outputs, added_outputs_how(outputs, self.to_logits(self.run(inputs)), requantized)

    def run_impl(self, inputs: Tensor) -> Tensor:
        return self.launch(inputs)

    def close_impl(self) -> None:
        del self.engine, self.launch


class Launch:
    """One execution context's call: the engine enqueued on ``inputs``, or with ``cuda_graph`` its
    launches captured on first use and replayed after (a graph holds device addresses, so a new
    input tensor means a new capture)."""

    def __init__(self, engine: tensorrt.Engine, cuda_graph: bool):
        self.engine, self.cuda_graph = engine, cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, inputs: Tensor) -> Tensor:
        if not self.cuda_graph:
            return self.engine(inputs)
        if self.graph is None or inputs is not self.engine.bound:
            self.engine(inputs)  # TensorRT allocates on its first enqueue, which a capture must not see
            torch.cuda.synchronize(self.engine.device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.engine.stream):
                self.engine.enqueue()
        self.graph.replay()
        return self.engine.output
