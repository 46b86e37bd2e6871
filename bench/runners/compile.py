"""``compile``: the model through torch.compile (TorchInductor), compile time reported as setup."""

from __future__ import annotations

import os
import shutil

import torch
from torch import Tensor

from bench.runners.base import TorchRunner

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class CompileRunner(TorchRunner):
    name = "compile"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        # Inductor compiles its CPU kernels as C++; it looks for $CXX, then g++ (or clang++).
        compilers = (os.environ.get("CXX"), "g++", "clang++", "c++")
        if device.type == "cpu" and not any(c and shutil.which(c) for c in compilers):
            return "TorchInductor needs a C++ compiler on CPU (install g++ or clang++, or set CXX)"
        return None

    def prepare_impl(self) -> None:
        module = self.make_module()
        self.compiled = torch.compile(module, mode=self.config.compile_mode, dynamic=False, fullgraph=True)
        example = torch.zeros(self.config.input_shape, dtype=torch.float32)
        # Freezing turns the weights into constants, so Inductor folds BatchNorm into the convs and
        # pre-packs weights for oneDNN: on 2 Xeon cores (AVX-512), ResNet-50 fp32 bs8 224 px ran
        # 1.18x eager without it and 1.46x with it. It is read when the graph compiles, which is
        # the first call, so it is patched around that call only.
        with torch._inductor.config.patch(freezing=True):
            self.run_impl(self.to_input(example))

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.compiled(inputs)

    def close_impl(self) -> None:
        del self.compiled
        torch._dynamo.reset()
