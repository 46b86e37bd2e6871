from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run on CUDA where there is a GPU, else on CPU tensors in Triton's interpreter,
# which triton.jit picks when a kernel is defined: the variable must be set before kernels import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import resnet_perf


@pytest.fixture(scope="session")
def resnet18_32():
    """The synthetic resnet18 calibrated for 32 px inputs, shared: tests must not change it."""
    return resnet_perf.build_model("resnet18", image_size=32)
