"""``--parity layers``: where a row's numbers part from the fp32 model's, line by line.

Every line of the model (bench.layers.groups: a convolution, pooling or fc with the ops that join
it) ends in one tensor: the stem's ReLU output, a block's output after its residual add and ReLU,
the logits. Each backend computes its own value of it; each is compared with the fp32 eager
model's on the same inputs, in model order, so the first line whose figures fall outside the row's
precision tolerance is where its error enters. A backend that fuses a line into one kernel (the
fused Triton model's conv + BatchNorm + add + ReLU) has the line's end and nothing inside it, which
is all a line needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from bench.layers.groups import Op, lines
from bench.layers.onnx_nodes import ANCHORS
from resnet_perf.fused import FusedConv
from resnet_perf.parity import TOLERANCES


@dataclass(frozen=True)
class LineParity:
    line: str  # the line's anchor module (``layer3.1.conv2``)
    cosine: float  # the worst sample's, on values centred per sample
    rel_l2: float
    finite: bool  # no NaN or Inf in the backend's tensor


def _line_member(path: str, module: nn.Module) -> str:
    """The reference model's name for what a module computes: a fused shortcut (``layer2.0.downsample``)
    computes the reference's ``layer2.0.downsample.0`` conv and its BatchNorm."""
    return f"{path}.0" if isinstance(module, FusedConv) and path.endswith("downsample") else path


def torch_line_outputs(module: nn.Module, call: Callable[[], object]) -> dict[str, Tensor]:
    """Each line's last tensor when ``call`` runs ``module`` (the reference ResNet, or the fused
    one): forward hooks on every leaf module collect its outputs in call order, each on the line
    of its op, and a line keeps the last, as fp32 on the CPU."""
    recorded: list[tuple[Op, Tensor]] = []

    def hook(name: str):
        def record(mod, args, output) -> None:
            anchor = isinstance(mod, (*ANCHORS, FusedConv))
            recorded.append((Op(_line_member(name, mod), anchor), output.detach()))
        return record

    leaves = [(name, m) for name, m in module.named_modules() if name and not any(m.children())]
    handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    try:
        with torch.inference_mode():
            call()
    finally:
        for handle in handles:
            handle.remove()
    ends: dict[str, Tensor] = {}
    for line, (_, output) in zip(lines([op for op, _ in recorded]), recorded, strict=True):
        ends[line] = output
    return {line: tensor.float().cpu() for line, tensor in ends.items()}


def added_outputs_how(outputs: dict[str, Tensor], logits: Tensor, requantized: bool) -> str:
    """How lines taken as added outputs of a runtime's graph (with_line_outputs) were read, and
    whether adding them changed what it computes: an output inside a group the runtime fuses could,
    and the logits, unchanged or not against the row's own, say whether it did."""
    how = "each line's end added as an output of the row's model"
    if requantized:
        how += "; where the graph quantizes it, as the next layer reads it (requantized)"
    moved = (outputs["fc"] - logits.float().cpu()).abs().max().item()
    if moved > 0:
        # Seen on OpenVINO's CPU plugin: a convolution normally ends in its residual add and
        # requantization (post-ops); with that tensor an output they run apart and round otherwise.
        how += f"; with them the logits moved by up to {moved:.1e} (an output split a fused group)"
    return how


def compare_line(line: str, reference: Tensor, candidate: Tensor) -> LineParity:
    """A line's tensors (N x ...) compared as parity compares logits: per sample, centred."""
    ref = reference.double().flatten(1)
    out = candidate.double().flatten(1)
    finite = bool(torch.isfinite(out).all())
    ref_c, out_c = ref - ref.mean(dim=1, keepdim=True), out - out.mean(dim=1, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(ref_c, out_c, dim=1).min().item() if finite else math.nan
    rel_l2 = ((out_c - ref_c).norm() / ref_c.norm().clamp_min(1e-30)).item() if finite else math.nan
    return LineParity(line, cosine, rel_l2, finite)


def compare_lines(reference: dict[str, Tensor], candidate: dict[str, Tensor]) -> list[LineParity]:
    """Every line of the reference, in its order, that the candidate computed too."""
    missing = [line for line in reference if line not in candidate]
    if missing:
        raise ValueError(f"the backend's layers give no output for {len(missing)} line(s), first {missing[0]}")
    return [compare_line(line, reference[line], candidate[line][: len(reference[line])]) for line in reference]


def first_outside(figures: list[LineParity], precision: str) -> LineParity | None:
    """The first line whose figures fall outside ``precision``'s parity tolerance (or are not finite)."""
    tol = TOLERANCES[precision]
    return next((f for f in figures if not f.finite or f.cosine < tol.min_cosine or f.rel_l2 > tol.max_rel_l2), None)


def to_json(figures: list[LineParity], how: str) -> dict:
    return {"how": how, "lines": [asdict(f) for f in figures]}
