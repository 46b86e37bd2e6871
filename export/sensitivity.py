"""Which layers does INT8 hurt most? Per-layer quantization sensitivity, to choose what to keep in fp32.

Two views, per convolution and the classifier, named as the PyTorch model names them:
- onnxruntime's own per-tensor analysis (``onnxruntime.quantization.qdq_loss_debug``): the
  signal-to-quantization-noise ratio of each layer's weights, and of its output in the int8 model
  against the fp32 one (the error accumulated up to it);
- what that analysis lacks, the effect on the answers: each layer left in fp32 in turn (the
  exclusion run), with the parity figures of the whole model then, and how much of the int8 model's
  error that removes. The table is ranked by that gain; ``--keep-fp`` takes the top layers.

For an int8 or fp16 row that fails parity, one more answer, from its lines (``--parity layers``):
the fewest layers to keep in fp32 for it to pass, found by bisection from the first line outside
tolerance.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from export.onnx import INPUT_NAME, BatchRange, cpu_session, export_onnx
from export.quantize import Calibration, in_model_order, layer_names, quantize_onnx
from resnet_perf import parity
from resnet_perf.build import layers_of
from resnet_perf.mixed import keep_fp32


def _sqnr(source: Path, quantized: Path, inputs: Tensor, batch: int, tmp: Path) -> tuple[dict, dict]:
    """onnxruntime's per-tensor SQNR (dB): {weight name: dB} and {activation name: {"qdq_err", "xmodel_err"}}."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import qdq_loss_debug as debug

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(inputs.split(batch))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None or len(x) != batch else {INPUT_NAME: x.numpy()}

    activations = {}
    for name, path in (("float", source), ("qdq", quantized)):
        augmented = tmp / f"{name}-augmented.onnx"
        debug.modify_model_output_intermediate_tensors(str(path), str(augmented))
        activations[name] = debug.collect_activations(str(augmented), Reader(), execution_providers=["CPUExecutionProvider"])
    matched = debug.create_activation_matching(activations["qdq"], activations["float"])
    return (debug.compute_weight_error(debug.create_weight_matching(str(source), str(quantized))),
            debug.compute_activation_error(matched))


FIGURES = ("rel_l2", "cosine", "top1_agreement", "top5_agreement")


class Requantized:
    """One fp32 export of the model (in ``tmp``), quantized again with a given set of layers kept
    in fp32 and judged on ``inputs`` against ``reference`` (the fp32 logits) in onnxruntime's CPU
    session. The ranking and the bisection below share one."""

    precision, judged_on = "int8", "onnxruntime's CPU session"

    def __init__(self, model: nn.Module, calibration: Calibration, inputs: Tensor, reference: Tensor, tmp: Path, *,
                 image_size: int, batch: int, cache_dir: Path | None):
        self.calibration, self.inputs, self.reference, self.batch, self.tmp = calibration, inputs, reference, batch, tmp
        self.cache_dir = cache_dir or tmp / "calibration"
        self.source = export_onnx(model, tmp / "fp32.onnx", batch=BatchRange.static(batch), image_size=image_size)
        self.layers = layer_names(self.source)  # {ONNX node: the PyTorch module it computes}
        self.modules, self.keep_fp = list(self.layers.values()), calibration.keep_fp
        self.path = tmp / "int8.onnx"

    def figures(self, keep_fp: tuple[str, ...]) -> dict:
        """The parity figures with ``keep_fp`` (besides the calibration's own) left in fp32."""
        keep = tuple(dict.fromkeys((*self.keep_fp, *keep_fp)))
        quantize_onnx(self.source, self.path, Calibration(self.calibration.inputs, self.calibration.method, keep),
                      cache_dir=self.cache_dir)
        return parity.compare(self.reference, parity.predict(cpu_session(self.path), self.inputs, self.batch), "int8")


@contextlib.contextmanager
def requantized(model: nn.Module, calibration: Calibration, inputs: Tensor, reference: Tensor, *, image_size: int,
                batch: int = 8, cache_dir: Path | None = None) -> Iterator[Requantized]:
    """A Requantized of ``model`` with ``calibration``, in a temporary folder removed after."""
    with tempfile.TemporaryDirectory(prefix="resnet-perf-sensitivity-") as tmp:
        yield Requantized(model, calibration, inputs, reference, Path(tmp), image_size=image_size, batch=batch,
                          cache_dir=cache_dir)


