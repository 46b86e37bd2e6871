"""``compile``: the model through torch.compile (TorchInductor), compile time reported as setup."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.runners.base import TorchRunner

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class CompileRunner(TorchRunner):
    name = "compile"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        from torch._inductor.cpp_builder import get_cpp_compiler  # noqa: PLC0415 - inductor is heavy

        if device.type == "cpu":
            try:
                get_cpp_compiler()
            except Exception:  # noqa: BLE001 - any failure to find one means the same thing
                return "TorchInductor needs a C++ compiler on CPU (install gcc or clang)"
        return None

    def prepare_impl(self) -> None:
        module = self.make_module()
        self.compiled = torch.compile(module, mode=self.config.compile_mode, dynamic=False, fullgraph=True)
        example = torch.zeros(self.config.input_shape, dtype=torch.float32)
        # Freezing turns the weights into constants, so Inductor folds BatchNorm into the convs and
        # pre-packs weights for oneDNN: on a 2-core Zen3, ResNet-50 fp32 bs8 went from ~1.1x to
        # ~1.6x eager with it. It is read when the graph compiles, which is the first call.
        with torch._inductor.config.patch(freezing=True):
            self.run_impl(self.to_input(example))

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.compiled(inputs)

    def close_impl(self) -> None:
        del self.compiled
        torch._dynamo.reset()
