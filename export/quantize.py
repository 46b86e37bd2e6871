"""INT8 static quantization of an ONNX model through onnxruntime.quantization: QDQ format, weights
per channel, calibrated on given inputs (a folder of images, or the synthetic parity distribution).

The quantized model keeps fp32 inputs and outputs; QuantizeLinear/DequantizeLinear pairs mark where
int8 may be used, and each runtime fuses them with their operators into int8 kernels. The two
runtimes want different int8: onnxruntime's fast CPU kernels take unsigned activations with a zero
point (measured here, ResNet-50 bs8: 2.9x fp32 with uint8 activations, 0.78x with symmetric int8
ones), while TensorRT accepts only symmetric int8. So the calibration (each tensor's range, from
one pass over the calibration inputs) is computed once and cached, and each flavour of QDQ model is
derived from the same cached ranges.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from export.manifest import rebuilding, sha256_file
from export.onnx import INPUT_NAME
from resnet_perf.parity import cycled
from resnet_perf.util.atomic import atomic_path
from resnet_perf.util.cli import one_line
from resnet_perf.util.cpu import speed_features

METHODS = ("minmax", "entropy", "percentile")
FLAVOURS = {
    # onnxruntime: uint8 activations with a zero point, int8 symmetric weights per channel ("U8S8").
    "onnxruntime": {"activations": "QUInt8", "options": {"WeightSymmetric": True}},
    # TensorRT: int8 everywhere, symmetric (zero point 0), the only kind of int8 it builds.
    "tensorrt": {"activations": "QInt8", "options": {"WeightSymmetric": True, "ActivationSymmetric": True}},
}


def saturating_int8_cpu() -> bool:
    """An x86 CPU without VNNI (AVX2 only, or AVX-512 before Cascade Lake): onnxruntime multiplies
    uint8 activations by int8 weights there with VPMADDUBSW, whose int16 sums of pairs saturate.
    Measured on an AVX2-only AMD EPYC (2026-12-01): resnet18's 8-bit-weight model fell to cosine
    0.973 against fp32 and failed parity (tests/test_quantize.py), a test that passes on Xeons with
    VNNI. onnxruntime's remedy is 7-bit weights (reduce_range), whose pair sums cannot saturate."""
    features = speed_features()
    return features is not None and not (features["avx512_vnni"] or features["avx_vnni"] or features["amx_int8"])


def weight_bits(flavour: str) -> int:
    """The bits of the int8 flavour's weights on this machine: 7 for onnxruntime on a CPU whose int8
    products saturate, else 8."""
    return 7 if flavour == "onnxruntime" and saturating_int8_cpu() else 8


class QuantizationError(ValueError):
    """Quantization cannot proceed as asked (a layer to keep in fp32 that the model does not have)."""


@dataclass(frozen=True)
class Calibration:
    """What INT8 quantization is calibrated on and how: N x 3 x S x S fp32 inputs, the method that
    turns their activation ranges into scales, the layers (module names) to leave in fp32, and a
    description of where the inputs came from, for manifests."""

    inputs: Tensor = field(repr=False)
    method: str = "minmax"
    keep_fp: tuple[str, ...] = ()
    source: dict = field(default_factory=dict)

    def key(self) -> str:
        """A short name for this calibration: inputs, method and the layers kept in fp32."""
        digest = hashlib.sha256(self.inputs.contiguous().numpy().tobytes())
        digest.update(f"{self.method}|{','.join(self.keep_fp)}".encode())
        return f"{self.method}-{digest.hexdigest()[:12]}"


