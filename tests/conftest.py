from __future__ import annotations

import pytest

import resnet_perf


@pytest.fixture(scope="session")
def resnet18_32():
    """The synthetic resnet18 calibrated for 32 px inputs, shared: tests must not change it."""
    return resnet_perf.build_model("resnet18", image_size=32)
