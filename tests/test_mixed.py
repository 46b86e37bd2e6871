"""resnet_perf.mixed: a model in fp16 with chosen layers kept in fp32. A kept layer's output stays
fp32 through what joins it and no further; its export holds the same casts; a layer that overflows
fp16 is mended by keeping it and its reader, and by neither alone."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

import resnet_perf
from export.onnx import BatchRange, cpu_session, export_onnx
from export.quantize import layer_names
from resnet_perf import parity, parity_inputs
from resnet_perf.mixed import batchnorm_of, keep_fp32

PAIR = ("layer2.0.conv1", "layer2.0.conv2")


@pytest.fixture(scope="module")
def outlier(resnet18_32):
    """ResNet-18 whose layer2.0.bn1 channel 0 reaches 1.4e5 on the parity inputs, past fp16's
    65504, its next conv reading it 3e4x weaker: fp32 stays finite, fp16 overflows at layer2.0.conv1."""
    model = copy.deepcopy(resnet18_32)
    with torch.no_grad():
        block = model.layer2[0]
        block.bn1.weight[0] *= 3e4
        block.bn1.bias[0] = 6e4
        block.conv2.weight[:, 0] /= 3e4
    return model


def figures(model, keep, inputs) -> dict:
    with torch.inference_mode():
        reference = model(inputs)
        halved = keep_fp32(model, keep, torch.float16)(inputs.half())
    return parity.compare(reference, halved.float(), "fp16")


def test_batchnorm_of_names_the_norm_each_convolution_is_folded_with():
    assert batchnorm_of("conv1") == "bn1"
    assert batchnorm_of("layer3.1.conv3") == "layer3.1.bn3"
    assert batchnorm_of("layer2.0.downsample.0") == "layer2.0.downsample.1"
    assert batchnorm_of("fc") is None


def test_kept_layers_and_their_norms_are_fp32_and_the_rest_fp16(resnet18_32):
    model = keep_fp32(resnet18_32, ["layer2.0.conv2", "fc"], torch.float16)
    fp32 = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {"layer2.0.conv2.weight", "layer2.0.bn2.weight", "layer2.0.bn2.bias", "fc.weight", "fc.bias"}
    assert all(p.dtype == torch.float16 for name, p in model.named_parameters() if name not in fp32)
    assert resnet18_32.fc.weight.dtype == torch.float32  # the model given is not changed
    with pytest.raises(ValueError, match="--keep-fp layer2.0.bn2,relu: no such layer"):
        keep_fp32(resnet18_32, ["layer2.0.bn2", "relu"], torch.float16)


def test_nothing_kept_is_the_plain_fp16_model(resnet18_32):
    x = parity_inputs(4, 32).half()
    plain = copy.deepcopy(resnet18_32).half()
    with torch.inference_mode():
        torch.testing.assert_close(keep_fp32(resnet18_32, (), torch.float16)(x), plain(x), rtol=0, atol=0)


def dtypes_in_block(model, block, x) -> dict:
    """The types the block's main path ends in, its ReLU computes in (each call), and it hands on."""
    seen = {"relu": []}
    last = block.bn3 if hasattr(block, "bn3") else block.bn2
    last.register_forward_hook(lambda m, args, out: seen.update(last_norm=out.dtype))
    block.relu.register_forward_hook(lambda m, args, out: seen["relu"].append(out.dtype))
    block.register_forward_hook(lambda m, args, out: seen.update(block=out.dtype))
    with torch.inference_mode():
        seen["model"] = model(x).dtype
    return seen


def test_a_kept_layers_output_stays_fp32_to_the_end_of_its_block(resnet18_32):
    """conv2 kept: its add and the ReLU after it compute in fp32, the block hands fp16 on; conv1's
    ReLU, before it, stays fp16; the model returns fp16."""
    model = keep_fp32(resnet18_32, ["layer2.0.conv2"], torch.float16)
    seen = dtypes_in_block(model, model.layer2[0], parity_inputs(2, 32).half())
    half, full = torch.float16, torch.float32
    assert seen == {"last_norm": full, "relu": [half, full], "block": half, "model": half}


def test_a_kept_shortcut_keeps_its_blocks_add_in_fp32():
    """The add is in place, in the main path's type: keeping the shortcut alone must widen that too
    (a Bottleneck, resnet50's block, whose ReLU is called three times)."""
    model = resnet_perf.build_model("resnet50", image_size=32)
    kept = keep_fp32(model, ["layer3.0.downsample.0"], torch.float16)
    seen = dtypes_in_block(kept, kept.layer3[0], parity_inputs(1, 32).half())
    half, full = torch.float16, torch.float32
    assert seen == {"last_norm": full, "relu": [half, half, full], "block": half, "model": half}


def test_an_overflowing_layer_is_mended_by_keeping_it_and_its_reader_not_either_alone(outlier):
    x = parity_inputs(8, 32)
    assert not figures(outlier, (), x)["passed"]
    assert not figures(outlier, PAIR[:1], x)["passed"]  # its fp32 output is cast to fp16 for conv2: inf
    assert not figures(outlier, PAIR[1:], x)["passed"]  # conv1's fp16 output overflowed already
    assert figures(outlier, PAIR, x)["passed"]


@pytest.mark.slow
def test_the_fp16_export_keeps_the_same_layers_between_casts(outlier, tmp_path):
    """The kept convolutions' weights are fp32 in the file, three casts carry the values in and out
    (the block's input, the shortcut into the fp32 add, the block's output), the nodes keep their
    module names, and onnxruntime computes the mended model within fp16's tolerance."""
    x = parity_inputs(8, 32)
    with torch.inference_mode():
        reference = outlier(x)
    both = export_onnx(outlier, tmp_path / "both.onnx", batch=BatchRange.static(8), image_size=32, precision="fp16",
                       keep_fp=PAIR)
    graph = onnx.load(str(both)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    by_module = {module: node for node, module in layer_names(both).items()}
    nodes = {n.name: n for n in graph.node}
    for name, node in by_module.items():
        want = onnx.TensorProto.FLOAT if name in PAIR else onnx.TensorProto.FLOAT16
        assert types[nodes[node].input[1]] == want, name
    assert [n.op_type for n in graph.node].count("Cast") == 3
    io_types = {value.type.tensor_type.elem_type for value in (*graph.input, *graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT16}
    assert parity.compare(reference, parity.predict(cpu_session(both, "fp16"), x, 8), "fp16")["passed"]
    # conv2 alone: the explicit cast into it stores conv1's overflowed output in fp16, as on a GPU.
    one = export_onnx(outlier, tmp_path / "one.onnx", batch=BatchRange.static(8), image_size=32, precision="fp16",
                      keep_fp=PAIR[1:])
    assert not parity.compare(reference, parity.predict(cpu_session(one, "fp16"), x, 8), "fp16")["passed"]
    # Nothing kept: onnxruntime's CPU provider runs the chain of fp16 nodes in fp32 between its own
    # casts, so the overflow never happens there; why the fp16 bisection is judged by PyTorch.
    plain = export_onnx(outlier, tmp_path / "plain.onnx", batch=BatchRange.static(8), image_size=32, precision="fp16")
    assert parity.compare(reference, parity.predict(cpu_session(plain, "fp16"), x, 8), "fp16")["passed"]
    with pytest.raises(ValueError, match="keep_fp: a fp32 export"):
        export_onnx(outlier, tmp_path / "x.onnx", batch=BatchRange.static(8), image_size=32, keep_fp=PAIR)
