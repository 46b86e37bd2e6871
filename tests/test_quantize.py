"""INT8: QDQ quantization through onnxruntime.quantization, calibration from synthetic inputs or a
folder (images or arrays), its cache, the layers kept in fp32, and int8 rows of bench and export."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import bench.__main__ as bench_cli
import export.__main__ as export_cli
import resnet_perf
from export.onnx import BatchRange, export_onnx
from export.quantize import Calibration, layer_names, quantize_onnx
from resnet_perf import parity_inputs
from resnet_perf.images import ImageFolderError, load_calibration, load_labelled
from resnet_perf.parity import compare
from resnet_perf.precision import PRECISIONS
from resnet_perf.synthetic import quantization_inputs

SMALL = ["--model", "resnet18", "--image-size", "32"]


@pytest.fixture(autouse=True)
def _no_interpreted_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="module")
def fp32_onnx(resnet18_32, tmp_path_factory):
    return export_onnx(resnet18_32, tmp_path_factory.mktemp("q") / "fp32.onnx", batch=BatchRange.static(4), image_size=32)


def run(path, int8_kernels: bool = True):
    """onnxruntime's CPU session on ``path``. Without ``int8_kernels`` (graph optimisations off) a QDQ
    model runs as written, quantize, dequantize and fp32 conv: the arithmetic TensorRT's GPU int8
    computes, where onnxruntime's int8 kernels on a CPU without VNNI saturate (export/quantize.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not int8_kernels:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def zero_point_types(path) -> set[int]:
    """The element types of the activations' zero points: uint8 (2) or int8 (3)."""
    graph = onnx.load(str(path)).graph
    initializers = {i.name: i for i in graph.initializer}
    return {initializers[n.input[2]].data_type for n in graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in initializers}


def test_layer_names_are_the_models_module_names(fp32_onnx):
    assert list(layer_names(fp32_onnx).values()) == resnet_perf.layer_names("resnet18")


@pytest.mark.parametrize(("flavour", "zero_point"), [("onnxruntime", onnx.TensorProto.UINT8),
                                                     ("tensorrt", onnx.TensorProto.INT8)])
def test_quantized_model_passes_int8_parity(resnet18_32, fp32_onnx, tmp_path, flavour, zero_point):
    calibration = Calibration(quantization_inputs(32, 32))
    info = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", calibration, flavour=flavour)
    assert info["quantized_layers"] == 21 and info["flavour"] == flavour
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 40
    # fp32 in and out, as the precision table says an int8 model's inputs and outputs are.
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [PRECISIONS["int8"].onnx] * 2
    # onnxruntime's fast kernels take uint8 activations; TensorRT only symmetric int8.
    assert zero_point_types(tmp_path / "int8.onnx") == {zero_point}

    x = parity_inputs(64, 32)
    with torch.no_grad():
        reference = resnet18_32(x)
    session = run(tmp_path / "int8.onnx", int8_kernels=flavour == "onnxruntime")
    figures = compare(reference, torch.cat([session(b) for b in x.split(4)]), "int8")
    assert figures["passed"] and figures["top1_agreement"] == 1.0 and figures["top5_agreement"] == 1.0, figures
    assert figures["cosine"] < 0.9999  # it did quantize: not fp32's numbers


@pytest.mark.slow
def test_calibration_is_cached_and_shared_by_both_flavours(fp32_onnx, tmp_path):
    calibration = Calibration(quantization_inputs(16, 32))
    first = quantize_onnx(fp32_onnx, tmp_path / "a.onnx", calibration, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name for p in cached] == [first["calibration_cache"].split("/")[-1]]
    second = quantize_onnx(fp32_onnx, tmp_path / "b.onnx", calibration, flavour="tensorrt", cache_dir=tmp_path / "cache")
    assert second["calibration_cache"] == first["calibration_cache"] and len(list((tmp_path / "cache").iterdir())) == 1
    # Other inputs are another calibration.
    other = quantize_onnx(fp32_onnx, tmp_path / "c.onnx", Calibration(quantization_inputs(16, 32, seed=3)),
                          cache_dir=tmp_path / "cache")
    assert other["calibration_cache"] != first["calibration_cache"]


