"""python -m bench end to end: bad input (exit 2, one line), a real run's JSON and CSV, a failing
backend and a parity-failing backend (exit 1, the other rows kept)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import bench.__main__ as cli
from bench.runners import RUNNERS
from bench.runners.compile import CompileOptions
from bench.runners.eager import EagerRunner

SMALL = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2", "--warmup", "1", "--iters", "3"]


@pytest.fixture(autouse=True)
def _no_interpreted_triton(monkeypatch):
    """conftest turns Triton's interpreter on for the kernel tests; with it, `--backend all` on CPU
    would include a `triton` row taking minutes per model. These tests are about the CLI, and a
    user's shell normally has the interpreter off."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet51"], "--model 'resnet51': unknown model; choose from resnet18"),
        (["--backend", "tensorflow"], "--backend 'tensorflow': unknown backend; choose from eager"),
        (["--backend", "tensorrt", "--device", "cpu"], "--backend tensorrt: not available on cpu: TensorRT is not installed"),
        (["--precision", "fp8"], "--precision 'fp8': choose from fp32, fp16, bf16"),
        (["--precision", "fp16", "--backend", "onnxruntime", "--device", "cpu"], "--precision fp16: onnxruntime on cpu supports fp32"),
        (["--device", "tpu"], "--device 'tpu': choose cpu, cuda, cuda:N or auto"),
        (["--batch-size", "0"], "argument --batch-size: '0' is not a positive integer"),
        (["--batch-size", "8,x"], "argument --batch-size: 'x' is not a positive integer"),
        (["--image-size", "-3"], "argument --image-size: '-3' is not a positive integer"),
        (["--iters", "0"], "argument --iters: '0' is not a positive integer"),
        (["--min-time", "nan"], "argument --min-time: 'nan' is not a positive, finite number"),
        (["--min-time", "inf"], "argument --min-time: 'inf' is not a positive, finite number"),
        (["--seed", str(2**60)], f"argument --seed: '{2**60}' is not below 2**32"),
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16: no backend available here runs it on cpu"),
        (["--cache-dir", "/proc/no-such-dir"], "--cache-dir /proc/no-such-dir: cannot create it"),
        (["--compile-mode", "fast"], "argument --compile-mode: invalid choice: 'fast'"),
        (["--unknown-flag"], "unrecognized arguments: --unknown-flag"),
        (["--weights", "/nonexistent/w.pth", "--model", "resnet18"], "weights file not found: /nonexistent/w.pth"),
        (["--weights", "w.pth", "--model", "resnet18,resnet50"], "give exactly one --model"),
        (["--host-io", "--device", "cpu"], "--host-io times host-device copies, so it needs --device cuda"),
        (["--cuda-graph", "--backend", "eager"], "--cuda-graph applies to the tensorrt backend"),
        (["--threads", "100000"], "--threads 100000: this process may use"),
        (["--warmup", "-1"], "argument --warmup: '-1' is not an integer of 0 or more"),
        (["--warmup", "x"], "argument --warmup: 'x' is not an integer of 0 or more"),
        (["--weights", "/", "--model", "resnet18"], "weights file /: is a directory; give the state_dict file in it"),
        (["--image-size", "100000", "--backend", "eager"],
         ("--image-size 100000: 64 images at once (the fp32 reference's parity batch, or the largest --batch-size) "
          "need at least 45,300 GiB for their input and first activation alone; this machine has")),
        (["--image-size", "224", "--batch-size", "10000000", "--backend", "eager", "--device", "cpu"],
         "--image-size 224: 10000000 images at once"),
        (["--json", "/tmp/rp-same.out", "--csv", "/tmp/rp-same.out"],
         "--csv /tmp/rp-same.out is also --json's file: give each output its own"),
        (["--onnx", "/nonexistent.onnx"], "--onnx /nonexistent.onnx: no such file"),
        (["--onnx", ""], "--onnx '': give a file"),
        (["--onnx", "/tmp"], "--onnx /tmp: is a directory; give the artifact file in it"),
        (["--engine", "/nonexistent.plan"], "--engine /nonexistent.plan: no such file"),
        (["--streams", "0"], "argument --streams: '0' is not a positive integer"),
        (["--streams", "-2"], "argument --streams: '-2' is not a positive integer"),
        (["--streams", "1,x"], "argument --streams: 'x' is not a positive integer"),
        (["--streams", ""], "argument --streams: expected a comma-separated list"),
        (["--streams", "1000", "--device", "cpu"],
         "--streams 1000: each stream needs a core and an intra-op thread of its own; this process may use"),
        (["--streams", "2", "--threads", "1", "--device", "cpu"],
         "--streams 2: each stream needs a core and an intra-op thread of its own"),
        (["--resume", "/tmp"], "--resume /tmp: is a directory; give the run file in it"),
        (["--duration", "30"], "--duration applies to the LoadGen scenarios, not the offline loop"),
        (["--profile-calls", "3"], "--profile-calls sets how many calls --profile layers profiles: add --profile layers"),
        (["--json", "/tmp/rp-newdir/"], "--json /tmp/rp-newdir/: names a folder; give a file path"),
        pytest.param(["--scenario", "server", "--target-qps", "5", "--max-queue-delay-ms", "100000000", "--duration", "2"],
                     "--max-queue-delay-ms 1e+08: as long as the whole 2 s run",
                     marks=pytest.mark.skipif(importlib.util.find_spec("mlperf_loadgen") is None,
                                              reason="MLPerf LoadGen is not installed")),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("python -m bench: error: ")
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_triton_on_cpu_without_the_interpreter(capsys):
    code, out, err = run_cli(capsys, "--backend", "triton", "--device", "cpu")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--backend triton: not available on cpu: needs --device cuda, or TRITON_INTERPRET=1" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu(capsys):
    code, _, err = run_cli(capsys, "--device", "cuda")
    assert code == 2 and "--device cuda: no CUDA GPU is visible" in err


