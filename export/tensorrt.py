"""TensorRT engines: built from an ONNX file, and loaded only after their manifest says they fit here.

Written against the TensorRT 10.x and 11.x Python API. TensorRT 11 removed weak typing (its
``BuilderFlag`` has no ``FP16``), so there an fp16 engine comes from a strongly typed network whose
tensors are already fp16: the fp16 ONNX export. On 10.x the fp32 ONNX is built with the FP16 builder
flag instead, which lets TensorRT choose fp16 or fp32 per layer and keeps fp32 inputs and outputs.
That flag and the INT8 one (10.x's weakly typed networks need it to run Q/DQ layers in int8) are
the two 10.x-only names here, each behind a version check; tests/test_tensorrt_api.py checks every
other ``trt.`` name this file uses against the 11.x bindings.

tensorrt is imported only when an engine is built or loaded, so everything else in the project
works without it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from export.manifest import check_engine_target, load_manifest, sha256_file, versions
from export.onnx import DEFAULT_OPSET, INPUT_NAME, BatchRange, export_onnx, graph_io
from export.quantize import Calibration, export_quantized
from resnet_perf.util.atomic import atomic_path

INSTALL = "TensorRT is not installed (pip install 'resnet-perf[tensorrt]' on a machine with an NVIDIA GPU)"


class TensorRTError(RuntimeError):
    """TensorRT is missing, or refused to parse, build, load or run something."""


def missing_reason() -> str | None:
    """None when the tensorrt package can be imported here, else how to install it."""
    return INSTALL if importlib.util.find_spec("tensorrt") is None else None


def _import():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # the bindings without NVIDIA's libraries fail in either way
        raise TensorRTError(f"{INSTALL}: {exc}") from None
    return trt


def version() -> str:
    return _import().__version__


def strongly_typed(tensorrt_version: str) -> bool:
    """Whether engines of this TensorRT take their precision from the network's tensor types."""
    return int(tensorrt_version.split(".")[0]) >= 11


def source_precision(tensorrt_version: str, precision: str) -> str:
    """The precision of the ONNX export an engine of ``precision`` is built from (int8 engines: the
    fp32 export with Q/DQ nodes added, explicit quantization being the only kind TensorRT 11 has)."""
    return precision if strongly_typed(tensorrt_version) and precision == "fp16" else "fp32"


def gpu_target(device: torch.device) -> dict:
    """What an engine is tied to: the GPU model and its compute capability."""
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def has_int8(compute_capability: str) -> bool:
    """int8 dot-product instructions: compute capability 6.1 and later."""
    return tuple(int(v) for v in compute_capability.split(".")) >= (6, 1)


def has_fast_fp16(compute_capability: str) -> bool:
    """Full-rate fp16 arithmetic: sm_53, sm_60, sm_62 and every GPU from Volta (7.0) on. Consumer
    Pascal (sm_61) runs fp16 at 1/64 of its fp32 rate, so an fp16 engine there is only slower."""
    major, minor = (int(v) for v in compute_capability.split("."))
    return (major, minor) >= (7, 0) or (major, minor) in {(5, 3), (6, 0), (6, 2)}


@dataclass(frozen=True)
class BuildSettings:
    precision: str  # fp32 | fp16 | int8
    batch: BatchRange
    image_size: int
    workspace_mib: int = 4096
    optimization_level: int = 3  # TensorRT's default; 5 searches longest
    timing_cache: Path | None = None
    keep_fp: tuple[str, ...] = ()  # fp16: layers kept in fp32, in the source ONNX (strongly typed only)

    def profile_shapes(self) -> dict[str, list[int]]:
        return {k: [n, 3, self.image_size, self.image_size]
                for k, n in (("min", self.batch.min), ("opt", self.batch.opt), ("max", self.batch.max))}


def build_engine(onnx_path: Path, plan_path: Path, settings: BuildSettings, device: torch.device) -> dict:
    """Build a serialized engine for ``device`` from ``onnx_path`` into ``plan_path`` (atomically)
    and save the timing cache, if one is set. Returns the build's description for the manifest."""
    plan = _build(onnx_path, settings, device)
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(plan)
    return {
        "strongly_typed": strongly_typed(version()),
        "workspace_mib": settings.workspace_mib,
        "optimization_level": settings.optimization_level,
        "profile": {INPUT_NAME: settings.profile_shapes()},
        "timing_cache": None if settings.timing_cache is None else os.fspath(settings.timing_cache),
    }


