"""``onnxruntime``: the model exported to ONNX (cached), run by an InferenceSession with every graph
optimisation on; the CPU execution provider on cpu, the CUDA provider on cuda."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.runners.base import RunConfig, Runner
from export.manifest import cached
from export.onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, BatchRange, export_onnx
from export.quantize import quantize_onnx, weight_bits
from resnet_perf.precision import PRECISIONS


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def export_path(config: RunConfig, precision: str) -> Path:
    """Where the cache keeps the model's ONNX export at ``precision`` for ``config``."""
    # int8 weights are 7-bit on CPUs whose int8 products saturate: a cache shared by machines
    # must not hand one machine's file to the other.
    weights = f"-w{weight_bits('onnxruntime')}" if precision == "int8" else ""
    stem = f"{config.artifact_stem(precision)}{weights}-opset{DEFAULT_OPSET}-torch{torch.__version__}"
    return config.cache_dir / "onnx" / f"{stem}.onnx"


def onnx_file(config: RunConfig) -> Path:
    """The ONNX file a row runs: the one given with --onnx, else the model's cached export (for
    int8, the fp32 export quantized with the row's calibration, uint8 activations)."""
    return config.artifacts.get("onnx") or export_path(config, config.precision)


def cached_onnx(model: torch.nn.Module, config: RunConfig, precision: str | None = None) -> Path:
    """``onnx_file``, built unless it is there and checks out against its manifest. int8 is
    quantized from the cached fp32 export, which is checked (or built) only then. A given --onnx
    was checked when the run was resolved, and is returned as it is."""
    precision = precision or config.precision
    if "onnx" in config.artifacts:
        return config.artifacts["onnx"]
    batch = BatchRange.static(config.batch_size)
    fields = {"format": "onnx", "model": config.model_id, "precision": precision, "image_size": config.image_size,
              "batch": asdict(batch)}
    if precision == "int8":
        fields["calibration"] = config.calibration.key()

    def build(target: Path) -> dict:
        if precision != "int8":
            export_onnx(model, target, batch=batch, image_size=config.image_size, precision=precision)
            return {}
        source = cached_onnx(model, config, "fp32")
        return {"quantization": quantize_onnx(source, target, config.calibration, flavour="onnxruntime",
                                              cache_dir=config.cache_dir / "calibration")}

    path = export_path(config, precision)
    cached(path, fields, build)
    return path


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

    @classmethod
    def load_runtime(cls, device: torch.device) -> None:
        import onnxruntime  # noqa: F401 - its libraries, loaded once per process

    def providers(self) -> list[Any]:
        if self.config.device.type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.config.device.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def onnx_path(self) -> Path:
        """The file the session loads (see ``onnx_file``)."""
        return onnx_file(self.config)

    def build_impl(self) -> None:
        cached_onnx(self.model, self.config)

    def prepare_impl(self) -> None:
        import onnxruntime as ort

        path = self.onnx_path()
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
