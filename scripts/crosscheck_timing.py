"""Cross-check the harness's throughput against plain timing loops written without it, and OpenVINO's
rows against OpenVINO's own benchmark_app.

For each backend and precision the harness's figure (its runner, timed by bench.timing) and a plain
loop over the framework's own call (the torch module, the compiled module, InferenceSession.run or
an OpenVINO infer request with numpy) are measured alternately, twice each, in one process, and the
median figures compared. A harness that added overhead, or skipped work, would show as a ratio
away from 1. With --benchmark-app, `benchmark_app -hint latency` and `-hint throughput` then run on
the very ONNX file the openvino rows ran, one after the other, beside our latency and throughput
rows: a tool nobody here wrote, on the same model, batch and machine.

    python scripts/crosscheck_timing.py --model resnet50 --batch-size 8 --image-size 224 \\
        --backend eager,compile,onnxruntime,openvino --precision fp32,int8 --benchmark-app
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import resnet_perf
from bench import timing
from bench.env import collect
from bench.report import machine_line
from bench.runners import RUNNERS, RunConfig
from bench.runners.openvino import OpenVINOOptions
from export import quantize
from resnet_perf.precision import PRECISIONS


def plain_loop(call, iters: int, warmup: int) -> float:
    """Calls per second of ``call`` in the simplest loop there is."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return iters / (time.perf_counter() - start)


def plain_call(backend: str, precision: str, model: torch.nn.Module, x: torch.Tensor, onnx_path: Path | None):
    """The framework's own call on ``x``, set up as its documentation shows, nothing of ours."""
    threads = torch.get_num_threads()
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    if backend == "openvino":
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        compiled = core.compile_model(str(onnx_path), "CPU", {
            props.inference_num_threads: threads, hints.performance_mode: hints.PerformanceMode.LATENCY,
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32})
        request, feed = compiled.create_infer_request(), {0: x.numpy()}
        return lambda: request.infer(feed)
    dtype = PRECISIONS[precision].dtype
    module = copy.deepcopy(model).to(dtype, memory_format=torch.channels_last)
    xc = x.to(dtype).contiguous(memory_format=torch.channels_last)
    if backend == "compile":
        module = torch.compile(module, dynamic=False)
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            module(xc)

    def call():
        with torch.inference_mode():
            module(xc)

    return call


def benchmark_app(onnx_path: Path, hint: str, seconds: float, infer_precision: str | None) -> dict:
    """``benchmark_app -hint HINT`` on ``onnx_path`` for ``seconds``, with ``-infer_precision``
    where given (else OpenVINO's default for this CPU): its throughput (images/s), median latency
    and what it chose, from the JSON report it writes."""
    tool = shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app is not on PATH (it comes with pip install openvino)")
    pinned = ["-infer_precision", infer_precision] if infer_precision else []
    with tempfile.TemporaryDirectory(prefix="benchmark-app-") as folder:
        subprocess.run([tool, "-m", str(onnx_path), "-d", "CPU", "-hint", hint, "-t", f"{seconds:g}", "-json_stats",
                        "-report_type", "no_counters", "-report_folder", folder, *pinned],
                       check=True, capture_output=True, text=True)
        report = json.loads((Path(folder) / "benchmark_report.json").read_text())
    results, setup = report["execution_results"], report["configuration_setup"]
    return {"throughput_ips": float(results["throughput"]), "median_ms": float(results["latency (ms)"]),
            "requests": int(setup["number of parallel infer requests"]), "api": setup["API"]}


def harness_vs_plain(runner, call, images: int, iters: int, device: torch.device) -> tuple[float, float]:
    """Median images/s of the harness and of the plain loop, measured alternately, twice each."""
    native = runner.to_input(resnet_perf.parity_inputs(runner.config.batch_size, runner.config.image_size))
    harness, plain = [], []
    for _ in range(2):
        measured = timing.measure(lambda: runner.run(native), device, warmup=3, iters=iters)
        harness.append(timing.summarize(measured.samples_ms, images)["throughput_ips"])
        if call is not None:
            plain.append(runner.config.batch_size * plain_loop(call, iters, warmup=3))
    return statistics.median(harness), statistics.median(plain) if plain else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--backend", default="eager,compile,onnxruntime,openvino")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--benchmark-app", action="store_true", help="also run benchmark_app beside the openvino rows")
    p.add_argument("--seconds", type=float, default=15.0, help="benchmark_app's run time per hint")
    args = p.parse_args()

    model = resnet_perf.build_model(args.model, image_size=args.image_size)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    cache = Path(tempfile.mkdtemp(prefix="crosscheck-"))
    print(machine_line(collect(device, threads)))
    print(f"{args.model} bs{args.batch_size} {args.image_size}px, {threads} threads, {args.iters} iterations per "
          "measurement, 2 alternating rounds")
    if args.benchmark_app and threads != len(os.sched_getaffinity(0)):
        print(f"note: benchmark_app's hints use every usable core ({len(os.sched_getaffinity(0))}); the rows use "
              f"{threads} threads")
    print(f"{'backend':<22} {'prec':<5} {'harness img/s':>14} {'plain img/s':>12} {'harness/plain':>14}")
    calibration = quantize.calibration(quantize.CalibrationFlags(None, "minmax", 64, ()), None, args.image_size, 0,
                                       model.fc.out_features)
    checks = []
    for precision in args.precision.split(","):
        for backend in args.backend.split(","):
            if precision not in RUNNERS[backend].precisions(device):
                continue
            modes = [OpenVINOOptions(), OpenVINOOptions("throughput")] if backend == "openvino" else [None]
            for options in modes:
                config = RunConfig(f"{args.model}-crosscheck", device, precision, args.batch_size, args.image_size,
                                   threads, cache, calibration=calibration if precision == "int8" else None,
                                   options=options)
                with RUNNERS[backend](model, config) as runner:
                    onnx_path = runner.onnx_path() if runner.artifact == "onnx" else None
                    throughput = options is not None and options.hint == "throughput"
                    # The plain loop is one synchronous call; throughput mode has only benchmark_app to face.
                    call = None if throughput else plain_call(
                        backend, precision, model, resnet_perf.parity_inputs(args.batch_size, args.image_size), onnx_path)
                    h, q = harness_vs_plain(runner, call, runner.images_per_call, args.iters, device)
                name = f"{backend} ({options.hint})" if options else backend
                print(f"{name:<22} {precision:<5} {h:>14.1f} {q:>12.1f} {h / q:>14.3f}", flush=True)
                if backend == "openvino" and args.benchmark_app:
                    checks.append((name, precision, options.hint, h, onnx_path))
    if checks:
        print(f"\n{'ours':<22} {'prec':<5} {'ours img/s':>11} {'benchmark_app':>30} {'app img/s':>10} "
              f"{'app median ms':>14} {'ours/app':>9}")
        for name, precision, hint, ours, onnx_path in checks:
            # Pinned to what our row compiled for (its f32 or bf16), and for int8 also as a user
            # runs it, at OpenVINO's default precision for the layers left unquantized (bf16 on AMX).
            for pinned in ("bf16" if precision == "bf16" else "f32", *((None,) if precision == "int8" else ())):
                app = benchmark_app(onnx_path, hint, args.seconds, pinned)
                label = f"-hint {hint} {pinned or 'default'} ({app['requests']} req)"
                print(f"{name:<22} {precision:<5} {ours:>11.1f} {label:>30} {app['throughput_ips']:>10.1f} "
                      f"{app['median_ms']:>14.2f} {ours / app['throughput_ips']:>9.3f}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
