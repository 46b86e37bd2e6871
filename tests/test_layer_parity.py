"""--parity layers: every line's output against the fp32 model's, in model order, so the first line
outside a row's tolerance is where its error enters. A layer corrupted on purpose is named at its
line and no line before; fp32 lines agree to fp32 tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import bench.__main__ as cli
import resnet_perf
from bench.layers import numerics
from bench.runners import RUNNERS
from bench.runners.aoti import AotiRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner
from export.manifest import load_manifest
from export.quantize import layer_names
from resnet_perf.fused import fuse

SMALL = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2", "--warmup", "0",
         "--iters", "2", "--device", "cpu", "--parity", "layers"]
# ResNet-18's lines in model order: the stem, each block's convolutions and shortcut, the head.
RESNET18_LINES = ["conv1", "maxpool"] + [
    f"layer{stage}.{block}.{name}" for stage in range(1, 5) for block in range(2)
    for name in ("conv1", "conv2", *(["downsample.0"] if stage > 1 and block == 0 else []))] + ["avgpool", "fc"]
CORRUPTED = "layer3.0.conv2"


class CorruptedRunner(EagerRunner):
    """Eager, with one convolution's weights perturbed: a backend that got one layer wrong."""

    name = "corrupted"

    def make_module(self) -> torch.nn.Module:
        module = super().make_module()
        weight = module.get_submodule(CORRUPTED).weight
        with torch.no_grad():
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std() * 0.5)
        return module


def run(tmp_path, *argv) -> list[dict]:
    path = tmp_path / "run.json"
    cli.main([*SMALL, *argv, "--json", str(path)])
    return json.loads(path.read_text())["results"]


