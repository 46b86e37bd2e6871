"""``eager``: the model as PyTorch runs it, one kernel per op (oneDNN on CPU, cuDNN on CUDA)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bench.layers.numerics import torch_line_outputs
from bench.layers.profile import LayerProfile
from bench.layers.torch_modules import profile_module
from bench.runners.base import TorchRunner


class EagerRunner(TorchRunner):
    name = "eager"

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        return True

    def prepare_impl(self) -> None:
        self.module = self.make_module()

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(inputs)

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        return profile_module(self.module, lambda: self.run(inputs), calls, self.config.device, trace)

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        return torch_line_outputs(self.module, lambda: self.run(inputs)), "forward hooks on every module"

    def close_impl(self) -> None:
        del self.module
