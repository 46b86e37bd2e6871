"""TensorRT engines for real: built, proven, refused when they do not fit, and benchmarked.

These need TensorRT and a CUDA GPU, and skip, saying which is missing, everywhere else (our CI and
development machines have neither; tests/test_tensorrt_api.py is what checks our TensorRT code there).
"""

from __future__ import annotations

import json

import pytest
import torch

import export.__main__ as export_cli
from bench.runners import RunConfig
from bench.runners.tensorrt import TensorRTOptions, TensorRTRunner
from export import tensorrt
from export.manifest import ManifestError, manifest_path
from export.quantize import Calibration
from resnet_perf import parity_inputs
from resnet_perf.parity import compare, predict
from resnet_perf.synthetic import quantization_inputs

pytestmark = [
    pytest.mark.skipif(tensorrt.missing_reason() is not None, reason=tensorrt.INSTALL),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU"),
]
SMALL = ["--model", "resnet18", "--image-size", "32"]


@pytest.fixture(scope="module")
def engine_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    cache = out / "timing.cache"
    assert export_cli.main([*SMALL, "--format", "tensorrt", "--dynamic-batch", "1:2:4", "--output", str(out),
                            "--timing-cache", str(cache)]) == 0
    return out / "resnet18-fp32.plan", cache


def test_engine_manifest_records_its_target(engine_export):
    plan, cache = engine_export
    manifest = json.loads(manifest_path(plan).read_text())
    assert manifest["format"] == "tensorrt" and manifest["versions"]["tensorrt"] == tensorrt.version()
    assert manifest["gpu"] == tensorrt.gpu_target(torch.device("cuda"))
    assert manifest["tensorrt"]["profile"]["input"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32],
                                                        "max": [4, 3, 32, 32]}
    assert manifest["parity"]["passed"] and set(manifest["parity"]["batches"]) == {"1", "4"}
    assert cache.stat().st_size > 0


def test_engine_runs_every_batch_in_its_profile(engine_export):
    engine = tensorrt.Engine(engine_export[0], torch.device("cuda"))
    model = export_cli.resnet_perf.build_model("resnet18", image_size=32)
    x = parity_inputs(8, 32)
    with torch.no_grad():
        reference = model(x)
    for n in (1, 3, 4):
        logits = predict(lambda b: engine(b.cuda().contiguous()).float().cpu(), x, n)
        assert compare(reference, logits, "fp32")["passed"]


def test_an_engine_for_another_tensorrt_version_is_refused(engine_export, tmp_path):
    plan, _ = engine_export
    copy = tmp_path / plan.name
    copy.write_bytes(plan.read_bytes())
    manifest = json.loads(manifest_path(plan).read_text())
    manifest["versions"]["tensorrt"] = "9.0.0"
    manifest_path(copy).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"built with TensorRT 9.0.0, this is TensorRT {tensorrt.version()}"):
        tensorrt.Engine(copy, torch.device("cuda"))


@pytest.mark.parametrize(("precision", "cuda_graph"), [("fp32", False), ("fp16", True), ("int8", False)])
def test_runner_builds_caches_and_matches_the_reference(tmp_path, precision, cuda_graph):
    model = export_cli.resnet_perf.build_model("resnet18", image_size=32)
    calibration = Calibration(quantization_inputs(32, 32)) if precision == "int8" else None
    config = RunConfig(model_id="resnet18-test", device=torch.device("cuda"), precision=precision, batch_size=4,
                       image_size=32, threads=1, cache_dir=tmp_path, options=TensorRTOptions(cuda_graph), calibration=calibration)
    x = parity_inputs(8, 32)
    with torch.no_grad():
        reference = model(x)
    with TensorRTRunner(model, config) as runner:
        assert runner.plan_path().exists() and manifest_path(runner.plan_path()).exists()
        logits = predict(runner.infer, x, 4)
    assert compare(reference, logits, precision)["passed"]


def test_layer_profile_maps_every_engine_layer_to_modules(tmp_path):
    import bench.__main__ as bench_cli

    path = tmp_path / "run.json"
    assert bench_cli.main([*SMALL, "--device", "cuda", "--backend", "tensorrt", "--batch-size", "2", "--iters", "2",
                           "--profile", "layers", "--profile-dir", str(tmp_path / "traces"), "--json", str(path),
                           "--cache-dir", str(tmp_path / "cache")]) == 0
    profile = json.loads(path.read_text())["results"][0]["profile"]["layers"]
    assert len(profile["lines"]) == 23 and profile["notes"] == []  # every conv, both pools and fc, exact names
    assert profile["unattributed_ms"] < 0.2 * profile["layer_ms"]
    assert json.loads((tmp_path / "traces").glob("*.json").__next__().read_text())["onnx_nodes"]


def test_layer_parity_marks_every_line_and_fp32_lines_agree(tmp_path):
    import bench.__main__ as bench_cli

    path = tmp_path / "run.json"
    assert bench_cli.main([*SMALL, "--device", "cuda", "--backend", "tensorrt", "--precision", "fp32,int8",
                           "--batch-size", "2", "--iters", "2", "--parity", "layers", "--json", str(path),
                           "--cache-dir", str(tmp_path / "cache")]) == 0
    fp32, int8 = json.loads(path.read_text())["results"]
    for row in (fp32, int8):
        assert len(row["parity"]["layers"]["lines"]) == 23, row["parity"]["layers"]
    # TF32 convolutions: within fp32's tolerance, not eager's 1e-5.
    assert fp32["parity"]["layers"]["first_outside"] is None
    assert "as the next layer reads it (requantized)" in int8["parity"]["layers"]["how"]
