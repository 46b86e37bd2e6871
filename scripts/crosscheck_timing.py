"""Cross-check the harness's throughput against plain timing loops written without it, and our rows
against OpenVINO's own benchmark_app, each pair measured alternately in one process.

For each backend, precision and streams value, the harness's figure (its runner and streams, timed
by bench.timing) and a plain loop over the framework's own call (the torch module, the compiled
module, InferenceSession.run, an OpenVINO infer request with numpy) are measured in turn, ``--rounds``
times. With N streams the plain loop is N Python threads, each calling its own framework object
(a session per thread for onnxruntime, an infer request per thread on the model compiled for N
streams for OpenVINO, the shared module with its share of the intra-op threads for torch), counted
over the wall time from their start to the last one's end. A harness that added overhead, or
skipped work, would show as a ratio away from 1.

With --benchmark-app, every row is then measured again, round after round, each round followed by
``benchmark_app -hint latency`` and ``-hint throughput`` (its defaults, as a user runs it) and
``-hint none -nstreams N -nireq N`` (the streams an openvino row kept, pinned to its inference
precision: benchmark_app takes -nstreams only without a hint) on the very ONNX file the int8 rows
ran (the project's own QDQ model; else the openvino rows' file), each measurement as long as
benchmark_app's: a tool nobody here wrote, on the same model, batch and machine, and the ratio of
our best row to the better of its two defaults, round by round. These VMs drift by 25% and more
within minutes: read the ratios within one round, not figures of different rounds.

    python scripts/crosscheck_timing.py --model resnet50 --batch-size 8 --image-size 224 \\
        --backend eager,compile,onnxruntime,openvino --precision fp32,bf16,int8 --streams 1,auto --benchmark-app
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

import resnet_perf
from bench import timing
from bench.env import collect
from bench.report import machine_line
from bench.run import streams_count
from bench.runners import RUNNERS, RunConfig, Runner, packages
from bench.streams import threads_each
from export import quantize
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.cli import Parser, check_choices, list_of, positive_float, positive_int, script


def plain_calls(backend: str, precision: str, model: torch.nn.Module, x: torch.Tensor, onnx_path: Path | None,
                streams: int, threads: int) -> list:
    """``streams`` of the framework's own calls on ``x``, one per thread, set up as its documentation
    shows, nothing of ours: each with its share of the intra-op threads."""
    each = threads_each(threads, streams)
    if backend == "onnxruntime":
        import onnxruntime as ort

        def session_call():
            options = ort.SessionOptions()
            options.intra_op_num_threads = each
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            return lambda: session.run(None, feed)

        return [session_call() for _ in range(streams)]
    if backend == "openvino":
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        settings = {props.inference_num_threads: threads,
                    hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32}
        if streams == 1:
            settings[hints.performance_mode] = hints.PerformanceMode.LATENCY
        else:
            settings.update({hints.performance_mode: hints.PerformanceMode.THROUGHPUT, props.num_streams: streams})
        compiled = ov.Core().compile_model(str(onnx_path), "CPU", settings)

        def request_call():
            request, feed = compiled.create_infer_request(), {0: x.numpy()}
            return lambda: request.infer(feed)

        return [request_call() for _ in range(streams)]
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

    return [call] * streams


def plain_loops(calls: list, iters: int, warmup: int, threads: int) -> float:
    """Calls per second of ``calls`` run side by side, each in a thread of its own with its share
    of torch's intra-op threads, from the moment they start to the last one's end."""
    each = threads_each(threads, len(calls))
    barrier = threading.Barrier(len(calls) + 1)

    def loop(call):
        torch.set_num_threads(each)
        for _ in range(warmup):
            call()
        barrier.wait()
        for _ in range(iters):
            call()

    workers = [threading.Thread(target=loop, args=(call,)) for call in calls]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    torch.set_num_threads(threads)
    return len(calls) * iters / (time.perf_counter() - start)


def harness(runner: Runner, streams: int, iters: int, seconds: float | None = None) -> float:
    """The harness's images/s on ``runner`` with ``streams`` in flight, as bench times a row (for at
    least ``seconds`` where given, as --min-time does)."""
    native = runner.to_input(resnet_perf.parity_inputs(runner.config.batch_size, runner.config.image_size))
    settings = {"warmup": 3, "iters": iters, "min_time": seconds}
    if streams == 1:
        measured = timing.measure(lambda: runner.run(native), runner.config.device, **settings)
    else:
        with runner.streams(streams) as kept:
            measured = timing.measure_streams(kept, native, **settings)
    return measured.throughput(runner.config.batch_size)


def benchmark_app(onnx_path: Path, hint: str, seconds: float, infer_precision: str | None = None,
                  streams: int | None = None) -> dict:
    """``benchmark_app -hint HINT`` on ``onnx_path`` for ``seconds``, with ``-infer_precision`` and
    ``-nstreams``/``-nireq`` where given (else OpenVINO's defaults for this CPU; with streams the
    hint is none, as benchmark_app requires): its throughput
    (images/s), median latency and the requests it kept, from the JSON report it writes."""
    # The one installed beside this Python (a virtual environment need not be on PATH), else PATH's.
    beside = Path(sys.executable).with_name("benchmark_app")
    tool = str(beside) if beside.is_file() else shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app is neither beside this Python nor on PATH (it comes with pip install openvino)")
    pinned = ["-infer_precision", infer_precision] if infer_precision else []
    if streams is not None:  # benchmark_app's rule: its fine-tuning options only without a hint
        hint = "none"
        pinned += ["-nstreams", str(streams), "-nireq", str(streams)]
    with tempfile.TemporaryDirectory(prefix="benchmark-app-") as folder:
        subprocess.run([tool, "-m", str(onnx_path), "-d", "CPU", "-hint", hint, "-t", f"{seconds:g}", "-json_stats",
                        "-report_type", "no_counters", "-report_folder", folder, *pinned],
                       check=True, capture_output=True, text=True)
        report = json.loads((Path(folder) / "benchmark_report.json").read_text())
    results, setup = report["execution_results"], report["configuration_setup"]
    return {"throughput_ips": float(results["throughput"]), "median_ms": float(results["latency (ms)"]),
            "requests": int(setup["number of parallel infer requests"])}


def streams_value(text: str) -> int | str:
    return text if text == "auto" else positive_int(text)


def main() -> None:
    p = Parser(prog="scripts/crosscheck_timing.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", choices=resnet_perf.MODEL_NAMES)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--iters", type=positive_int, default=20, help="timed requests per stream in each measurement")
    p.add_argument("--backend", type=list_of(str), default=["eager", "compile", "onnxruntime", "openvino"])
    p.add_argument("--precision", type=list_of(str), default=["fp32"])
    p.add_argument("--streams", type=list_of(streams_value), default=[1, "auto"])
    p.add_argument("--rounds", type=positive_int, default=2, help="alternations of each pair (medians are reported)")
    p.add_argument("--benchmark-app", action="store_true",
                   help="also alternate every row with benchmark_app on the int8 (else the openvino) rows' file")
    p.add_argument("--seconds", type=positive_float, default=10.0,
                   help="benchmark_app's run time per hint, and ours per row")
    args = p.parse_args()
    check_choices("--backend", args.backend, RUNNERS)
    check_choices("--precision", args.precision, PRECISIONS)

    model = resnet_perf.build_model(args.model, image_size=args.image_size)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    cache = Path(tempfile.mkdtemp(prefix="crosscheck-"))
    try:
        print(machine_line(collect(device, threads, packages())))
        print(f"{args.model} bs{args.batch_size} {args.image_size}px, {threads} threads, {args.iters} requests per stream "
              f"per measurement, {args.rounds} alternating rounds; images/s")
        calibration = quantize.calibration(quantize.CalibrationFlags(None, "minmax", 64, ()), None, args.image_size, 0,
                                           model.fc.out_features)
        x = resnet_perf.parity_inputs(args.batch_size, args.image_size)
        asked = args.streams
        print(f"{'backend':<12} {'prec':<5} {'streams':>9} {'harness':>9} {'plain':>9} {'harness/plain':>14}")
        rows: list[tuple[str, int, functools.partial]] = []
        for precision in args.precision:
            for backend in args.backend:
                if precision not in RUNNERS[backend].precisions(device):
                    continue
                for streams in asked:
                    config = RunConfig(f"{args.model}-crosscheck", device, precision, args.batch_size, args.image_size,
                                       threads, cache, calibration=calibration if precision == "int8" else None,
                                       streams=streams)
                    make = functools.partial(RUNNERS[backend], model, config)
                    with make() as runner:
                        count, _, _ = streams_count(runner, streams)
                        onnx_path = runner.onnx_path() if "onnx" in runner.artifacts else None
                        calls = plain_calls(backend, precision, model, x, onnx_path, count, threads)
                        ours, plain = [], []
                        for _ in range(args.rounds):
                            ours.append(harness(runner, count, args.iters))
                            plain.append(args.batch_size * plain_loops(calls, args.iters, 3, threads))
                        del calls
                    label = f"{count} ({streams})" if streams == "auto" else str(count)
                    h, q = statistics.median(ours), statistics.median(plain)
                    print(f"{backend:<12} {precision:<5} {label:>9} {h:>9.1f} {q:>9.1f} {h / q:>14.3f}", flush=True)
                    rows.append((f"{backend} {precision} {label}", count, make))
        if args.benchmark_app:
            alternate_with_benchmark_app(rows, args)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def alternate_with_benchmark_app(rows: list[tuple[str, int, functools.partial]], args: argparse.Namespace) -> None:
    """Every row, then benchmark_app on the file the int8 rows ran (else the openvino rows'), one
    after the other, ``rounds`` times, each timed for ``seconds``; per round, our best row over the
    better of benchmark_app's two defaults. Each row is prepared, measured and closed in turn, as
    bench runs its rows: one runtime in the process at a time (several prepared OpenVINO models
    and torch's and onnxruntime's thread pools beside them made every figure noisier here)."""
    files = {}
    for label, _, make in rows:
        runner = make()
        if runner.artifact == "onnx":
            files[label] = (runner.config.precision, runner.onnx_path())
    if not files:
        raise SystemExit("--benchmark-app needs a row that runs an ONNX file (onnxruntime or openvino)")
    precision, onnx_path = next((f for f in files.values() if f[0] == "int8"), next(iter(files.values())))
    print(f"\nevery row against benchmark_app on {onnx_path.name} ({precision}), alternating; images/s")
    figures: dict[str, list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        measured = {}
        for label, count, make in rows:
            with make() as runner:
                measured[label] = harness(runner, count, args.iters, args.seconds)
        ours = max(measured, key=measured.get)
        for hint in ("latency", "throughput"):
            # As a user runs it: OpenVINO's defaults (for the layers an int8 model leaves in floating
            # point that is bf16 on a CPU with AMX; our int8 rows pin f32 there).
            measured[f"benchmark_app -hint {hint}"] = benchmark_app(onnx_path, hint, args.seconds)["throughput_ips"]
        for label, count, make in rows:
            if label.startswith(f"openvino {precision} ") and count > 1:
                pinned = "bf16" if precision == "bf16" else "f32"
                app = benchmark_app(onnx_path, "none", args.seconds, pinned, count)
                measured[f"benchmark_app -nstreams {count} -infer_precision {pinned}"] = app["throughput_ips"]
        app_best = max(measured["benchmark_app -hint latency"], measured["benchmark_app -hint throughput"])
        print(f"round {round_ + 1}: " + "; ".join(f"{k} {v:.1f}" for k, v in measured.items()), flush=True)
        print(f"  our best, {ours}, over the better benchmark_app default: {measured[ours] / app_best:.3f}", flush=True)
        for k, v in measured.items():
            figures[k].append(v)
    print("medians: " + "; ".join(f"{k} {statistics.median(v):.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    sys.exit(script("scripts/crosscheck_timing.py", main))
