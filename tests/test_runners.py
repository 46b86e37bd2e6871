"""Each runner on a tiny input: lifecycle, input checks, outputs against the reference model."""

from __future__ import annotations

import pytest
import torch

from bench.runners import RUNNERS, RunConfig, RunContext
from bench.runners.base import TorchRunner
from bench.runners.compile import CompileRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner
from bench.runners.triton import TritonRunner
from bench.runners.triton_server import ServerOptions, TritonServerRunner
from bench.serving.local import missing_reason
from export import pt2e
from resnet_perf import parity_inputs
from resnet_perf.parity import compare, predict

CPU = torch.device("cpu")


def config(tmp_path, precision="fp32", batch_size=2, **kw):
    return RunConfig(model_id="resnet18-test", device=CPU, precision=precision, batch_size=batch_size,
                     image_size=32, threads=torch.get_num_threads(), cache_dir=tmp_path, **kw)


@pytest.mark.slow
@pytest.mark.parametrize(("runner_cls", "precision"), [
    (EagerRunner, "fp32"),
    (EagerRunner, "bf16"),
    (CompileRunner, "fp32"),
    (OnnxRuntimeRunner, "fp32"),
    (TritonRunner, "fp32"),
    (TritonRunner, "fp16"),
])
def test_runner_matches_the_reference(resnet18_32, tmp_path, runner_cls, precision):
    x = parity_inputs(8, 32)
    with torch.no_grad():
        reference = resnet18_32(x)
    with runner_cls(resnet18_32, config(tmp_path, precision, batch_size=4)) as runner:
        logits = predict(runner.infer, x, 4)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert compare(reference, logits, precision)["passed"]


def test_runner_lifecycle(resnet18_32, tmp_path):
    runner = EagerRunner(resnet18_32, config(tmp_path))
    with pytest.raises(RuntimeError, match="run\\(\\) before prepare\\(\\)"):
        runner.run(torch.zeros(2, 3, 32, 32))
    runner.prepare()
    with pytest.raises(RuntimeError, match="prepare\\(\\) called twice"):
        runner.prepare()
    with pytest.raises(ValueError, match=r"expected an input of shape \(2, 3, 32, 32\), got \(3, 3, 32, 32\)"):
        runner.to_input(torch.zeros(3, 3, 32, 32))
    runner.close()
    runner.close()  # closing twice is harmless
    assert not runner.is_active


def test_runners_do_not_change_the_shared_model(resnet18_32, tmp_path):
    before = {k: v.clone() for k, v in resnet18_32.state_dict().items()}
    with EagerRunner(resnet18_32, config(tmp_path, "bf16")) as runner:
        runner.run(runner.to_input(torch.zeros(2, 3, 32, 32)))
    after = resnet18_32.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_outputs_are_copied_out_of_reused_buffers(resnet18_32, tmp_path):
    """onnxruntime writes every call into one bound buffer: to_logits must copy."""
    x = parity_inputs(4, 32)
    with OnnxRuntimeRunner(resnet18_32, config(tmp_path)) as runner:
        first = runner.to_logits(runner.run(runner.to_input(x[:2])))
        second = runner.to_logits(runner.run(runner.to_input(x[2:])))
    assert not torch.equal(first, second)
    with torch.no_grad():
        torch.testing.assert_close(first, resnet18_32(x[:2]), rtol=1e-4, atol=1e-4)


def test_onnx_export_is_cached(resnet18_32, tmp_path):
    cfg = config(tmp_path)
    with OnnxRuntimeRunner(resnet18_32, cfg) as runner:
        path = runner.onnx_path()
    mtime = path.stat().st_mtime_ns
    with OnnxRuntimeRunner(resnet18_32, cfg) as runner:
        assert runner.onnx_path() == path
    assert path.stat().st_mtime_ns == mtime
    # Another shape is another artifact.
    assert OnnxRuntimeRunner(resnet18_32, config(tmp_path, batch_size=3)).onnx_path() != path


def test_every_contract_backend_is_listed():
    assert tuple(RUNNERS) == ("eager", "compile", "aoti", "onnxruntime", "openvino", "onnxruntime-trt", "tensorrt",
                              "triton", "triton-server")
    assert all(name == runner.name for name, runner in RUNNERS.items())


