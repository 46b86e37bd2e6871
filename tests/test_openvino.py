"""The openvino backend on resnet18 at 32 px: fp32 pinned to f32 and read back from the compiled
model, int8 (NNCF's IR by default) with its convolutions on 8-bit integers, bf16 where the CPU has it
(else refused with the reason), requests in flight on OpenVINO's own streams, --onnx, and the
message where openvino is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import bench.__main__ as cli
import resnet_perf
from bench.runners import RUNNERS, RunConfig
from bench.runners.openvino import OpenVINORunner, cpu_capabilities
from resnet_perf import parity
from tests.bench_runs import bench_rows

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")

RUN = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--warmup", "0", "--iters", "2", "--device", "cpu"]
NATIVE_BF16 = importlib.util.find_spec("openvino") is not None and "BF16" in cpu_capabilities()


def bench(capsys, tmp_path, *argv) -> tuple[int, list[dict], str]:
    return bench_rows(capsys, tmp_path, *RUN, "--cache-dir", str(tmp_path / "cache"), *argv)


def runner(model, tmp_path, precision: str, streams: int | str = 1) -> OpenVINORunner:
    config = RunConfig("resnet18-test", torch.device("cpu"), precision, 2, 32, 2, tmp_path, streams=streams)
    return OpenVINORunner(model, config)


@pytest.mark.slow
def test_fp32_is_pinned_and_read_back_as_f32(resnet18_32, tmp_path):
    x = resnet_perf.parity_inputs(2, 32)
    with runner(resnet18_32, tmp_path, "fp32") as ov:
        logits = ov.infer(x)
        facts = ov.run_facts()
    with torch.inference_mode():
        expected = resnet18_32(x)
    assert parity.compare(expected, logits, "fp32")["passed"]
    assert facts["inference_precision"] == "f32" and set(facts["convolutions"]) == {"f32"}
    assert facts["hint"] == "LATENCY" and facts["streams"] == 1 and facts["threads"] == 2
    assert sum(facts["convolutions"].values()) == 20  # resnet18: 17 convs and 3 projection shortcuts


@pytest.mark.slow
def test_a_bf16_row_is_bf16_or_refused_where_the_cpu_would_lower_it(resnet18_32, tmp_path):
    """Asked for bf16 on a CPU without it, OpenVINO compiles f32 without a word: the read-back
    catches it. Where the CPU has bf16, the row runs its convolutions in bf16."""
    ov = runner(resnet18_32, tmp_path, "bf16")
    if not NATIVE_BF16:
        with pytest.raises(RuntimeError, match="OpenVINO compiled the model for f32, not the bf16 asked for"):
            ov.prepare()
        assert "bf16" not in OpenVINORunner.precisions(torch.device("cpu"))
        return
    with ov:
        assert set(ov.run_facts()["convolutions"]) == {"bf16"}


@pytest.mark.slow
def test_bf16_through_the_cli(capsys, tmp_path):
    code, rows, err = bench(capsys, tmp_path, "--backend", "openvino", "--precision", "bf16", "--batch-size", "2")
    if NATIVE_BF16:
        assert code == 0 and rows[0]["parity"]["passed"] and rows[0]["runtime"]["inference_precision"] == "bf16"
    else:
        assert code == 2 and err.count("\n") == 1
        assert ("--precision bf16: openvino on cpu supports fp32, int8: this CPU has no native bf16 (OpenVINO's CPU "
                "plugin computes FP32, INT8 here), and asked for bf16 it would compile f32 instead") in err


@pytest.mark.slow
def test_fp32_and_int8_rows_pass_parity_and_say_what_ran(capsys, tmp_path):
    code, rows, _ = bench(capsys, tmp_path, "--backend", "openvino,onnxruntime", "--precision", "fp32,int8",
                          "--batch-size", "2")
    assert code == 0, rows
    by = {(r["backend"], r["precision"]): r for r in rows}
    assert all(r["status"] == "ok" and r["parity"]["passed"] for r in rows)
    fp32, int8 = by["openvino", "fp32"]["runtime"], by["openvino", "int8"]["runtime"]
    assert set(fp32["convolutions"]) == {"f32"}
    assert set(int8["convolutions"]) <= {"u8", "i8"} and int8["inference_precision"] == "f32"
    # openvino's int8 is NNCF's IR by default, onnxruntime's its QDQ file: each row says which.
    assert by["openvino", "int8"]["quantizer"] == "nncf" and int8["int8_model"].startswith("nncf: activations symmetric")
    assert by["onnxruntime", "int8"]["quantizer"] == "qdq"
    assert len(list((tmp_path / "cache" / "onnx").glob("*int8*.onnx"))) == 1
    assert len(list((tmp_path / "cache" / "openvino").glob("*int8*.xml"))) == 1


@pytest.mark.slow
def test_streams_are_openvinos_own_and_auto_takes_its_optimal_requests(capsys, tmp_path):
    code, rows, _ = bench(capsys, tmp_path, "--backend", "openvino", "--batch-size", "2", "--streams", "1,2,auto",
                          "--iters", "4")
    assert code == 0
    one, two, auto = rows
    assert one["runtime"]["hint"] == "LATENCY" and one["streams"] == 1 and one["streams_how"] is None
    assert two["runtime"]["hint"] == "THROUGHPUT" and two["runtime"]["streams"] == 2 and two["streams"] == 2
    assert two["streams_how"]["kept"] == "2 infer requests on 2 OpenVINO stream(s), started async"
    assert two["streams_how"]["chosen_by"] == "--streams" and len(two["samples_ms"]) == 2 * 4
    assert auto["streams_asked"] == "auto" and auto["runtime"]["hint"] == "THROUGHPUT"
    assert auto["streams_how"]["chosen_by"] == "OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS under the THROUGHPUT hint"
    with runner(resnet_perf.build_model("resnet18", image_size=32), tmp_path, "fp32", "auto") as ov:
        assert auto["streams"] == ov.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    assert all(r["parity"]["passed"] for r in rows)


@pytest.mark.slow
def test_an_exported_onnx_file_runs_in_openvino(capsys, tmp_path):
    import export.__main__ as export_cli

    assert export_cli.main(["--model", "resnet18", "--image-size", "32", "--format", "onnx", "--batch-size", "2",
                            "--output", str(tmp_path / "engines")]) == 0
    capsys.readouterr()
    onnx_file = tmp_path / "engines" / "resnet18-fp32.onnx"
    code, rows, _ = bench(capsys, tmp_path, "--onnx", str(onnx_file), "--backend", "openvino")
    assert code == 0 and rows[0]["backend"] == "openvino" and rows[0]["parity"]["passed"]


def test_the_backend_says_why_it_cannot_run(capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    assert RUNNERS["openvino"].unavailable_reason(torch.device("cpu")) == "openvino is not installed (pip install openvino)"
    code = cli.main([*RUN, "--backend", "openvino"])
    err = capsys.readouterr().err
    assert code == 2 and "--backend openvino: not available on cpu: openvino is not installed" in err
    monkeypatch.undo()
    assert RUNNERS["openvino"].unavailable_reason(torch.device("cuda")) == (
        "runs on OpenVINO's CPU plugin: use --device cpu")


@pytest.mark.slow
def test_a_loadgen_scenario_runs_openvino_like_any_backend(capsys, tmp_path):
    code, rows, _ = bench(capsys, tmp_path, "--backend", "openvino", "--scenario", "single-stream", "--duration", "1")
    assert code == 0
    [row] = rows
    assert row["scenario"] == "single-stream" and row["loadgen"]["result"] in ("VALID", "INVALID")
    assert row["parity"]["passed"] and row["runtime"]["hint"] == "LATENCY"
