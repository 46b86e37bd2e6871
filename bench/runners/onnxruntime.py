"""``onnxruntime``: the model exported to ONNX (cached), run by an InferenceSession with every graph
optimisation on; the CPU execution provider on cpu, the CUDA provider on cuda."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.runners.base import Runner
from export.manifest import cached
from export.onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, BatchRange, export_onnx
from export.quantize import quantize_onnx, weight_bits
from resnet_perf.precision import PRECISIONS


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    artifact = "onnx"

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime-gpu, or onnxruntime on CPU-only machines)"
        if device.type == "cuda" and "CUDAExecutionProvider" not in _available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        # The CPU provider has fp16 kernels for few ops: a fp16 graph on CPU mostly runs casts.
        return ("fp32", "int8") if device.type == "cpu" else ("fp32", "fp16", "int8")

    def providers(self) -> list[Any]:
        if self.config.device.type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.config.device.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def onnx_path(self) -> Path:
        """The file the session loads: the one given with --onnx, else this model's cached export
        (for int8, the fp32 export quantized with this run's calibration)."""
        return self.config.artifacts.get(self.artifact) or self._export_path(self.config.precision)

    def _export_path(self, precision: str) -> Path:
        c = self.config
        # int8 weights are 7-bit on CPUs whose int8 products saturate: a cache shared by machines
        # must not hand one machine's file to the other.
        weights = f"-w{weight_bits('onnxruntime')}" if precision == "int8" else ""
        return c.cache_dir / "onnx" / f"{c.artifact_stem(precision)}{weights}-opset{DEFAULT_OPSET}-torch{torch.__version__}.onnx"

    def _cached_export(self, precision: str) -> Path:
        """This model's export at ``precision`` in the cache, built unless it is there and checks out.
        int8 is quantized from the cached fp32 export, which is checked (or built) only then."""
        c = self.config
        batch = BatchRange.static(c.batch_size)
        fields = {"format": "onnx", "model": c.model_id, "precision": precision, "image_size": c.image_size,
                  "batch": asdict(batch)}
        if precision == "int8":
            fields["calibration"] = c.calibration.key()

        def build(target: Path) -> dict:
            if precision != "int8":
                export_onnx(self.model, target, batch=batch, image_size=c.image_size, precision=precision)
                return {}
            source = self._cached_export("fp32")
            return {"quantization": quantize_onnx(source, target, c.calibration, flavour="onnxruntime",
                                                  cache_dir=c.cache_dir / "calibration")}

        path = self._export_path(precision)
        cached(path, fields, build)
        return path

    def prepare_impl(self) -> None:
        import onnxruntime as ort

        # A given --onnx was checked against its manifest when the run was resolved.
        path = self.config.artifacts.get(self.artifact) or self._cached_export(self.config.precision)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.config.threads
        options.log_severity_level = 3  # errors only: provider fallbacks are checked below instead
        self.session = ort.InferenceSession(str(path), options, providers=self.providers())
        wanted = self.providers()[0]
        wanted = wanted[0] if isinstance(wanted, tuple) else wanted
        if self.session.get_providers()[0] != wanted:
            raise RuntimeError(f"onnxruntime fell back to {self.session.get_providers()[0]} instead of {wanted}")

        # IOBinding hands onnxruntime our tensors' memory: no copy into or out of the session
        # inside the timed call, on CPU and on CUDA alike.
        self.binding = self.session.io_binding()
        # The output's shape from the config, not the graph: a dynamic-batch graph names its batch axis.
        classes = self.session.get_outputs()[0].shape[-1]
        self.output = torch.empty((self.config.batch_size, classes), dtype=self.config.dtype, device=self.config.device)
        self._bind(self.binding.bind_output, OUTPUT_NAME, self.output)
        self.bound_input: Tensor | None = None

    def _bind(self, bind: Any, name: str, tensor: Tensor) -> None:
        device = self.config.device
        bind(name, device.type, device.index or 0, PRECISIONS[self.config.precision].numpy, tuple(tensor.shape),
             tensor.data_ptr())

    def to_input_impl(self, batch: Tensor) -> Tensor:
        return batch.to(self.config.device, self.config.dtype).contiguous()

    def run_impl(self, inputs: Tensor) -> Tensor:
        if inputs is not self.bound_input:
            self._bind(self.binding.bind_input, INPUT_NAME, inputs)
            self.bound_input = inputs
        self.session.run_with_iobinding(self.binding)
        return self.output

    def close_impl(self) -> None:
        del self.binding, self.session, self.output
        self.bound_input = None
