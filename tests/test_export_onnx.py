"""ONNX export: onnx's checker accepts the file, and onnxruntime reproduces the PyTorch model, at a
static batch size and across a dynamic batch axis."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import INPUT_NAME, OUTPUT_NAME, BatchRange, export_onnx, graph_io
from resnet_perf import parity_inputs


@pytest.fixture(scope="module")
def exported(resnet18_32, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    export_onnx(resnet18_32, path, batch=BatchRange.static(4), image_size=32)
    return path


@pytest.mark.slow
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
        export_onnx(resnet18_32, tmp_path / "x.onnx", batch=BatchRange.static(1), image_size=32, precision="bf16")
    assert list(tmp_path.iterdir()) == []


def test_fp16_export(resnet18_32, tmp_path):
    path = export_onnx(resnet18_32, tmp_path / "h.onnx", batch=BatchRange.static(2), image_size=32, precision="fp16")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert resnet18_32.conv1.weight.dtype == torch.float32  # the model given is not changed


@pytest.mark.slow
def test_dynamic_batch_axis_runs_every_size_in_range(resnet18_32, tmp_path):
    path = export_onnx(resnet18_32, tmp_path / "d.onnx", batch=BatchRange.parse("1:2:5"), image_size=32)
    io = graph_io(path)
    assert io["inputs"] == [{"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert io["outputs"] == [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", 1000]}]
    assert io["dynamic_axes"] == {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = parity_inputs(5, 32)
    with torch.no_grad():
        expected = resnet18_32(x).numpy()
    for n in (1, 3, 5):
        (got,) = session.run(None, {INPUT_NAME: x[:n].numpy()})
        np.testing.assert_allclose(got, expected[:n], rtol=1e-4, atol=1e-4)


def test_static_export_has_no_dynamic_axes(exported):
    assert graph_io(exported)["dynamic_axes"] == {}


@pytest.mark.parametrize(("text", "message"), [
    ("8:4:16", "need 1 <= MIN <= OPT <= MAX"),
    ("0:1:2", "need 1 <= MIN <= OPT <= MAX"),
    ("1:2", "is not MIN:OPT:MAX"),
    ("a:b:c", "is not MIN:OPT:MAX"),
    ("4:4:4", "MIN equals MAX, which is one static size (use --batch-size 4)"),
])
def test_bad_batch_ranges(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BatchRange.parse(text)


def test_batch_range():
    r = BatchRange.parse("1:8:32")
    assert (r.min, r.opt, r.max, r.dynamic, str(r)) == (1, 8, 32, True, "1:8:32")
    assert 1 in r and 32 in r and 33 not in r
    assert not BatchRange.static(4).dynamic and str(BatchRange.static(4)) == "4"


@pytest.mark.slow
def test_the_file_is_the_opset_asked_for_or_no_file(resnet18_32, tmp_path):
    """Asked for an opset it cannot convert down to, torch's exporter kept 18 and said so only in a
    traceback printed as a warning; the manifest then named the opset asked for."""
    path = export_onnx(resnet18_32, tmp_path / "m19.onnx", batch=BatchRange.static(2), image_size=32, opset=19)
    assert onnx.load(str(path)).opset_import[0].version == 19
    with pytest.raises(ValueError, match="the exporter wrote opset 18, not the 17 asked for"):
        export_onnx(resnet18_32, tmp_path / "m17.onnx", batch=BatchRange.static(2), image_size=32, opset=17)
    assert not (tmp_path / "m17.onnx").exists()
