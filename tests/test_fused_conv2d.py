"""kernels.fused_conv2d against its PyTorch reference: random shapes, every ResNet-50 conv shape,
every dtype, and every bad argument. On CPU the kernel runs in Triton's interpreter."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.aot import plan as aot_plan
from kernels.fused_conv2d import (
    CONFIGS,
    FEW_CHANNELS_PAD,
    fused_conv2d,
    fused_conv2d_reference,
    pack_weight,
    pad_channels,
    plan,
)
from resnet_perf.fused import conv_layers

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Per-dtype tolerances, relative to outputs of order 1: fp32 differs only in summation order (TF32
# is switched off below); fp16 and bf16 differ by one rounding of the output (fp16 ulp at 4 is
# 2**-8, bf16 2**-5) plus the rounding of the fp16/bf16 residual we add before the final cast.
TOLERANCES = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 6e-2, "rtol": 2e-2},
}


@pytest.fixture(autouse=True)
def _ieee_fp32():
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def make_case(gen, n, c, h, w, k, ks, dtype, channels_last=True):
    x = torch.randn(n, c, h, w, generator=gen).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # Scaled so outputs are of order 1 whatever the fan-in: the tolerances above assume that.
    weight = (torch.randn(k, c, ks, ks, generator=gen) / (c * ks * ks) ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(k, generator=gen).to(DEVICE)
    return x, weight, bias


def check(x, weight, bias, stride, padding, with_residual, relu, packed=True, gen=None):
    expected = fused_conv2d_reference(x, weight, bias, stride=stride, padding=padding)
    residual = None
    if with_residual:
        residual = torch.randn(expected.shape, generator=gen).to(DEVICE, x.dtype)
        expected = fused_conv2d_reference(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)
    elif relu:
        expected = torch.relu(expected)
    got = fused_conv2d(x, pack_weight(weight) if packed else weight, bias, stride=stride, padding=padding,
                       residual=residual, relu=relu)
    assert got.shape == expected.shape and got.dtype == x.dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, **TOLERANCES[x.dtype])


# On a GPU each example is a compile of its own (a second or two): fewer there.
@pytest.mark.slow
@settings(max_examples=60 if DEVICE.type == "cpu" else 20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2), c=st.integers(1, 24), k=st.integers(1, 40), h=st.integers(1, 12), w=st.integers(1, 12),
    ks=st.sampled_from([1, 3, 7]), stride=st.sampled_from([1, 2]), padding=st.integers(0, 3),
    with_bias=st.booleans(), with_residual=st.booleans(), relu=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    channels_last=st.booleans(), packed=st.booleans(), seed=st.integers(0, 2**16),
)
def test_random_shapes(n, c, k, h, w, ks, stride, padding, with_bias, with_residual, relu, dtype,
                       channels_last, packed, seed):
    if (h + 2 * padding - ks) < 0 or (w + 2 * padding - ks) < 0:
        return  # the kernel does not fit: covered by test_kernel_larger_than_input
    gen = torch.Generator().manual_seed(seed)
    x, weight, bias = make_case(gen, n, c, h, w, k, ks, dtype, channels_last)
    check(x, weight, bias if with_bias else None, stride, padding, with_residual, relu, packed, gen)


# Every distinct conv of ResNet-50 (and the BasicBlock 3x3s of ResNet-18/34): (C, K, kernel, stride,
# padding), at a small spatial size so the interpreter stays fast.
RESNET_CONVS = [
    (3, 64, 7, 2, 3),
    (64, 64, 1, 1, 0), (64, 64, 3, 1, 1), (64, 256, 1, 1, 0), (256, 64, 1, 1, 0),
    (256, 128, 1, 1, 0), (128, 128, 3, 2, 1), (128, 128, 3, 1, 1), (128, 512, 1, 1, 0), (256, 512, 1, 2, 0),
    (512, 128, 1, 1, 0), (512, 256, 1, 1, 0), (256, 256, 3, 2, 1), (256, 256, 3, 1, 1), (256, 1024, 1, 1, 0),
    (512, 1024, 1, 2, 0), (1024, 256, 1, 1, 0), (1024, 512, 1, 1, 0), (512, 512, 3, 2, 1), (512, 512, 3, 1, 1),
    (512, 2048, 1, 1, 0), (1024, 2048, 1, 2, 0), (2048, 512, 1, 1, 0),
    (64, 128, 3, 2, 1), (64, 128, 1, 2, 0),
]


@pytest.mark.parametrize(("c", "k", "ks", "stride", "padding"), RESNET_CONVS)
def test_resnet_conv_shapes(c, k, ks, stride, padding):
    gen = torch.Generator().manual_seed(c * 7 + k)
    size = 16 if ks == 7 else 4
    x, weight, bias = make_case(gen, 1, c, size, size, k, ks, torch.float32)
    check(x, weight, bias, stride, padding, with_residual=ks == 1, relu=True, gen=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_fp32(dtype):
    """A long reduction (C=512, 3x3) in fp16/bf16 accumulation would drift far past these tolerances."""
    gen = torch.Generator().manual_seed(1)
    x, weight, bias = make_case(gen, 1, 512, 3, 3, 16, 3, dtype)
    check(x, weight, bias, 1, 1, with_residual=True, relu=False, gen=gen)


def _args(**overrides):
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = make_case(gen, 1, 4, 6, 6, 8, 3, torch.float32)
    args = {"x": x, "weight": weight, "bias": bias, "stride": 1, "padding": 1, "residual": None, "relu": False}
    args.update(overrides)
    return args


@pytest.mark.parametrize(("overrides", "error", "match"), [
    ({"x": [[1.0]]}, TypeError, "x must be a torch.Tensor, got list"),
    ({"x": torch.zeros(4, 6, 6)}, ValueError, r"x must be 4-D \(N, C, H, W\)"),
    ({"weight": torch.zeros(8, 4, 3)}, ValueError, r"weight must be 4-D \(K, C, KH, KW\)"),
    ({"x": torch.zeros(1, 4, 6, 6, dtype=torch.float64)}, TypeError, "x must be float32, float16 or bfloat16"),
    ({"weight": torch.zeros(8, 4, 3, 3, dtype=torch.float16)}, TypeError, "weight dtype torch.float16 differs"),
    ({"weight": torch.zeros(8, 5, 3, 3)}, ValueError, "weight has 5 input channels but x has 4"),
    ({"bias": torch.zeros(7)}, ValueError, r"bias must have shape \(8,\)"),
    ({"bias": torch.zeros(8, dtype=torch.int32)}, TypeError, "bias must be a floating-point tensor"),
    ({"stride": 0}, ValueError, "stride must be >= 1"),
    ({"stride": 1.5}, TypeError, "stride must be an int or a pair of ints"),
    ({"padding": -1}, ValueError, "padding must be >= 0"),
    ({"padding": (1, 2, 3)}, TypeError, "padding must be an int or a pair of ints"),
    ({"residual": torch.zeros(1, 8, 5, 5)}, ValueError, r"residual must have the output's shape \(1, 8, 6, 6\)"),
    ({"residual": torch.zeros(1, 8, 6, 6, dtype=torch.int64)}, TypeError, "residual must be float32"),
])
def test_bad_arguments(overrides, error, match):
    args = _args(**overrides)
    for key in ("x", "weight", "bias", "residual"):
        if isinstance(args[key], torch.Tensor):
            args[key] = args[key].to(DEVICE)
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=match):
        fused_conv2d(x, weight, **args)


@pytest.mark.parametrize(("ks", "stride", "c", "x_channels_last", "residual_channels_last", "expected"), [
    (1, 1, 12, True, True, "gemm_tma"),  # ResNet's 1x1 convs: rows of channels_last pixels are evenly strided,
    (1, 1, 13, True, True, "gemm"),      # and TMA takes them where a row is 16-byte aligned (12 fp32, not 13)
    (1, 1, 12, False, True, "conv"),     # NCHW pixels are not rows of a matrix
    (1, 1, 12, True, False, "conv"),     # nor is an NCHW residual
    (1, 2, 12, True, True, "conv"),      # the strided 1x1 downsample skips pixels
    (3, 1, 12, True, True, "conv"),
    (7, 2, 3, True, True, "few_channels"),  # the stem
    (3, 1, 4, False, True, "few_channels"),
])
def test_each_conv_takes_its_path(ks, stride, c, x_channels_last, residual_channels_last, expected):
    gen = torch.Generator().manual_seed(5)
    x, weight, bias = make_case(gen, 2, c, 9, 9, 20, ks, torch.float32, x_channels_last)
    out_size = (9 + 2 * (ks // 2) - ks) // stride + 1
    residual = torch.randn(2, 20, out_size, out_size, generator=gen).to(DEVICE)
    if residual_channels_last:
        residual = residual.contiguous(memory_format=torch.channels_last)
    launch = plan(x, pack_weight(weight), bias, stride=stride, padding=ks // 2, residual=residual, relu=True)
    assert launch.path == expected
    expected_out = fused_conv2d_reference(x, weight, bias, stride=stride, padding=ks // 2, residual=residual, relu=True)
    torch.testing.assert_close(launch.run(), expected_out, **TOLERANCES[torch.float32])


def test_every_resnet50_conv_takes_its_path():
    """Of ResNet-50's 53 convolutions, as the fused model launches them: the stem takes the
    few-channels path, the 33 1x1 stride-1 convs the GEMM (with TMA where rows are 16-byte aligned,
    which all of ResNet's are), the 3x3s and the strided 1x1 downsamples the windowed kernel."""
    paths = {}
    for conv in conv_layers("resnet50", image_size=64, batch_size=2):
        launch = aot_plan(conv, torch.float16)
        paths.setdefault(launch.path, []).append(conv.name)
    assert paths["few_channels"] == ["conv1"]
    assert len(paths["gemm_tma"]) == 33 and "layer1.0.downsample" in paths["gemm_tma"]
    assert len(paths["conv"]) == 19
    assert all(name.endswith("conv2") or name.endswith("downsample") for name in paths["conv"])
    assert set(paths) == {"few_channels", "gemm_tma", "conv"}


# One small problem per path, each spanning several tiles of the smaller configs. Before Hopper a
# GPU has no TMA, and the 1x1 takes the plain GEMM path.
_GEMM = "gemm" if DEVICE.type == "cuda" and torch.cuda.get_device_capability() < (9, 0) else "gemm_tma"
_PATH_CASES = {_GEMM: (24, 40, 1, 1, 0), "conv": (24, 40, 3, 1, 1), "few_channels": (3, 40, 7, 2, 3)}


@pytest.mark.parametrize(("path", "index"), [(path, i) for path in _PATH_CASES for i in range(len(CONFIGS[path]))])
def test_every_config_computes_the_same(path, index):
    """Each autotune config, TMA ones included, with its own tiles, warps and stages: on a GPU each
    compiled kernel; in the interpreter on CPU the masking and indexing each tile shape takes."""
    c, k, ks, stride, padding = _PATH_CASES[path]
    gen = torch.Generator().manual_seed(index)
    x, weight, bias = make_case(gen, 1, c, 20, 20, k, ks, torch.float32)
    out_size = (20 + 2 * padding - ks) // stride + 1
    residual = torch.randn(1, k, out_size, out_size, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    launch = plan(x, pack_weight(weight), bias, stride=stride, padding=padding, residual=residual, relu=True)
    assert launch.path == path
    expected = fused_conv2d_reference(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=True)
    torch.testing.assert_close(launch.run(CONFIGS[path][index].all_kwargs()), expected, **TOLERANCES[torch.float32])


@pytest.mark.autotune
@pytest.mark.parametrize("path", list(_PATH_CASES))
def test_the_autotuned_launch_matches_the_reference(path):
    """fused_conv2d as callers get it: on a GPU the autotuner times every config, then runs the best."""
    c, k, ks, stride, padding = _PATH_CASES[path]
    gen = torch.Generator().manual_seed(11)
    x, weight, bias = make_case(gen, 2, c, 20, 20, k, ks, torch.float16)
    got = fused_conv2d(x, pack_weight(weight), bias, stride=stride, padding=padding, relu=True)
    expected = fused_conv2d_reference(x, weight, bias, stride=stride, padding=padding, relu=True)
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float16])


