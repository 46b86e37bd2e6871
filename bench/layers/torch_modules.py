"""The layer profile of a PyTorch module run eagerly: torch.profiler, with every module call in a
``record_function`` scope of its own (pushed by forward hooks), so each scope's time is that
module's. A leaf module's scope is its op (conv, BatchNorm, ReLU); a block's time outside its
children is its residual add (with the Python around it); a container's or the model's own time
(``flatten``, Python) is on no line and is reported as unattributed."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import record_function

from bench.layers.groups import Op, lines
from bench.layers.onnx_nodes import ANCHORS
from bench.layers.profile import LayerProfile, RuntimeLayer, torch_profiled

_BLOCKS = ("BasicBlock", "Bottleneck")


@contextlib.contextmanager
def _scoped(module: nn.Module):
    """Every module call of ``module`` in a record_function scope named ``path#n`` (its n-th call
    within one forward: a block's ReLU runs twice)."""
    names = {m: name for name, m in module.named_modules()}
    calls: Counter = Counter()
    open_scopes: list = []

    def enter(mod, args):
        if mod is module:
            calls.clear()
        scope = record_function(f"{names[mod] or type(mod).__name__}#{calls[mod]}")
        calls[mod] += 1
        scope.__enter__()
        open_scopes.append(scope)

    def leave(mod, args, output):
        open_scopes.pop().__exit__(None, None, None)

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()


Members = Callable[[str, dict[str, nn.Module]], tuple[Op, ...]]


def module_ops(path: str, by_name: dict[str, nn.Module]) -> tuple[Op, ...]:
    """What a module call's own time computes: a leaf's op, a block's residual add, or (a
    container, the model's own forward) nothing on a line."""
    module = by_name[path]
    if not any(module.children()):
        return (Op(path, isinstance(module, ANCHORS)),)
    return (Op(f"{path}.add", False),) if type(module).__name__ in _BLOCKS else ()


def profile_module(module: nn.Module, call: Callable[[], object], calls: int, device: torch.device,
                   trace: Path | None, ops: Members = module_ops, source: str = "") -> LayerProfile:
    """``calls`` runs of ``call`` (which runs ``module``) under torch.profiler; ``ops`` says what each
    module's own time computes, in the reference model's names."""
    with _scoped(module) as names:  # the warm call too: the hooks' first call stays out of the profile
        events, wall_ms = torch_profiled(call, calls, device, trace)
    by_name = {name or type(m).__name__: m for m, name in names.items()}
    scopes = _scopes(events, by_name, device)
    return LayerProfile(
        source=f"torch.profiler, one record_function scope per module call{source}",
        calls=calls, wall_ms=wall_ms,
        layers=_layers(scopes, by_name, calls, ops), trace=trace)


def _scopes(events, by_name: dict[str, nn.Module], device: torch.device) -> list[tuple[str, float, float, float]]:
    """Each module call's scope, in start order: (scope name, start us, the start of its last child
    scope us, its own time us), its own time being what its child modules' scopes do not cover. On CUDA a scope's
    time is the device time of the kernels it launched."""
    # The CPU side only: on CUDA each scope is mirrored on the GPU's timeline under the same name.
    ours = sorted((e for e in events if e.device_type == DeviceType.CPU and "#" in e.name
                   and e.name.rsplit("#", 1)[0] in by_name), key=lambda e: e.time_range.start)
    total = {id(e): (e.device_time_total if device.type == "cuda" else e.cpu_time_total) for e in ours}
    own = dict(total)
    last_child = {id(e): e.time_range.end for e in ours}  # the start of a scope's last child scope
    stack: list = []
    for e in ours:
        while stack and stack[-1].time_range.end <= e.time_range.start:
            stack.pop()
        if stack:
            own[id(stack[-1])] -= total[id(e)]
            last_child[id(stack[-1])] = e.time_range.start
        stack.append(e)
    return [(e.name, e.time_range.start, last_child[id(e)], own[id(e)]) for e in ours]


def _layers(scopes, by_name: dict[str, nn.Module], calls: int, ops: Members) -> list[RuntimeLayer]:
    """The scopes summed over the calls, each module call a layer on the line of what it computes."""
    totals: dict[str, float] = {}
    # Where a call's own work falls in the first call's order: a leaf's at its start; a block's
    # (its residual add) just before its last child, the ReLU after the add.
    when: dict[str, float] = {}
    for name, start, last_child, own_us in scopes:
        if name not in totals:
            totals[name] = 0.0
            when[name] = start if not any(by_name[name.rsplit("#", 1)[0]].children()) else last_child - 1e-3
        totals[name] += own_us
    computed = {name: ops(name.rsplit("#", 1)[0], by_name) for name in totals}
    ordered = sorted((name for name in totals if computed[name]), key=when.get)
    flat = [(name, op) for name in ordered for op in computed[name]]
    line: dict[str, str] = {}
    for (name, op), anchor in zip(flat, lines([op for _, op in flat]), strict=True):
        if op.anchor or name not in line:
            line[name] = anchor
    return [RuntimeLayer(name, type(by_name[name.rsplit("#", 1)[0]]).__name__, totals[name] / calls / 1e3,
                         line.get(name), tuple(op.member for op in computed[name]))
            for name in sorted(totals, key=when.get)]
