"""resnet_perf.fuse: the fused ResNet against the reference model (Triton interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnet_perf
from resnet_perf import build_model, fuse, parity_inputs
from resnet_perf.parity import compare

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_fused_model_matches_the_reference_in_fp32(name):
    model = build_model(name, image_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model).to(DEVICE)

    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in fused.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    x = parity_inputs(4, 32)
    with torch.no_grad():
        expected = model(x)
        got = fused(x.to(DEVICE).contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_model_in_low_precision_passes_parity(resnet18_32, dtype):
    x = parity_inputs(8, 32)
    with torch.no_grad():
        expected = resnet18_32(x)
        got = fuse(resnet18_32, dtype).to(DEVICE)(x.to(DEVICE, dtype)).float().cpu()
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    assert compare(expected, got, precision)["passed"]


@pytest.mark.slow
def test_fused_model_compiles_whole(resnet18_32):
    """The kernel is a custom op with a fake implementation: Dynamo traces the fused model in one
    graph (fullgraph=True fails on any break) and the compiled model gives the same numbers."""
    fused = fuse(resnet18_32).to(DEVICE)
    x = parity_inputs(2, 32).to(DEVICE).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fused(x), rtol=0, atol=0)


def test_fuse_wants_a_resnet():
    with pytest.raises(TypeError, match="fuse expects a resnet_perf ResNet, got Sequential"):
        fuse(nn.Sequential(nn.Conv2d(3, 3, 1)))
    assert resnet_perf.fuse is fuse
