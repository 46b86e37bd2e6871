"""PT2E int8 for TorchInductor on x86: PyTorch's own int8 path, the model captured by torch.export,
annotated by torchao's ``X86InductorQuantizer``, calibrated, and converted to a graph of quantize /
dequantize ops around fp32 ones, which Inductor with freezing lowers to oneDNN's int8 convolutions
(``onednn.qconv_pointwise``, conv + add + ReLU as ``qconv2d_pointwise``) and ``qlinear_pointwise``.

Two things make it work on our ResNets, both found here (torch 2.13, torchao 0.18):
- The export is strict. A non-strict export sets no ``source_fn_stack``, so torch groups nodes by
  the path of the module that ran them (torch/fx/passes/utils/source_matcher_utils.py), and the one
  ``relu`` module a block calls two or three times (as torchvision's blocks do) becomes one
  partition with several outputs: the quantizer's conv + add + ReLU matcher then raises "Input
  partition has more than one output node" (torchao x86_inductor_quantizer.py,
  ``_get_output_nodes_of_partitions``; pytorch/ao#4478 fixed the same for Linear only). A strict
  export records each call apart. tests/test_pt2e.py keeps the non-strict failure in view.
- Inductor compiles with freezing: without it the quantize/dequantize pairs are computed in fp32
  around fp32 convolutions, with no error and no int8 kernel (compile's runner always freezes).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import torch
from torch import nn

from export.quantize import Calibration
from resnet_perf.parity import cycled
from resnet_perf.util.versions import installed_version


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """torchao logs, on import, each CUDA extension it cannot load on a CPU-only torch, and torch a
    deprecation about torchao's enums: lines that are no failure of ours, on the run's stderr."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def missing_reason() -> str | None:
    """Why PT2E int8 cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return "PT2E int8 needs torchao's X86InductorQuantizer (pip install torchao)"
    return None


def quantize_pt2e(model: nn.Module, calibration: Calibration, batch_size: int, *, strict: bool = True) -> nn.Module:
    """``model`` (fp32, eval) exported for ``batch_size`` channels_last inputs, quantized by
    X86InductorQuantizer's default config (int8 activations per tensor with a zero point, int8
    weights per channel) and calibrated on ``calibration``'s inputs. Returns the converted graph
    module, for torch.compile with freezing."""
    with _quiet_torchao():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration.keep_fp:
        raise ValueError("--keep-fp is not supported for PT2E int8")
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    inputs = calibration.inputs
    example = inputs[:1].expand(batch_size, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        graph = torch.export.export(model, (example,), strict=strict).module()
        prepared = prepare_pt2e(graph, quantizer)
        for start in range(0, len(inputs), batch_size):
            batch = cycled(inputs, batch_size, start)
            prepared(batch.contiguous(memory_format=torch.channels_last))
        return convert_pt2e(prepared)


def describe(calibration: Calibration) -> dict:
    """What a row or manifest says of a PT2E quantization."""
    return {
        "quantizer": "pt2e",
        "torchao": installed_version("torchao"),
        "config": "X86InductorQuantizer default: int8 activations per tensor (zero point), int8 weights per channel",
        "calibration_source": calibration.source,
        "calibration_samples": len(calibration.inputs),
    }


def int8_kernels(code: str) -> dict[str, int]:
    """The oneDNN int8 ops in Inductor's generated code, by name: proof that int8 runs."""
    return {op: code.count(f"torch.ops.onednn.{op}") for op in ("qconv_pointwise", "qconv2d_pointwise",
                                                               "qlinear_pointwise") if f"torch.ops.onednn.{op}" in code}
