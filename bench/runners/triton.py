"""``triton``: the fused ResNet (resnet_perf.fuse), every conv + BN (+ add) (+ ReLU) one Triton launch.

On CUDA the fused model runs under torch.compile with CUDA graphs ("reduce-overhead"): the kernels
are custom ops, so the graph replays ~60 launches with no Python between them. On CPU it runs only
in Triton's interpreter (TRITON_INTERPRET=1), which checks numbers, not speed: its rows are marked.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
from torch import Tensor

from bench.runners.base import TorchRunner


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

    @property
    def timing_note(self) -> str | None:
        return "interpreter timing" if self.config.device.type == "cpu" else None

    def prepare_impl(self) -> None:
        from resnet_perf.fused import fuse

        self.module = fuse(self.model, self.config.dtype).to(self.config.device)
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

    def close_impl(self) -> None:
        del self.module