def layer_names(model_path: str | os.PathLike) -> dict[str, str]:
    """{ONNX node name: the model's module name} for every Conv and Gemm node, so that users name
    layers as the PyTorch model does ("layer1.0.conv1", "fc"). The exporter folds each BatchNorm
    into its conv and records the BatchNorm's module path; its conv has the matching name."""
    import onnx

    names = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        scopes = next((json.loads(p.value.replace("'", '"')) for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        module = scopes[-2] if scopes and len(scopes) > 1 else node.name
        head, _, leaf = module.rpartition(".")
        if leaf.startswith("bn"):
            leaf = "conv" + leaf[2:]
        elif leaf == "1" and head.endswith("downsample"):
            leaf = "0"
        names[node.name] = f"{head}.{leaf}" if head else leaf
    return names


def layer_nodes(names: dict[str, str], layers: tuple[str, ...]) -> list[str]:
    """The ONNX nodes computing ``layers`` (module names), in their order, from the graph's
    ``layer_names``; QuantizationError naming any layer the graph does not have."""
    by_module = {module: node for node, module in names.items()}
    unknown = [name for name in layers if name not in by_module]
    if unknown:
        raise QuantizationError(f"--keep-fp {','.join(unknown)}: no such layer; layers are e.g. "
                                f"{', '.join(list(by_module)[:4])}, ..., {list(by_module)[-1]}")
    return [by_module[name] for name in layers]


def quantize_onnx(source: Path, target: Path, calibration: Calibration, *, flavour: str = "onnxruntime",
                  cache_dir: Path | None = None) -> dict:
    """Write ``source`` (fp32 ONNX) quantized to ``target``, atomically; returns the manifest's
    description of the quantization. Calibration ranges are cached in ``cache_dir``, keyed by
    model, inputs and method, and shared by both flavours."""
    from onnxruntime import quantization as q

    inputs, method, keep_fp = calibration.inputs, calibration.method, calibration.keep_fp
    if method not in METHODS:
        raise QuantizationError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
    names = layer_names(source)
    kept = layer_nodes(names, keep_fp)
    # The ranges depend on the model, the inputs and the method, not on which layers stay fp32 (every
    # tensor is calibrated) nor on the flavour: one cached calibration serves all of those.
    digest = hashlib.sha256(f"{sha256_file(source)}|{method}".encode())
    digest.update(inputs.contiguous().numpy().tobytes())
    cache = None if cache_dir is None else cache_dir / f"calibration-{digest.hexdigest()[:20]}.json"
    ort_method = getattr(q.CalibrationMethod, {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[method])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _drop_unreadable_cache(cache, ort_method)
    batch = _static_batch(source) or min(len(inputs), 8)

    class Reader(q.CalibrationDataReader):
        """The calibration inputs in batches the model accepts (the last one padded by cycling)."""

        def __init__(self):
            padded = cycled(inputs.numpy(), -(-len(inputs) // batch) * batch)
            self.batches = iter(padded.reshape(-1, batch, *inputs.shape[1:]))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    spec = FLAVOURS[flavour]
    bits = weight_bits(flavour)
    with tempfile.TemporaryDirectory(prefix="resnet-perf-quant-") as tmp, atomic_path(target) as out:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup first, as onnxruntime recommends before quantizing.
        q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # The histogram calibrators print their progress to stdout, which is the table's.
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=getattr(q.QuantType, spec["activations"]), weight_type=q.QuantType.QInt8,
                              calibrate_method=ort_method, nodes_to_exclude=kept,
                              reduce_range=bits == 7,
                              extra_options=dict(spec["options"]),
                              calibration_cache_path=None if cache is None else str(cache))
    return {
        "method": method,
        "calibration_source": calibration.source,
        "flavour": flavour,
        "activations": "uint8 with zero point" if spec["activations"] == "QUInt8" else "int8 symmetric",
        "weights": f"{'7-bit (reduce_range: this CPU has no VNNI)' if bits == 7 else 'int8'} symmetric, per output channel",
        "calibration_samples": len(inputs),
        "calibration_digest": digest.hexdigest(),
        "calibration_cache": None if cache is None else os.fspath(cache),
        "keep_fp": list(keep_fp),
        "quantized_layers": len(names) - len(keep_fp),
    }


def _drop_unreadable_cache(cache: Path, ort_method) -> None:
    """Delete a calibration cache that onnxruntime could not use, so that it is computed again:
    quantize_static reads a cache it finds and raises on a damaged one, on every later run."""
    from onnxruntime.quantization import load_tensors_data

    if not cache.exists():
        return
    try:
        ranges = load_tensors_data(cache)
        # What quantize_static takes from it: ranges of its method, and a low and high per tensor.
        if ranges.calibration_method != ort_method:
            raise ValueError(f"ranges by {ranges.calibration_method}, not {ort_method}")
        incomplete = [name for name, data in ranges.items() if not hasattr(data, "lowest") or not hasattr(data, "highest")]
        if not ranges.data or incomplete:
            raise ValueError(f"no range for {incomplete[0] if incomplete else 'any tensor'}")
    except Exception as exc:  # noqa: BLE001 - whatever the parse raises, the file is no calibration
        rebuilding(f"{cache}: not a readable calibration cache ({one_line(exc)})")
        cache.unlink(missing_ok=True)


def export_quantized(model, path: Path, *, batch, image_size: int, opset: int, calibration: Calibration,
                     flavour: str, cache_dir: Path | None) -> dict:
    """``model`` exported to fp32 ONNX (in a temporary folder) and quantized into ``path``."""
    from export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="resnet-perf-") as tmp:
        source = Path(tmp) / "fp32.onnx"
        export_onnx(model, source, batch=batch, image_size=image_size, precision="fp32", opset=opset)
        return quantize_onnx(source, path, calibration, flavour=flavour, cache_dir=cache_dir)


def _static_batch(path: Path) -> int | None:
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value or None


def add_arguments(parser) -> None:
    """The INT8 calibration flags, the same for python -m bench and python -m export."""
    from resnet_perf.util.cli import positive_int

    group = parser.add_argument_group("INT8 calibration (with --precision int8; --keep-fp with fp16 too)")
    group.add_argument("--calib-data", default=None, metavar="DIR",
                       help="calibrate on these images (or .npy arrays); default: the synthetic parity distribution")
    group.add_argument("--calib-method", choices=METHODS, default="minmax", help="how ranges become scales")
    group.add_argument("--calib-samples", type=positive_int, default=64, help="calibration inputs (default 64)")
    group.add_argument("--keep-fp", type=_layer_list, default=None, metavar="LAYER,...",
                       help="layers to leave in fp32 in int8 or fp16, by module name (conv1, layer1.0.conv2, fc)")


def in_model_order(layers: Iterable[str]) -> list[str]:
    """``layers`` (module names) in the order the model computes them, unknown names last: one set
    of layers then names one artifact, one cached file and one run setting, however it was typed."""
    import resnet_perf

    # The deepest ResNet's layers name every ResNet's, in model order.
    order = {name: i for i, name in enumerate(resnet_perf.layer_names("resnet152"))}
    return sorted(layers, key=lambda name: order.get(name, len(order)))


def _layer_list(text: str) -> list[str]:
    from resnet_perf.util.cli import list_of

    return in_model_order(list_of(str)(text))


@dataclass(frozen=True)
class CalibrationFlags:
    """The flags add_arguments adds, as given: each command builds this from its own namespace, so
    that what follows takes values rather than argparse's object."""

    data: str | None  # --calib-data
    method: str  # --calib-method
    samples: int  # --calib-samples
    keep_fp: tuple[str, ...]  # --keep-fp


# What each quantizer's calibration honours: onnxruntime's QDQ quantizer (this module) every method and
# --keep-fp; NNCF (export.openvino_ir) min-max ranges and an ignored scope; PT2E (export.pt2e)
# min-max observers on every layer.
HONOURS = {"qdq": (METHODS, True), "nncf": (("minmax",), True), "pt2e": (("minmax",), False)}


def check_quantizer(flags: CalibrationFlags, quantizer: str, who: str) -> None:
    """Refuse calibration flags ``quantizer`` would ignore; ``who`` names what uses it (a backend,
    a format) in the message. Raises UsageError."""
    from resnet_perf.util.cli import UsageError

    methods, keep_fp = HONOURS.get(quantizer, (METHODS, True))
    if flags.method not in methods:
        raise UsageError(f"--calib-method {flags.method}: {who} quantizes with {quantizer}, which calibrates "
                         f"{' or '.join(methods)} ranges only")
    if flags.keep_fp and not keep_fp:
        raise UsageError(f"--keep-fp: {who} quantizes with {quantizer}, which leaves no layer in fp32")


def check_arguments(flags: CalibrationFlags, models: list[str], image_size: int,
                    precisions: Collection[str]) -> Tensor | None:
    """Check the calibration flags against the run's precisions (--keep-fp applies to int8 and
    fp16, the others to int8); returns the inputs of --calib-data (None when calibration is
    synthetic or there is no int8). Raises UsageError on anything wrong."""
    import resnet_perf
    from resnet_perf.images import ImageFolderError, load_calibration
    from resnet_perf.util.cli import UsageError

    if flags.keep_fp and not {"int8", "fp16"} & set(precisions):
        raise UsageError("--keep-fp applies to --precision int8 or fp16")
    given = [flag for flag, value in (("--calib-data", flags.data), ("--calib-method", flags.method != "minmax"))
             if value]
    if "int8" not in precisions and given:
        raise UsageError(f"{given[0]} applies to --precision int8")
    for name in models:
        layers = resnet_perf.layer_names(name)
        for layer in flags.keep_fp:
            if layer not in layers:
                raise UsageError(f"--keep-fp {layer}: {name} has no such layer; its layers are {layers[0]}, "
                                 f"{layers[1]}, ..., {layers[-1]}")
    if flags.data is None or "int8" not in precisions:
        return None
    try:
        return load_calibration(flags.data, image_size, flags.samples)
    except ImageFolderError as exc:
        raise UsageError(str(exc)) from None


def calibration(flags: CalibrationFlags, inputs: Tensor | None, image_size: int, seed: int,
                num_classes: int) -> Calibration:
    """The run's Calibration: the --calib-data inputs, or a fresh draw of the synthetic parity
    distribution (never the parity inputs themselves, so int8 is not judged on what tuned it)."""
    from resnet_perf.synthetic import quantization_inputs

    if inputs is None:
        inputs = quantization_inputs(flags.samples, image_size, seed, num_classes)
        source = {"kind": "synthetic", "seed": seed, "samples": flags.samples}
    else:
        source = {"kind": "folder", "path": os.path.abspath(flags.data), "samples": len(inputs)}
    return Calibration(inputs, flags.method, flags.keep_fp, source)
