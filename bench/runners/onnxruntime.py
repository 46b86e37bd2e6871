"""``onnxruntime``: the model exported to ONNX (cached), run by an InferenceSession with every graph
optimisation on; the CPU execution provider on cpu, the CUDA provider on cuda.

Requests in flight are a session per stream, as onnxruntime's threading documentation advises for
concurrent requests, each with its share of the intra-op threads (one session shared by several
threads would share one intra-op pool between their requests). On CUDA each session computes on a
CUDA stream of its own (the provider's ``user_compute_stream``) and returns without synchronizing
it (``disable_synchronize_execution_providers``), so calls are enqueued ahead.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.artifacts import cached_onnx, onnx_file
from bench.layers.numerics import added_outputs_how
from bench.layers.onnx_nodes import attribute, node_lines, with_line_outputs
from bench.layers.profile import LayerProfile, RuntimeLayer, mean_wall_ms
from bench.runners.base import Runner
from bench.streams import Lane, threads_each
from export.onnx import INPUT_NAME, OUTPUT_NAME
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.atomic import write_text


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.getavailable_providers()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    packages = {"onnx": ("onnx",), "onnxruntime": ("onnxruntime-gpu", "onnxruntime")}
    artifacts = ("onnx",)

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        return True

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime-gpu, or onnxruntime on CPU-only machines)"
        if device.type == "cuda" and "CUDAExecutionProvider" not in available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        # The CPU provider has fp16 kernels for few ops: a fp16 graph on CPU mostly runs casts.
        return ("fp32", "int8") if device.type == "cpu" else ("fp32", "fp16", "int8")

    @classmethod
    def load_runtime(cls, device: torch.device) -> None:
        import onnxruntime  # noqa: F401 - its libraries, loaded once per process

    def providers(self, stream: torch.cuda.Stream | None = None) -> list[Any]:
        """The session's providers; on CUDA, computing on ``stream`` where one is given."""
        if self.config.device.type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.config.device.index or 0, **compute_stream(stream)}),
                    "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def onnx_path(self) -> Path:
        """The file the session loads (see ``onnx_file``)."""
        return onnx_file(self.config)

    def build_impl(self) -> None:
        cached_onnx(self.model, self.config)

    def run_facts(self) -> dict | None:
        path = self.onnx_path()
        return {"runtime": "onnxruntime", "model_file": path.name, "model_mb": round(path.stat().st_size / 2**20, 1)}

    def _session(self, profile_prefix: Path | None = None, threads: int | None = None,
                 stream: torch.cuda.Stream | None = None, graph: bytes | None = None) -> Any:
        """The row's session (``threads`` intra-op threads, by default the row's; on CUDA computing
        on ``stream`` where given); with ``profile_prefix``, one that profiles every node of every
        run into a JSON trace there (a session of its own: profiling is set when a session is made)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or self.config.threads
        options.log_severity_level = 3  # errors only: provider fallbacks are checked below instead
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        providers = self.providers(stream)
        session = ort.InferenceSession(graph or str(self.onnx_path()), options, providers=providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if session.get_providers()[0] != wanted:
            raise RuntimeError(f"onnxruntime fell back to {session.get_providers()[0]} instead of {wanted}")
        return session

    def _bound(self, session: Any, run_options: Any = None) -> BoundSession:
        """``session`` with our tensors bound: an output of the row's shape (from the config, not the
        graph: a dynamic-batch graph names its batch axis), the input on first call."""
        classes = session.get_outputs()[0].shape[-1]
        output = torch.empty((self.config.batch_size, classes), dtype=self.config.dtype, device=self.config.device)
        return BoundSession(session, self._bind, output, run_options)

    def prepare_impl(self) -> None:
        self.session = self._bound(self._session())

    def lanes(self, n: int) -> list[Lane]:
        threads = threads_each(self.config.threads, n)
        if self.config.device.type != "cuda":
            if n == 1:  # the row's own session has every thread already
                return [Lane(self.session)]
            return [Lane(self._bound(self._session(threads=threads))) for _ in range(n)]
        import onnxruntime as ort

        asynchronous = ort.RunOptions()
        asynchronous.add_run_config_entry("disable_synchronize_execution_providers", "1")
        streams = [torch.cuda.Stream(self.config.device) for _ in range(n)]
        return [Lane(self._bound(self._session(threads=threads, stream=s), asynchronous), s) for s in streams]

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """onnxruntime's own profiler (SessionOptions.enable_profiling) on a session of its own:
        every node's kernel time in every run, the warm-up run left out. Its node names are the
        optimized graph's: an original node's, or for a fused NCHWc convolution the name of the
        original tensor it ends in plus ``_nchwc``."""
        with tempfile.TemporaryDirectory() as folder:
            session = self._session(Path(folder) / "onnxruntime")
            run = functools.partial(self._bound(session), inputs)
            run()
            wall_ms = mean_wall_ms(run, calls, self.config.device)
            text = Path(session.end_profiling()).read_text()
        if trace is not None:
            write_text(trace, text)
        events = json.loads(text)
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
        kernel_us: dict[str, float] = {}
        kinds: dict[str, str] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(a <= e["ts"] <= b for a, b in runs):
                name = e["name"].removesuffix("_kernel_time")
                kernel_us[name] = kernel_us.get(name, 0.0) + e["dur"]
                kinds[name] = e["args"].get("op_name", "?")
        # A fused node keeps the name of the node (QLinearConv: node_Conv_313_token_42) or of the
        # tensor (NCHWc: relu_3_nchwc) it ends in, plus a suffix.
        claimed = {name: [re.sub(r"(_token_\d+|_nchwc)$", "", name)] for name in kernel_us}
        mapped = attribute(claimed, node_lines(self.onnx_path(), self.model))
        return LayerProfile(
            source="onnxruntime SessionOptions.enable_profiling, per node of the optimized graph",
            calls=len(runs), wall_ms=wall_ms, trace=trace,
            layers=[RuntimeLayer(name, kinds[name], us / len(runs) / 1e3, *mapped[name]) for name, us in kernel_us.items()])

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        """A session of its own on the row's file with each line's end added as a graph output
        (bench.layers.onnx_nodes.with_line_outputs), under the row's providers and optimizations."""
        graph, names, requantized = with_line_outputs(self.onnx_path(), self.model)
        session = self._session(graph=graph)
        values = session.run(list(names.values()), {session.get_inputs()[0].name: inputs.cpu().numpy()})
        outputs = {line: torch.from_numpy(value).float() for line, value in zip(names, values)}
        return outputs, added_outputs_how(outputs, self.to_logits(self.run(inputs)), requantized)

    def _bind(self, bind: Any, name: str, tensor: Tensor) -> None:
        device = self.config.device
        bind(name, device.type, device.index or 0, PRECISIONS[self.config.precision].numpy, tuple(tensor.shape),
             tensor.data_ptr())

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(self.config.device, self.config.dtype).contiguous()

    def run_impl(self, inputs: Tensor) -> Tensor:
        return self.session(inputs)

    def close_impl(self) -> None:
        del self.session


def compute_stream(stream: torch.cuda.Stream | None) -> dict[str, str]:
    """The provider option that has a CUDA (or TensorRT) provider compute on ``stream``."""
    return {} if stream is None else {"user_compute_stream": str(stream.cuda_stream)}


class BoundSession:
    """A session with its IOBinding, which hands onnxruntime our tensors' memory: no copy into or
    out of the session inside the timed call, on CPU and on CUDA alike. The input is bound on the
    first call with it; every call writes into ``output``."""

    def __init__(self, session: Any, bind: Any, output: Tensor, run_options: Any = None):
        self.session, self.bind, self.output, self.run_options = session, bind, output, run_options
        self.binding = session.io_binding()
        self.bind(self.binding.bind_output, OUTPUT_NAME, output)
        self.bound_input: Tensor | None = None

    def __call__(self, inputs: Tensor) -> Tensor:
        if inputs is not self.bound_input:
            self.bind(self.binding.bind_input, INPUT_NAME, inputs)
            self.bound_input = inputs
        self.session.run_with_iobinding(self.binding, self.run_options)
        return self.output
