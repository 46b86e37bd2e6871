"""The files runners load, built once and cached: each is found by what it depends on (model,
precision, shapes, calibration, library versions), checked against its manifest before it is used,
and rebuilt when it does not check out. Runners call these; they hold no runtime of their own."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from bench.runners.base import RunConfig
from export.manifest import cached
from export.onnx import DEFAULT_OPSET, BatchRange, export_onnx
from export.quantize import quantize_onnx, weight_bits


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