def _build(onnx_path: Path, settings: BuildSettings, device: torch.device, mark: tuple[str, ...] = ()) -> bytes:
    """The serialized engine for ``device`` from ``onnx_path``, with the tensors named in ``mark``
    made outputs too; the timing cache, if one is set, read before and saved after."""
    trt = _import()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = strongly_typed(trt.__version__)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        detail = "; ".join(f"node {e.node()}: {e.desc()}" for e in errors) or "no detail given"
        raise TensorRTError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {detail}")
    if mark:
        _mark_outputs(network, mark, onnx_path.name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.optimization_level
    # Each layer's ONNX nodes in the engine, for the inspector: what --profile layers maps by.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.precision == "fp16" and not typed:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10.x only: weak typing
    if settings.precision == "int8" and not typed:
        # TensorRT 10.x only: its weakly typed networks run Q/DQ layers in int8 only with this flag.
        config.set_flag(trt.BuilderFlag.INT8)
    shapes = settings.profile_shapes()
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    # The timing cache records each kernel's measured time, so a rebuild skips the measuring:
    # most of a build's minutes. It is tied to the GPU and TensorRT version, which it checks.
    cache_path = settings.timing_cache
    previous = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise TensorRTError(f"timing cache {cache_path} was made for another GPU or TensorRT version: "
                            "delete it or give another --timing-cache")

    with torch.cuda.device(device):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path.name} (its log above says why)")
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(cache.serialize())  # the cache attached to the config, updated by the build
    return bytes(plan)


def _mark_outputs(network, names: tuple[str, ...], source: str) -> None:
    """Make the network's tensors called ``names`` (their ONNX names, which the parser keeps) outputs."""
    tensors = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            tensors[tensor.name] = tensor
    missing = [name for name in names if name not in tensors]
    if missing:
        raise TensorRTError(f"TensorRT's network of {source} has no tensor {missing[0]!r} to mark as an output")
    for name in names:
        if not tensors[name].is_network_output:
            network.mark_output(tensors[name])


def run_marked(onnx_path: Path, names: tuple[str, ...], settings: BuildSettings, device: torch.device,
               x: Tensor) -> dict[str, Tensor]:
    """Build an engine from ``onnx_path`` with the tensors ``names`` marked as outputs, as
    Polygraphy's ``--trt-outputs`` does, run it once on ``x``, and return every output by name. A
    marked tensor must exist, so TensorRT keeps it out of any fusion that would have hidden it:
    this engine is not the row's, and its logits say whether that changed them."""
    trt = _import()
    plan = _build(onnx_path, settings, device, mark=names)
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(device):
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise TensorRTError("TensorRT could not deserialize the engine with marked outputs (its log above says why)")
        context = engine.create_execution_context()
    dtypes = _torch_dtypes(trt)
    if not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
        raise ValueError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile")
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    outputs = {}
    for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)):
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)),
                                        dtype=dtypes[engine.get_tensor_dtype(name)], device=device)
            context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    if not context.execute_async_v3(stream.cuda_stream):
        raise TensorRTError("execute_async_v3 failed (TensorRT's log says why)")
    stream.synchronize()
    return outputs


def _torch_dtypes(trt) -> dict:
    """TensorRT's float tensor types (its enum exists only once tensorrt is imported) as torch's."""
    return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16}


def write_source_onnx(model: nn.Module, onnx_path: Path, settings: BuildSettings, opset: int = DEFAULT_OPSET,
                      calibration: Calibration | None = None, calibration_cache: Path | None = None) -> dict | None:
    """The ONNX an engine of ``settings`` is built from, written to ``onnx_path`` (for int8,
    quantized with ``calibration``, symmetric, as TensorRT needs); returns the quantization's
    description, or None. The export is deterministic: written again, it names the same nodes."""
    if settings.precision == "int8":
        return export_quantized(model, onnx_path, batch=settings.batch, image_size=settings.image_size, opset=opset,
                                calibration=calibration, flavour="tensorrt", cache_dir=calibration_cache)
    precision = source_precision(version(), settings.precision)
    if settings.keep_fp and precision != "fp16":
        raise TensorRTError(f"--keep-fp: TensorRT {version()} builds fp16 from the fp32 graph with the FP16 flag, "
                            "choosing each layer's type itself; keeping layers in fp32 needs a strongly typed "
                            "network, built from the fp16 graph that holds them")
    export_onnx(model, onnx_path, batch=settings.batch, image_size=settings.image_size, precision=precision,
                opset=opset, keep_fp=settings.keep_fp)
    return None