def test_corrupt_weights(capsys, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "--weights", str(path), "--model", "resnet18")
    assert code == 2 and err.count("\n") == 1 and "not a readable PyTorch state_dict" in err


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_unwritable_output(capsys, tmp_path, flag):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, *SMALL, flag, str(blocker / "sub" / "out.json"))
    assert code == 2 and err.count("\n") == 1 and f"{flag} {blocker}/sub/out.json: cannot create its folder" in err

    code, _, err = run_cli(capsys, *SMALL, flag, str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.slow
def test_bad_input_from_a_real_process():
    """The same path through `python -m bench`: no traceback reaches the user."""
    proc = subprocess.run([sys.executable, "-m", "bench", "--model", "resnet51"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_list_backends(capsys):
    code, out, _ = run_cli(capsys, "--list-backends", "--device", "cpu")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RUNNERS)  # the contract's names: tests/test_runners.py
    assert lines[0].split()[1] == "available"
    assert "onnxruntime-trt  unavailable: needs --device cuda" in out


@pytest.mark.slow
def test_json_and_csv_of_a_real_run(capsys, tmp_path):
    json_path, csv_path = tmp_path / "deep" / "run.json", tmp_path / "run.csv"
    code, out, _ = run_cli(capsys, *SMALL, "--backend", "eager,onnxruntime", "--json", str(json_path),
                           "--csv", str(csv_path), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    assert "eager" in out and "onnxruntime" in out and "pass" in out

    doc = json.loads(json_path.read_text())
    assert doc["schema"] == "resnet-perf/bench/1"
    assert set(doc["env"]) == {"python", "platform", "cpu", "threads", "torch", "triton", "onnx", "onnxruntime",
                               "tensorrt", "gpu", "cuda", "driver",  # the contract's, then the state figures depend on
                               "cpu_governor", "cpu_cores_usable", "interop_threads", "thread_env", "gpu_state",
                               "cpu_features", "costs", "settings",
                               "openvino", "nncf", "tritonclient", "pytriton"}  # and every backend's libraries
    assert doc["env"]["settings"]["weights"] == "synthetic" and doc["env"]["settings"]["seed"] == 0
    assert doc["env"]["torch"] == torch.__version__
    assert [r["backend"] for r in doc["results"]] == ["eager", "onnxruntime"]
    for r in doc["results"]:
        assert {"model", "backend", "device", "precision", "batch_size", "image_size", "status", "error",
                "throughput_ips", "latency_ms", "iters", "setup_s", "first_run_ms", "samples_ms", "scenario",
                "achieved_qps", "loadgen", "parity"} <= set(r)
        # the contract's costs, each a figure or null with its reason beside it
        assert {"peak_mem_mb", "mem_source", "energy_j_per_img", "energy_reason", "pct_of_peak", "peak_probe_gflops",
                "clock_min_mhz", "throttled"} <= set(r["costs"])
        assert (r["model"], r["device"], r["precision"], r["batch_size"], r["image_size"]) == ("resnet18", "cpu", "fp32", 2, 32)
        assert r["status"] == "ok" and r["error"] is None
        assert r["iters"] == 3 and len(r["samples_ms"]) == 3
        assert set(r["latency_ms"]) == {"mean", "p50", "p90", "p95", "p99", "p99.9", "min", "max", "std"}
        assert r["streams"] == 1 and r["streams_asked"] == 1  # SMALL asks for one request at a time
        assert r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
        assert r["throughput_ips"] == pytest.approx(2 * 3 / (sum(r["samples_ms"]) / 1e3))
        assert r["scenario"] == "offline" and r["loadgen"] is None
        p = r["parity"]
        assert p["reference"] == "eager-fp32" and p["passed"]
        assert p["cosine"] >= 0.9999 and p["top1_agreement"] == 1.0 and p["distinct_top1"] >= 0.9

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime"]
    assert float(rows[1]["parity_cosine"]) >= 0.9999 and rows[1]["parity_passed"] == "True"
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temporary behind


class PerturbedRunner(EagerRunner):
    """Eager with one weight nudged: the kind of bug parity exists to catch."""

    name = "perturbed"

    def prepare_impl(self):
        super().prepare_impl()
        with torch.no_grad():
            self.module.conv1.weight.mul_(1.02)


class BrokenRunner(EagerRunner):
    name = "broken"

    def run_impl(self, inputs):
        raise RuntimeError("kernel exploded\nsecond line of detail")


@pytest.fixture
def extra_runners(monkeypatch):
    for runner in (PerturbedRunner, BrokenRunner):
        monkeypatch.setitem(RUNNERS, runner.name, runner)


@pytest.mark.slow
def test_parity_failure_and_runtime_failure_keep_the_other_rows(capsys, tmp_path, extra_runners):
    json_path = tmp_path / "run.json"
    code, out, _ = run_cli(capsys, *SMALL, "--backend", "broken,perturbed,eager", "--json", str(json_path))
    assert code == 1
    results = {r["backend"]: r for r in json.loads(json_path.read_text())["results"]}

    assert results["broken"]["status"] == "failed"
    assert results["broken"]["error"] == "RuntimeError: kernel exploded second line of detail"
    assert results["perturbed"]["status"] == "ok" and not results["perturbed"]["parity"]["passed"]
    assert results["perturbed"]["parity"]["cosine"] < 0.9999
    assert results["eager"]["status"] == "ok" and results["eager"]["parity"]["passed"]
    assert "FAIL" in out and "failed: RuntimeError" in out


@pytest.mark.slow
def test_all_skips_unsupported_precisions_with_a_reason(capsys, tmp_path):
    code, out, _ = run_cli(capsys, *SMALL, "--precision", "bf16", "--device", "cpu",
                           "--json", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path / "cache"),
                           "--backend", "all")
    results = {r["backend"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert results["onnxruntime"]["status"] == "skipped"
    assert results["onnxruntime"]["error"] == "bf16 is not supported by onnxruntime on cpu"
    assert results["eager"]["status"] == "ok" and results["eager"]["parity"]["passed"]
    assert "not run: tensorrt" in out
    assert code == 0


class OutOfMemoryRunner(EagerRunner):
    """Runs out of memory from batch 4 on, as a GPU would at some batch size."""

    name = "oom"

    def prepare_impl(self):
        if self.config.batch_size >= 4:
            raise MemoryError()
        super().prepare_impl()


@pytest.mark.slow
def test_out_of_memory_fails_that_row_and_skips_larger_batches(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(RUNNERS, "oom", OutOfMemoryRunner)
    json_path = tmp_path / "run.json"
    code, _, _ = run_cli(capsys, "--model", "resnet18", "--image-size", "32", "--batch-size", "2,4,8", "--streams", "1",
                         "--iters", "2", "--warmup", "0", "--backend", "oom,eager", "--json", str(json_path))
    assert code == 1
    rows = [(r["backend"], r["batch_size"], r["status"], r["error"]) for r in json.loads(json_path.read_text())["results"]]
    assert rows == [
        ("oom", 2, "ok", None), ("eager", 2, "ok", None),
        ("oom", 4, "failed", "out of memory"), ("eager", 4, "ok", None),
        ("oom", 8, "skipped", "out of memory at batch 4"), ("eager", 8, "ok", None),
    ]


@pytest.mark.slow
def test_a_value_given_twice_in_any_list_is_measured_once(capsys, tmp_path):
    json_path = tmp_path / "run.json"
    code, _, _ = run_cli(capsys, "--model", "resnet18,resnet18", "--batch-size", "2,1,2", "--backend",
                         "eager,eager", "--precision", "fp32,fp32", "--streams", "1,1", "--iters", "1", "--warmup", "0",
                         "--image-size", "32", "--json", str(json_path))
    assert code == 0
    assert [(r["model"], r["batch_size"]) for r in json.loads(json_path.read_text())["results"]] == [
        ("resnet18", 2), ("resnet18", 1)]


@pytest.mark.slow
def test_a_reference_failing_on_the_second_model_fails_its_rows_and_keeps_the_first(capsys, tmp_path, monkeypatch):
    """Defect 4 of issue 15: this was a usage error (exit 2) after resnet18's rows had run, and no
    table was printed."""
    build = cli.resnet_perf.build_model

    def build_model(name, **kwargs):
        if name == "resnet34":
            raise RuntimeError("disk on fire")
        return build(name, **kwargs)

    monkeypatch.setattr(cli.resnet_perf, "build_model", build_model)
    json_path = tmp_path / "run.json"
    code, out, err = run_cli(capsys, *SMALL[2:], "--model", "resnet18,resnet34", "--backend", "eager,onnxruntime",
                             "--cache-dir", str(tmp_path / "cache"), "--json", str(json_path))
    assert code == 1 and err == ""
    rows = [(r["model"], r["backend"], r["status"], r["error"]) for r in json.loads(json_path.read_text())["results"]]
    failed = "the fp32 reference of resnet34 at 32 px failed: RuntimeError: disk on fire"
    assert rows == [("resnet18", "eager", "ok", None), ("resnet18", "onnxruntime", "ok", None),
                    ("resnet34", "eager", "failed", failed), ("resnet34", "onnxruntime", "failed", failed)]
    assert "resnet18" in out and "resnet34" in out


def test_help_lists_the_subcommands_and_run_is_the_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("run", "compare", "report", "serve"))
    code, _, err = run_cli(capsys, "run", "--model", "resnet51")
    assert code == 2 and err == "python -m bench: error: --model 'resnet51': unknown model; choose from resnet18, " \
        "resnet34, resnet50, resnet101, resnet152\n"


def test_a_hosted_backend_takes_its_own_flags(monkeypatch):
    """--compile-mode reaches the compile backend a local Triton server hosts, and is refused where
    no backend reads it."""
    args = cli.build_parser().parse_args(["run", "--backend", "triton-server", "--served-backend", "compile",
                                          "--compile-mode", "max-autotune", "--model", "resnet18", "--image-size",
                                          "32", "--device", "cpu"])
    context = cli.RunContext(("resnet18",), torch.device("cpu"), ("fp32",), (8,), 32, 1000, 1.0,
                             runners=dict(RUNNERS))
    options = cli.resolve_options(args, context)
    assert options["triton-server"].served is RUNNERS["compile"]
    assert options["triton-server"].served_options == CompileOptions("max-autotune")
    cli.check_backend_flags(args, ["triton-server"], {}, options)
    args.served_backend = "onnxruntime"
    with pytest.raises(cli.UsageError, match="--compile-mode applies to the compile backend: add it to --backend"):
        cli.check_backend_flags(args, ["triton-server"], {}, cli.resolve_options(args, context))


class OwnFlagRunner(EagerRunner):
    """A backend with a flag of its own, added by nothing but its registry entry."""

    name = "own-flag"

    @classmethod
    def add_arguments(cls, group):
        group.add_argument("--own-scale", type=float, default=None, help="scale the logits by this")

    @classmethod
    def resolve_options(cls, flags, run):
        if flags["own_scale"] is not None and flags["own_scale"] <= 0:
            raise cli.UsageError(f"--own-scale {flags['own_scale']}: a positive scale")
        return flags["own_scale"] or 1.0

    def run_impl(self, inputs):
        return super().run_impl(inputs) * self.config.options


@pytest.mark.slow
def test_a_backend_brings_its_own_flags_through_the_registry(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(RUNNERS, OwnFlagRunner.name, OwnFlagRunner)
    json_path = tmp_path / "run.json"
    code, _, _ = run_cli(capsys, *SMALL, "--backend", "own-flag", "--own-scale", "2", "--json", str(json_path))
    [row] = json.loads(json_path.read_text())["results"]
    assert code == 1 and row["status"] == "ok" and not row["parity"]["passed"]  # the logits were doubled
    code, _, err = run_cli(capsys, *SMALL, "--backend", "own-flag", "--own-scale", "-1")
    assert code == 2 and "--own-scale -1.0: a positive scale" in err
    code, _, err = run_cli(capsys, *SMALL, "--backend", "eager", "--own-scale", "2")
    assert code == 2 and "--own-scale applies to the own-flag backend: add it to --backend" in err


def test_serve_refuses_an_empty_model_name(capsys):
    code, out, err = run_cli(capsys, "serve", "--backend", "eager", "--name", "")
    assert code == 2 and err == "python -m bench serve: error: --name '': not a usable model name\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend", "eager", "--compile-mode", "max-autotune"], "--compile-mode applies to the compile backend, not eager"),
    (["--backend", "eager", "--precision", "int8"], "--precision int8: eager on cpu serves fp32, bf16"),
    (["--backend", "triton-server"], "--backend 'triton-server'"),
    (["--backend", "compile", "--compile-mode", "fast"], "--compile-mode: invalid choice: 'fast'"),
])
def test_serve_resolves_its_backend_as_a_run_does(capsys, argv, message):
    """The served backend, its own flags and its precision are checked by the run's resolution."""
    code, _, err = run_cli(capsys, "serve", "--device", "cpu", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
