"""``compile``: the model through torch.compile (TorchInductor), compile time reported as setup.

int8 is PyTorch's own: the model quantized by PT2E with torchao's X86InductorQuantizer (export.pt2e),
which Inductor with freezing lowers to oneDNN's int8 kernels on x86 CPUs. The row reads the kernels
back from the code Inductor generated, and fails where none is int8.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor

from bench.layers.compiled import profile_compiled
from bench.layers.numerics import torch_line_outputs
from bench.layers.profile import LayerProfile
from bench.runners.base import CUDA_GRAPH_LIMIT, RunContext, TorchRunner
from bench.streams import Lane, threads_each
from export import aoti, pt2e

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileOptions:
    mode: str = "default"  # torch.compile's mode


@contextlib.contextmanager
def generated_code() -> Iterator[list[str]]:
    """The code Inductor generates (or serves from its cache) inside the block: how
    torch._inductor.utils.run_and_get_code captures it, without the dynamo reset it starts with,
    which would discard every build made before (the timed one, when streams compile their own)."""
    from torch._inductor.graph import GraphLowering

    code: list[str] = []
    with mock.patch.object(GraphLowering, "save_output_code", code.append):
        yield code


class CompileRunner(TorchRunner):
    name = "compile"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--compile-mode", choices=COMPILE_MODES, default=CompileOptions.mode,
                           help=f"torch.compile's mode (default {CompileOptions.mode})")

    @classmethod
    def resolve_options(cls, flags: Mapping[str, Any], run: RunContext) -> CompileOptions:
        return CompileOptions(flags["compile_mode"])

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        return True  # dynamo traces resnet_perf.mixed's casting hooks into the graph it compiles

    @classmethod
    def precisions(cls, device: torch.device, options: Any = None) -> tuple[str, ...]:
        native = super().precisions(device, options)
        return (*native, "int8") if device.type == "cpu" and pt2e.missing_reason() is None else native

    @classmethod
    def why_unsupported(cls, precision: str, device: torch.device, options: Any = None) -> str | None:
        if precision != "int8":
            return None
        if device.type != "cpu":
            return "PT2E's X86InductorQuantizer lowers to oneDNN's x86 CPU int8 kernels"
        return pt2e.missing_reason()

    @classmethod
    def quantizers(cls, options: Any = None) -> tuple[str, ...]:
        return ("pt2e",)

    @classmethod
    def streams_limit(cls, device: torch.device, options: Any = None) -> tuple[int, str] | None:
        if device.type == "cuda" and (options or CompileOptions()).mode != "default":
            return 1, CUDA_GRAPH_LIMIT
        return None

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        if device.type == "cpu" and aoti.cxx_compiler() is None:  # Inductor's CPU kernels are C++
            return "TorchInductor needs a C++ compiler on CPU (install g++ or clang++, or set CXX)"
        return None

    @classmethod
    def load_runtime(cls, device: torch.device) -> None:
        # Inductor's first compile in a process loads its code generators and caches: on ResNet-50
        # that was 100 MB more on whichever row came first (478 MB at batch 8 first, 371 MB after).
        tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            torch.compile(tiny.eval().to(device), fullgraph=True)(torch.zeros(1, 3, 16, 16, device=device))
        torch._dynamo.reset()

    def build_impl(self) -> None:
        # PT2E's capture and calibration, like an export, before the row's memory is metered.
        self.quantized = None
        if self.config.precision == "int8":
            self.quantized = pt2e.quantize_pt2e(self.model, self.config.calibration, self.config.batch_size)

    def make_module(self) -> torch.nn.Module:
        return super().make_module() if self.quantized is None else self.quantized

    def prepare_impl(self) -> None:
        self.module = self.make_module()
        with generated_code() as code:
            self.compiled = self._compile(self.module, self.to_input(torch.zeros(self.config.input_shape)))
        self.facts = None
        if self.quantized is not None:
            kernels = pt2e.int8_kernels("\n".join(code))
            if not kernels:
                raise RuntimeError("Inductor compiled the PT2E graph without any oneDNN int8 kernel")
            self.facts = {**pt2e.describe(self.config.calibration), "int8_kernels": kernels}

    def run_facts(self) -> dict | None:
        return self.facts

    def _compile(self, module: torch.nn.Module, example: Tensor, **options: Any) -> Callable[[Tensor], Tensor]:
        """``module`` compiled, and compiled now, on ``example``; ``options``: inductor's config
        on top of the mode's, for a build that must not reuse the timed one (dynamo serves a build
        of the same module, mode and options from its cache, whatever config was patched around it)."""
        mode = (self.config.options or CompileOptions()).mode
        settings = {"options": {**torch._inductor.list_mode_options(mode), **options}} if options else {"mode": mode}
        compiled = torch.compile(module, dynamic=False, fullgraph=True, **settings)
        # Freezing turns the weights into constants, so Inductor folds BatchNorm into the convs and
        # pre-packs weights for oneDNN: on 2 Xeon cores (AVX-512), ResNet-50 fp32 bs8 224 px ran
        # 1.18x eager without it and 1.46x with it. It is read when the graph compiles, which is
        # the first call, so it is patched around that call only.
        with torch._inductor.config.patch(freezing=True), torch.inference_mode(), warnings.catch_warnings():
            # Inductor's oneDNN int8 lowering copies a tensor the way torch itself warns against.
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            compiled(example)
        return compiled

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        """Inductor fuses across lines, so no line's output exists in the compiled graph: the lines
        come from an eager run of the same module, which the row's logits are checked against too."""
        if self.quantized is not None:
            raise NotImplementedError("compile int8 runs PT2E's quantized graph, which has no modules to hook")
        return (torch_line_outputs(self.module, lambda: self.module(inputs)),
                "an eager run of the same module (inductor keeps no line outputs)")

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """On CPU a second build of the same graph, whose C++ kernels report themselves to the
        profiler (a record_function each, which the timed build goes without); on CUDA the
        profiler sees every kernel of the timed build."""
        if self.quantized is not None:
            raise NotImplementedError("compile int8 runs PT2E's exported graph, whose ops name no module of the model")
        compiled = self.compiled
        if self.config.device.type == "cpu":
            compiled = self._compile(self.module, inputs, **{"cpp.enable_kernel_profile": True})

        def call() -> Tensor:
            with torch.inference_mode():
                return compiled(inputs)

        profile = profile_compiled(self.module, call, inputs, calls, self.config.device, trace)
        if compiled is not self.compiled:
            profile.notes.append("profiled: a second build of the graph whose kernels report to the profiler")
        if (self.config.options or CompileOptions()).mode != "default" and self.config.device.type == "cuda":
            profile.notes.append("CUDA graphs replay the kernels without the ops that name the convolutions: "
                                 "those are under their kernels' names, unattributed (--compile-mode default names them)")
        return profile

    def lanes(self, n: int) -> list[Lane]:
        """On CPU, one build for the streams' share of the threads, called by every stream: Inductor
        writes the thread count into its C++ kernels' OpenMP pragmas when it compiles, so the timed
        build would run all the threads in each stream whatever the stream's share."""
        c = self.config
        if c.device.type == "cuda" or n == 1:
            return super().lanes(n)
        compiled = self._compile(self.module, self.to_input(torch.zeros(c.input_shape)),
                                 **{"cpp.threads": threads_each(c.threads, n)})

        def call(inputs: Tensor) -> Tensor:
            with torch.inference_mode():
                return compiled(inputs)

        return [Lane(call)] * n

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.compiled(inputs)

    def stages(self) -> list[tuple[str, Callable[[Tensor], Tensor]]] | None:
        """Each stage compiled on its own: fusion stops at stage boundaries, which costs a little
        against the whole-model graph, the price of seeing where the time goes."""
        if self.quantized is not None:  # one exported graph: its stages are not modules to compile apart
            return None
        x, compiled = self.to_input(torch.zeros(self.config.input_shape)), []
        for name, stage in self.module.stages():
            compiled.append((name, self._compile(stage, x)))
            with torch.inference_mode():
                x = stage(x)
        return compiled

    def close_impl(self) -> None:
        del self.compiled, self.module
        torch._dynamo.reset()