def test_layers_kept_in_fp32_are_not_quantized(fp32_onnx, tmp_path):
    kept = quantize_onnx(fp32_onnx, tmp_path / "k.onnx", Calibration(quantization_inputs(8, 32), keep_fp=("conv1", "fc")))
    assert kept["quantized_layers"] == 19 and kept["keep_fp"] == ["conv1", "fc"]
    graph = onnx.load(str(tmp_path / "k.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    producers = {out: n.op_type for n in graph.node for out in n.output}
    weights = {n.op_type + str(i): n.input[1] for i, n in enumerate(graph.node) if n.op_type in ("Conv", "Gemm")}
    kept = [w for w in weights.values() if w in initializers]  # fp32 weights used as they are
    quantized = [w for w in weights.values() if producers.get(w) == "DequantizeLinear"]
    assert len(kept) == 2 and len(quantized) == 19
    with pytest.raises(ValueError, match="--keep-fp layer9.conv1: no such layer"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", Calibration(quantization_inputs(8, 32), keep_fp=("layer9.conv1",)))


def write_images(folder, count=3, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_calibration_folders(tmp_path):
    write_images(tmp_path / "imgs" / "sub")
    np.save(tmp_path / "imgs" / "more.npy", np.zeros((2, 3, 32, 32), np.float32))
    inputs = load_calibration(tmp_path / "imgs", 32)
    assert inputs.shape == (5, 3, 32, 32) and inputs.dtype == torch.float32
    assert load_calibration(tmp_path / "imgs", 32, limit=4).shape == (4, 3, 32, 32)

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "shape").mkdir()
    np.save(tmp_path / "shape" / "x.npy", np.zeros((3, 64, 64), np.float32))
    for folder, message in [("missing", "not a folder"), ("empty", "no images"), ("bad", "broken.jpg: not a readable image"),
                            ("shape", r"x.npy: shape \(1, 3, 64, 64\), expected \(3, 32, 32\)")]:
        with pytest.raises(ImageFolderError, match=message):
            load_calibration(tmp_path / folder, 32)


def _bomb_png(path: Path) -> None:
    """A PNG whose header claims 30000 x 30000 pixels: PIL's decompression-bomb guard refuses it."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "write", "message"), [
    ("bomb.png", _bomb_png, "bomb.png: not a readable image .*decompression bomb"),
    ("s.npy", lambda p: np.save(p, np.array([["a"] * 32] * 32)), "s.npy: holds <U1 values"),
    ("c.npy", lambda p: np.save(p, np.zeros((3, 32, 32), np.complex64)), "c.npy: holds complex64 values"),
    ("d.npy", lambda p: np.save(p, np.zeros((3, 32, 32), "datetime64[s]")), "d.npy: holds datetime64"),
    ("e.npy", lambda p: np.save(p, np.zeros((0, 3, 32, 32), np.float32)), "e.npy: holds no inputs"),
    ("n.npy", lambda p: np.save(p, np.full((3, 32, 32), np.nan, np.float32)), "n.npy: holds NaN or infinite"),
    ("i.npy", lambda p: np.save(p, np.full((3, 32, 32), np.inf, np.float32)), "i.npy: holds NaN or infinite"),
    ("f.npy", lambda p: np.save(p, np.full((3, 32, 32), 1e300)), "f.npy: holds NaN or infinite"),
    ("w.npy", lambda p: np.save(p, np.zeros((2, 32, 32), np.float32)), r"w.npy: shape \(1, 2, 32, 32\)"),
])
def test_hostile_calibration_files_are_refused_by_name(tmp_path, name, write, message):
    (tmp_path / "c").mkdir()
    write(tmp_path / "c" / name)
    with pytest.raises(ImageFolderError, match=message):
        load_calibration(tmp_path / "c", 32)


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit greyscale at 255: a mid-grey 16-bit PNG would become white."""
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(tmp_path / "c" / "grey16.png")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "c" / "grey8.png")
    sixteen, eight = load_calibration(tmp_path / "c", 32)
    torch.testing.assert_close(sixteen, eight, atol=0.02, rtol=0)


def test_a_bad_calibration_file_is_one_line_in_export(capsys, tmp_path):
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "s.npy", np.array(["x"] * 3))
    code = export_cli.main([*SMALL, "--format", "onnx", "--precision", "int8", "--calib-data", str(tmp_path / "c"),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "s.npy: holds <U1 values" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_labelled_folders(tmp_path):
    write_images(tmp_path / "eval" / "n01_cat", 2)
    write_images(tmp_path / "eval" / "n02_dog", 3)
    images, labels = load_labelled(tmp_path / "eval", 32)
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 1]
    (tmp_path / "eval" / ".ipynb_checkpoints").mkdir()  # sorts first: as a class it would shift every label
    assert load_labelled(tmp_path / "eval", 32)[1].tolist() == [0, 0, 1, 1, 1]
    (tmp_path / "eval" / "n01z_empty").mkdir()  # an empty class keeps its index: the dog is class 2
    assert load_labelled(tmp_path / "eval", 32)[1].tolist() == [0, 0, 2, 2, 2]
    with pytest.raises(ImageFolderError, match="--eval-data '': give a folder"):
        load_labelled("", 32)


@pytest.mark.slow
def test_bench_int8_row(capsys, tmp_path):
    path = tmp_path / "run.json"
    code = bench_cli.main([*SMALL, "--streams", "1", "--backend", "onnxruntime", "--precision", "fp32,int8", "--batch-size", "4",
                           "--iters", "3", "--warmup", "0", "--json", str(path), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    fp32, int8 = json.loads(path.read_text())["results"]
    assert int8["precision"] == "int8" and int8["status"] == "ok" and int8["parity"]["passed"]
    assert int8["parity"]["top1_agreement"] == 1.0 and int8["parity"]["cosine"] < fp32["parity"]["cosine"]
    assert list((tmp_path / "cache" / "calibration").iterdir())  # the calibration was cached
    assert "top5" in capsys.readouterr().out


@pytest.mark.slow
def test_export_int8_records_its_calibration(tmp_path):
    (tmp_path / "calib").mkdir()
    np.save(tmp_path / "calib" / "inputs.npy", quantization_inputs(16, 32).numpy())
    assert export_cli.main([*SMALL, "--format", "onnx", "--precision", "int8", "--batch-size", "2", "--calib-data",
                            str(tmp_path / "calib"), "--keep-fp", "fc", "--output", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "resnet18-int8.onnx.json").read_text())
    q = manifest["quantization"]
    assert q["method"] == "minmax" and q["keep_fp"] == ["fc"] and q["calibration_samples"] == 16
    assert q["calibration_source"] == {"kind": "folder", "path": str(tmp_path / "calib"), "samples": 16}
    assert (tmp_path / "out" / "calibration").is_dir() and manifest["parity"]["passed"]
    assert manifest["inputs"][0]["dtype"] == "float32"


@pytest.mark.slow
def test_calibrating_on_the_wrong_data_is_refused(capsys, tmp_path):
    """Noise images calibrate ranges the model's inputs do not have: parity fails, nothing is kept."""
    write_images(tmp_path / "noise", 4)
    code = export_cli.main([*SMALL, "--format", "onnx", "--precision", "int8", "--batch-size", "2", "--calib-data",
                            str(tmp_path / "noise"), "--output", str(tmp_path / "out")])
    assert code == 1 and "resnet18-int8.onnx failed parity" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["calibration"]  # the cache only


@pytest.mark.parametrize(("argv", "message"), [
    (["--calib-data", "/tmp"], "--calib-data applies to --precision int8"),
    (["--keep-fp", "fc"], "--keep-fp applies to --precision int8 or fp16"),
    (["--precision", "int8", "--keep-fp", "layer9.conv1"], "--keep-fp layer9.conv1: resnet18 has no such layer"),
    (["--precision", "int8", "--calib-data", "/nonexistent"], "--calib-data /nonexistent: not a folder"),
    (["--precision", "int8", "--calib-method", "kl"], "argument --calib-method: invalid choice: 'kl'"),
])
@pytest.mark.parametrize("tool", ["bench", "export"])
def test_bad_int8_flags(capsys, tmp_path, tool, argv, message):
    if tool == "bench":
        code = bench_cli.main([*SMALL, "--streams", "1", "--backend", "onnxruntime", *argv])
    else:
        code = export_cli.main([*SMALL, "--format", "onnx", "--output", str(tmp_path / "out"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--keep-fp", "layer9.conv1"], "--keep-fp layer9.conv1: resnet18 has no such layer"),
    (["--calib-data", "/tmp"], "--calib-data applies to --precision int8"),
])
def test_bad_fp16_flags(capsys, tmp_path, argv, message):
    """fp16 keeps layers in fp32 too (the ONNX export; on CPU no bench backend runs fp16)."""
    code = export_cli.main([*SMALL, "--format", "onnx", "--precision", "fp16", "--output", str(tmp_path / "out"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_eval_data_reports_real_accuracy_beside_fp32(tmp_path):
    """Images in 1000 class folders, each image in the folder of the class the fp32 model gives its
    clean prototype: the fp32 model scores 1.0 by construction, and each row is measured the same way."""
    from PIL import Image

    from resnet_perf.images import MEAN, STD
    from resnet_perf.synthetic import PARITY_NOISE, prototype_tiles, render

    model = resnet_perf.build_model("resnet18", image_size=32)
    size = round(32 * 256 / 224)  # the preprocessing's resize is then a no-op; it crops the centre
    images = render(prototype_tiles(8).repeat_interleave(2, 0), size, PARITY_NOISE, torch.Generator().manual_seed(0))
    with torch.no_grad():
        classes = model(images[:, :, 2:34, 2:34]).argmax(1).tolist()
    root = tmp_path / "eval"
    for c in range(1000):
        (root / f"c{c:04d}").mkdir(parents=True)
    for i, (x, c) in enumerate(zip(images, classes)):
        pixels = ((x.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)) * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"c{c:04d}" / f"{i}.png")

    path = tmp_path / "run.json"
    assert bench_cli.main([*SMALL, "--streams", "1", "--backend", "onnxruntime", "--precision", "fp32,int8", "--batch-size", "4",
                           "--iters", "2", "--eval-data", str(root), "--json", str(path),
                           "--cache-dir", str(tmp_path / "cache")]) == 0
    fp32, int8 = (r["accuracy"] for r in json.loads(path.read_text())["results"])
    assert fp32["images"] == int8["images"] == 16
    assert fp32["reference_top1"] > 0.8 and fp32["top1"] == fp32["reference_top1"]
    assert int8["top1"] >= fp32["top1"] - 0.125 and int8["top5"] >= int8["top1"]


@pytest.mark.slow
def test_sensitivity_ranks_every_layer(capsys, tmp_path):
    path = tmp_path / "run.json"
    assert bench_cli.main([*SMALL, "--streams", "1", "--backend", "onnxruntime", "--precision", "int8", "--batch-size", "8", "--iters",
                           "2", "--sensitivity", "--json", str(path), "--cache-dir", str(tmp_path / "cache")]) == 0
    (row,) = json.loads(path.read_text())["results"]
    analysis = row["sensitivity"]
    assert analysis["int8"]["rel_l2"] == pytest.approx(row["parity"]["rel_l2"], rel=1e-6)
    layers = analysis["layers"]
    assert sorted(entry["layer"] for entry in layers) == sorted(resnet_perf.layer_names("resnet18"))
    gains = [entry["rel_l2_gain"] for entry in layers]
    assert gains == sorted(gains, reverse=True)
    top = layers[0]
    assert top["kept_fp32"]["rel_l2"] == pytest.approx(analysis["int8"]["rel_l2"] - top["rel_l2_gain"])
    assert top["weight_sqnr_db"] > 20 and top["output_vs_fp32_sqnr_db"] is not None
    assert "int8 sensitivity" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--sensitivity"], "--sensitivity ranks layers for INT8 on onnxruntime"),
    (["--precision", "int8", "--backend", "eager,onnxruntime", "--sensitivity"], "int8: eager on cpu supports fp32"),
    (["--eval-data", "/nonexistent"], "--eval-data /nonexistent: not a folder"),
    (["--eval-samples", "5"], "--eval-samples applies to --eval-data"),
])
def test_bad_evaluation_flags(capsys, argv, message):
    argv = argv if "--backend" in argv else [*argv, "--backend", "onnxruntime"]
    assert bench_cli.main([*SMALL, "--streams", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_int8_triton_repository_holds_only_the_model(tmp_path, monkeypatch):
    """Triton takes every folder of a repository for a model: the calibration is cached elsewhere."""
    monkeypatch.setenv("RESNET_PERF_CACHE", str(tmp_path / "cache"))
    assert export_cli.main([*SMALL, "--format", "triton-repo", "--precision", "int8", "--dynamic-batch", "1:2:4",
                            "--output", str(tmp_path / "repo")]) == 0
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["resnet18"]
    manifest = json.loads((tmp_path / "repo" / "resnet18" / "1" / "model.onnx.json").read_text())
    assert manifest["quantization"]["calibration_cache"].startswith(str(tmp_path / "cache" / "calibration"))
