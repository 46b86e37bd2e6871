"""OpenVINO IR: the ``.xml`` graph and ``.bin`` weights an OpenVINO user deploys, converted from our
ONNX export (so its layers carry the ONNX nodes' names), fp32, or int8 quantized by NNCF.

NNCF is OpenVINO's own post-training quantizer: it calibrates activation ranges on the inputs given,
quantizes weights per channel, and corrects each layer's bias for the shift quantization brings
(fast bias correction), which onnxruntime's QDQ quantizer does not: half the QDQ file's error on
resnet50, as fast (docs/deployment.md).

The IR is two files; the manifest written beside the ``.xml`` records the ``.bin``'s sha256 too
(``companions``), so a changed weights file is refused as a changed graph is.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from export.onnx import INPUT_NAME, BatchRange, export_onnx, graph_io
from export.quantize import Calibration, layer_names, layer_nodes
from resnet_perf.parity import cycled
from resnet_perf.util.versions import installed_version

# NNCF's quantization settings for a CNN on a CPU, as its defaults have them: symmetric activations
# and weights ("performance"), weights per channel, fast bias correction.
PRESET = "performance"


def missing_reason(int8: bool) -> str | None:
    """Why OpenVINO IR (and for ``int8``, NNCF's) cannot be written here, or None."""
    import importlib.util

    for package in ("openvino", *(("nncf",) if int8 else ())):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install {package})"
    return None


def weights_path(xml: str | os.PathLike) -> Path:
    """The ``.bin`` OpenVINO reads beside an ``.xml``: same name, other suffix."""
    return Path(xml).with_suffix(".bin")


def save_ir(model, xml: Path) -> None:
    """Write ``model`` as ``xml`` and its ``.bin``, each replaced atomically, weights first: a reader
    never finds a new graph over old weights. Weights stay as they are (OpenVINO's save_model
    compresses fp32 weights to fp16 by default, which an fp32 artifact must not)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".resnet-perf-ir-", dir=xml.parent) as tmp:
        staged = Path(tmp) / xml.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(weights_path(staged), weights_path(xml))
        os.replace(staged, xml)


def nncf_quantize(onnx_path: Path, calibration: Calibration, batch: BatchRange):
    """The ONNX model read by OpenVINO and quantized by NNCF on ``calibration``'s inputs, in batches
    the model accepts; returns the quantized ov.Model and the manifest's description of it."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    # OpenVINO names each layer after its ONNX node, the conv's weights part with a suffix
    # ("node_Conv_12/WithoutBiases"); NNCF's ignored scope takes the layers whose inputs it would quantize.
    kept = set(layer_nodes(layer_names(onnx_path), calibration.keep_fp))
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_type_name() in ("Convolution", "MatMul") and op.get_friendly_name().split("/")[0] in kept]
    size = batch.max if not batch.dynamic else 1
    inputs = calibration.inputs.numpy()
    items = cycled(inputs, -(-len(inputs) // size) * size).reshape(-1, size, *inputs.shape[1:])
    # NNCF logs its progress bars to stdout, which is the table's.
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(list(items)), preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(items),
                                  ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    return quantized, {
        "quantizer": "nncf",
        "nncf": installed_version("nncf"),
        "preset": PRESET,
        "method": "minmax",
        "calibration_source": calibration.source,
        "calibration_samples": len(inputs),
        "activations": "symmetric per tensor (unsigned where the input cannot be negative)",
        "weights": "int8 symmetric, per output channel",
        "bias_correction": "fast",
        "keep_fp": list(calibration.keep_fp),
        "ignored_layers": ignored,
    }


def convert_ir(source: Path, xml: Path, batch: BatchRange, calibration: Calibration | None = None) -> dict:
    """The fp32 ONNX file ``source`` written as OpenVINO IR at ``xml``: as it is, or with
    ``calibration``, int8 by NNCF. Returns the manifest's fields describing the IR."""
    import openvino as ov

    quantization = None
    if calibration is not None:
        converted, quantization = nncf_quantize(source, calibration, batch)
    else:
        converted = ov.Core().read_model(str(source))
    save_ir(converted, xml)
    return {"quantization": quantization, "companions": [weights_path(xml).name]}


def export_ir(model: torch.nn.Module, xml: Path, *, batch: BatchRange, image_size: int, opset: int,
              calibration: Calibration | None = None) -> dict:
    """Write ``model`` as OpenVINO IR at ``xml`` (and its ``.bin``), through a temporary fp32 ONNX
    export: fp32, or int8 by NNCF on ``calibration``. Returns the manifest's fields describing it."""
    with tempfile.TemporaryDirectory(prefix="resnet-perf-") as tmp:
        source = Path(tmp) / "fp32.onnx"
        export_onnx(model, source, batch=batch, image_size=image_size, precision="fp32", opset=opset)
        return {**graph_io(source), **convert_ir(source, xml, batch, calibration)}


def versions() -> dict:
    """What an IR's manifest records besides the export's versions: the OpenVINO that wrote it (and
    reads it back) and the NNCF that quantized it."""
    return {"openvino": installed_version("openvino"), "nncf": installed_version("nncf")}


def cpu_run(xml: str | os.PathLike):
    """A function running the IR on OpenVINO's CPU plugin in f32 (its layers left unquantized are
    not lowered to bf16): for the parity check at export."""
    import openvino as ov
    import openvino.properties.hint as hints

    compiled = ov.Core().compile_model(str(xml), "CPU", {hints.inference_precision: ov.Type.f32})

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(compiled({INPUT_NAME: x.numpy()})[0].copy())

    return run
