"""The layer profile of a torch.compile'd model: torch.profiler over its calls, each convolution
matched back to its module, and each of inductor's own kernels named after the module it computes
where its name says.

Inductor leaves no module scope in its graph, but it calls every convolution as an op of its own
(``mkldnn::_convolution_pointwise`` with the BatchNorm folded in and the ReLU, or the residual add
and ReLU in the in-place ``_convolution_pointwise_``; ``aten::convolution`` on CUDA), and the
shapes of its input and weight tell which convolution it is: the first module not matched yet, in
eager's order, whose weight and input have those shapes (within a block the 3x3, the 1x1 and the
shortcut differ; between blocks the order tells). Inductor may run a shortcut before the conv it
is added to, which the match follows.

Its generated kernels are named for the ops they fuse (``cpp_fused_addmm_mean_view_3``,
``triton_poi_fused_max_pool2d_with_indices_1``): a kernel whose ops only one module of the model
computes (ResNet's one max pool, one average pool, one fc) goes on that module's line, under all of
them where it fused several. On CPU those kernels are profiled only when inductor compiled them to
say so (``cpp.enable_kernel_profile``); on CUDA the profiler sees every kernel. A pointwise kernel
(the BatchNorm and ReLU it did not fold, a layout copy) could be any block's and is reported
unattributed under its own name, as is the graph's time outside every kernel and op.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType

from bench.layers.profile import LayerProfile, RuntimeLayer, torch_profiled

CONVOLUTIONS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::convolution")
# The fc as the library call inductor leaves it (its bias add may be fused into a kernel of its own).
LINEAR = ("mkl::_mkl_linear", "mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear")
GRAPH_CALL = "## Call CompiledFxGraph"
# An op in a kernel's name, and the kind of module that computes it.
KERNEL_OPS: dict[str, tuple[type[nn.Module], ...]] = {
    "max_pool2d": (nn.MaxPool2d,),
    "avg_pool2d": (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
    "mean": (nn.AdaptiveAvgPool2d,),
    "addmm": (nn.Linear,),
    "mm": (nn.Linear,),
}
_KERNEL = re.compile(r"(?:cpp|triton_[a-z]+)_fused_(.+?)(?:_\d+)?$")


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


def _unique(module: nn.Module, kind: type[nn.Module]) -> str | None:
    """The name of the model's one module of ``kind``; None where it has none or several."""
    names = [name for name, m in module.named_modules() if isinstance(m, kind)]
    return names[0] if len(names) == 1 else None


def kernel_modules(kernel: str, module: nn.Module) -> tuple[str, ...]:
    """The modules an inductor kernel computes, in the model's order, by the ops its name lists,
    where each op is one module's (the model holds one module of its kind); () where it says
    nothing of the kind."""
    found = _KERNEL.search(kernel)
    if found is None:
        return ()
    ops = f"_{found.group(1)}_"
    named = {_unique(module, kind) for op, kinds in KERNEL_OPS.items() if f"_{op}_" in ops for kind in kinds}
    return tuple(name for name, _ in module.named_modules() if name in named)


def profile_compiled(module: nn.Module, call: Callable[[], object], example: torch.Tensor, calls: int,
                     device: torch.device, trace: Path | None) -> LayerProfile:
    """``calls`` runs of ``call`` (``module`` compiled, on ``example``) under torch.profiler."""
    convs = conv_shapes(module, example)
    events, wall_ms = torch_profiled(call, calls, device, trace, record_shapes=True)
    cuda = device.type == "cuda"

    def spent(e) -> float:
        return e.device_time_total if cuda else e.cpu_time_total

    # The CPU side only: on CUDA a scope is also mirrored on the GPU's timeline under the same name.
    events = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.time_range.start)
    graphs = [e for e in events if e.name.startswith(GRAPH_CALL)]
    fc = _unique(module, nn.Linear)
    totals: dict[str, float] = {}
    kernels: dict[str, float] = {}  # inductor's kernels by name, us over every call
    unmatched_us = outside_us = 0.0
    for graph in graphs:
        inside = [e for e in events if e is not graph and graph.time_range.start <= e.time_range.start <= graph.time_range.end]
        ops = [e for e in inside if e.name in CONVOLUTIONS + LINEAR]
        ops = [e for e in ops if not any(o is not e and o.time_range.start <= e.time_range.start < o.time_range.end
                                         for o in ops)]  # aten::convolution's own children
        under_op = {id(e) for e in inside for o in ops if o.time_range.start <= e.time_range.start < o.time_range.end}
        pending = list(convs)
        for e in ops:
            if e.name in LINEAR:
                name = fc
            else:
                shapes = {tuple(s) for s in e.input_shapes}
                name = next((c for c in pending if c[1] in shapes and c[2] in shapes), (None,))[0]
                pending = [c for c in pending if c[0] != name]
            if name is None:
                unmatched_us += spent(e)
            else:
                totals[name] = totals.get(name, 0.0) + spent(e)
        graph_kernels_us = 0.0
        for e in (graph, *inside):
            if id(e) in under_op:
                continue
            # CPU: a C++ kernel compiled to be profiled is an event; CUDA: the kernels an event launched
            launched = [(k.name, k.duration) for k in e.kernels] if cuda else \
                [(e.name, e.cpu_time_total)] if _KERNEL.search(e.name) else []
            for name, us in launched:
                kernels[name] = kernels.get(name, 0.0) + us
                graph_kernels_us += us
        outside_us += spent(graph) - sum(spent(e) for e in ops) - graph_kernels_us
    per_call = 1e3 * calls  # us over every call, to ms per call
    order = [c[0] for c in convs] + [fc]
    layers = [RuntimeLayer(name, "convolution" if name != fc else "linear", us / per_call, name, (name,))
              for name, us in sorted(totals.items(), key=lambda kv: order.index(kv[0]))]
    for name, us in kernels.items():
        members = kernel_modules(name, module)
        layers.append(RuntimeLayer(name, "inductor kernel", us / per_call, members[0] if members else None, members))
    layers.append(RuntimeLayer("inductor graph, outside its kernels", "the compiled graph's own code",
                               outside_us / per_call, None))
    if unmatched_us:
        layers.append(RuntimeLayer("convolutions and fc matched to no module", "library op", unmatched_us / per_call, None))
    notes = ["a pointwise kernel of inductor's own could be any block's: unattributed, under its name"]
    if not kernels:
        notes.append("inductor's kernels were not profiled: they are in the graph's time outside its ops")
    return LayerProfile(source="torch.profiler, convolutions matched to modules by their shapes, inductor's "
                        "kernels by the ops they are named for", calls=calls, wall_ms=wall_ms, layers=layers,
                        trace=trace, notes=notes)
