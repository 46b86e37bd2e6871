"""python -m export end to end: artifacts with their manifests, proven at export; Triton repositories
checked against Triton's own model-config schema; every refusal is one line, exit 2 (bad input) or
1 (an artifact that fails its check), and leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import export.__main__ as cli
import resnet_perf
from export.manifest import ManifestError, check_engine_target, load_manifest, manifest_path, sha256_file

SMALL = ["--model", "resnet18", "--image-size", "32"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """One dynamic-batch fp32 export shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("engines")
    code = cli.main([*SMALL, "--format", "onnx", "--dynamic-batch", "1:2:4", "--output", str(out)])
    assert code == 0
    return out / "resnet18-fp32.onnx"


@pytest.mark.slow
def test_onnx_export_writes_a_proven_artifact_and_its_manifest(onnx_export):
    assert leftovers(onnx_export.parent) == ["resnet18-fp32.onnx", "resnet18-fp32.onnx.json"]
    manifest = load_manifest(onnx_export)  # checks the sha256 too
    assert manifest["sha256"] == sha256_file(onnx_export)
    assert manifest["schema"] == "resnet-perf/manifest/1" and manifest["format"] == "onnx"
    assert (manifest["model"], manifest["precision"], manifest["image_size"]) == ("resnet18", "fp32", 32)
    assert manifest["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}]
    assert manifest["dynamic_axes"] == {"input": {"0": "batch"}, "logits": {"0": "batch"}}
    assert manifest["opset"] == 18
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["tensorrt"] is None
    assert manifest["weights"] == {"source": "synthetic", "seed": 0, "calibrated_for": 32}
    model = resnet_perf.build_model("resnet18", image_size=32)
    assert manifest["weights_digest"] == resnet_perf.weights_digest(model)
    # Proven at the smallest and the largest batch it accepts.
    assert set(manifest["parity"]["batches"]) == {"1", "4"} and manifest["parity"]["passed"]
    for figures in manifest["parity"]["batches"].values():
        assert figures["cosine"] >= 0.9999 and figures["top1_agreement"] == 1.0 and figures["distinct_top1"] >= 0.9


@pytest.mark.slow
def test_static_fp16_export(capsys, tmp_path):
    code, out, _ = run_cli(capsys, *SMALL, "--format", "onnx", "--batch-size", "3", "--precision", "fp16",
                           "--output", str(tmp_path))
    assert code == 0 and "resnet18-fp16.onnx" in out
    manifest = load_manifest(tmp_path / "resnet18-fp16.onnx")
    assert manifest["inputs"][0] == {"name": "input", "dtype": "float16", "shape": [3, 3, 32, 32]}
    assert manifest["dynamic_axes"] == {} and manifest["batch"] == {"min": 3, "opt": 3, "max": 3}
    assert list(manifest["parity"]["batches"]) == ["3"] and manifest["parity"]["passed"]


def test_a_changed_artifact_is_refused(onnx_export, tmp_path):
    copy = tmp_path / onnx_export.name
    copy.write_bytes(onnx_export.read_bytes()[:-1] + b"\0")
    manifest_path(copy).write_text(manifest_path(onnx_export).read_text())
    with pytest.raises(ManifestError, match="does not match its manifest: sha256 .* on disk, .* in resnet18-fp32.onnx.json"):
        load_manifest(copy)
    manifest_path(copy).unlink()
    with pytest.raises(ManifestError, match="has no manifest"):
        load_manifest(copy)


ENGINE = {"artifact": "resnet50-fp16.plan", "versions": {"tensorrt": "10.13.0.35"},
          "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}


@pytest.mark.parametrize(("trt_version", "gpu", "message"), [
    ("11.4.0.106", ENGINE["gpu"], "built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106"),
    ("10.13.0.35", {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"},
     r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), this GPU is NVIDIA A100-SXM4-80GB \(compute capability 8.0\)"),
    ("10.13.0.35", {"name": "NVIDIA H200", "compute_capability": "9.0"}, "this GPU is NVIDIA H200"),
])
def test_an_engine_for_another_tensorrt_or_gpu_is_refused(trt_version, gpu, message):
    with pytest.raises(ManifestError, match=message):
        check_engine_target(ENGINE, tensorrt_version=trt_version, gpu=gpu)
    check_engine_target(ENGINE, tensorrt_version="10.13.0.35", gpu=ENGINE["gpu"])  # the same target is fine


@pytest.mark.slow
def test_an_artifact_failing_parity_is_not_kept(capsys, tmp_path, monkeypatch):
    def perturbed(path, precision):
        run = original(path, precision)
        return lambda x: run(x) * 1.05 + torch.linspace(0, 1, 1000)

    original = cli.cpu_session
    monkeypatch.setattr(cli, "cpu_session", perturbed)
    code, out, err = run_cli(capsys, *SMALL, "--format", "onnx", "--batch-size", "2", "--output", str(tmp_path))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "resnet18-fp32.onnx failed parity against the PyTorch model at batch 2" in err and "not kept" in err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_triton_repository(capsys, tmp_path):
    code, _, _ = run_cli(capsys, *SMALL, "--format", "triton-repo", "--dynamic-batch", "1:2:4", "--instances", "2",
                         "--max-queue-delay-ms", "0.5", "--output", str(tmp_path))
    assert code == 0
    assert leftovers(tmp_path) == ["resnet18"]
    assert leftovers(tmp_path / "resnet18") == ["1", "config.pbtxt"]
    assert leftovers(tmp_path / "resnet18" / "1") == ["model.onnx", "model.onnx.json"]
    assert load_manifest(tmp_path / "resnet18" / "1" / "model.onnx")["parity"]["passed"]

    config = parse_model_config(tmp_path / "resnet18" / "config.pbtxt")
    assert config.name == "resnet18" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), out.name, list(out.dims)) == ("input", [3, 32, 32], "logits", [1000])
    assert inp.data_type == out.data_type == model_config().TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config().ModelInstanceGroup.KIND_AUTO

    # Exporting again replaces the model folder whole: nothing of the old one survives.
    (tmp_path / "resnet18" / "stale.txt").write_text("from an older export")
    code, _, _ = run_cli(capsys, *SMALL, "--format", "triton-repo", "--batch-size", "2", "--precision", "fp16",
                         "--name", "r18_static", "--output", str(tmp_path))
    assert code == 0 and leftovers(tmp_path) == ["r18_static", "resnet18"]
    static = parse_model_config(tmp_path / "r18_static" / "config.pbtxt")
    assert static.max_batch_size == 0 and not static.HasField("dynamic_batching")
    assert list(static.input[0].dims) == [2, 3, 32, 32] and static.input[0].data_type == model_config().TYPE_FP16


def model_config():
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                             reason="tritonclient[grpc] is not installed (it ships Triton's model-config schema)")
    return pb


