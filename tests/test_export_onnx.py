"""ONNX export: onnx's checker accepts the file, and onnxruntime reproduces the PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from resnet_perf import parity_inputs


@pytest.fixture(scope="module")
def exported(resnet18_32, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    export_onnx(resnet18_32, path, batch_size=4, image_size=32)
    return path


def test_checker_and_signature(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [4, 3, 32, 32]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [4, 1000]
    assert model.opset_import[0].version == 18


def test_onnxruntime_reproduces_pytorch(resnet18_32, exported):
    x = parity_inputs(4, 32)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = resnet18_32(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_export_leaves_no_temporary_and_no_partial_file(resnet18_32, tmp_path):
    with pytest.raises(ValueError, match="supports fp32, fp16"):
        export_onnx(resnet18_32, tmp_path / "x.onnx", batch_size=1, image_size=32, precision="bf16")
    assert list(tmp_path.iterdir()) == []


def test_fp16_export(resnet18_32, tmp_path):
    path = export_onnx(resnet18_32, tmp_path / "h.onnx", batch_size=2, image_size=32, precision="fp16")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert resnet18_32.conv1.weight.dtype == torch.float32  # the model given is not changed
