"""The cache under --cache-dir is trusted no more than a file the user gives: each cached ONNX export,
quantized model, engine and calibration is checked (its manifest, its sha256, what it was built
for) before use, and a damaged entry is rebuilt after a one-line notice naming it. Manifests whose
fields are not what readers take them for are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import bench.__main__ as bench_cli
import bench.artifacts
from bench.runners import RunConfig
from bench.runners.onnxruntime import OnnxRuntimeRunner
from export.manifest import ManifestError, load_manifest, manifest_path, write_manifest
from export.quantize import Calibration, quantize_onnx
from resnet_perf import parity_inputs
from resnet_perf.parity import compare, predict
from resnet_perf.synthetic import quantization_inputs

CPU = torch.device("cpu")
CALIBRATION = Calibration(quantization_inputs(16, 32))


def config(cache_dir, precision="fp32", device=CPU, **kw):
    return RunConfig(model_id="resnet18-test", device=device, precision=precision, batch_size=2, image_size=32,
                     threads=torch.get_num_threads(), cache_dir=cache_dir,
                     calibration=CALIBRATION if precision == "int8" else None, **kw)


def cache_of(tmp_path, pristine):
    """A copy of a cache built once, to damage."""
    return shutil.copytree(pristine, tmp_path / "cache")


def prepared(model, cache_dir, precision="fp32"):
    """Prepare a runner on ``cache_dir`` and check its logits against ``model``; returns the file it ran."""
    x = parity_inputs(4, 32)
    with torch.no_grad():
        reference = model(x)
    with OnnxRuntimeRunner(model, config(cache_dir, precision)) as runner:
        logits = predict(runner.infer, x, 2)
        path = runner.onnx_path()
    assert compare(reference, logits, precision)["passed"]
    return path


def notices(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if ": cache " in line]


@pytest.fixture(scope="module")
def fp32_cache(resnet18_32, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fp32-cache")
    prepared(resnet18_32, cache)
    return cache


@pytest.fixture(scope="module")
def int8_cache(resnet18_32, fp32_cache, tmp_path_factory):
    cache = shutil.copytree(fp32_cache, tmp_path_factory.mktemp("int8") / "cache")
    prepared(resnet18_32, cache, "int8")
    return cache


@pytest.fixture
def exports(resnet18_32, fp32_cache, monkeypatch):
    """The runner's export_onnx as a copy of the fp32 export the fixture made (the bytes it writes,
    without its seconds); the paths it was called for, so that a test sees what was rebuilt."""
    made = OnnxRuntimeRunner(resnet18_32, config(fp32_cache)).onnx_path()
    calls = []

    def export_onnx(model, path, *, batch, image_size, precision, keep_fp):
        assert (batch.opt, image_size, precision, keep_fp) == (2, 32, "fp32", ())
        calls.append(path)
        shutil.copyfile(made, path)

    monkeypatch.setattr(bench.artifacts, "export_onnx", export_onnx)
    return calls


@pytest.mark.slow
def test_first_prepare_caches_the_export_with_its_manifest(resnet18_32, fp32_cache):
    path = OnnxRuntimeRunner(resnet18_32, config(fp32_cache)).onnx_path()
    manifest = load_manifest(path)  # the sha256 checks out
    assert (manifest["format"], manifest["model"], manifest["precision"]) == ("onnx", "resnet18-test", "fp32")
    assert manifest["image_size"] == 32 and manifest["batch"] == {"min": 2, "opt": 2, "max": 2}


def test_an_intact_cache_is_used_as_it_is(resnet18_32, fp32_cache, tmp_path, capfd, exports):
    cache = cache_of(tmp_path, fp32_cache)
    path = OnnxRuntimeRunner(resnet18_32, config(cache)).onnx_path()
    before = (path.stat().st_mtime_ns, manifest_path(path).stat().st_mtime_ns)
    capfd.readouterr()
    assert prepared(resnet18_32, cache) == path
    assert (path.stat().st_mtime_ns, manifest_path(path).stat().st_mtime_ns) == before
    assert exports == [] and notices(capfd) == []


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_manifest(path, **fields):
    document = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps({**document, **fields}))


@pytest.mark.parametrize(("damage", "reason"), [
    (truncate, "does not match its manifest: sha256"),
    (lambda path: manifest_path(path).unlink(), "no manifest"),  # as caches of earlier versions have
    (lambda path: edit_manifest(path, sha256="0" * 64), "does not match its manifest: sha256"),
    (lambda path: manifest_path(path).write_text("{"), "not a readable manifest"),
    (lambda path: edit_manifest(path, precision="fp16"), "its manifest records precision 'fp16'"),
], ids=["truncated", "no-manifest", "sha256-edited", "manifest-unreadable", "other-precision"])
def test_a_damaged_export_is_rebuilt_with_a_notice(resnet18_32, fp32_cache, tmp_path, capfd, exports, damage,
                                                   reason):
    cache = cache_of(tmp_path, fp32_cache)
    path = OnnxRuntimeRunner(resnet18_32, config(cache)).onnx_path()
    damage(path)
    capfd.readouterr()
    assert prepared(resnet18_32, cache) == path
    (notice,) = notices(capfd)
    assert f"cache {path}" in notice and reason in notice and notice.endswith(": rebuilding it"), notice
    assert exports == [path] and load_manifest(path)["precision"] == "fp32"  # rebuilt once, with its manifest


@pytest.mark.slow
def test_a_damaged_int8_model_is_quantized_again_from_the_intact_fp32_export(resnet18_32, int8_cache, tmp_path,
                                                                              capfd, exports):
    cache = cache_of(tmp_path, int8_cache)
    int8 = OnnxRuntimeRunner(resnet18_32, config(cache, "int8")).onnx_path()
    fp32 = OnnxRuntimeRunner(resnet18_32, config(cache)).onnx_path()
    kept = fp32.stat().st_mtime_ns
    truncate(int8)
    capfd.readouterr()
    assert prepared(resnet18_32, cache, "int8") == int8
    (notice,) = notices(capfd)
    assert f"cache {int8} does not match its manifest" in notice
    assert load_manifest(int8)["quantization"]["flavour"] == "onnxruntime"
    assert exports == [] and fp32.stat().st_mtime_ns == kept  # its source was not touched


def test_a_damaged_fp32_source_is_rebuilt_before_quantizing(resnet18_32, int8_cache, tmp_path, capfd, exports):
    cache = cache_of(tmp_path, int8_cache)
    int8 = OnnxRuntimeRunner(resnet18_32, config(cache, "int8")).onnx_path()
    fp32 = OnnxRuntimeRunner(resnet18_32, config(cache)).onnx_path()
    manifest_path(int8).unlink()
    truncate(fp32)
    capfd.readouterr()
    prepared(resnet18_32, cache, "int8")
    int8_notice, fp32_notice = notices(capfd)
    assert f"cache {int8}: no manifest" in int8_notice and f"cache {fp32} does not match its manifest" in fp32_notice
    assert exports == [fp32] and load_manifest(fp32)["precision"] == "fp32"


def other_method(path):
    document = json.loads(path.read_text())
    document["calibration_method"]["value"] = "CalibrationMethod.Entropy"
    path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def calibrated(resnet18_32, fp32_cache, tmp_path_factory):
    """A model quantized once, with its calibration cache: (the fp32 source, the int8 model, the cache)."""
    source = OnnxRuntimeRunner(resnet18_32, config(fp32_cache)).onnx_path()
    folder = tmp_path_factory.mktemp("calibrated")
    info = quantize_onnx(source, folder / "int8.onnx", CALIBRATION, cache_dir=folder / "calibration")
    return source, folder / "int8.onnx", Path(info["calibration_cache"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate, lambda path: path.write_text("[]"), other_method],
                         ids=["truncated", "not-ranges", "other-method"])
def test_a_damaged_calibration_cache_is_computed_again(calibrated, tmp_path, capfd, damage):
    source, quantized, made = calibrated
    cache = shutil.copytree(made.parent, tmp_path / "calibration") / made.name
    damage(cache)
    capfd.readouterr()
    quantize_onnx(source, tmp_path / "int8.onnx", CALIBRATION, cache_dir=tmp_path / "calibration")
    (notice,) = notices(capfd)
    assert f"cache {cache}: not a readable calibration cache (" in notice and notice.endswith(": rebuilding it")
    assert json.loads(cache.read_text())["data"] == json.loads(made.read_text())["data"]  # the same ranges again
    assert (tmp_path / "int8.onnx").read_bytes() == quantized.read_bytes()


def test_a_damaged_cached_engine_is_rebuilt(resnet18_32, tmp_path, capfd, monkeypatch):
    """TensorRT does not run here: its build and load are stand-ins, the cache policy is bench.artifacts'."""
    from bench.runners.tensorrt import TensorRTRunner
    from export import tensorrt

    builds = []

    def export_engine(model, plan, settings, device, calibration=None, calibration_cache=None):
        builds.append(plan)
        plan.parent.mkdir(parents=True, exist_ok=True)
        plan.write_bytes(b"a serialized engine")
        return {"format": "tensorrt", "versions": {"tensorrt": "10.9.0"}}

    monkeypatch.setattr(tensorrt, "version", lambda: "10.9.0")
    monkeypatch.setattr(tensorrt, "gpu_target", lambda device: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    monkeypatch.setattr(tensorrt, "export_engine", export_engine)
    monkeypatch.setattr(tensorrt, "Engine", lambda path, device: load_manifest(path))
    cfg = config(tmp_path, "fp16", device=torch.device("cuda"))

    def prepare():
        runner = TensorRTRunner(resnet18_32, cfg)
        runner.prepare()
        runner.close()
        return runner.plan_path()

    plan = prepare()
    assert builds == [plan] and load_manifest(plan)["batch"] == {"min": 2, "opt": 2, "max": 2}
    prepare()
    assert len(builds) == 1
    plan.write_bytes(b"a serialized engin")
    capfd.readouterr()
    prepare()
    (notice,) = notices(capfd)
    assert len(builds) == 2 and f"cache {plan} does not match its manifest" in notice


EXPORTED = {"format": "onnx", "model": "resnet18", "weights": {"source": "synthetic", "seed": 0},
            "weights_digest": "0" * 64, "precision": "fp32", "image_size": 32,
            "batch": {"min": 1, "opt": 2, "max": 4}}


def artifact_with(tmp_path, **fields):
    """A file with an export's manifest: the manifest is refused before the file is read."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an onnx graph")
    write_manifest(path, {**EXPORTED, **fields})
    return path


BAD_FIELDS = [
    ({"batch": {"min": "1", "opt": "2", "max": "4"}}, "batch.min is '1', not an integer"),
    ({"batch": {"min": 1, "opt": 2.0, "max": 4}}, "batch.opt is 2.0, not an integer"),
    ({"batch": {"min": True, "opt": 2, "max": 4}}, "batch.min is True, not an integer"),
    ({"batch": {"min": 1, "max": 4}}, "batch has keys min, max, expected min, opt and max"),
    ({"batch": {"min": 1, "opt": 2, "max": 4, "step": 1}}, "batch has keys min, opt, max, step, expected min, opt and max"),
    ({"batch": [1, 2, 4]}, "batch is [1, 2, 4], not an object with min, opt and max"),
    ({"batch": {"min": 8, "opt": 8, "max": 2}}, "batch min 8 exceeds max 2"),
    ({"batch": {"min": 0, "opt": 2, "max": 4}}, "batch min 0 is below 1"),
    ({"batch": {"min": 1, "opt": 8, "max": 4}}, "batch opt 8 lies outside min 1 to max 4"),
    ({"image_size": "32"}, "image_size is '32', not a positive integer"),
    ({"image_size": 0}, "image_size is 0, not a positive integer"),
    ({"model": ["resnet18"]}, "model is ['resnet18'], not a string"),
    ({"precision": 16}, "precision is 16, not a string"),
    ({"format": None}, "format is None, not a string"),
    ({"weights": {"source": "file"}}, "weights.path is None, not a string"),
    ({"weights": {"source": "synthetic", "seed": "0"}}, "weights.seed is '0', not an integer"),
    ({"weights": "synthetic"}, "weights 'synthetic' name no source (file or synthetic)"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS, ids=[m for _, m in BAD_FIELDS])
def test_manifest_fields_of_the_wrong_kind_are_refused(tmp_path, fields, message):
    path = artifact_with(tmp_path, **fields)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value) == f"{manifest_path(path)}: {message}"


def test_an_exports_manifest_needs_what_bench_reads(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an onnx graph")
    write_manifest(path, {key: value for key, value in EXPORTED.items() if key not in ("model", "batch")})
    with pytest.raises(ManifestError, match="model.onnx.json: no model, batch"):
        load_manifest(path)
    assert load_manifest(artifact_with(tmp_path))["batch"] == EXPORTED["batch"]  # a sound one passes


@pytest.mark.parametrize(("batch", "message"), [
    ({"min": "1", "opt": "2", "max": "4"}, "batch.min is '1', not an integer"),
    ({"min": 1, "max": 4}, "batch has keys min, max"),
    ({"min": 8, "opt": 4, "max": 2}, "batch min 8 exceeds max 2"),
], ids=["strings", "missing-key", "min-above-max"])
def test_bench_refuses_a_bad_batch_range_in_one_line(tmp_path, capsys, batch, message):
    path = artifact_with(tmp_path, batch=batch)
    code = bench_cli.main(["--onnx", str(path), "--streams", "1", "--backend", "onnxruntime", "--iters", "1", "--warmup", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"python -m bench: error: --onnx {manifest_path(path)}: {message}"), err


@pytest.mark.slow
def test_an_fp16_export_with_layers_kept_in_fp32_is_cached_apart(resnet18_32, tmp_path):
    """--keep-fp changes an fp16 file (and its name and manifest), not an fp32 one."""
    from dataclasses import replace

    plain = config(tmp_path, "fp16")
    kept = replace(plain, keep_fp=("layer2.0.conv1", "fc"))
    assert replace(plain, precision="fp32").artifact_stem() == replace(kept, precision="fp32").artifact_stem()
    path = bench.artifacts.cached_onnx(resnet18_32, kept)
    assert path != bench.artifacts.export_path(plain, "fp16")
    assert load_manifest(path)["keep_fp"] == ["layer2.0.conv1", "fc"]
