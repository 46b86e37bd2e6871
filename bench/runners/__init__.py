"""The backends, by their contract names, in the order the table shows them.

Every backend of the contract is listed, so ``--list-backends`` can say why one is missing; those
not built yet say that, and which issue brings them.
"""

from __future__ import annotations

import torch

from bench.runners.base import PRECISIONS, RunConfig, Runner
from bench.runners.compile import COMPILE_MODES, CompileRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner
from bench.runners.onnxruntime_trt import OnnxRuntimeTrtRunner
from bench.runners.tensorrt import TensorRTRunner
from bench.runners.triton import TritonRunner

RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner
    for runner in (EagerRunner, CompileRunner, OnnxRuntimeRunner, OnnxRuntimeTrtRunner, TensorRTRunner, TritonRunner)
}

# Backends of the contract whose runners are not in this version yet.
_NOT_BUILT = {
    "triton-server": "the Triton Inference Server runner is not built yet (serving issue)",
}

BACKENDS: tuple[str, ...] = ("eager", "compile", "onnxruntime", "onnxruntime-trt", "tensorrt", "triton", "triton-server")


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can run on ``device`` here, else why not."""
    if backend in RUNNERS:
        return RUNNERS[backend].unavailable_reason(device)
    return _NOT_BUILT[backend]


__all__ = ["BACKENDS", "COMPILE_MODES", "PRECISIONS", "RUNNERS", "RunConfig", "Runner", "unavailable_reason"]
