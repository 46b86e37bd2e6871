"""``openvino``: the model compiled by OpenVINO's CPU plugin, the runtime an inference engineer
often ships ResNet on, on Intel and AMD servers alike: its ONNX export (the onnxruntime backend's
cached file, or --onnx), or OpenVINO IR (cached, or --ir).

What ran is read back, not assumed. OpenVINO picks its own inference precision (bf16 wherever the
CPU has AMX or AVX-512 bf16, silently), so every row pins it, then reads the compiled model's
precision and the precision each convolution runs in from its runtime graph, and fails the row if
they are not the row's own: an "fp32" row is f32 throughout, an int8 row runs its convolutions on
8-bit integers.

int8 runs what an OpenVINO user ships by default: the IR NNCF quantized (export.openvino_ir),
built from the cached fp32 ONNX on the row's calibration and cached beside it. ``--ov-int8 qdq``
runs the QDQ file the onnxruntime backend quantizes instead (the same cached file: uint8
activations, int8 weights per channel), and ``--ov-int8 nncf,qdq`` both, a row each, to hold the
two quantizers side by side on one runtime.

Requests in flight are OpenVINO's own, as benchmark_app keeps them: one stream is the LATENCY hint,
every core on one synchronous request; N streams compile the model under the THROUGHPUT hint with N
OpenVINO streams (each a share of the cores running its own request) and keep N infer requests
started asynchronously on them (RequestStreams: an AsyncInferQueue without its Python callback);
``auto`` takes the THROUGHPUT hint's own choice of streams and its OPTIMAL_NUMBER_OF_INFER_REQUESTS,
as benchmark_app does by default.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.artifacts import cached_ir, cached_onnx, export_path, ir_path
from bench.layers.numerics import added_outputs_how
from bench.layers.onnx_nodes import attribute, line_ends, node_lines, with_line_outputs
from bench.layers.profile import LayerProfile, RuntimeLayer
from bench.runners.base import RunContext, Runner
from bench.streams import Completion, Done, Streams
from export.manifest import load_manifest
from export.openvino_ir import weights_path
from resnet_perf.util.atomic import write_text
from resnet_perf.util.cli import UsageError, list_of

# OpenVINO's name for each precision a row may run in, as its runtime graph reports it.
RUNTIME_PRECISIONS = {"fp32": ("f32",), "bf16": ("bf16",), "int8": ("u8", "i8")}


QUANTIZERS = ("nncf", "qdq")  # the int8 models the openvino backend runs: NNCF's IR, onnxruntime's QDQ file
# The artifact kind, and its flag, that gives the openvino backend each quantizer's model.
GIVEN_BY = {"nncf": ("openvino", "--ir"), "qdq": ("onnx", "--onnx")}

# The flags that set OpenVINO's requests in flight before --streams set them for every backend.
RETIRED_FLAGS = {"ov_hint": "--ov-hint throughput is --streams auto (or --streams N); --streams 1 is the latency hint",
                 "ov_streams": "--ov-streams N is --streams N", "ov_requests": "--ov-requests N is --streams N"}


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES: "BF16" only where the CPU computes bf16 natively."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINORunner(Runner):
    name = "openvino"
    packages = {"openvino": ("openvino",), "nncf": ("nncf",)}
    artifacts = ("onnx", "openvino")

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--ov-int8", type=list_of(str), default=None, metavar="nncf,qdq",
                           help="openvino's int8 rows: the IR NNCF quantizes (nncf, the default), the QDQ file "
                                "onnxruntime quantizes (qdq), or both, a row each")
        for dest in RETIRED_FLAGS:  # refused with the new spelling, not taken as a second one
            group.add_argument(f"--{dest.replace('_', '-')}", dest=dest, default=None, help=argparse.SUPPRESS)

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> tuple[str, ...]:
        """The quantizers of the int8 rows: as --ov-int8 names them, else those of the files given
        (--ir: NNCF's; --onnx: the QDQ file), else NNCF's IR."""
        for dest, spelling in RETIRED_FLAGS.items():
            if flags[dest] is not None:
                raise UsageError(f"{spelling}: requests in flight are one flag for every backend now")
        given = [q for q, (kind, _) in GIVEN_BY.items() if kind in run.artifacts]
        if flags["ov_int8"] is None:
            return tuple(given) or ("nncf",)
        if "int8" not in run.precisions:
            raise UsageError("--ov-int8 applies to --precision int8")
        for name in flags["ov_int8"]:
            if name not in QUANTIZERS:
                raise UsageError(f"--ov-int8 {name!r}: choose from {', '.join(QUANTIZERS)}")
            if given and name not in given:
                raise UsageError(f"--ov-int8 {name}: this run gives the openvino backend its int8 model "
                                 f"({' and '.join(GIVEN_BY[q][1] for q in given)}), not a {name} one")
        return tuple(dict.fromkeys(flags["ov_int8"]))

    @classmethod
    def quantizers(cls, options: Any = None) -> tuple[str, ...]:
        return options or ("nncf",)

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

    def model_path(self) -> Path:
        """The file OpenVINO compiles: for int8 by NNCF the IR (--ir, or the cached one); otherwise
        the row's ONNX (--onnx, or the cached export; for bf16, which is OpenVINO's own lowering of
        the fp32 graph on the CPU's bf16 instructions, the fp32 one), or an fp32 --ir."""
        c = self.config
        if c.quantizer == "nncf" or ("openvino" in c.artifacts and c.precision != "int8"):
            return c.artifacts.get("openvino") or ir_path(c)
        return c.artifacts.get("onnx") or export_path(c, "int8" if c.precision == "int8" else "fp32")

    def onnx_path(self) -> Path:
        """The ONNX file the layer profile names layers by: the one run, or the fp32 export an IR
        was converted from (its layers carry the ONNX nodes' names)."""
        path = self.model_path()
        return path if path.suffix == ".onnx" else cached_onnx(self.model, self.config, "fp32")

    def build_impl(self) -> None:
        c = self.config
        path = self.model_path()
        if path.suffix == ".onnx":
            cached_onnx(self.model, c, "int8" if c.precision == "int8" else "fp32")
        elif path != c.artifacts.get("openvino"):  # a given --ir was checked when the run was resolved
            cached_ir(self.model, c)
        self.quantization = load_manifest(path).get("quantization") if c.precision == "int8" else None

    def _compile(self, profiling: bool = False, model: Any = None) -> Any:
        """The row's ONNX compiled for the CPU plugin with the row's settings; with ``profiling``,
        with its per-layer performance counters on (PERF_COUNT), which a timed model must not carry;
        ``model`` (an ov.Model) in place of the row's file."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        c = self.config
        settings = {
            props.inference_num_threads: c.threads,
            hints.performance_mode: hints.PerformanceMode.LATENCY if c.streams == 1 else hints.PerformanceMode.THROUGHPUT,
            # An int8 model's layers left unquantized run in f32, not in the bf16 OpenVINO (and benchmark_app)
            # would pick on a CPU with AMX: measured no faster there (docs/deployment.md).
            hints.inference_precision: ov.Type.bf16 if c.precision == "bf16" else ov.Type.f32,
            props.enable_profiling: profiling,
        }
        if isinstance(c.streams, int) and c.streams > 1:
            settings[props.num_streams] = c.streams
        core = ov.Core()
        return core.compile_model(model or core.read_model(str(self.model_path())), "CPU", settings)

    def prepare_impl(self) -> None:
        self.compiled = self._compile()
        self.runtime = self._what_ran()
        self.request = self.compiled.create_infer_request()
        self.bound_input: Tensor | None = None  # bound in the first timed call

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
        path = self.model_path()
        files = [path, weights_path(path)] if path.suffix == ".xml" else [path]
        return {"runtime": "openvino", "model_file": path.name,
                "model_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                "inference_precision": inference,
                "hint": compiled.get_property("PERFORMANCE_HINT"), "streams": compiled.get_property("NUM_STREAMS"),
                "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
                "convolutions": dict(convolutions), "kernels": dict(kernels),
                **({"int8_model": self._int8_model()} if precision == "int8" else {})}

    def _int8_model(self) -> str:
        q = self.quantization or {}
        return f"{q.get('quantizer', 'qdq')}: activations {q.get('activations')}, weights {q.get('weights')}"

    def own_streams(self) -> tuple[int, str] | None:
        if self.config.streams != "auto":
            return None
        return (self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
                "OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS under the THROUGHPUT hint")

    def streams_impl(self, n: int) -> Streams:
        return RequestStreams(self.compiled, n)

    def run_facts(self) -> dict | None:
        return self.runtime

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(torch.float32).contiguous()

    def run_impl(self, inputs: Tensor) -> Any:
        if inputs is not self.bound_input:
            bind_shared(self.request, inputs)
            self.bound_input = inputs
        self.request.infer()
        return self.request.get_output_tensor().data

    def to_logits_impl(self, outputs: Any) -> Tensor:
        return torch.from_numpy(outputs)

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """The CPU plugin's performance counters (PERF_COUNT) on a model compiled with them, one
        synchronous request: each executed layer of its runtime graph, the kernel it chose
        (``brgconv_avx512_1x1_I8``), and the ONNX nodes it fused (``originalLayersNames``)."""
        compiled = self._compile(profiling=True)
        request = compiled.create_infer_request()
        bind_shared(request, inputs)
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
                            notes=["one synchronous request"] if self.config.streams != 1 else [])

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        """Each line's end as an output of the row's model, compiled with the row's settings. An
        ONNX file gets them as graph outputs (bench.layers.onnx_nodes.with_line_outputs: in a QDQ
        file a new Dequantize reads each line as the next layer does). An IR, NNCF's included,
        keeps the ONNX tensor names, and gets them by ``ov.Model.add_outputs``, read after the
        FakeQuantize that quantizes each for the next layer. (A Result on the FakeQuantize that
        OpenVINO makes of a QDQ file's Quantize/Dequantize pair reads its integers, off by the
        scale: hence the two ways.)"""
        model, wanted, requantized = self._with_line_outputs()
        compiled = self._compile(model=model)
        results = compiled.create_infer_request().infer({0: inputs.numpy()})
        outputs = {line: torch.from_numpy(results[compiled.outputs[i]].copy()).float() for line, i in wanted.items()}
        return outputs, added_outputs_how(outputs, self.to_logits(self.run(inputs)), requantized)

    def _with_line_outputs(self) -> tuple[Any, dict[str, int], bool]:
        """The row's ov.Model with each line's end an output, the index of each line's output,
        and whether any line is read after requantization."""
        import openvino as ov

        path = self.model_path()
        if path.suffix == ".onnx":
            graph, names, requantized = with_line_outputs(path, self.model)
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "lines.onnx").write_bytes(graph)
                model = ov.Core().read_model(str(Path(folder) / "lines.onnx"))
            index = {name: i for i, output in enumerate(model.outputs) for name in output.get_names()}
            return model, {line: index[tensor] for line, tensor in names.items()}, requantized
        model = ov.Core().read_model(str(path))
        tensors = {name: output for op in model.get_ordered_ops() for output in op.outputs()
                   for name in output.get_names()}
        ends = line_ends(self.onnx_path(), self.model)
        missing = [tensor for tensor in ends.values() if tensor not in tensors]
        if missing:
            raise NotImplementedError(f"{path.name} has no tensor named {missing[0]!r} (a line's end in the ONNX "
                                      "file it was converted from): its lines cannot be found")
        read, requantized = {}, False
        for line, tensor in ends.items():
            output = tensors[tensor]
            fake = next((i.get_node() for i in output.get_target_inputs()
                         if i.get_node().get_type_name() == "FakeQuantize"), None)
            read[line] = output if fake is None else fake.output(0)
            requantized |= fake is not None
        # A tensor that already is an output (the logits) is not added twice: each line's index comes
        # from what add_outputs returns.
        added = model.add_outputs(list(read.values()))
        return model, {line: model.outputs.index(output) for line, output in zip(read, added)}, requantized

    def close_impl(self) -> None:
        del self.request, self.compiled
        self.bound_input = None


def bind_shared(request: Any, inputs: Tensor) -> None:
    """Point ``request`` at ``inputs``' own memory: the request reads the caller's tensor in place,
    with no copy inside a timed call."""
    import openvino as ov

    request.set_input_tensor(ov.Tensor(inputs.numpy(), shared_memory=True))


class RequestStreams(Streams):
    """OpenVINO's own requests in flight: ``n`` infer requests on a model compiled for its streams,
    each started with ``start_async`` and waited on by a watcher thread of its own (``wait``
    releases the GIL). This is what an AsyncInferQueue of ``n`` does, without its Python callback:
    that callback runs on OpenVINO's executor threads, and destroying the compiled model while one
    of them waits for the GIL hangs the process (seen here with OpenVINO 2026.4.1 in the compiled
    model's destructor, joining its stream executor; openvino PR 37073 and ultralytics issue 25923
    report the same). Here no Python runs on OpenVINO's threads."""

    def __init__(self, compiled: Any, n: int):
        self.count = n
        self.how = f"{n} infer requests on {compiled.get_property('NUM_STREAMS')} OpenVINO stream(s), started async"
        self.requests = [compiled.create_infer_request() for _ in range(n)]
        self.bound: list[Tensor | None] = [None] * n
        self.pending = [queue.SimpleQueue() for _ in range(n)]
        self.watchers = [threading.Thread(target=self._watch, args=(request, pending), daemon=True,
                                          name=f"resnet-perf-openvino-{i}")
                         for i, (request, pending) in enumerate(zip(self.requests, self.pending))]
        for watcher in self.watchers:
            watcher.start()

    def submit(self, slot: int, inputs: Tensor, done: Done) -> None:
        request = self.requests[slot]
        try:
            if inputs is not self.bound[slot]:
                bind_shared(request, inputs)
                self.bound[slot] = inputs
            start = time.perf_counter()
            request.start_async()
        except Exception as exc:  # noqa: BLE001 - a request that did not start is a failed one
            done(exc)
            return
        self.pending[slot].put((start, done))

    @staticmethod
    def _watch(request: Any, pending: queue.SimpleQueue) -> None:
        while (job := pending.get()) is not None:
            start, done = job
            try:
                request.wait()
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who stops the run
                done(exc)
                continue
            end = time.perf_counter()
            done(Completion((end - start) * 1e3, end))

    def close(self) -> None:
        for pending in self.pending:
            pending.put(None)
        for watcher in self.watchers:
            watcher.join()
        del self.requests
