"""BatchNorm folding: the pure formula against conv + BN in fp64, and the model-level fold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_perf import build_model, fold_batchnorm, fold_conv_bn_weights, parity_inputs
from resnet_perf.fold import fold_conv_bn


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fold_formula_matches_conv_then_batchnorm_in_fp64(conv_bias, affine):
    gen = torch.Generator().manual_seed(0)
    c_in, c_out = 5, 7
    x = torch.randn(2, c_in, 9, 9, generator=gen, dtype=torch.float64)
    w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64) if conv_bias else None
    mean = torch.randn(c_out, generator=gen, dtype=torch.float64)
    var = torch.rand(c_out, generator=gen, dtype=torch.float64) + 0.1
    gamma = torch.randn(c_out, generator=gen, dtype=torch.float64) if affine else None
    beta = torch.randn(c_out, generator=gen, dtype=torch.float64) if affine else None

    expected = F.batch_norm(F.conv2d(x, w, b, padding=1), mean, var, gamma, beta, training=False, eps=1e-5)
    fw, fb = fold_conv_bn_weights(w, b, mean, var, 1e-5, gamma, beta)
    torch.testing.assert_close(F.conv2d(x, fw, fb, padding=1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fold_formula_keeps_the_weight_dtype(dtype):
    w = torch.randn(4, 3, 1, 1).to(dtype)
    fw, fb = fold_conv_bn_weights(w, None, torch.zeros(4), torch.ones(4), 1e-5, None, None)
    assert fw.dtype == dtype and fb.dtype == dtype


def test_fold_refuses_training_mode():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="eval-mode"):
        fold_conv_bn(conv, bn)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_folded_model_matches_and_original_is_untouched(name):
    model = build_model(name, image_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not folded.training

    x = parity_inputs(8, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    # Only the rounding of a different fp32 summation remains (measured ~5e-6 of logits of ~20).
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_folded_model_matches_in_fp64_to_rounding():
    model = build_model("resnet18", image_size=32).double()
    x = parity_inputs(4, 32).double()
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-10, atol=1e-10)


def test_a_batchnorm_without_a_conv_is_an_error():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)).eval()
    with pytest.raises(ValueError, match="no conv to fold BatchNorm '0'"):
        fold_batchnorm(model)