def parse_model_config(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config().ModelConfig())


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "savedmodel"], "argument --format: invalid choice: 'savedmodel'"),
    (["--format", "onnx", "--model", "resnet51"], "--model 'resnet51': unknown model; choose from resnet18"),
    (["--format", "onnx", "--dynamic-batch", "8:4:16"], "--dynamic-batch '8:4:16': need 1 <= MIN <= OPT <= MAX"),
    (["--format", "onnx", "--dynamic-batch", "0:1:2"], "--dynamic-batch '0:1:2': need 1 <= MIN <= OPT <= MAX"),
    (["--format", "onnx", "--dynamic-batch", "2:4"], "--dynamic-batch '2:4' is not MIN:OPT:MAX"),
    (["--format", "onnx", "--dynamic-batch", "1:2:4", "--batch-size", "2"], "not allowed with argument"),
    (["--format", "onnx", "--batch-size", "0"], "argument --batch-size: '0' is not a positive integer"),
    (["--format", "onnx", "--precision", "bf16"], "--precision bf16: --format onnx is exported fp32, fp16 or int8"),
    (["--format", "onnx", "--opset", "99"], "--opset 99: torch's exporter writes opsets 18 to"),
    (["--format", "onnx", "--opset", "7"], "--opset 7: torch's exporter writes opsets 18 to"),
    (["--format", "onnx", "--instances", "2"], "--instances applies to a Triton repository (--format triton-repo)"),
    (["--format", "openvino", "--workspace-mib", "64"], "--workspace-mib applies to a TensorRT engine"),
    (["--format", "triton-repo", "--opt-level", "5"], "--opt-level applies to a TensorRT engine (--format tensorrt, "
     "or --triton-platform tensorrt_plan), not --format triton-repo"),
    (["--format", "triton-repo", "--dynamic-batch", "2:4:8"], "Triton's dynamic batcher sends every batch size from 1"),
    (["--format", "triton-repo", "--name", "../up"], "--name '../up': not a usable folder name"),
    (["--format", "onnx", "--weights", "/nonexistent/w.pth"], "weights file not found: /nonexistent/w.pth"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, *argv, "--output", str(out_dir))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("python -m export: error: ")
    assert message in err
    assert leftovers(out_dir) == []


def test_missing_output_flag_and_unwritable_output(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--format", "onnx")
    assert code == 2 and "the following arguments are required: --output" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, *SMALL, "--format", "onnx", "--output", str(blocker / "engines"))
    assert code == 2 and err.count("\n") == 1 and f"--output {blocker}/engines: cannot create it" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
