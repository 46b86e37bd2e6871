"""The backends, by their contract names, in the order the table shows them.

A backend is one runner class (bench/runners/base.py says what it implements) and one line below.
"""

from __future__ import annotations

from bench.runners.aoti import AotiRunner
from bench.runners.base import RunConfig, RunContext, Runner
from bench.runners.compile import CompileRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner
from bench.runners.onnxruntime_trt import OnnxRuntimeTrtRunner
from bench.runners.openvino import OpenVINORunner
from bench.runners.tensorrt import TensorRTRunner
from bench.runners.triton import TritonRunner
from bench.runners.triton_server import TritonServerRunner

RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner
    for runner in (
        EagerRunner,
        CompileRunner,
        AotiRunner,
        OnnxRuntimeRunner,
        OpenVINORunner,
        OnnxRuntimeTrtRunner,
        TensorRTRunner,
        TritonRunner,
        TritonServerRunner,
    )
}



def packages() -> dict[str, tuple[str, ...]]:
    """Every backend's libraries (Runner.packages), for the run's env: a backend's come with its runner."""
    return {key: found for runner in RUNNERS.values() for key, found in runner.packages.items()}


__all__ = ["RUNNERS", "RunConfig", "RunContext", "Runner", "packages"]
