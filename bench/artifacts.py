"""The files runners load, built once and cached: each is found by what it depends on (model,
precision, shapes, calibration, library versions), checked against its manifest before it is used,
and rebuilt when it does not check out. Runners call these; they hold no runtime of their own."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.runners.base import RunConfig
from export import aoti, tensorrt
from export.manifest import cached
from export.onnx import DEFAULT_OPSET, BatchRange, export_onnx
from export.openvino_ir import PRESET, convert_ir
from export.openvino_ir import versions as ir_versions
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
    keep_fp = config.keep_fp if precision == "fp16" else ()
    if keep_fp:
        fields["keep_fp"] = list(keep_fp)

    def build(target: Path) -> dict:
        if precision != "int8":
            export_onnx(model, target, batch=batch, image_size=config.image_size, precision=precision,
                        keep_fp=keep_fp)
            return {}
        source = cached_onnx(model, config, "fp32")
        return {"quantization": quantize_onnx(source, target, config.calibration, flavour="onnxruntime",
                                              cache_dir=config.cache_dir / "calibration")}

    path = export_path(config, precision)
    cached(path, fields, build)
    return path


def ir_path(config: RunConfig) -> Path:
    """Where the cache keeps the NNCF-quantized IR for ``config`` (beside the ONNX exports)."""
    versions = ir_versions()
    stem = f"{config.artifact_stem()}-nncf{versions['nncf']}-ov{versions['openvino']}-torch{torch.__version__}"
    return config.cache_dir / "openvino" / f"{stem}.xml"


def cached_ir(model: torch.nn.Module, config: RunConfig) -> Path:
    """``ir_path``: the cached fp32 export quantized by NNCF with the row's calibration, as OpenVINO
    IR, built unless it is there and checks out against its manifest."""
    batch = BatchRange.static(config.batch_size)
    fields = {"format": "openvino", "model": config.model_id, "precision": "int8", "image_size": config.image_size,
              "batch": asdict(batch), "calibration": config.calibration.key(), "versions": ir_versions(),
              "nncf_preset": PRESET}
    source = cached_onnx(model, config, "fp32")
    path = ir_path(config)
    cached(path, fields, lambda xml: convert_ir(source, xml, batch, config.calibration))
    return path


def package_path(config: RunConfig) -> Path:
    """The AOTInductor package a row loads: --pt2, or the cache's for this configuration and
    machine (named by what it is tied to, read from /proc/cpuinfo or the GPU)."""
    if "aoti" in config.artifacts:
        return config.artifacts["aoti"]
    built_for = aoti.target(config.device)
    # The GPU by name; the CPU by its extensions, a digest of them (thirteen names are too long).
    where = (re.sub(r"[^A-Za-z0-9]+", "_", built_for["gpu"]["name"]) if config.device.type == "cuda"
             else "isa" + hashlib.sha256(" ".join(built_for["cpu_isa"]).encode()).hexdigest()[:10])
    return config.cache_dir / "aoti" / f"{config.artifact_stem()}-torch{torch.__version__}-{where}.pt2"


def cached_package(model: torch.nn.Module, config: RunConfig) -> float | None:
    """``package_path`` (not a given --pt2, which was checked when the run was resolved), built
    unless it is there and checks out against its manifest; returns how long a build took, or None
    where the cache held it."""
    batch = BatchRange.static(config.batch_size)
    fields = {"format": "aoti", "model": config.model_id, "precision": config.precision,
              "image_size": config.image_size, "batch": asdict(batch), "target": aoti.target(config.device),
              "inductor_configs": aoti.INDUCTOR_CONFIGS}
    if config.keep_fp:
        fields["keep_fp"] = list(config.keep_fp)
    took = []

    def build(path: Path) -> dict:
        start = time.perf_counter()
        built = aoti.build_package(model, path, batch=batch, image_size=config.image_size,
                                   precision=config.precision, device=config.device, keep_fp=config.keep_fp)
        took.append(time.perf_counter() - start)
        return built

    cached(package_path(config), fields, build)
    return took[0] if took else None


def engine_path(config: RunConfig) -> Path:
    """The TensorRT engine a row loads: --engine, or the cache's for this configuration, TensorRT
    version and GPU."""
    if "tensorrt" in config.artifacts:
        return config.artifacts["tensorrt"]
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", tensorrt.gpu_target(config.device)["name"])
    return config.cache_dir / "tensorrt" / f"{config.artifact_stem()}-trt{tensorrt.version()}-{gpu}.plan"


def cached_engine(model: torch.nn.Module, config: RunConfig, settings: tensorrt.BuildSettings) -> Path:
    """``engine_path`` (not a given --engine, which was checked when the run was resolved), built
    with ``settings`` unless it is there and checks out against its manifest."""
    fields = {"format": "tensorrt", "model": config.model_id, "precision": config.precision,
              "image_size": config.image_size, "batch": asdict(settings.batch)}
    if config.precision == "int8":
        fields["calibration"] = config.calibration.key()
    if settings.keep_fp:
        fields["keep_fp"] = list(settings.keep_fp)
    path = engine_path(config)
    cached(path, fields, lambda plan: tensorrt.export_engine(model, plan, settings, config.device,
                                                             calibration=config.calibration,
                                                             calibration_cache=config.cache_dir / "calibration"))
    return path
