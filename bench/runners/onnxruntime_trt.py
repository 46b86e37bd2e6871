"""``onnxruntime-trt``: the onnxruntime session with its TensorRT execution provider first, CUDA
second for whatever TensorRT does not take. Its engines and timing caches are kept under
``--cache-dir`` (``ort-trt/``), so a rerun skips the build."""

from __future__ import annotations

from typing import Any

import torch

from bench.runners.onnxruntime import OnnxRuntimeRunner, available_providers, compute_stream
from export import tensorrt


class OnnxRuntimeTrtRunner(OnnxRuntimeRunner):
    name = "onnxruntime-trt"

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        # TensorRT's provider builds a weakly typed network with fp16 enabled: TensorRT picks each
        # layer's type itself, and the fp16 graph's casts do not hold a layer in fp32.
        return False

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if device.type != "cuda":
            return "needs --device cuda"
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        if "TensorrtExecutionProvider" not in available_providers():
            return "this onnxruntime build has no TensorrtExecutionProvider (install onnxruntime-gpu)"
        # onnxruntime-gpu lists the provider whether or not TensorRT's libraries are present.
        return tensorrt.missing_reason()

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        # TensorRT's provider builds int8 from QDQ models too, but that path has not run anywhere here.
        return ("fp32", "fp16")

    def providers(self, stream: torch.cuda.Stream | None = None) -> list[Any]:
        # Both providers on the one stream: TensorRT's engines and the CUDA provider's leftovers.
        options = {
            "device_id": self.config.device.index or 0,
            "trt_fp16_enable": self.config.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.config.cache_dir / "ort-trt"),
            "trt_timing_cache_enable": True,
            **compute_stream(stream),
        }
        return [("TensorrtExecutionProvider", options), *super().providers(stream)]
