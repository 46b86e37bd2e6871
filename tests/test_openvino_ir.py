"""OpenVINO IR, as an OpenVINO user ships it: exported fp32 or int8 (NNCF), proven against the
PyTorch model, its .bin held to the manifest as the .xml is, run by benchmark_app as it is, and by
the openvino backend (--ir, or built and cached for its int8 rows, beside the QDQ flavour)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import export.__main__ as export_cli
from export.manifest import ManifestError, load_manifest
from tests.bench_runs import bench_rows

pytestmark = pytest.mark.skipif(not (importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino")),
                                reason="openvino and nncf are not installed")

SMALL = ["--model", "resnet18", "--image-size", "32", "--batch-size", "2"]
INT8 = ["--precision", "int8", "--calib-samples", "8"]
RUN = ["--streams", "1", "--warmup", "0", "--iters", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def int8_ir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ir")
    assert export_cli.main([*SMALL, *INT8, "--format", "openvino", "--keep-fp", "fc", "--output", str(out)]) == 0
    return out / "resnet18-int8.xml"


def bench(capsys, tmp_path, *argv) -> tuple[int, list[dict], str]:
    return bench_rows(capsys, tmp_path, *RUN, "--cache-dir", str(tmp_path / "cache"), *argv)


def quantized_inputs(xml: Path) -> dict[str, bool]:
    """For each convolution and matmul of the IR: whether its weights come through a FakeQuantize
    (NNCF's mark of an int8 layer), directly or through the Convert of compressed int8 weights."""
    import openvino as ov

    def fake_quantized(output) -> bool:
        node = output.get_node()
        while node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize" or (
            node.get_type_name() == "Constant" and node.get_element_type() in (ov.Type.i8, ov.Type.u8))

    model = ov.Core().read_model(str(xml))
    return {op.get_friendly_name(): fake_quantized(op.input_value(1)) for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "MatMul")}


@pytest.mark.slow
def test_int8_ir_is_nncf_quantized_proven_and_described(int8_ir):
    assert sorted(p.name for p in int8_ir.parent.iterdir()) == [
        "resnet18-int8.bin", "resnet18-int8.xml", "resnet18-int8.xml.json"]
    manifest = load_manifest(int8_ir)  # the .xml's and the .bin's sha256 both checked
    assert manifest["format"] == "openvino" and manifest["precision"] == "int8"
    assert set(manifest["companions"]) == {"resnet18-int8.bin"}
    q = manifest["quantization"]
    assert (q["quantizer"], q["preset"], q["calibration_samples"], q["keep_fp"]) == ("nncf", "performance", 8, ["fc"])
    assert manifest["versions"]["nncf"] and manifest["versions"]["openvino"]
    assert manifest["parity"]["passed"] and manifest["parity"]["batches"]["2"]["cosine"] >= 0.98
    # --keep-fp fc became NNCF's ignored scope: every convolution is int8, the classifier is not.
    layers = quantized_inputs(int8_ir)
    assert q["ignored_layers"] and all(name in layers for name in q["ignored_layers"])
    assert [name for name, quantized in layers.items() if not quantized] == q["ignored_layers"]


@pytest.mark.slow
def test_fp32_ir_keeps_fp32_weights(capsys, tmp_path):
    import openvino as ov

    assert export_cli.main([*SMALL, "--format", "openvino", "--output", str(tmp_path)]) == 0
    xml = tmp_path / "resnet18-fp32.xml"
    manifest = load_manifest(xml)
    assert manifest["quantization"] is None and manifest["parity"]["batches"]["2"]["cosine"] >= 0.9999
    weights = [op for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "Constant"
               and op.get_output_size() and len(op.get_output_shape(0)) == 4]
    assert weights and {op.get_element_type() for op in weights} == {ov.Type.f32}  # not compressed to fp16
    assert not any(quantized_inputs(xml).values())


@pytest.mark.parametrize("damage", ["bin", "xml", "missing bin"])
def test_a_changed_or_missing_part_is_refused(int8_ir, tmp_path, damage):
    for part in int8_ir.parent.iterdir():
        shutil.copy(part, tmp_path / part.name)
    xml, weights = tmp_path / int8_ir.name, tmp_path / "resnet18-int8.bin"
    if damage == "missing bin":
        weights.unlink()
    else:
        target = weights if damage == "bin" else xml
        target.write_bytes(target.read_bytes() + b" ")
    message = {"bin": "resnet18-int8.bin does not match resnet18-int8.xml.json", "xml": "does not match its manifest",
               "missing bin": "comes with resnet18-int8.bin, which is not beside it"}
    with pytest.raises(ManifestError, match=message[damage]):
        load_manifest(xml)


