"""The one precision table: its entries, its lookups, and that what the project writes agrees with it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from export import triton_repo
from export.onnx import ONNX_PRECISIONS, BatchRange, cpu_session, export_onnx, graph_io
from resnet_perf.parity import TOLERANCES
from resnet_perf.precision import PRECISIONS, by_dtype, by_triton


def test_every_precision_once_in_the_contracts_order():
    assert list(PRECISIONS) == ["fp32", "fp16", "bf16", "int8"] == list(TOLERANCES)
    assert all(name == p.name and name in TOLERANCES for name, p in PRECISIONS.items())


@pytest.mark.parametrize(("name", "dtype", "numpy", "onnx_type", "triton"), [
    ("fp32", torch.float32, np.float32, onnx.TensorProto.FLOAT, "FP32"),
    ("fp16", torch.float16, np.float16, onnx.TensorProto.FLOAT16, "FP16"),
    ("bf16", torch.bfloat16, None, onnx.TensorProto.BFLOAT16, "BF16"),
    # A QDQ model takes and returns fp32: int8 happens between its Quantize/Dequantize nodes.
    ("int8", torch.float32, np.float32, onnx.TensorProto.FLOAT, "FP32"),
])
def test_each_precisions_types(name, dtype, numpy, onnx_type, triton):
    p = PRECISIONS[name]
    numpy = None if numpy is None else np.dtype(numpy)
    assert (p.dtype, p.numpy, p.onnx, p.triton) == (dtype, numpy, onnx_type, triton)
    if numpy is not None:
        assert onnx.helper.tensor_dtype_to_np_dtype(p.onnx) == p.numpy
    assert onnx.helper.tensor_dtype_to_np_dtype(p.onnx).name == p.dtype_name


def test_lookups_by_element_type_answer_the_precision_computing_in_it():
    for dtype in (torch.float32, np.float32, np.dtype(np.float32), "float32"):
        assert by_dtype(dtype) is PRECISIONS["fp32"]  # not int8, whose inputs are fp32 too
    assert by_dtype(np.float16) is by_dtype("float16") is PRECISIONS["fp16"]
    assert by_dtype(torch.bfloat16) is by_dtype("bfloat16") is PRECISIONS["bf16"]
    assert by_triton("FP32") is PRECISIONS["fp32"] and by_triton("BF16") is PRECISIONS["bf16"]
    assert by_dtype(np.int8) is None and by_dtype(torch.float64) is None and by_triton("INT8") is None


def test_importing_the_table_needs_no_onnx():
    code = "import sys, resnet_perf.precision; print('onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", ONNX_PRECISIONS)
def test_an_exported_graph_and_its_triton_config_have_the_tables_types(resnet18_32, tmp_path, name):
    p = PRECISIONS[name]
    path = export_onnx(resnet18_32, tmp_path / "m.onnx", batch=BatchRange.static(1), image_size=32, precision=name)
    graph = onnx.load(str(path)).graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [p.onnx, p.onnx]
    io = graph_io(path)
    assert [t["dtype"] for t in io["inputs"] + io["outputs"]] == [p.dtype_name, p.dtype_name]
    manifest = {"batch": {"min": 1, "opt": 1, "max": 1}, **io}
    config = triton_repo.config_pbtxt("m", "onnxruntime_onnx", manifest)
    assert config.count(f"data_type: TYPE_{p.triton}\n") == 2
    # onnxruntime is handed the table's numpy type for this graph: it would refuse any other.
    assert cpu_session(path, name)(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
