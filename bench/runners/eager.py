"""``eager``: the model as PyTorch runs it, one kernel per op (oneDNN on CPU, cuDNN on CUDA)."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.runners.base import TorchRunner


class EagerRunner(TorchRunner):
    name = "eager"

    def prepare_impl(self) -> None:
        self.module = self.make_module()

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(inputs)

    def close_impl(self) -> None:
        del self.module
