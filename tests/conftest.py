from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run on CUDA where there is a GPU, else on CPU tensors in Triton's interpreter,
# which triton.jit picks when a kernel is defined: the variable must be set before kernels import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import resnet_perf

# Module-scoped fixtures that take many seconds on 2 cores (a compile of every kernel config, the GPU
# check's dry run, an exported artifact, a served model): every test using one is slow, however quick
# its own body, or `pytest -m "not slow"` would build them anyway.
SLOW_FIXTURES = {"compiled", "dry_run", "package", "sweep", "two_runs", "onnx_export", "int8_ir", "served"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _one_config_per_kernel(request, monkeypatch):
    """On a GPU, each kernel path runs its first autotune config only: autotuning would compile and
    time every config for every new shape a test makes. test_every_config_computes_the_same runs
    each config, and tests marked ``autotune`` the autotuner itself."""
    if not torch.cuda.is_available() or request.node.get_closest_marker("autotune"):
        return
    from kernels.fused_conv2d import KERNELS

    for kernel in KERNELS.values():
        monkeypatch.setattr(kernel, "configs", kernel.configs[:1])


@pytest.fixture(scope="session")
def resnet18_32():
    """The synthetic resnet18 calibrated for 32 px inputs, shared: tests must not change it."""
    return resnet_perf.build_model("resnet18", image_size=32)