@pytest.mark.slow
def test_the_lines_are_the_models_in_order_and_the_fused_model_ends_each_where_the_reference_does():
    model = resnet_perf.build_model("resnet18", image_size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = numerics.torch_line_outputs(model, lambda: model(x))
    assert list(reference) == RESNET18_LINES
    with torch.inference_mode():
        torch.testing.assert_close(reference["fc"], model(x))  # the last line is the logits
        torch.testing.assert_close(reference["layer1.0.conv2"], model.layer1[0](model.maxpool(model.relu(
            model.bn1(model.conv1(x))))))  # a block's second line ends after its add and ReLU
    fused = fuse(model)
    lines = numerics.torch_line_outputs(fused, lambda: fused(x))
    assert sorted(lines) == sorted(RESNET18_LINES)  # the fused shortcut is the reference's downsample.0 line
    figures = numerics.compare_lines(reference, lines)
    assert numerics.first_outside(figures, "fp32") is None


@pytest.mark.slow
def test_a_corrupted_layer_is_named_at_its_line_and_not_before(monkeypatch, tmp_path):
    monkeypatch.setitem(RUNNERS, CorruptedRunner.name, CorruptedRunner)
    eager, corrupted = run(tmp_path, "--backend", "eager,corrupted")
    assert eager["status"] == "ok" and eager["parity"]["layers"]["first_outside"] is None
    assert [f["line"] for f in eager["parity"]["layers"]["lines"]] == RESNET18_LINES
    assert all(f["cosine"] > 0.99999 and f["rel_l2"] < 1e-4 for f in eager["parity"]["layers"]["lines"])
    layers = corrupted["parity"]["layers"]
    assert layers["first_outside"] == CORRUPTED
    before = RESNET18_LINES[:RESNET18_LINES.index(CORRUPTED)]
    assert all(f["rel_l2"] < 1e-4 for f in layers["lines"] if f["line"] in before)
    assert f"first line outside fp32 tolerance: {CORRUPTED} (cosine" in corrupted["note"]
    # bench report draws each row's error line by line.
    assert cli.main(["report", str(tmp_path / "run.json"), "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "run-parity.png").stat().st_size > 0
    assert "(run-parity.png)" in (tmp_path / "report" / "report.md").read_text()


class CorruptedFileRunner(OnnxRuntimeRunner):
    """onnxruntime on a copy of the row's export with one convolution's weight perturbed in the file."""

    name = "onnx-corrupted"

    def onnx_path(self) -> Path:
        return self.config.cache_dir / "corrupted.onnx"

    def build_impl(self) -> None:
        super().build_impl()
        graph = onnx.load(str(super().onnx_path()))
        node = next(n for n, module in layer_names(super().onnx_path()).items() if module == CORRUPTED)
        weight = next(n for n in graph.graph.node if n.name == node).input[1]
        tensor = next(t for t in graph.graph.initializer if t.name == weight)
        values = numpy_helper.to_array(tensor)
        noise = np.random.default_rng(0).standard_normal(values.shape).astype(values.dtype) * values.std() * 0.5
        tensor.CopyFrom(numpy_helper.from_array(values + noise, weight))
        onnx.save(graph, str(self.onnx_path()))


@pytest.mark.slow
def test_a_layer_corrupted_in_the_exported_file_is_named_at_its_line_and_not_before(monkeypatch, tmp_path):
    monkeypatch.setitem(RUNNERS, CorruptedFileRunner.name, CorruptedFileRunner)
    clean, corrupted = run(tmp_path, "--backend", "onnxruntime,onnx-corrupted", "--cache-dir", str(tmp_path / "c"))
    assert clean["parity"]["layers"]["first_outside"] is None
    layers = corrupted["parity"]["layers"]
    assert [f["line"] for f in layers["lines"]] == RESNET18_LINES and layers["first_outside"] == CORRUPTED
    before = RESNET18_LINES[:RESNET18_LINES.index(CORRUPTED)]
    assert all(f["rel_l2"] < 1e-4 for f in layers["lines"] if f["line"] in before)
    assert next(f for f in layers["lines"] if f["line"] == CORRUPTED)["rel_l2"] > 0.1


@pytest.mark.slow
def test_openvino_lines_agree_and_an_nncf_ir_gives_its_lines_by_their_onnx_names(tmp_path):
    """OpenVINO keeps the ONNX tensor names through conversion, NNCF and the IR, so an NNCF IR's
    lines are found as an ONNX file's are, and read after NNCF's FakeQuantize as the next layer reads them."""
    fp32, nncf = run(tmp_path, "--backend", "openvino", "--precision", "fp32,int8", "--ov-int8", "nncf")
    assert fp32["parity"]["layers"]["first_outside"] is None and "logits moved" not in fp32["parity"]["layers"]["how"]
    assert "requantized" not in fp32["parity"]["layers"]["how"]
    assert nncf["status"] == "ok" and nncf["parity"]["passed"]
    for row in (fp32, nncf):
        assert [f["line"] for f in row["parity"]["layers"]["lines"]] == RESNET18_LINES
    assert all(f["rel_l2"] < 1e-4 for f in fp32["parity"]["layers"]["lines"])
    assert "as the next layer reads it (requantized)" in nncf["parity"]["layers"]["how"]
    first, last = nncf["parity"]["layers"]["lines"][0], nncf["parity"]["layers"]["lines"][-1]
    assert 1e-4 < first["rel_l2"] < last["rel_l2"]


@pytest.mark.slow
def test_a_row_without_line_outputs_says_so_and_stands(tmp_path):
    (row,) = run(tmp_path, "--backend", "aoti")
    assert row["status"] == "ok" and row["parity"]["passed"]
    assert row["parity"]["layers"]["reason"].startswith("aoti")


@pytest.mark.slow
def test_onnxruntime_lines_agree_in_fp32_and_int8_reads_them_as_the_next_layer_does(tmp_path):
    """Each line's end added as an output of the row's file; in the QDQ graph a new Dequantize
    beside the graph's own, so the int8 fusions (and the logits) are those the row timed."""
    # eager, named beside onnxruntime at fp32,int8, runs its fp32 row; its int8 row is skipped, saying why.
    _, fp32, skipped, int8 = run(tmp_path, "--backend", "eager,onnxruntime", "--precision", "fp32,int8")
    assert skipped["backend"] == "eager" and skipped["status"] == "skipped"
    assert skipped["error"].startswith("int8 is not supported by eager on cpu")
    for row in (fp32, int8):
        assert [f["line"] for f in row["parity"]["layers"]["lines"]] == RESNET18_LINES
        assert "logits moved" not in row["parity"]["layers"]["how"]
    assert fp32["parity"]["layers"]["first_outside"] is None
    assert all(f["rel_l2"] < 1e-4 for f in fp32["parity"]["layers"]["lines"])
    assert "as the next layer reads it (requantized)" in int8["parity"]["layers"]["how"]
    first, last = int8["parity"]["layers"]["lines"][0], int8["parity"]["layers"]["lines"][-1]
    assert 1e-4 < first["rel_l2"] < last["rel_l2"]  # quantization error enters at the stem and grows


def test_a_run_file_with_broken_layer_figures_is_one_line(capsys, tmp_path):
    from bench.record import SCHEMA

    row = {"model": "resnet18", "backend": "eager", "device": "cpu", "precision": "fp32", "batch_size": 2,
           "image_size": 32, "scenario": "offline", "status": "skipped", "error": "x",
           "parity": {"layers": {"how": "hooks", "lines": [{"line": "conv1", "cosine": "1"}], "first_outside": None}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"schema": SCHEMA, "env": {}, "results": [row]}))
    assert cli.main(["report", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 0: parity.layers is" in err


def test_a_line_that_was_not_finite_reads_back(tmp_path):
    """A line whose tensor held NaN or Inf has no figures; JSON has neither, so the row's file holds
    null there, and bench report, compare and --resume read it back."""
    from bench import record

    lines = [{"line": "conv1", "cosine": float("nan"), "rel_l2": float("nan"), "finite": False}]
    row = record.Row("resnet18", "eager", "cpu", "fp32", 2, 32, status="skipped", error="x",
                     parity={"layers": {"how": "hooks", "lines": lines, "first_outside": "conv1"}})
    path = tmp_path / "run.json"
    path.write_text(record.to_json([row], {}))
    (read,) = record.load(path)["results"]
    assert read["parity"]["layers"]["lines"] == [{"line": "conv1", "cosine": None, "rel_l2": None, "finite": False}]


@pytest.mark.slow
def test_a_failing_int8_row_is_bisected_to_the_layers_that_make_it_pass(capsys, tmp_path):
    """One channel of layer2.0's first BatchNorm made 1000x larger (its next conv 1000x smaller, so
    fp32 computes the same): per-tensor int8 of that ReLU output keeps the outlier and loses every
    other channel. Only keeping both convolutions either side of that tensor in fp32 mends it, which
    no one-layer exclusion of --sensitivity's ranking finds; bisection from the failing lines does,
    and the row then passes with that --keep-fp."""
    model = resnet_perf.build_model("resnet18", image_size=32)
    with torch.no_grad():
        block = model.layer2[0]
        block.bn1.weight[0] *= 1000
        block.bn1.bias[0] = block.bn1.bias[0].abs() * 1000 + 1000
        block.conv2.weight[:, 0] /= 1000
    weights = tmp_path / "outlier.pt"
    torch.save(model.state_dict(), weights)
    common = ["--backend", "onnxruntime", "--precision", "int8", "--weights", str(weights),
              "--cache-dir", str(tmp_path / "cache")]
    (row,) = run(tmp_path, *common, "--sensitivity")
    assert not row["parity"]["passed"] and row["parity"]["layers"]["first_outside"] == "layer2.0.conv2"
    assert all(layer["kept_fp32"]["rel_l2"] > 0.2 for layer in row["sensitivity"]["layers"])
    bisected = row["sensitivity"]["from_lines"]
    assert bisected["from_line"] == "layer2.0.conv1" and bisected["keep_fp"] == ["layer2.0.conv1", "layer2.0.conv2"]
    assert [t["passed"] for t in bisected["tried"] if t["kept"] == 1] == [False]
    assert "--keep-fp layer2.0.conv1,layer2.0.conv2 gives" in " ".join(capsys.readouterr().out.split())
    (kept,) = run(tmp_path, *common, "--keep-fp", ",".join(bisected["keep_fp"]))
    assert kept["parity"]["passed"] and kept["parity"]["layers"]["first_outside"] is None


class CpuFp16EagerRunner(EagerRunner):
    """Eager, with fp16 offered on the CPU too: PyTorch runs it there (the project does not offer it,
    its CPU fp16 convolutions being slow on most CPUs), storing every tensor in fp16 as a GPU does."""

    name = "eager-fp16"

    @classmethod
    def precisions(cls, device, options=None):
        return ("fp32", "fp16")


class CpuFp16WholeRunner(CpuFp16EagerRunner):
    """The same, keeping no layer in fp32 on request: a backend whose fp16 runs in one type."""

    name = "eager-fp16-whole"

    @classmethod
    def keeps_fp16_layers(cls) -> bool:
        return False


def fp16_outlier(tmp_path) -> str:
    """ResNet-18 whose layer2.0.bn1 channel 0 reaches 1.4e5 on the parity inputs (fp16 ends at
    65504), its next conv reading it 3e4x weaker: fp32 is finite; fp16 overflows there."""
    model = resnet_perf.build_model("resnet18", image_size=32)
    with torch.no_grad():
        block = model.layer2[0]
        block.bn1.weight[0] *= 3e4
        block.bn1.bias[0] = 6e4
        block.conv2.weight[:, 0] /= 3e4
    weights = tmp_path / "fp16-outlier.pt"
    torch.save(model.state_dict(), weights)
    return str(weights)


@pytest.mark.slow
def test_a_failing_fp16_row_is_bisected_to_the_layers_that_make_it_pass(monkeypatch, capsys, tmp_path):
    """The overflow is named at its line; the bisection, judged by PyTorch's fp16, keeps both
    convolutions either side of the tensor (the kept conv1's output stays fp32 into the kept conv2),
    and the row passes with that --keep-fp."""
    for runner in (CpuFp16EagerRunner, CpuFp16WholeRunner):
        monkeypatch.setitem(RUNNERS, runner.name, runner)
    common = ["--precision", "fp16", "--weights", fp16_outlier(tmp_path)]
    row, whole = run(tmp_path, *common, "--backend", "eager-fp16,eager-fp16-whole", "--sensitivity")
    # One bisection serves both rows; the one whose backend keeps no layer is told which do.
    assert whole["sensitivity"]["from_lines"] == row["sensitivity"]["from_lines"]
    assert "eager-fp16" in whole["sensitivity"]["keep_fp_backends"] and "keep_fp_backends" not in row["sensitivity"]
    layers = row["parity"]["layers"]
    assert not row["parity"]["passed"] and layers["first_outside"] == "layer2.0.conv1"
    line = next(f for f in layers["lines"] if f["line"] == "layer2.0.conv1")
    assert line["finite"] is False
    bisected = row["sensitivity"]["from_lines"]
    assert bisected["precision"] == "fp16" and bisected["from_line"] == "layer2.0.conv1"
    assert bisected["judged_on"] == "PyTorch's fp16 on cpu"
    assert bisected["keep_fp"] == ["layer2.0.conv1", "layer2.0.conv2"]
    assert [t["passed"] for t in bisected["tried"] if t["kept"] == 1] == [False]
    out = " ".join(capsys.readouterr().out.split())
    assert "--keep-fp layer2.0.conv1,layer2.0.conv2 gives" in out and "eager-fp16-whole's rows keep no layer" in out
    (kept,) = run(tmp_path, *common, "--backend", "eager-fp16", "--keep-fp", ",".join(bisected["keep_fp"]))
    assert kept["parity"]["passed"] and kept["parity"]["layers"]["first_outside"] is None


def test_keep_fp_and_fp16_sensitivity_are_refused_where_they_cannot_apply(monkeypatch, capsys):
    monkeypatch.setitem(RUNNERS, CpuFp16WholeRunner.name, CpuFp16WholeRunner)
    for argv, message in (
            (["--backend", "eager-fp16-whole", "--precision", "fp16", "--keep-fp", "fc", "--parity", "layers"],
             "--keep-fp: the eager-fp16-whole backend's fp16 rows keep no layer in fp32 (eager,"),
            (["--backend", "eager-fp16-whole", "--precision", "fp16", "--sensitivity"],
             "or bisects failing fp16 rows (--precision fp16 with --parity layers)")):
        assert cli.main([*SMALL[:-2], *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


class CpuFp16AotiRunner(AotiRunner):
    """aoti, with fp16 offered on the CPU too (Inductor compiles it there; the project does not offer
    it, for the reason it does not offer eager's)."""

    name = "aoti-fp16"

    @classmethod
    def precisions(cls, device, options=None):
        return ("fp32", "fp16")


@pytest.mark.slow
def test_an_aoti_package_keeps_the_layers_in_fp32_too(monkeypatch, tmp_path):
    """The package is compiled from the mixed model's export, its casts included: the overflow is
    mended as in eager, and the cached package is one of its own, named for what it keeps."""
    monkeypatch.setitem(RUNNERS, CpuFp16AotiRunner.name, CpuFp16AotiRunner)
    path, keep = tmp_path / "run.json", "layer2.0.conv1,layer2.0.conv2"
    assert cli.main([*SMALL[:-2], "--backend", "aoti-fp16", "--precision", "fp16", "--weights", fp16_outlier(tmp_path),
                     "--keep-fp", keep, "--json", str(path), "--cache-dir", str(tmp_path / "cache")]) == 0
    (row,) = json.loads(path.read_text())["results"]
    assert row["status"] == "ok" and row["parity"]["passed"], row
    (package,) = (tmp_path / "cache" / "aoti").glob("*.pt2")
    assert "-fp16-keep" in package.name
    assert load_manifest(package)["keep_fp"] == keep.split(",")


@pytest.mark.slow
def test_compile_keeps_the_layers_in_fp32_too(tmp_path):
    """torch.compile of the mixed model (its fp16 row run directly: the CPU's rows offer no fp16):
    dynamo traces the casting hooks, so the overflow is mended as in eager."""
    from bench.runners.base import RunConfig
    from resnet_perf import parity

    model = resnet_perf.build_model("resnet18", image_size=32)
    model.load_state_dict(torch.load(fp16_outlier(tmp_path)))
    x = resnet_perf.parity_inputs(8, 32)
    with torch.inference_mode():
        reference = model(x)
    passed = []
    for keep in ((), ("layer2.0.conv1", "layer2.0.conv2")):
        config = RunConfig("outlier", torch.device("cpu"), "fp16", 8, 32, 2, tmp_path / "cache", keep_fp=keep)
        with RUNNERS["compile"](model, config) as runner:
            logits = runner.run(runner.to_input(x)).float()
        passed.append(parity.compare(reference, logits, "fp16")["passed"])
    assert passed == [False, True]
