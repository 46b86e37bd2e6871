"""A real Triton Inference Server on loopback, started through PyTriton, serving one of our runners.

PyTriton's wheel carries the ``tritonserver`` binary; it runs as a child process with Triton's
Python backend, whose stub hands each batch Triton's dynamic batcher forms to a callable in this
process: here, the runner's ``infer``. Clients reach it over real gRPC and HTTP, so everything a
deployment adds around the model (the protocol, the server's queue and batcher, its statistics)
is there; only the model runs in this process instead of in a Triton backend. With several
instances, each is a Lane of the runner (its own session or execution context where the runtime
needs one) with its share of the intra-op threads, and Triton runs them concurrently.

Ports are chosen free on 127.0.0.1; the server is stopped on ``stop``, and dies with this process
whatever happens to it (PyTriton sets the child's parent-death signal).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.serving.client import Endpoint
from bench.streams import threads_each
from export.onnx import INPUT_NAME, OUTPUT_NAME
from resnet_perf.parity import cycled
from resnet_perf.util.cli import one_line

if TYPE_CHECKING:  # bench.runners imports this module: a runtime import back would be a cycle
    from bench.runners.base import Runner


def missing_reason() -> str | None:
    """None when a local server can start here, else why not."""
    try:
        import pytriton.triton  # noqa: F401
    except ImportError:
        return "nvidia-pytriton is not installed (pip install -e '.[serve]'; Linux x86_64 or aarch64, glibc 2.35+)"
    return None


def _free_ports(count: int) -> list[int]:
    # Held open together so the ports differ; the server binds them a moment after they close.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@contextlib.contextmanager
def _own_libpython():
    """The Python backend's stub links libpython by name; the loader would pick the system's copy,
    which need not be this interpreter's build (a pyenv 3.11.7 against Debian's 3.11.2 fails to
    load the model with a _thread.RLock AttributeError). The server inherits the environment at
    start, so this interpreter's own library folder goes first on the search path for the start."""
    before = os.environ.get("LD_LIBRARY_PATH")
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = libdir if not before else f"{libdir}:{before}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def _kill_under(folder: str) -> None:
    """Kill every process whose executable lies under ``folder``. A server that died abruptly (killed,
    out of memory) leaves its Python-backend stubs running, each holding shared memory; they run
    from the server's copy in our scratch folder, so that folder names them exactly."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            executable = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if executable.startswith(folder + os.sep):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


class LocalServer:
    """``runner`` (prepared by the caller, batch size B) served as ``name`` by ``instances`` model
    instances: inputs fp32 (3, H, W), outputs fp32 logits, Triton's dynamic batcher forming batches
    of up to B requests' samples within ``max_queue_delay_ms``. A batch of fewer than B samples is
    padded to B by cycling its samples, as the in-process server scenario does, since runners take
    one static shape."""

    def __init__(self, runner: Runner, name: str, max_queue_delay_ms: float, instances: int = 1):
        self.runner = runner
        self.name = name
        self.max_queue_delay_ms = max_queue_delay_ms
        self.instances = instances
        self.triton = None
        self.scratch: tempfile.TemporaryDirectory | None = None

    def _infers(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Each instance's call, host batch to host logits."""
        if self.instances == 1:
            return [self.runner.infer]
        runner, threads = self.runner, threads_each(self.runner.config.threads, self.instances)

        def on(lane):
            def infer(x: torch.Tensor) -> torch.Tensor:
                torch.set_num_threads(threads)  # this instance's thread: its share of the cores
                return runner.to_logits(lane.call(runner.to_input(x)))

            return infer

        return [on(lane) for lane in runner.lanes(self.instances)]

    def _handler(self, infer: Callable[[torch.Tensor], torch.Tensor]):
        from pytriton.decorators import batch

        @batch
        def run(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            x = torch.from_numpy(inputs[INPUT_NAME])
            n, size = len(x), self.runner.config.batch_size
            logits = infer(cycled(x, size) if n < size else x)
            return {OUTPUT_NAME: logits[:n].numpy()}

        return run

    def start(self) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

        # PyTriton logs every step at INFO and the server's output at WARNING; the log file keeps both.
        logging.getLogger("pytriton").setLevel(logging.ERROR)
        self.scratch = tempfile.TemporaryDirectory(prefix="resnet-perf-triton-")
        http_port, grpc_port, metrics_port = _free_ports(3)
        self.grpc = Endpoint("grpc", f"127.0.0.1:{grpc_port}")
        self.http = Endpoint("http", f"127.0.0.1:{http_port}")
        config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                              grpc_port=grpc_port, metrics_port=metrics_port, allow_metrics=False,
                              log_file=self.log_path, exit_timeout_secs=5)
        size, classes = self.runner.config.batch_size, self.runner.model.fc.out_features
        image = self.runner.config.image_size
        # PyTriton guards the statistics endpoint (among others) with a token of its own making; any
        # client measuring this server reads them, as from a deployment, and they change nothing.
        security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
        self.triton = Triton(config=config, workspace=Path(self.scratch.name) / "workspace", security_config=security)
        # fp32 whatever the runner's precision: Runner.infer takes fp32 batches and returns fp32 logits.
        self.triton.bind(
            self.name, [self._handler(infer) for infer in self._infers()],
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=(3, image, image))],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(classes,))],
            config=ModelConfig(max_batch_size=size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=round(self.max_queue_delay_ms * 1e3))),
        )
        try:
            with _own_libpython():
                self.triton.run()
        except Exception as exc:  # noqa: BLE001 - PyTriton raises its own and builtin types; all end the start
            log = self.log_tail()
            self.stop()
            raise RuntimeError(f"the local Triton server did not start: {one_line(exc, first_line=True)}"
                               + (f" (its log: {log})" if log else "")) from None

    def alive(self) -> bool:
        """The server process and the model it serves are both up."""
        return self.triton is not None and self.triton.is_alive()

    @property
    def log_path(self) -> Path:
        return Path(self.scratch.name) / "tritonserver.log"

    def log_tail(self) -> str:
        """The server's last error line, if its log has one. (Triton logs errors as E<date> lines;
        one about config modification times comes with every PyTriton model and means nothing.)"""
        if self.scratch is None or not self.log_path.exists():
            return ""
        errors = [line for line in self.log_path.read_text(errors="replace").splitlines()
                  if line.startswith("E") and "modification time" not in line]
        return errors[-1] if errors else ""

    def stop(self) -> None:
        try:
            if self.triton is not None:
                # PyTriton echoes the server's output to stdout, and the server still prints one line
                # when it stops; it belongs with the rest of its log, not in the user's table.
                with contextlib.redirect_stdout(io.StringIO()):
                    self.triton.stop()
        finally:
            self.triton = None
            if self.scratch is not None:
                _kill_under(self.scratch.name)
                self.scratch.cleanup()
                self.scratch = None
