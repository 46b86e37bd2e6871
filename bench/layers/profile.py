"""One backend's layer profile: the runtime's own layers with their time per call, each mapped to
the model's line it computes, and the account of where the profiled calls' wall time went."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from bench import timing
from bench.layers.groups import label


def mean_wall_ms(call: Callable[[], object], calls: int, device: torch.device) -> float:
    """The mean wall time of ``calls`` calls, every one of them counted (the profiler sees them
    all); warm the call before the profiler starts, so that none is a first call."""
    measured = timing.measure(call, device, warmup=0, iters=calls - 1)
    return (measured.first_run_ms + sum(measured.samples_ms)) / calls


def torch_profiled(call: Callable[[], object], calls: int, device: torch.device, trace: Path | None,
                   record_shapes: bool = False) -> tuple[list, float]:
    """``call`` once to warm it, then ``calls`` times under torch.profiler (CUDA kernels too on a
    GPU), the Chrome trace written to ``trace`` where given: the profiler's events and the calls'
    mean wall time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    call()
    with torch.profiler.profile(activities=activities, record_shapes=record_shapes) as prof:
        wall_ms = mean_wall_ms(call, calls, device)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return prof.events(), wall_ms


@dataclass(frozen=True)
class RuntimeLayer:
    name: str  # the runtime's own name for the layer (an ONNX node, an OpenVINO layer, a module call)
    kind: str  # what ran: its op type, or the kernel the runtime chose (brgconv_avx512_amx)
    ms: float  # mean time per profiled call
    line: str | None  # the model line (its anchor, e.g. layer1.0.conv2) it computes; None: not mapped
    members: tuple[str, ...] = ()  # the modules it computes, where the runtime says


@dataclass
class LayerProfile:
    source: str  # the profiler, in words
    calls: int  # profiled calls, separate from the timed ones
    wall_ms: float  # mean wall time of a profiled call, measured around it (profiler included)
    layers: list[RuntimeLayer]
    trace: Path | None = None  # the runtime's raw trace, kept for Perfetto / chrome://tracing
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """For the row's ``profile.layers``: the lines with their ms and modules, the runtime's
        layers, and the time that is not on any line."""
        lines: dict[str, dict] = {}
        for layer in self.layers:
            if layer.line is not None:
                entry = lines.setdefault(layer.line, {"ms": 0.0, "members": [layer.line]})
                entry["ms"] += layer.ms
                entry["members"] += [m for m in layer.members if m not in entry["members"]]
        layer_ms = sum(layer.ms for layer in self.layers)
        attributed = sum(entry["ms"] for entry in lines.values())
        return {
            "source": self.source,
            "calls": self.calls,
            "wall_ms": self.wall_ms,
            "layer_ms": layer_ms,
            "attributed_ms": attributed,
            "unattributed_ms": layer_ms - attributed,
            # between the runtime's layers: its scheduling, the profiler itself, the call's own overhead
            "outside_layers_ms": self.wall_ms - layer_ms,
            "lines": {anchor: {"label": label(e["members"]), "ms": e["ms"], "members": e["members"]}
                      for anchor, e in lines.items()},
            "layers": [asdict(layer) | {"members": list(layer.members)} for layer in self.layers],
            "trace": None if self.trace is None else str(self.trace),
            "notes": self.notes,
        }
