"""Which layers does INT8 hurt most? Per-layer quantization sensitivity, to choose what to keep in fp32.

Two views, per convolution and the classifier, named as the PyTorch model names them:
- onnxruntime's own per-tensor analysis (``onnxruntime.quantization.qdq_loss_debug``): the
  signal-to-quantization-noise ratio of each layer's weights, and of its output in the int8 model
  against the fp32 one (the error accumulated up to it);
- what that analysis lacks, the effect on the answers: each layer left in fp32 in turn (the
  exclusion run), with the parity figures of the whole model then, and how much of the int8 model's
  error that removes. The table is ranked by that gain; ``--keep-fp`` takes the top layers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import Tensor, nn

from export.onnx import INPUT_NAME, BatchRange, cpu_session, export_onnx
from export.quantize import Calibration, layer_names, quantize_onnx
from resnet_perf import parity


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


def analyse(model: nn.Module, calibration: Calibration, inputs: Tensor, reference: Tensor, *, image_size: int,
            batch: int = 8, cache_dir: Path | None = None) -> dict:
    """Per-layer sensitivity of ``model`` to INT8 with ``calibration``, judged on ``inputs`` against
    ``reference`` (the fp32 logits): the int8 model's parity figures, and per layer the figures with
    that layer kept in fp32, ranked by how much that helps."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="resnet-perf-sensitivity-") as tmp_name:
        tmp = Path(tmp_name)
        source = export_onnx(model, tmp / "fp32.onnx", batch=BatchRange.static(batch), image_size=image_size)
        layers = layer_names(source)
        graph = onnx.load(str(source), load_external_data=False).graph
        # A layer's quantized output is its ReLU's, where one follows (onnxruntime fuses the pair).
        relu_of = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Relu"}
        outputs = {node.name: relu_of.get(node.output[0], node.output[0]) for node in graph.node if node.name in layers}
        weights = {node.name: node.input[1] for node in graph.node if node.name in layers}

        def figures(keep_fp: tuple[str, ...]) -> dict:
            path = tmp / "int8.onnx"
            quantize_onnx(source, path, Calibration(calibration.inputs, calibration.method, keep_fp),
                          cache_dir=cache_dir or tmp / "calibration")
            return parity.compare(reference, parity.predict(cpu_session(path), inputs, batch), "int8")

        whole = figures(calibration.keep_fp)
        weight_sqnr, activation_sqnr = _sqnr(source, tmp / "int8.onnx", inputs, batch, tmp)
        table = []
        for node, layer in layers.items():
            if layer in calibration.keep_fp:
                continue
            without = figures((*calibration.keep_fp, layer))
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
