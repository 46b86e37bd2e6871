"""``openvino``: the model's ONNX export (the onnxruntime backend's cached file, or --onnx) compiled
by OpenVINO's CPU plugin: the runtime an inference engineer often ships ResNet on, on Intel and AMD
servers alike.

What ran is read back, not assumed. OpenVINO picks its own inference precision (bf16 wherever the
CPU has AMX or AVX-512 bf16, silently), so every row pins it, then reads the compiled model's
precision and the precision each convolution runs in from its runtime graph, and fails the row if
they are not the row's own: an "fp32" row is f32 throughout, an int8 row runs its convolutions on
8-bit integers.

int8 runs the QDQ model the onnxruntime backend quantizes (the same cached file): uint8 activations,
int8 weights per channel. OpenVINO runs QDQ models as int8. uint8 activations are the operand x86's
int8 instructions (VPMADDUBSW, VNNI's VPDPBUSD, AMX's TDPBUSD) multiply natively; measured on an
AVX2-only AMD EPYC (2026-12-02), the symmetric int8 flavour was slower and failed parity (cosine
0.966 on resnet18 at 64 px, where the uint8 model, with the 7-bit weights onnxruntime needs on
that CPU, reached 0.993).

``--ov-hint latency`` (the default) times one synchronous request per call, as every other backend
is timed. ``--ov-hint throughput`` is benchmark_app's throughput mode: OpenVINO's streams (each a
share of the cores running its own request), fed by an AsyncInferQueue; each timed call starts one
request per slot and waits for all of them, so the row's throughput counts every image of the
wave and its latency is the wave's.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.layers.onnx_nodes import attribute, node_lines
from bench.layers.profile import LayerProfile, RuntimeLayer
from bench.runners.base import RunContext, Runner
from bench.runners.onnxruntime import cached_onnx, export_path
from resnet_perf.atomic import write_text
from resnet_perf.cli import UsageError

# OpenVINO's name for each precision a row may run in, as its runtime graph reports it.
RUNTIME_PRECISIONS = {"fp32": ("f32",), "bf16": ("bf16",), "int8": ("u8", "i8")}


@dataclass(frozen=True)
class OpenVINOOptions:
    hint: str = "latency"  # latency | throughput: OpenVINO's PERFORMANCE_HINT
    streams: int | None = None  # --ov-streams: throughput's streams (default: the hint's choice)
    requests: int | None = None  # --ov-requests: requests in flight (default: the compiled model's optimum)


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES: "BF16" only where the CPU computes bf16 natively."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINORunner(Runner):
    name = "openvino"
    artifact = "onnx"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--ov-hint", choices=("latency", "throughput"), default="latency",
                           help="latency: one request at a time (default); throughput: streams and requests "
                                "in flight, as benchmark_app -hint throughput")
        group.add_argument("--ov-streams", type=int, default=None, metavar="N",
                           help="with --ov-hint throughput: OpenVINO streams (default: the hint's choice)")
        group.add_argument("--ov-requests", type=int, default=None, metavar="N",
                           help="with --ov-hint throughput: requests in flight per timed call (default: "
                                "the compiled model's optimal number)")

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> OpenVINOOptions:
        options = OpenVINOOptions(flags["ov_hint"], flags["ov_streams"], flags["ov_requests"])
        for flag, value in (("--ov-streams", options.streams), ("--ov-requests", options.requests)):
            if value is None:
                continue
            if options.hint != "throughput":
                raise UsageError(f"{flag} sets OpenVINO's throughput mode: add --ov-hint throughput")
            if not 1 <= value <= 1024:
                raise UsageError(f"{flag} {value}: give 1 to 1024")
        if options.hint == "throughput" and run.scenario != "offline":
            raise UsageError(f"--ov-hint throughput runs waves of requests in the offline loop; --scenario "
                             f"{run.scenario} issues its own queries (leave the hint at latency)")
        return options

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        if device.type != "cpu":
            return "runs on OpenVINO's CPU plugin: use --device cpu"
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        return ("fp32", "bf16", "int8") if "BF16" in cpu_capabilities() else ("fp32", "int8")

    @classmethod
    def why_unsupported(cls, precision: str, device: torch.device, options: Any = None) -> str | None:
        if precision == "bf16":
            computes = [c for c in cpu_capabilities() if c in ("FP32", "FP16", "BF16", "INT8")]
            return (f"this CPU has no native bf16 (OpenVINO's CPU plugin computes {', '.join(computes)} here), "
                    "and asked for bf16 it would compile f32 instead")
        return None

    @property
    def options(self) -> OpenVINOOptions:
        return self.config.options or OpenVINOOptions()

    def onnx_path(self) -> Path:
        """The file OpenVINO compiles: the row's ONNX, or for bf16, which is OpenVINO's own lowering
        of the fp32 graph on the CPU's bf16 instructions, the fp32 one."""
        c = self.config
        return c.artifacts.get("onnx") or export_path(c, "int8" if c.precision == "int8" else "fp32")

    def build_impl(self) -> None:
        cached_onnx(self.model, self.config, "int8" if self.config.precision == "int8" else "fp32")

    def _compile(self, profiling: bool = False) -> Any:
        """The row's ONNX compiled for the CPU plugin with the row's settings; with ``profiling``,
        with its per-layer performance counters on (PERF_COUNT), which a timed model must not carry."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        c = self.config
        throughput = self.options.hint == "throughput"
        settings = {
            props.inference_num_threads: c.threads,
            hints.performance_mode: hints.PerformanceMode.THROUGHPUT if throughput else hints.PerformanceMode.LATENCY,
            # An int8 model's layers left unquantized run in f32, not in the bf16 OpenVINO would pick.
            hints.inference_precision: ov.Type.bf16 if c.precision == "bf16" else ov.Type.f32,
            props.enable_profiling: profiling,
        }
        if self.options.streams is not None:
            settings[props.num_streams] = self.options.streams
        core = ov.Core()
        return core.compile_model(core.read_model(str(self.onnx_path())), "CPU", settings)

    def prepare_impl(self) -> None:
        import openvino as ov

        throughput = self.options.hint == "throughput"
        self.compiled = self._compile()
        self.runtime = self._what_ran()

        count = (self.options.requests or self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if throughput else 1
        self.queue = ov.AsyncInferQueue(self.compiled, count)
        self.runtime["requests"] = count
        self.shared_tensor = ov.Tensor  # wraps the caller's memory: bound in the first timed call, not copied
        self.bound_input: Tensor | None = None

    def _what_ran(self) -> dict:
        """The compiled model's own account of what runs: its precision, streams and threads, and the
        precision and kernel of every convolution in its runtime graph. Raises where it is not the
        row's precision."""
        compiled, precision = self.compiled, self.config.precision
        convolutions, kernels = Counter(), Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) == "Convolution":
                convolutions[info["runtimePrecision"].astype(str)] += 1
                kernels[info["primitiveType"].astype(str)] += 1
        inference = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        wanted = "bf16" if precision == "bf16" else "f32"
        if inference != wanted:
            raise RuntimeError(f"OpenVINO compiled the model for {inference}, not the {wanted} asked for")
        strays = {p: n for p, n in convolutions.items() if p not in RUNTIME_PRECISIONS[precision]}
        if strays or not convolutions:
            raise RuntimeError(f"OpenVINO runs the convolutions in {dict(convolutions)}, not in {precision} alone")
        return {"runtime": "openvino", "inference_precision": inference,
                "hint": compiled.get_property("PERFORMANCE_HINT"), "streams": compiled.get_property("NUM_STREAMS"),
                "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
                "convolutions": dict(convolutions), "kernels": dict(kernels),
                **({"int8_model": "uint8 activations, int8 weights per channel (QDQ)"} if precision == "int8" else {})}

    @property
    def images_per_call(self) -> int:
        return self.config.batch_size * len(self.queue)

    @property
    def timing_note(self) -> str | None:
        r = self.runtime
        notes = ["uint8 QDQ model"] if self.config.precision == "int8" else []
        if self.options.hint == "throughput":
            notes.append(f"{r['requests']} requests on {r['streams']} streams per call; latency is the wave's")
        return "; ".join(notes) or None

    def run_facts(self) -> dict | None:
        return self.runtime

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(torch.float32).contiguous()

    def run_impl(self, inputs: Tensor) -> Any:
        if inputs is not self.bound_input:
            # Every request reads the caller's tensor in place: no copy inside the timed call.
            shared = self.shared_tensor(inputs.numpy(), shared_memory=True)
            for index in range(len(self.queue)):
                self.queue[index].set_input_tensor(shared)
            self.bound_input = inputs
        for _ in range(len(self.queue)):
            self.queue.start_async()
        self.queue.wait_all()
        return self.queue[0].get_output_tensor().data

    def to_logits_impl(self, outputs: Any) -> Tensor:
        return torch.from_numpy(outputs)

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """The CPU plugin's performance counters (PERF_COUNT) on a model compiled with them, one
        synchronous request: each executed layer of its runtime graph, the kernel it chose
        (``brgconv_avx512_1x1_I8``), and the ONNX nodes it fused (``originalLayersNames``)."""
        compiled = self._compile(profiling=True)
        request = compiled.create_infer_request()
        request.set_input_tensor(self.shared_tensor(inputs.numpy(), shared_memory=True))
        request.infer()
        wall_s, counted = 0.0, {}
        for _ in range(calls):
            start = time.perf_counter()
            request.infer()
            wall_s += time.perf_counter() - start
            for info in request.get_profiling_info():  # the last call's counters: read after each
                if info.status == info.Status.EXECUTED:
                    seconds, _ = counted.get(info.node_name, (0.0, info.exec_type))
                    counted[info.node_name] = seconds + info.real_time.total_seconds(), info.exec_type
        fused = {op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str)
                 for op in compiled.get_runtime_model().get_ordered_ops()}
        # Its layers are named after the ONNX nodes, some with a suffix (node_Conv_291/WithoutBiases).
        claimed = {name: [n.split("/")[0] for n in fused.get(name, "").split(",") if n] for name in counted}
        mapped = attribute(claimed, node_lines(self.onnx_path(), self.model))
        layers = [RuntimeLayer(name, kind, seconds / calls * 1e3, *mapped[name]) for name, (seconds, kind) in counted.items()]
        if trace is not None:
            write_text(trace, json.dumps([{"layer": layer.name, "exec_type": layer.kind, "ms_per_call": layer.ms,
                                           "original_layers": fused.get(layer.name, "")} for layer in layers], indent=1))
        return LayerProfile(source="OpenVINO PERF_COUNT, per layer of the CPU plugin's runtime graph", calls=calls,
                            wall_ms=wall_s / calls * 1e3, layers=layers, trace=trace,
                            notes=["one synchronous request"] if self.options.hint == "throughput" else [])

    def close_impl(self) -> None:
        del self.queue, self.compiled
        self.bound_input = None
