"""The backends, by their contract names, in the order the table shows them."""

from __future__ import annotations

import torch

from bench.runners.base import PRECISIONS, RunConfig, Runner, ServerOptions
from bench.runners.compile import COMPILE_MODES, CompileRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner
from bench.runners.onnxruntime_trt import OnnxRuntimeTrtRunner
from bench.runners.tensorrt import TensorRTRunner
from bench.runners.triton import TritonRunner
from bench.runners.triton_server import TritonServerRunner
from bench.serving import local

RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner
    for runner in (EagerRunner, CompileRunner, OnnxRuntimeRunner, OnnxRuntimeTrtRunner, TensorRTRunner, TritonRunner,
                   TritonServerRunner)
}
BACKENDS: tuple[str, ...] = tuple(RUNNERS)


def _hosts(backend: str, server: ServerOptions | None) -> bool:
    """Whether ``backend`` here is a server we start, hosting another backend."""
    return backend == TritonServerRunner.name and server is not None and server.url is None


def unavailable_reason(backend: str, device: torch.device, server: ServerOptions | None = None) -> str | None:
    """None when ``backend`` can run on ``device`` here, else why not. A triton-server started
    locally also needs PyTriton and the backend it hosts."""
    reason = RUNNERS[backend].unavailable_reason(device)
    if reason is None and _hosts(backend, server):
        reason = local.missing_reason()
        hosted = server.served.unavailable_reason(device)
        if reason is None and hosted is not None:
            reason = f"its hosted backend {server.served.name}: {hosted}"
    return reason


def supported_precisions(backend: str, device: torch.device, server: ServerOptions | None = None) -> tuple[str, ...]:
    """The precisions ``backend`` runs on ``device``: for a locally started server, its hosted backend's."""
    return server.served.precisions(device) if _hosts(backend, server) else RUNNERS[backend].precisions(device)


__all__ = ["BACKENDS", "COMPILE_MODES", "PRECISIONS", "RUNNERS", "RunConfig", "Runner", "ServerOptions",
           "supported_precisions", "unavailable_reason"]
