"""``triton``: the fused ResNet (resnet_perf.fuse), every conv + BN (+ add) (+ ReLU) one Triton launch.

On CUDA the fused model runs under torch.compile with CUDA graphs ("reduce-overhead"): the kernels
are custom ops, so the graph replays ~60 launches with no Python between them. On CPU it runs only
in Triton's interpreter (TRITON_INTERPRET=1), which checks numbers, not speed: its rows are marked.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.layers.groups import Op
from bench.layers.numerics import torch_line_outputs
from bench.layers.profile import LayerProfile
from bench.layers.torch_modules import module_ops, profile_module
from bench.runners.base import CUDA_GRAPH_LIMIT, TorchRunner


def fused_ops(path: str, by_name: dict[str, nn.Module]) -> tuple[Op, ...]:
    """What one fused launch computes, in the reference model's names: its conv and BatchNorm,
    the block's residual add where it is the block's last conv, and its ReLU."""
    from resnet_perf.fused import FusedConv

    module = by_name[path]
    if not isinstance(module, FusedConv):
        return module_ops(path, by_name)
    block, _, conv = path.rpartition(".")
    prefix = f"{block}." if block else ""
    if conv == "downsample":
        return Op(f"{path}.0", True), Op(f"{path}.1", False)
    last = "conv3" if hasattr(by_name.get(block), "conv3") else "conv2"
    ops = [Op(path, True), Op(f"{prefix}bn{conv.removeprefix('conv')}", False)]
    if block and conv == last:
        ops.append(Op(f"{block}.add", False))
    return (*ops, Op(f"{prefix}relu", False)) if module.relu else tuple(ops)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonRunner(TorchRunner):
    name = "triton"

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton; Linux only)"
        if device.type == "cpu" and not _interpreting():
            return "needs --device cuda, or TRITON_INTERPRET=1 on CPU (interpreter timings are not performance)"
        return None

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        # The kernels' own dtypes, on CPU too: the interpreter runs all three, if slowly.
        return ("fp32", "fp16", "bf16")

    @classmethod
    def streams_limit(cls, device: torch.device, options: Any = None) -> tuple[int, str] | None:
        if device.type == "cpu":
            # Seen here: two threads in the interpreter at once fail with "Did you forget to add @triton.jit ?".
            return 1, "Triton's interpreter runs one launch at a time (it is not thread-safe)"
        return 1, CUDA_GRAPH_LIMIT

    @property
    def timing_note(self) -> str | None:
        return "interpreter timing" if self.config.device.type == "cpu" else None

    def prepare_impl(self) -> None:
        from resnet_perf.fused import fuse

        self.fused = self.module = fuse(self.model, self.config.dtype).to(self.config.device)
        if self.config.device.type == "cuda":
            self.module = torch.compile(self.module, mode="reduce-overhead", dynamic=False, fullgraph=True)
            # Compilation and CUDA-graph capture happen in the first calls: they are setup.
            example = self.to_input(torch.zeros(self.config.input_shape))
            for _ in range(3):
                self.run_impl(example)
            torch.cuda.synchronize(self.config.device)

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(inputs)

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """torch.profiler over the fused model run eagerly (its Triton launches are the same as in
        the CUDA graph the row times, which no hook could see into): one scope per fused launch,
        its time the device time of the kernels in it on CUDA; under the interpreter, CPU time
        that is not a performance figure."""
        def call():
            with torch.inference_mode():
                return self.fused(inputs)

        interpreted = self.config.device.type == "cpu"
        profile = profile_module(self.fused, call, calls, self.config.device, trace, ops=fused_ops,
                                 source=", fused model run eagerly")
        if interpreted:
            profile.notes.append("Triton's interpreter: the times are not performance figures")
        return profile

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        """The fused model run eagerly, its launches those the row times: each fused launch ends its
        line (conv + BatchNorm + residual add + ReLU), so lines are compared at their ends."""
        return (torch_line_outputs(self.fused, lambda: self.fused(inputs)),
                "forward hooks on the fused model, one fused launch per line")

    def close_impl(self) -> None:
        del self.module, self.fused
