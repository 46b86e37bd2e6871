"""The layer profile of a torch.compile'd model: torch.profiler over its calls, each convolution
matched back to its module.

Inductor leaves no module scope in its graph, but it calls every convolution as an op of its own
(``mkldnn::_convolution_pointwise`` with the BatchNorm folded in and the ReLU, or the residual add
and ReLU in the in-place ``_convolution_pointwise_``; ``aten::convolution`` on CUDA), and the
shapes of its input and weight tell which convolution it is: the first module not matched yet, in
eager's order, whose weight and input have those shapes (within a block the 3x3, the 1x1 and the
shortcut differ; between blocks the order tells). Inductor may run a shortcut before the conv it
is added to, which the match follows. Its own generated kernels (pooling, the pointwise ops it did
not fold into a convolution, the fc it fused with the pool) run inside the compiled graph's call
and are reported unattributed, as one "inductor kernels" layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.layers.profile import LayerProfile, RuntimeLayer, torch_profiled

CONVOLUTIONS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::convolution")
GRAPH_CALL = "## Call CompiledFxGraph"


def conv_shapes(module: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple, tuple]]:
    """Each convolution of ``module`` in the order eager runs them: (name, weight shape, input shape)."""
    names = {m: name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    seen: list[tuple[str, tuple, tuple]] = []
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append(
        (names[m], tuple(m.weight.shape), tuple(args[0].shape)))) for m in names]
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def profile_compiled(module: nn.Module, call: Callable[[], object], example: torch.Tensor, calls: int,
                     device: torch.device, trace: Path | None) -> LayerProfile:
    """``calls`` runs of ``call`` (``module`` compiled, on ``example``) under torch.profiler."""
    convs = conv_shapes(module, example)
    events, wall_ms = torch_profiled(call, calls, device, trace, record_shapes=True)
    cuda = device.type == "cuda"

    def spent(e) -> float:
        return e.device_time_total if cuda else e.cpu_time_total

    events = sorted(events, key=lambda e: e.time_range.start)
    graphs = [e for e in events if e.name.startswith(GRAPH_CALL)]
    totals: dict[str, float] = {}
    unmatched_us = inductor_us = 0.0
    for graph in graphs:
        inside = [e for e in events if e.name in CONVOLUTIONS
                  and graph.time_range.start <= e.time_range.start <= graph.time_range.end]
        inside = [e for e in inside if not any(o is not e and o.name in CONVOLUTIONS and
                                               o.time_range.start <= e.time_range.start < o.time_range.end
                                               for o in inside)]  # aten::convolution's own children
        pending = list(convs)
        for e in inside:
            shapes = {tuple(s) for s in e.input_shapes}
            match = next((c for c in pending if c[1] in shapes and c[2] in shapes), None)
            if match is None:
                unmatched_us += spent(e)
                continue
            pending.remove(match)
            totals[match[0]] = totals.get(match[0], 0.0) + spent(e)
        inductor_us += spent(graph) - sum(spent(e) for e in inside)
    per_call = 1e3 * calls  # us over every call, to ms per call
    layers = [RuntimeLayer(name, "convolution", us / per_call, name, (name,)) for name, us in
              sorted(totals.items(), key=lambda kv: [c[0] for c in convs].index(kv[0]))]
    layers.append(RuntimeLayer("inductor kernels", "pooling, unfolded pointwise ops, fc", inductor_us / per_call, None))
    if unmatched_us:
        layers.append(RuntimeLayer("convolutions of no module's shape", "convolution", unmatched_us / per_call, None))
    return LayerProfile(source="torch.profiler, convolutions matched to modules by their shapes", calls=calls,
                        wall_ms=wall_ms, layers=layers, trace=trace,
                        notes=["inductor's own kernels are one unattributed layer"])
