"""Export a model to ONNX through torch.onnx's dynamo exporter, checked by onnx's own checker."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnet_perf.mixed import keep_fp32
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.atomic import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 18
# torch's exporter builds opset 18 graphs (its torchlib's) and converts them up, not down: asked
# for 7-17 (torch 2.13), its version converter fails, prints a traceback and keeps opset 18.
MIN_OPSET = 18
# The precisions export_onnx writes itself; int8 is an fp32 export, quantized by export.quantize.
ONNX_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an artifact accepts: one (static) or MIN..MAX with OPT the size to tune for."""

    min: int
    opt: int
    max: int

    @classmethod
    def static(cls, size: int) -> BatchRange:
        return cls(size, size, size)

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``MIN:OPT:MAX``, a dynamic range: 1 <= MIN <= OPT <= MAX and MIN < MAX."""
        parts = text.split(":")
        try:
            low, opt, high = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r} is not MIN:OPT:MAX (three integers)") from None
        if not 1 <= low <= opt <= high:
            raise ValueError(f"{text!r}: need 1 <= MIN <= OPT <= MAX")
        if low == high:
            raise ValueError(f"{text!r}: MIN equals MAX, which is one static size (use --batch-size {low})")
        return cls(low, opt, high)

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def __contains__(self, size: int) -> bool:
        return self.min <= size <= self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}" if self.dynamic else str(self.min)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch: BatchRange,
    image_size: int,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    keep_fp: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` as an ONNX graph taking ``batch`` x 3 x image_size x image_size (a named
    ``batch`` axis when the range is dynamic) to ``path``, atomically, after onnx.checker (with
    strict shape inference) accepts it. ``model`` is not changed.

    In fp16 the layers named in ``keep_fp`` (module names: "layer2.0.conv1") compute in fp32
    between casts (``resnet_perf.mixed.keep_fp32``)."""
    import onnx  # lazy: importing the package must not need the exporter's dependencies

    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"ONNX export supports {', '.join(ONNX_PRECISIONS)}, not {precision!r}")
    if keep_fp and precision != "fp16":
        raise ValueError(f"keep_fp: a {precision} export has no lower-precision layer to keep in fp32 "
                         "(int8 keeps its layers through its calibration)")
    dtype = PRECISIONS[precision].dtype
    module = keep_fp32(model, keep_fp, dtype).eval()
    example = torch.zeros(batch.opt, 3, image_size, image_size, dtype=dtype)
    # One entry per positional argument of forward(): the batch axis of the image, when dynamic.
    dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS, min=batch.min, max=batch.max)},) if batch.dynamic else None

    path = Path(path)
    with atomic_path(path) as tmp:
        with torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                # One self-contained file: ResNets are far below protobuf's 2 GB limit, and a
                # cached artifact that drags a side file along is easy to break by copying.
                external_data=False,
            )
        program.save(str(tmp), external_data=False)
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph, full_check=True)
        written = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        if written != opset:  # a manifest never says what the file is not
            raise ValueError(f"the exporter wrote opset {written}, not the {opset} asked for")
    return path


def graph_io(path: str | os.PathLike) -> dict:
    """Names, element types and shapes (a named axis as its name) of the graph's inputs and
    outputs, and its dynamic axes, read back from the file: what a manifest records."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}

    inputs, outputs = [describe(v) for v in graph.input], [describe(v) for v in graph.output]
    dynamic = {
        t["name"]: {str(axis): dim for axis, dim in enumerate(t["shape"]) if isinstance(dim, str)}
        for t in inputs + outputs
    }
    return {"inputs": inputs, "outputs": outputs, "dynamic_axes": {k: v for k, v in dynamic.items() if v}}


# Nodes that only a quantized graph holds: QDQ pairs, or the integer operators of a QOperator one.
_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                            "MatMulInteger", "DynamicQuantizeLinear"})


def graph_precision(path: str | os.PathLike) -> str:
    """What the file computes in, read from the graph rather than a manifest: int8 where it holds
    quantized nodes, fp16 where its input is half, fp32 otherwise."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(node.op_type in _QUANTIZED_OPS for node in graph.node):
        return "int8"
    return "fp16" if graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else "fp32"


def cpu_session(path: str | os.PathLike, precision: str = "fp32"):
    """A function running ``path`` in onnxruntime's CPU provider: fp32 logits for an fp32 batch.
    Where the CPU provider lacks an fp16 kernel it computes that node in fp32 (onnxruntime inserts the
    casts, and drops those between two such nodes), so an fp16 graph is checked for its structure and
    its fp16 weights, not fp16 arithmetic nor fp16's range between nodes."""
    import onnxruntime as ort

    dtype = PRECISIONS[precision].numpy
    if dtype is None:
        raise ValueError(f"onnxruntime takes numpy inputs, and numpy has no {precision}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(dtype)})
        return torch.from_numpy(logits).float()

    return run


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress to stdout, logs a warning per missing torchvision op and
    passes on deprecation warnings from torch internals; a benchmark's output is its table, so all
    three are held back. Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