class Halved:
    """The model in fp16 on ``device`` with a given set of layers (besides ``keep_fp``) kept in fp32
    (resnet_perf.mixed, as an fp16 export or eager row keeps them), judged on ``inputs`` against
    ``reference``. PyTorch's fp16 convolutions (cuDNN's on a GPU) store every tensor in fp16, so
    they overflow and round as an fp16 runtime does; onnxruntime's CPU provider, lacking fp16
    kernels, runs a chain of fp16 nodes in fp32 between the casts it inserts, and would judge an
    fp16 model by its weights' rounding alone."""

    precision = "fp16"

    def __init__(self, model: nn.Module, inputs: Tensor, reference: Tensor, *, device: torch.device, batch: int,
                 keep_fp: tuple[str, ...] = ()):
        self.model, self.inputs, self.reference, self.device, self.batch = model, inputs, reference, device, batch
        self.modules = layers_of(model)
        self.keep_fp, self.judged_on = keep_fp, f"PyTorch's fp16 on {device}"

    def figures(self, keep_fp: tuple[str, ...]) -> dict:
        """The parity figures with ``keep_fp`` (besides those kept from the start) left in fp32."""
        module = keep_fp32(self.model, (*self.keep_fp, *keep_fp), torch.float16).eval().to(self.device)

        def run(x: Tensor) -> Tensor:
            with torch.inference_mode():
                return module(x.to(self.device, torch.float16)).float().cpu()

        return parity.compare(self.reference, parity.predict(run, self.inputs, self.batch), "fp16")


def analyse(quantized: Requantized) -> dict:
    """Per-layer sensitivity of the model to INT8: the int8 model's parity figures, and per layer
    the figures with that layer kept in fp32, ranked by how much that helps."""
    import onnx

    layers, keep_fp = quantized.layers, quantized.keep_fp
    graph = onnx.load(str(quantized.source), load_external_data=False).graph
    # A layer's quantized output is its ReLU's, where one follows (onnxruntime fuses the pair).
    relu_of = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Relu"}
    outputs = {node.name: relu_of.get(node.output[0], node.output[0]) for node in graph.node if node.name in layers}
    weights = {node.name: node.input[1] for node in graph.node if node.name in layers}

    whole = quantized.figures(())
    weight_sqnr, activation_sqnr = _sqnr(quantized.source, quantized.path, quantized.inputs, quantized.batch,
                                         quantized.tmp)
    table = []
    for node, layer in layers.items():
        if layer in keep_fp:
            continue
        without = quantized.figures((layer,))
        errors = activation_sqnr.get(outputs[node], {})
        table.append({
            "layer": layer,
            "weight_sqnr_db": weight_sqnr.get(weights[node]),
            # The int8 model's output of this layer against the fp32 model's: the error up to here.
            # (onnxruntime's other figure, qdq_err, compares a tensor before and after its own
            # Q/DQ, which is meaningless where the ReLU was folded into the uint8 range.)
            "output_vs_fp32_sqnr_db": errors.get("xmodel_err"),
            "kept_fp32": {k: without[k] for k in FIGURES},
            "rel_l2_gain": whole["rel_l2"] - without["rel_l2"],
        })
    table.sort(key=lambda row: row["rel_l2_gain"], reverse=True)
    return {"int8": {k: whole[k] for k in FIGURES}, "layers": table}


def keep_fp_from_lines(judge: Requantized | Halved, lines: list[str]) -> dict:
    """For an int8 or fp16 model that fails parity: the fewest layers to keep in fp32 for it to
    pass, taken in model order from ``lines`` (the row's lines from where its error shows on).
    Keeping the first ``n`` of them is bisected on ``n``, assuming that keeping more never hurts
    (as Polygraphy's ``debug precision`` bisects TensorRT's layers): about log2 of their number in
    builds of the model. Lines that are no layer --keep-fp keeps (the pools) are passed over."""
    layers, keep_fp = set(judge.modules), judge.keep_fp
    candidates = [line for line in lines if line in layers and line not in keep_fp]
    tried: list[dict] = []

    def passes(n: int) -> bool:
        figures = judge.figures(tuple(candidates[:n]))
        tried.append({"kept": n, "passed": figures["passed"], **{k: figures[k] for k in FIGURES}})
        return figures["passed"]

    found = {"precision": judge.precision, "judged_on": judge.judged_on, "from_line": lines[0] if lines else None,
             "candidates": len(candidates), "tried": tried}
    if not candidates or not passes(len(candidates)):
        return {**found, "keep_fp": None,
                "why": f"keeping every {judge.precision} layer from that line on in fp32 does not pass: the error "
                       "enters before it, or outside the layers --keep-fp can keep"}
    low, high = 0, len(candidates)  # the smallest n that passes lies in [low, high]; ``high`` does
    while low < high:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle + 1
    figures = next(t for t in reversed(tried) if t["kept"] == low)
    if low == 0:
        return {**found, "keep_fp": None, "figures": figures,
                "why": f"{judge.judged_on} passes with no layer kept: the row's failure is its own runtime's"}
    return {**found, "keep_fp": in_model_order([*keep_fp, *candidates[:low]]), "figures": figures}