def test_the_stem_runs_on_its_input_padded_once():
    """The fused model pads the 3-channel input to 4 and keeps padded weights: the kernel then
    uses both as they are, with the same result as the unpadded convolution."""
    gen = torch.Generator().manual_seed(3)
    x, weight, bias = make_case(gen, 2, 3, 18, 18, 16, 7, torch.float16)
    padded_x, padded_w = pad_channels(x, FEW_CHANNELS_PAD), pack_weight(pad_channels(weight, FEW_CHANNELS_PAD))
    launch = plan(padded_x, padded_w, bias, stride=2, padding=3, relu=True)
    assert launch.args["x_ptr"] is padded_x and launch.args["w_ptr"] is padded_w  # no copy per call
    expected = fused_conv2d_reference(x, weight, bias, stride=2, padding=3, relu=True)
    torch.testing.assert_close(launch.run(), expected, **TOLERANCES[torch.float16])


def test_the_package_gives_the_op_as_the_contract_names_it():
    """``from kernels import fused_conv2d`` is the function, callable as the contract writes it; the
    module (plan, CONFIGS, ...) stays importable by its name."""
    import kernels
    from kernels import fused_conv2d as op

    module = importlib.import_module("kernels.fused_conv2d")
    assert callable(op) and op is module.fused_conv2d and kernels.fused_conv2d is op
    assert module is sys.modules["kernels.fused_conv2d"] and module.plan is plan
    gen = torch.Generator().manual_seed(4)
    x, weight, bias = make_case(gen, 1, 3, 5, 5, 4, 3, torch.float32)
    residual = torch.randn(1, 4, 5, 5, generator=gen).to(DEVICE)
    got = op(x, weight, bias, stride=1, padding=1, residual=residual, relu=True)
    expected = fused_conv2d_reference(x, weight, bias, stride=1, padding=1, residual=residual, relu=True)
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


def test_kernel_larger_than_input():
    x = torch.zeros(1, 3, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="the 7x7 kernel does not fit the 4x4 input"):
        fused_conv2d(x, torch.zeros(8, 3, 7, 7, device=DEVICE))


def test_cpu_tensor_without_the_interpreter_is_a_clear_error():
    code = ("import torch\nfrom kernels.fused_conv2d import fused_conv2d\n"
            "try:\n    fused_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3))\n"
            "except ValueError as e:\n    print(e)\n")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "x is a CPU tensor: Triton kernels run on CUDA tensors, or on CPU tensors only under TRITON_INTERPRET=1" in proc.stdout
