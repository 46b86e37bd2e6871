"""``compile``: the model through torch.compile (TorchInductor), compile time reported as setup."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.layers.compiled import profile_compiled
from bench.layers.profile import LayerProfile
from bench.runners.base import CUDA_GRAPH_LIMIT, RunContext, TorchRunner
from bench.streams import Lane, threads_each

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileOptions:
    mode: str = "default"  # torch.compile's mode


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
    def streams_limit(cls, device: torch.device, options: Any = None) -> tuple[int, str] | None:
        if device.type == "cuda" and (options or CompileOptions()).mode != "default":
            return 1, CUDA_GRAPH_LIMIT
        return None

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        # Inductor compiles its CPU kernels as C++; it looks for $CXX, then g++ (or clang++).
        compilers = (os.environ.get("CXX"), "g++", "clang++", "c++")
        if device.type == "cpu" and not any(c and shutil.which(c) for c in compilers):
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

    def prepare_impl(self) -> None:
        self.module = self.make_module()
        self.compiled = self._compile(self.module, self.to_input(torch.zeros(self.config.input_shape)))

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
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            compiled(example)
        return compiled

    def profile_layers(self, inputs: Tensor, calls: int, trace: Path | None) -> LayerProfile:
        """On CPU a second build of the same graph, whose C++ kernels report themselves to the
        profiler (a record_function each, which the timed build goes without); on CUDA the
        profiler sees every kernel of the timed build."""
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

    def stages(self) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
        """Each stage compiled on its own: fusion stops at stage boundaries, which costs a little
        against the whole-model graph, the price of seeing where the time goes."""
        x, compiled = self.to_input(torch.zeros(self.config.input_shape)), []
        for name, stage in self.module.stages():
            compiled.append((name, self._compile(stage, x)))
            with torch.inference_mode():
                x = stage(x)
        return compiled

    def close_impl(self) -> None:
        del self.compiled, self.module
        torch._dynamo.reset()
