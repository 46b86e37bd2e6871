"""``aoti``: an AOTInductor package (export.aoti), what a PyTorch user ships to start without compiling:
the row's package built and cached like the ONNX export, or the one given with --pt2 (its manifest
checked, and its torch release, CPU instruction sets or GPU held against this machine's).

Its setup is the load, the cold start a user weighs against compile's compile time; the row's note
says how long the load took, and the build where this run built the package.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.artifacts import cached_package, package_path
from bench.runners.base import RunContext, TorchRunner
from export import aoti
from export.manifest import ManifestError, load_manifest
from resnet_perf.util.cli import UsageError

# Measured with torch 2.13 (a Python thread spinning beside a 485 ms call stalled 479 ms): the loaded
# package's Python call holds the GIL throughout, so calls from several threads run one at a time.
GIL_LIMIT = "the loaded package's Python call holds the GIL for the whole call, so a second one waits for it"


class AotiRunner(TorchRunner):
    name = "aoti"
    artifacts = ("aoti",)

    @classmethod
    def unavailable_reason(cls, device: torch.device, options: Any = None) -> str | None:
        return aoti.missing_reason()

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        return True  # the package is compiled from the mixed model's export, its casts included

    @classmethod
    def streams_limit(cls, device: torch.device, options: Any = None) -> tuple[int, str] | None:
        return 1, GIL_LIMIT

    @classmethod
    def check_ready(cls, options: Any, run: RunContext) -> None:
        if "aoti" in run.artifacts:
            try:
                aoti.check_target(load_manifest(run.artifacts["aoti"]), run.device)
            except ManifestError as exc:
                raise UsageError(f"--pt2 {exc}") from None

    @functools.cached_property
    def package_path(self) -> Path:
        return package_path(self.config)

    def build_impl(self) -> None:
        self.built_s = None if "aoti" in self.config.artifacts else cached_package(self.model, self.config)

    def prepare_impl(self) -> None:
        start = time.perf_counter()
        self.package = aoti.load(self.package_path, self.config.device)
        self.load_s = time.perf_counter() - start

    @property
    def timing_note(self) -> str | None:
        built = f"; built in {self.built_s:.0f} s" if self.built_s is not None else ""
        return "; ".join(n for n in (super().timing_note, f"package loaded in {self.load_s:.2f} s{built}") if n)

    def run_facts(self) -> dict | None:
        path = self.package_path
        return {"runtime": "aotinductor", "model_file": path.name, "model_mb": round(path.stat().st_size / 2**20, 1),
                "load_s": self.load_s,
                "build_s": self.built_s, **self.package.get_metadata()}

    def run_impl(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.package(inputs)

    def line_outputs(self, inputs: Tensor) -> tuple[dict[str, Tensor], str]:
        raise NotImplementedError("aoti runs one compiled library that keeps no line outputs (compile's row gives "
                                  "an eager run of the same weights)")

    def stages(self) -> None:
        return None  # one compiled library: no stage runs apart

    def close_impl(self) -> None:
        del self.package