def export_engine(model: nn.Module, plan_path: Path, settings: BuildSettings, device: torch.device,
                  opset: int = DEFAULT_OPSET, calibration: Calibration | None = None,
                  calibration_cache: Path | None = None) -> dict:
    """Export ``model`` to ONNX (in a temporary folder; for int8, quantized with ``calibration``,
    symmetric, as TensorRT needs) and build the engine from it; returns the manifest fields that
    describe the engine: its I/O, the build, the quantization, and the TensorRT and GPU it is for."""
    trt_version = version()
    with tempfile.TemporaryDirectory(prefix="resnet-perf-") as tmp:
        onnx_path = Path(tmp) / "source.onnx"
        quantization = write_source_onnx(model, onnx_path, settings, opset, calibration, calibration_cache)
        build = build_engine(onnx_path, plan_path, settings, device)
        # A strongly typed engine's I/O has the ONNX graph's types; a weakly typed fp16 one keeps fp32 I/O.
        return {
            "format": "tensorrt",
            **graph_io(onnx_path),
            "opset": opset,
            "quantization": quantization,
            "versions": versions(tensorrt=trt_version),
            "gpu": gpu_target(device),
            "tensorrt": {**build, "source_onnx_sha256": sha256_file(onnx_path)},
        }


class Engine:
    """A deserialized engine with one execution context, running on torch CUDA tensors.

    The manifest is checked before the plan is deserialized: a changed file, another TensorRT
    version or another GPU is refused with both sides named.
    """

    def __init__(self, plan_path: Path, device: torch.device):
        trt = _import()
        self.manifest = load_manifest(plan_path)
        check_engine_target(self.manifest, tensorrt_version=trt.__version__, gpu=gpu_target(device))
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self.engine is None:
                raise TensorRTError(f"TensorRT could not deserialize {plan_path.name} (its log above says why)")
            self.context = self.engine.create_execution_context()

        # The engine's own tensor types: what it binds, not a precision (a TensorRT 10 fp16 engine
        # keeps fp32 inputs).
        dtypes = _torch_dtypes(trt)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise TensorRTError(f"{plan_path.name}: expected one input and one output, found {inputs} and {outputs}")
        (self.input_name,), (self.output_name,) = inputs, outputs
        self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        # TensorRT warns against the legacy default stream: it would add device-wide synchronizations.
        self.stream = torch.cuda.Stream(device)
        self.output: Tensor | None = None
        self.bound: Tensor | None = None  # the input last bound; the engine holds its address

    def sibling(self) -> Engine:
        """The same deserialized engine with an execution context of its own (its own stream,
        output and bound input): one per concurrent stream, as trtexec's ``--infStreams`` gives
        each of its streams."""
        other = copy.copy(self)
        with torch.cuda.device(self.device):
            other.context = self.engine.create_execution_context()
        other.stream = torch.cuda.Stream(self.device)
        other.output = other.bound = None
        return other

    def bind(self, x: Tensor) -> Tensor:
        """Point the engine at ``x`` (its batch size picks the shape within the profile) and at a
        new output tensor, which is returned and which every later run overwrites."""
        if x.dtype != self.input_dtype or x.device != self.device or not x.is_contiguous():
            raise ValueError(f"the engine takes a contiguous {self.input_dtype} tensor on {self.device}, "
                             f"got {x.dtype} on {x.device}")
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile")
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        self.output = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())
        self.bound = x
        return self.output

    def enqueue(self) -> None:
        """Queue one inference on the engine's stream, on the tensors last bound."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise TensorRTError("execute_async_v3 failed (TensorRT's log says why)")

    def profile(self) -> dict[str, float]:
        """Time every layer from now on with TensorRT's IProfiler on this engine's context (give the
        context over to profiling: a profiled engine is not for timing); returns the dict that sums
        each layer's ms over the runs, by TensorRT's layer name."""
        trt = _import()

        class LayerTimes(trt.IProfiler):
            def __init__(self):
                super().__init__()
                self.ms: dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.ms[layer_name] = self.ms.get(layer_name, 0.0) + ms

        self._profiler = LayerTimes()  # the context keeps no reference of its own
        self.context.profiler = self._profiler
        return self._profiler.ms

    def layer_nodes(self) -> dict[str, list[str]]:
        """Each layer of the engine by name, with the ONNX nodes it was built from, as the engine
        inspector reports them (``[ONNX Layer: node_Conv_291]`` in each layer's metadata, where the
        engine was built with detailed profiling verbosity; else nothing)."""
        trt = _import()
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get("Layers", [])
        return {entry["Name"]: re.findall(r"\[ONNX Layer: ([^\]]+)\]", entry.get("Metadata", ""))
                for entry in layers if isinstance(entry, dict)}

    def __call__(self, x: Tensor) -> Tensor:
        """Infer on ``x``, ordered after the current stream's work and before what it queues next."""
        if x is not self.bound:
            self.bind(x)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        self.enqueue()
        current.wait_stream(self.stream)
        return self.output