def test_a_backend_is_its_runner_and_one_registry_line(monkeypatch, capsys, tmp_path):
    """Registered, a runner is listed, runs, and has its library's version in the run's env, with no
    other file knowing its name."""
    import json

    import bench.__main__ as cli

    class Extra(EagerRunner):
        name = "extra"
        packages = {"extra_library": ("pytest",)}

    monkeypatch.setitem(RUNNERS, Extra.name, Extra)
    assert cli.main(["--list-backends", "--device", "cpu"]) == 0
    assert "extra" in capsys.readouterr().out.split()
    path = tmp_path / "run.json"
    assert cli.main(["--model", "resnet18", "--image-size", "32", "--batch-size", "2", "--iters", "2", "--warmup", "0",
                     "--streams", "1", "--device", "cpu", "--backend", "extra", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    assert document["env"]["extra_library"] == pytest.__version__
    assert [row["backend"] for row in document["results"] if row["status"] == "ok"] == ["extra"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answers differ on a GPU machine")
def test_unavailable_backends_say_why_on_cpu(monkeypatch):
    def unavailable_reason(name, options=None):
        return RUNNERS[name].unavailable_reason(CPU, options)

    assert unavailable_reason("eager") is None
    assert unavailable_reason("onnxruntime") is None
    assert unavailable_reason("onnxruntime-trt") == "needs --device cuda"
    assert "TensorRT is not installed" in unavailable_reason("tensorrt")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "needs --device cuda, or TRITON_INTERPRET=1 on CPU" in unavailable_reason("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unavailable_reason("triton") is None
    # A server started locally needs the backend it hosts; one at a URL needs only the client.
    if TritonServerRunner.unavailable_reason(CPU) is None:
        hosting_tensorrt = ServerOptions(served=RUNNERS["tensorrt"])
        expected = missing_reason() or "its hosted backend tensorrt: TensorRT is not installed"
        assert expected in unavailable_reason("triton-server", hosting_tensorrt)
        assert unavailable_reason("triton-server", ServerOptions(url="grpc://127.0.0.1:8001")) is None


def test_cpu_precisions():
    assert OnnxRuntimeRunner.precisions(CPU) == ("fp32", "int8")
    assert EagerRunner.precisions(CPU) == ("fp32", "bf16")
    cuda = torch.device("cuda")
    assert OnnxRuntimeRunner.precisions(cuda) == ("fp32", "fp16", "int8")
    assert EagerRunner.precisions(cuda) == ("fp32", "fp16", "bf16")


@pytest.mark.parametrize("device", [CPU, torch.device("cuda")], ids=str)
def test_no_module_runner_claims_int8(device):
    """A runner that executes the PyTorch module in its row's dtype would run int8 as fp32 (the
    dtype of int8's inputs) under an int8 label, judged by int8's looser tolerances: int8 belongs to
    the runners that quantize the model: of the module runners, compile alone, on CPU, through PT2E
    (tests/test_pt2e.py checks its rows run oneDNN int8 kernels)."""
    for runner in RUNNERS.values():
        if issubclass(runner, TorchRunner) and runner is not CompileRunner:
            assert "int8" not in runner.precisions(device), runner.name
    assert ("int8" in CompileRunner.precisions(device)) == (device.type == "cpu" and pt2e.missing_reason() is None)
    assert CompileRunner.quantizers() == ("pt2e",)
    assert TritonRunner.precisions(device) == ("fp32", "fp16", "bf16")


def test_triton_rows_on_cpu_are_marked_as_interpreter_timings(resnet18_32, tmp_path):
    assert TritonRunner(resnet18_32, config(tmp_path)).timing_note == "interpreter timing"
    assert EagerRunner(resnet18_32, config(tmp_path)).timing_note is None


def test_an_engine_for_another_tensorrt_is_refused_before_any_row(tmp_path, monkeypatch):
    """check_ready reads the --engine's manifest up front: a plan built with another TensorRT or for
    another GPU would otherwise fail every row it is in, one at a time."""
    from bench.runners.tensorrt import TensorRTOptions, TensorRTRunner
    from export import tensorrt
    from export.manifest import write_manifest
    from resnet_perf.util.cli import UsageError

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"a serialized engine")
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    write_manifest(engine, {"format": "tensorrt", "versions": {"tensorrt": "10.9.0"}, "gpu": h100})
    monkeypatch.setattr(tensorrt, "gpu_target", lambda device: h100)
    context = RunContext(("resnet18",), torch.device("cuda"), ("fp16",), (8,), 32, 1000, 1.0,
                         artifacts={"tensorrt": engine})
    monkeypatch.setattr(tensorrt, "version", lambda: "11.4.0")
    with pytest.raises(UsageError, match="--engine m.plan was built with TensorRT 10.9.0, this is TensorRT 11.4.0"):
        TensorRTRunner.check_ready(TensorRTOptions(), context)
    monkeypatch.setattr(tensorrt, "version", lambda: "10.9.0")
    TensorRTRunner.check_ready(TensorRTOptions(), context)


def test_a_servers_int8_rows_are_labelled_by_what_it_hosts():
    from bench.runners.openvino import OpenVINORunner

    local = ServerOptions(served=OpenVINORunner, served_options=("nncf", "qdq"))
    assert TritonServerRunner.quantizers(local) == ("nncf", "qdq")
    assert TritonServerRunner.quantizers(ServerOptions(served=OnnxRuntimeRunner)) == ("qdq",)
    assert TritonServerRunner.quantizers(ServerOptions(url="grpc://localhost:8001")) == ("unknown",)