@pytest.mark.parametrize("argv", [["--format", "tensorrt"], ["--format", "triton-repo", "--triton-platform", "tensorrt_plan"]])
def test_tensorrt_formats_without_tensorrt(capsys, tmp_path, argv):
    code, out, err = run_cli(capsys, *SMALL, *argv, "--output", str(tmp_path / "out"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "TensorRT is not installed (pip install 'resnet-perf[tensorrt]'" in err
    assert leftovers(tmp_path / "out") == []


@pytest.mark.slow
def test_from_a_real_process(tmp_path):
    """The path a user takes: `python -m export`, no traceback on bad input."""
    proc = subprocess.run([sys.executable, "-m", "export", "--format", "onnx", "--model", "resnet51", "--output",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_bench_runs_an_exported_onnx_file(onnx_export, tmp_path):
    """python -m bench --onnx: the artifact's manifest fixes the model, size and seed of the run."""
    import bench.__main__ as bench_cli

    json_path = tmp_path / "run.json"
    code = bench_cli.main(["--onnx", str(onnx_export), "--streams", "1", "--backend", "onnxruntime,eager", "--batch-size", "1,4",
                           "--iters", "2", "--warmup", "0", "--json", str(json_path)])
    assert code == 0
    rows = json.loads(json_path.read_text())["results"]
    assert [(r["backend"], r["batch_size"], r["image_size"], r["model"]) for r in rows] == [
        ("onnxruntime", 1, 32, "resnet18"), ("eager", 1, 32, "resnet18"),
        ("onnxruntime", 4, 32, "resnet18"), ("eager", 4, 32, "resnet18")]
    assert all(r["status"] == "ok" and r["parity"]["passed"] for r in rows)


@pytest.mark.slow
def test_bench_refuses_an_artifact_that_does_not_fit(capsys, onnx_export, tmp_path):
    import bench.__main__ as bench_cli

    def bench(*argv):
        code = bench_cli.main([*argv, "--iters", "1", "--warmup", "0"])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1, err
        return err

    copy = tmp_path / onnx_export.name
    copy.write_bytes(onnx_export.read_bytes() + b"\0")
    manifest_path(copy).write_text(manifest_path(onnx_export).read_text())
    assert "does not match its manifest" in bench("--onnx", str(copy))
    assert "no such file" in bench("--onnx", str(tmp_path / "none.onnx"))
    lying = tmp_path / "lying" / onnx_export.name
    lying.parent.mkdir()
    lying.write_bytes(onnx_export.read_bytes())
    manifest = json.loads(manifest_path(onnx_export).read_text())
    manifest_path(lying).write_text(json.dumps({**manifest, "precision": "int8"}))
    assert "its manifest says int8, but the graph computes in fp32" in bench(
        "--onnx", str(lying), "--backend", "onnxruntime")
    assert "accepts batches of 1 to 4" in bench("--onnx", str(onnx_export), "--batch-size", "8")
    if importlib.util.find_spec("mlperf_loadgen") is not None:  # the server scenario's batch is --max-batch
        assert "--batch-size 8: --onnx" in bench("--onnx", str(onnx_export), "--scenario", "server", "--max-batch", "8",
                                                 "--target-qps", "10")
    assert "--onnx applies to the onnxruntime or openvino or onnxruntime-trt backend: add it to --backend" in bench(
        "--onnx", str(onnx_export), "--backend", "eager")
    assert "was exported with --model resnet18; this run asks for resnet34" in bench(
        "--onnx", str(onnx_export), "--model", "resnet34")
    # Weights other than the ones it was exported from: the reference would not be its reference.
    other = tmp_path / "other.pth"
    torch.save(resnet_perf.build_model("resnet18", image_size=32, seed=1).state_dict(), other)
    assert (f"--onnx {onnx_export} was exported from resnet18 at 32 px with weights synthetic, seed 0 (digest "
            in (err := bench("--onnx", str(onnx_export), "--weights", str(other), "--backend", "onnxruntime")))
    assert f"this run's resnet18 at 32 px, weights from {other}, has digest " in err


@pytest.mark.slow
def test_an_fp16_export_keeps_the_layers_asked_in_fp32(capsys, tmp_path):
    """The manifest names them (in model order, however typed), the file holds their fp32 weights,
    and it passed its parity check."""
    import onnx

    import bench.__main__ as bench_cli
    from export.quantize import layer_names

    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *SMALL, "--format", "onnx", "--precision", "fp16", "--batch-size", "2",
                           "--keep-fp", "fc,layer2.0.conv1", "--output", str(out))
    assert code == 0, err
    path = out / "resnet18-fp16.onnx"
    manifest = load_manifest(path)
    assert manifest["keep_fp"] == ["layer2.0.conv1", "fc"] and manifest["parity"]["passed"]
    graph = onnx.load(str(path)).graph
    fp32 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    kept = {module for node, module in layer_names(path).items()
            if next(n for n in graph.node if n.name == node).input[1] in fp32}
    assert kept == {"layer2.0.conv1", "fc"}
    # bench takes the layers from the file, and refuses others.
    assert bench_cli.main(["--onnx", str(path), "--keep-fp", "fc", "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was exported with --keep-fp layer2.0.conv1,fc; this run asks for fc" in err