def test_benchmark_app_runs_the_ir_as_it_is(int8_ir):
    app = Path(sys.executable).with_name("benchmark_app")
    if not app.exists():
        pytest.skip("benchmark_app is not beside this Python")
    proc = subprocess.run([str(app), "-m", str(int8_ir), "-niter", "4", "-hint", "latency", "-d", "CPU"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Throughput:" in proc.stdout


@pytest.mark.slow
def test_bench_runs_a_given_ir(capsys, tmp_path, int8_ir):
    code, rows, _ = bench(capsys, tmp_path, "--ir", str(int8_ir), "--backend", "openvino")
    assert code == 0
    (row,) = rows
    assert (row["model"], row["precision"], row["quantizer"], row["batch_size"]) == ("resnet18", "int8", "nncf", 2)
    assert row["parity"]["passed"] and set(row["runtime"]["convolutions"]) <= {"u8", "i8"}
    assert not (tmp_path / "cache" / "openvino").exists()  # the given IR ran, nothing was built


@pytest.mark.slow
def test_both_int8_flavours_side_by_side_and_cached(capsys, tmp_path):
    argv = ("--backend", "openvino", "--precision", "int8", "--ov-int8", "nncf,qdq", "--calib-samples", "8",
            "--model", "resnet18", "--image-size", "32", "--batch-size", "2")
    code, rows, _ = bench(capsys, tmp_path, *argv)
    assert code == 0
    assert [r["quantizer"] for r in rows] == ["nncf", "qdq"]
    assert all(r["status"] == "ok" and r["parity"]["passed"] for r in rows)
    assert rows[0]["runtime"]["int8_model"].startswith("nncf:") and rows[1]["runtime"]["int8_model"].startswith("qdq:")
    (xml,) = (tmp_path / "cache" / "openvino").glob("*.xml")
    assert load_manifest(xml)["quantization"]["quantizer"] == "nncf"
    code, _, err = bench(capsys, tmp_path, *argv)  # the cached IR checks out: nothing rebuilt
    assert code == 0 and "rebuilding" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend", "openvino", "--ir", "/nonexistent/m.xml"], "--ir /nonexistent/m.xml: no such file"),
    (["--backend", "openvino", "--precision", "int8", "--ov-int8", "awq"], "--ov-int8 'awq': choose from nncf, qdq"),
    (["--backend", "openvino", "--ov-int8", "qdq"], "--ov-int8 applies to --precision int8"),
])
def test_bad_openvino_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, rows, err = bench(capsys, tmp_path, "--model", "resnet18", "--image-size", "32", *argv)
    assert code == 2 and rows == [] and err.count("\n") == 1 and message in err


def test_an_ir_and_another_int8_flavour_is_refused(capsys, tmp_path, int8_ir):
    code, _, err = bench(capsys, tmp_path, "--backend", "openvino", "--ir", str(int8_ir), "--ov-int8", "qdq")
    assert code == 2 and err.count("\n") == 1
    assert "--ov-int8 qdq: this run gives the openvino backend its int8 model (--ir), not a qdq one" in err


def test_export_refuses_what_ir_is_not_written_in(capsys, tmp_path):
    code = export_cli.main([*SMALL, "--format", "openvino", "--precision", "fp16", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "OpenVINO IR is exported fp32 or int8" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_default_ir_is_static_so_benchmark_app_takes_it_as_it_is(capsys, tmp_path):
    args = ["--model", "resnet18", "--image-size", "32", "--format", "openvino"]
    assert export_cli.main([*args, "--output", str(tmp_path / "static")]) == 0
    assert load_manifest(tmp_path / "static" / "resnet18-fp32.xml")["batch"] == {"min": 8, "opt": 8, "max": 8}
    assert export_cli.main([*args, "--dynamic-batch", "1:2:4", "--output", str(tmp_path / "dynamic")]) == 0
    manifest = load_manifest(tmp_path / "dynamic" / "resnet18-fp32.xml")
    assert manifest["batch"] == {"min": 1, "opt": 2, "max": 4} and manifest["inputs"][0]["shape"][0] == "batch"


@pytest.mark.slow
def test_an_fp32_ir_runs_as_given_and_exports_nothing(capsys, tmp_path):
    assert export_cli.main([*SMALL, "--format", "openvino", "--output", str(tmp_path / "ir")]) == 0
    code, rows, _ = bench(capsys, tmp_path, "--ir", str(tmp_path / "ir" / "resnet18-fp32.xml"), "--backend", "openvino")
    assert code == 0 and rows[0]["parity"]["passed"] and rows[0]["runtime"]["model_file"] == "resnet18-fp32.xml"
    assert not (tmp_path / "cache" / "onnx").exists()  # nothing exported: the IR is what ran


@pytest.mark.parametrize(("argv", "message"), [
    (["--calib-method", "entropy"], "--calib-method entropy: the openvino backend quantizes with nncf, which "
                                    "calibrates minmax ranges only"),
    (["--backend", "compile", "--keep-fp", "fc"], "--keep-fp: the compile backend quantizes with pt2e"),
])
def test_calibration_flags_a_quantizer_would_ignore_are_refused(capsys, tmp_path, argv, message):
    backend = [] if "--backend" in argv else ["--backend", "openvino"]
    code, rows, err = bench(capsys, tmp_path, "--model", "resnet18", "--image-size", "32", "--precision", "int8",
                            *backend, *argv)
    assert code == 2 and rows == [] and err.count("\n") == 1 and message in err
    code = export_cli.main([*SMALL, *INT8, "--format", "openvino", "--calib-method", "entropy",
                            "--output", str(tmp_path / "o")])
    assert code == 2 and "calibrates minmax ranges only" in capsys.readouterr().err
