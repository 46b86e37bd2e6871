"""python -m bench: time every backend on the same model and inputs, check each against the fp32
eager reference, and print one table (speed and parity side by side), with JSON and CSV on request.

Read top to bottom: argument parsing, resolving the arguments into a plan (every bad input stops
here, with exit 2), the reference, then one row per model x precision x batch size x backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import resnet_perf
from bench import compare, plot, report, scenarios, timing
from bench import env as bench_env
from bench.runners import (
    BACKENDS,
    COMPILE_MODES,
    PRECISIONS,
    RUNNERS,
    RunConfig,
    Runner,
    ServerOptions,
    supported_precisions,
    unavailable_reason,
)
from bench.runners.triton_server import check_remote
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS
from bench.serving.client import Endpoint, ServerError
from export import quantize, sensitivity
from resnet_perf.atomic import write_text
from export.manifest import ManifestError, load_manifest
from resnet_perf import parity
from resnet_perf.cli import (
    Parser,
    UsageError,
    check_directory,
    check_writable,
    default_cache_dir,
    list_of,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    resolve_device,
    rng_seed,
)
from resnet_perf.images import ImageFolderError, load_labelled
from resnet_perf.synthetic import parity_inputs


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    # --model, --image-size, --precision and --seed default to what a given --onnx/--engine was
    # exported with, else to the values in their help.
    p.add_argument("--model", type=list_of(str), default=None, help="resnet18|34|50|101|152, comma-separated; resnet50")
    p.add_argument("--backend", type=list_of(str), default=["all"], help=f"{', '.join(BACKENDS)}, or all")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--batch-size", type=list_of(positive_int), default=None, help="8, or an artifact's OPT size")
    p.add_argument("--image-size", type=positive_int, default=None, help="224")
    p.add_argument("--precision", type=list_of(str), default=None, help=f"{', '.join(PRECISIONS)}; fp32")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls before timing")
    p.add_argument("--iters", type=positive_int, default=20, help="timed calls (at least this many with --min-time)")
    p.add_argument("--min-time", type=positive_float, default=None, help="time calls until this many seconds")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    p.add_argument("--weights", default=None, help="state_dict file (torchvision or ours); default: synthetic")
    p.add_argument("--seed", type=rng_seed, default=None, help="seed of the synthetic model and inputs; 0")
    p.add_argument("--onnx", default=None, help="run this exported ONNX file in the onnxruntime backends")
    p.add_argument("--engine", default=None, help="run this TensorRT engine in the tensorrt backend")
    p.add_argument("--cuda-graph", action="store_true", help="tensorrt: replay the engine as one CUDA graph")
    p.add_argument("--host-io", action="store_true",
                   help="on CUDA, time the copies of the batch to the GPU and of the logits back as well")
    p.add_argument("--json", dest="json_path", default=None, help="write results as JSON here")
    p.add_argument("--csv", dest="csv_path", default=None, help="write results as CSV here")
    p.add_argument("--resume", default=None, metavar="RUN.json",
                   help="keep the rows an interrupted run recorded there and run the rest (also its --json)")
    p.add_argument("--plot", dest="plot_path", default=None, help="write a PNG: throughput and latency against batch size")
    p.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help="where exported ONNX files and TensorRT engines are kept between runs")
    p.add_argument("--profile", action="store_true",
                   help="also time each stage of the model (stem, layer1..4, head) where the backend has stages")
    p.add_argument("--sensitivity", action="store_true",
                   help="with --precision int8: rank the layers by how much INT8 costs them (onnxruntime)")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="measure each row this many times over and report the spread of their throughputs")
    p.add_argument("--noise-threshold", type=positive_float, default=0.05,
                   help="flag a row noisy when its samples' std/mean exceeds this (default 0.05)")
    p.add_argument("--list-backends", action="store_true", help="list every backend and whether it runs here")
    quantize.add_arguments(p)
    p.add_argument("--eval-data", default=None, metavar="DIR",
                   help="labelled images, one folder per class in class order: report each row's real accuracy")
    p.add_argument("--eval-samples", type=positive_int, default=None, help="use at most this many --eval-data images")
    load = p.add_argument_group("MLPerf LoadGen scenarios")
    load.add_argument("--scenario", choices=("offline", *scenarios.SCENARIOS), default="offline",
                      help="offline: the fixed-batch loop (default); the others run under MLPerf LoadGen")
    load.add_argument("--duration", type=positive_float, default=5.0, help="seconds per LoadGen run (default 5)")
    load.add_argument("--target-qps", type=positive_float, default=None, help="server: Poisson arrival rate")
    load.add_argument("--max-batch", type=positive_int, default=None,
                      help="server: the dynamic batcher's largest batch (default: --batch-size)")
    load.add_argument("--max-queue-delay-ms", type=positive_float, default=None,
                      help=f"server: how long the batcher waits to fill a batch (default {DEFAULT_QUEUE_DELAY_MS:g} ms)")
    load.add_argument("--find-max-qps", action="store_true", help="server: the highest rate whose p99 stays within --p99-ms")
    load.add_argument("--p99-ms", type=positive_float, default=None, help="server: the p99 latency bound LoadGen judges")
    load.add_argument("--mlperf-rules", action="store_true",
                      help="keep LoadGen's own minimum duration and query count (MLPerf's: minutes per run)")
    load.add_argument("--loadgen-logs", default=None, help="keep LoadGen's logs under this folder, one per row")
    serve = p.add_argument_group("the triton-server backend")
    serve.add_argument("--server-url", default=None, metavar="grpc://HOST:PORT|http://HOST:PORT",
                       help="measure the Triton Inference Server running there (default: start one locally)")
    serve.add_argument("--server-model", default=None, help="the model's name on --server-url (default: --model)")
    serve.add_argument("--served-backend", default=None,
                       help="the backend a locally started Triton server hosts (default onnxruntime)")
    return p


@dataclass(frozen=True)
class Plan:
    models: list[str]
    backends: list[str]
    not_run: dict[str, str]  # backend -> why, for `--backend all`
    device: torch.device
    precisions: list[str]
    batch_sizes: list[int]
    image_size: int
    seed: int
    threads: int
    server: ServerOptions  # the triton-server backend's
    onnx: Path | None = None
    engine: Path | None = None
    weights_digest: str | None = None  # what the reference model must hold when an artifact is given
    calibration_inputs: torch.Tensor | None = None  # int8: the --calib-data inputs (None: synthetic)
    evaluation: tuple[torch.Tensor, torch.Tensor] | None = None  # --eval-data: images and their labels


# Which backends run a given artifact.
ARTIFACT_BACKENDS = {"--onnx": ("onnxruntime", "onnxruntime-trt"), "--engine": ("tensorrt",)}


def resolve_artifacts(args: argparse.Namespace) -> tuple[dict[str, dict], dict]:
    """The manifests of --onnx and --engine, checked against their files, and what the artifacts
    fix about the run (model, image size, precision, seed), each checked against the flag where it
    was given too: an artifact computes one thing. Batch sizes default to the size it was tuned for,
    and must lie in the range it accepts."""
    manifests, fixed = {}, {}
    paths = {"--onnx": args.onnx, "--engine": args.engine}
    for flag, fmt in (("--onnx", "onnx"), ("--engine", "tensorrt")):
        path = paths[flag]
        if path is None:
            continue
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            raise UsageError(f"{flag} {exc}") from None
        if manifest.get("format") != fmt or "weights_digest" not in manifest:
            raise UsageError(f"{flag} {path}: not an artifact of python -m export --format {fmt}")
        weights = manifest["weights"]
        if weights["source"] == "file" and args.weights is None:
            raise UsageError(f"{flag} {path} was exported from the weights in {weights['path']}: pass them with --weights")
        exported = {"--model": [manifest["model"]], "--image-size": manifest["image_size"],
                    "--precision": [manifest["precision"]]}
        if weights["source"] == "synthetic":
            exported["--seed"] = weights["seed"]
        for option, value in exported.items():
            given = fixed.get(option, getattr(args, option[2:].replace("-", "_")))
            if given is not None and given != value:
                raise UsageError(f"{flag} {path} was exported with {option} {value}; this run asks for {given}")
            fixed[option] = value
        fixed.setdefault("--batch-size", [manifest["batch"]["opt"]])
        manifests[flag] = manifest
    for flag, manifest in manifests.items():
        low, high = manifest["batch"]["min"], manifest["batch"]["max"]
        for size in args.batch_size or fixed["--batch-size"]:
            if not low <= size <= high:
                raise UsageError(f"--batch-size {size}: {flag} {paths[flag]} accepts batches of {low} to {high}")
    if len({m["weights_digest"] for m in manifests.values()}) > 1:
        raise UsageError("--onnx and --engine were exported from different weights")
    return manifests, fixed


def resolve(args: argparse.Namespace) -> Plan:
    """Check every argument against what this machine has; raise UsageError on the first bad one."""
    manifests, fixed = resolve_artifacts(args)
    models = args.model or fixed.get("--model", ["resnet50"])
    precisions = args.precision or fixed.get("--precision", ["fp32"])
    batch_sizes = args.batch_size or fixed.get("--batch-size", [8])
    image_size = args.image_size or fixed.get("--image-size", 224)
    seed = args.seed if args.seed is not None else fixed.get("--seed", 0)
    for name in models:
        if name not in resnet_perf.MODEL_NAMES:
            raise UsageError(f"--model {name!r}: unknown model; choose from {', '.join(resnet_perf.MODEL_NAMES)}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UsageError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    device = resolve_device(args.device)
    if args.host_io and device.type != "cuda":
        raise UsageError("--host-io times host-device copies, so it needs --device cuda")

    server = resolve_server(args, models)
    explicit = args.backend != ["all"]
    not_run: dict[str, str] = {}
    if explicit:
        for name in args.backend:
            if name not in BACKENDS:
                raise UsageError(f"--backend {name!r}: unknown backend; choose from {', '.join(BACKENDS)} or all")
            reason = unavailable_reason(name, device, server)
            if reason:
                raise UsageError(f"--backend {name}: not available on {device}: {reason}")
            for precision in precisions:
                supported = supported_precisions(name, device, server)
                if precision not in supported:
                    raise UsageError(f"--precision {precision}: {name} on {device.type} supports {', '.join(supported)}")
        backends = list(dict.fromkeys(args.backend))
    else:
        backends = []
        for name in BACKENDS:
            reason = unavailable_reason(name, device, server)
            if reason:
                not_run[name] = reason
            else:
                backends.append(name)
        for precision in precisions:
            if not any(precision in supported_precisions(name, device, server) for name in backends):
                raise UsageError(f"--precision {precision}: no backend available here runs it on {device.type}")
    server_flags = {"--server-url": args.server_url, "--server-model": args.server_model,
                    "--served-backend": args.served_backend}
    for flag, value in server_flags.items():
        if value is not None and "triton-server" not in backends:
            why = "add it to --backend" if explicit else f"it cannot run here ({not_run['triton-server']})"
            raise UsageError(f"{flag} applies to the triton-server backend: {why}")
    for flag in manifests:
        if not set(ARTIFACT_BACKENDS[flag]) & set(backends):
            wanted = " or ".join(ARTIFACT_BACKENDS[flag])
            why = "add one to --backend" if explicit else f"none runs here ({not_run[ARTIFACT_BACKENDS[flag][0]]})"
            raise UsageError(f"{flag} is run by the {wanted} backend: {why}")
    check_scenario(args)
    if args.scenario == "single-stream":
        if args.batch_size not in (None, [1]):
            raise UsageError("--scenario single-stream issues one sample per query: leave out --batch-size")
        batch_sizes = [1]
    elif args.scenario == "server" and args.max_batch is not None:
        if args.batch_size is not None:
            raise UsageError("--max-batch and --batch-size both set the server's batch: give one")
        batch_sizes = [args.max_batch]
    if args.profile and args.scenario != "offline":
        raise UsageError("--profile times the stages in the fixed-batch loop: use it with --scenario offline")
    if args.sensitivity and ("int8" not in precisions or "onnxruntime" not in backends):
        raise UsageError("--sensitivity ranks layers for INT8 on onnxruntime: use it with --precision int8 and the "
                         "onnxruntime backend")
    if args.cuda_graph and "tensorrt" not in backends:
        raise UsageError("--cuda-graph applies to the tensorrt backend, which this run does not include")

    if args.weights is not None and len(models) > 1:
        raise UsageError("--weights holds one model's weights: give exactly one --model with it")
    if args.resume is not None:
        if not Path(args.resume).is_file():
            raise UsageError(f"--resume {args.resume}: no such file")
        args.json_path = args.json_path or args.resume
    check_writable("--json", args.json_path)
    check_directory("--cache-dir", args.cache_dir)
    check_writable("--csv", args.csv_path)
    check_writable("--plot", args.plot_path)
    calibration_inputs = quantize.check_arguments(args, models, image_size, "int8" in precisions)
    evaluation = None
    if args.eval_data is not None:
        try:
            evaluation = load_labelled(args.eval_data, image_size, args.eval_samples)
        except ImageFolderError as exc:
            raise UsageError(str(exc)) from None
    elif args.eval_samples is not None:
        raise UsageError("--eval-samples applies to --eval-data")
    threads = args.threads or torch.get_num_threads()
    digests = {m["weights_digest"] for m in manifests.values()}
    return Plan(models, backends, not_run, device, precisions, batch_sizes, image_size, seed, threads, server,
                onnx=Path(args.onnx) if args.onnx else None, engine=Path(args.engine) if args.engine else None,
                weights_digest=digests.pop() if digests else None, calibration_inputs=calibration_inputs,
                evaluation=evaluation)


def resolve_server(args: argparse.Namespace, models: list[str]) -> ServerOptions:
    """The triton-server backend's options: a running server at --server-url, or a local one hosting
    --served-backend."""
    if args.server_url is None:
        if args.server_model is not None:
            raise UsageError("--server-model names a model on the server at --server-url: give --server-url too")
        served = args.served_backend or "onnxruntime"
        if served not in RUNNERS or served == "triton-server":
            choices = ", ".join(name for name in BACKENDS if name != "triton-server")
            raise UsageError(f"--served-backend {served!r}: choose from {choices}")
        return ServerOptions(served=RUNNERS[served], max_queue_delay_ms=args.max_queue_delay_ms or DEFAULT_QUEUE_DELAY_MS)
    try:
        Endpoint.parse(args.server_url)
    except ValueError as exc:
        raise UsageError(f"--server-url {exc}") from None
    if args.served_backend is not None:
        raise UsageError("--served-backend is what a locally started server hosts; the server at --server-url "
                         "runs what it was given")
    if len(models) > 1:
        raise UsageError("--server-url measures one served model: give exactly one --model")
    return ServerOptions(url=args.server_url, model=args.server_model or models[0])


def check_scenario(args: argparse.Namespace) -> None:
    """The LoadGen flags fit the scenario asked for, and LoadGen is installed where one is asked for."""
    server_only = {"--target-qps": args.target_qps, "--max-batch": args.max_batch, "--p99-ms": args.p99_ms,
                   "--find-max-qps": args.find_max_qps or None}
    if args.scenario != "server":
        for flag, value in server_only.items():
            if value is not None:
                raise UsageError(f"{flag} applies to --scenario server, not {args.scenario}")
    elif args.find_max_qps:
        if args.p99_ms is None:
            raise UsageError("--find-max-qps searches for the highest rate within a p99 bound: give --p99-ms")
        if args.target_qps is not None:
            raise UsageError("--find-max-qps searches for the rate itself: leave out --target-qps")
    elif args.target_qps is None:
        raise UsageError("--scenario server needs --target-qps (or --find-max-qps with --p99-ms)")
    if args.scenario == "offline":
        for flag, given in (("--mlperf-rules", args.mlperf_rules), ("--loadgen-logs", args.loadgen_logs)):
            if given:
                raise UsageError(f"{flag} applies to the LoadGen scenarios, not the offline loop")
    elif importlib.util.find_spec("mlperf_loadgen") is None:
        raise UsageError(f"--scenario {args.scenario} runs under MLPerf LoadGen, which is not installed "
                         "(pip install mlcommons-loadgen)")
    if args.loadgen_logs is not None:
        check_directory("--loadgen-logs", args.loadgen_logs)


def list_backends(device: torch.device, server: ServerOptions) -> None:
    console = report.console()
    for name in BACKENDS:
        reason = unavailable_reason(name, device, server)
        status = "[green]available[/green]" if reason is None else f"[yellow]unavailable[/yellow]: {escape(reason)}"
        console.print(f"{name:<16} {status}", highlight=False)


def reference_run(name: str, weights_model: torch.nn.Module | None, plan: Plan):
    """The model, the parity inputs and the fp32 eager reference logits, on the CPU. Without them
    no row can run, so a failure here (an image size too large for memory) is a usage error."""
    try:
        model = weights_model or resnet_perf.build_model(name, image_size=plan.image_size, seed=plan.seed)
        parity_x = parity_inputs(parity.PARITY_BATCH, plan.image_size, plan.seed, model.fc.out_features)
        with torch.inference_mode():
            reference = model(parity_x)
    except Exception as exc:  # noqa: BLE001 - whatever it was, it is reported in one line
        raise UsageError(f"{name} at {plan.image_size} px: {one_line(exc)}") from None
    if plan.weights_digest is not None and resnet_perf.weights_digest(model) != plan.weights_digest:
        given = plan.onnx or plan.engine
        raise UsageError(f"{given} was exported from other weights than this run's {name} "
                         "(pass the --weights it was exported from)")
    return model, parity_x, reference


def timed_call(runner: Runner, batch: torch.Tensor, host_io: bool) -> Callable[[], object]:
    """The call the clock brackets. Normally the backend's own call on an input already in place.
    With host_io, also the copies a serving process makes around it: the batch from pinned host
    memory into the input, and the logits back into pinned host memory (both blocking, since some
    backends run on streams of their own)."""
    x = runner.to_input(batch)
    if not host_io:
        return lambda: runner.run(x)
    host_in = x.cpu().pin_memory()
    host_out = torch.empty_like(runner.run(x), device="cpu").pin_memory()

    def call():
        x.copy_(host_in)
        return host_out.copy_(runner.run(x))

    return call


def loop_row(runner: Runner, row: report.Row, batch: torch.Tensor, args: argparse.Namespace) -> None:
    """The offline scenario: the fixed-batch loop, timed call by call, --repeat times over. The
    backend's own report (a server's statistics) covers the last repetition's timed calls."""
    call = timed_call(runner, batch, args.host_io)
    runs = [timing.measure(call, runner.config.device, warmup=args.warmup, iters=args.iters, min_time=args.min_time,
                           before_timed=runner.mark)
            for _ in range(args.repeat)]
    row.serving = runner.window()
    row.first_run_ms = runs[0].first_run_ms
    row.samples_ms = [sample for run in runs for sample in run.samples_ms]
    row.iters = len(row.samples_ms)
    if args.repeat > 1:
        row.repeats = [timing.summarize(run.samples_ms, row.batch_size)["throughput_ips"] for run in runs]
    stats = timing.summarize(row.samples_ms, row.batch_size)
    row.throughput_ips, row.latency_ms = stats["throughput_ips"], stats["latency_ms"]
    row.host_io = args.host_io
    row.cv = stats["latency_ms"]["std"] / stats["latency_ms"]["mean"]
    row.noisy = row.cv > args.noise_threshold


def profile_row(runner: Runner, row: report.Row, batch: torch.Tensor, args: argparse.Namespace) -> None:
    """--profile: the median time of each stage of the model (stem, layer1..4, head) on the backend,
    each fed the previous stage's real output. Backends that run the model whole have no stages."""
    stages = runner.stages()
    if stages is None:
        return
    x, row.profile = runner.to_input(batch), {}
    for name, stage in stages:
        def call(stage=stage, x=x):
            with torch.inference_mode():
                return stage(x)

        measured = timing.measure(call, runner.config.device, warmup=args.warmup, iters=args.iters)
        row.profile[name] = float(np.median(measured.samples_ms))
        x = call()


def loadgen_row(runner: Runner, row: report.Row, inputs: torch.Tensor, args: argparse.Namespace) -> None:
    """A LoadGen scenario: LoadGen issues the queries; every call goes from host memory to host logits."""
    # One batch's time sizes LoadGen's query counts and the top of a rate search.
    batch = inputs[: row.batch_size] if row.batch_size <= len(inputs) else next(parity.batches(inputs, row.batch_size))[0]
    probe = timing.measure(lambda: runner.infer(batch), runner.config.device, warmup=args.warmup, iters=5)
    row.first_run_ms = probe.first_run_ms
    expected_s = float(np.median(probe.samples_ms)) / 1e3
    log_dir = None if args.loadgen_logs is None else (
        Path(args.loadgen_logs) / f"{row.model}-{row.backend}-{row.precision}-b{row.batch_size}-{row.scenario}")
    settings = scenarios.ScenarioSettings(row.scenario, args.duration, args.target_qps, args.p99_ms,
                                          args.max_queue_delay_ms, args.mlperf_rules, log_dir)
    search = None
    submit = runner.submit if runner.serves_requests else None
    if args.find_max_qps:
        # The backend's own report (a server's statistics) covers the last, confirming run.
        result, target, search = scenarios.find_max_qps(runner.infer, inputs, row.batch_size, settings,
                                                        runner.config.device, expected_s, submit,
                                                        before_run=runner.mark)
    else:
        runner.mark()
        result = scenarios.run(runner.infer, inputs, row.batch_size, settings, runner.config.device, expected_s,
                               submit)
        target = args.target_qps
    row.serving = runner.window()
    row.throughput_ips = result.completed_samples_per_s
    row.latency_ms = result.latency_ms
    row.samples_ms = result.samples_ms
    row.iters = result.details["query_count"] or len(result.samples_ms)
    if row.scenario == "server":
        row.achieved_qps = result.completed_samples_per_s  # one sample per query
    row.loadgen = {
        "result": "VALID" if result.valid else "INVALID",
        "reasons": result.reasons,
        "early_stopping_p99_ms": result.early_stopping_ms.get(99.0),
        "early_stopping_estimates_ms": {f"p{p:g}": v for p, v in result.early_stopping_ms.items()},
        "target_qps": target,
        # LoadGen draws Poisson arrivals: in a short run the rate it scheduled differs from the target.
        "scheduled_qps": result.scheduled_samples_per_s,
        "p99_bound_ms": args.p99_ms,
        "duration_s": None if args.mlperf_rules else args.duration,
        "version": result.details["loadgen_version"],
        "log_dir": result.log_dir,
        "search": search,
    }


def bench_row(runner: Runner, row: report.Row, parity_x: torch.Tensor, reference: torch.Tensor,
              args: argparse.Namespace, evaluation: tuple[torch.Tensor, torch.Tensor, dict] | None = None) -> report.Row:
    """Prepare, time and check one runner, filling ``row``; the runner is closed whatever happens."""
    try:
        start = time.perf_counter()
        runner.prepare()
        row.setup_s = time.perf_counter() - start

        if row.scenario == "offline":
            # The timed batch is the parity batch's first batch_size inputs (cycled where it is larger).
            batch = next(parity.batches(parity_x, row.batch_size))[0]
            loop_row(runner, row, batch, args)
            if args.profile:
                profile_row(runner, row, batch, args)
        else:
            loadgen_row(runner, row, parity_x, args)

        row.parity = parity.compare(reference, parity.predict(runner.infer, parity_x, row.batch_size), row.precision)
        if evaluation is not None:
            images, labels, fp32 = evaluation
            measured = parity.accuracy(parity.predict(runner.infer, images, row.batch_size), labels)
            row.accuracy = {"images": len(labels), **measured, "reference_top1": fp32["top1"],
                            "reference_top5": fp32["top5"]}
        row.note = runner.timing_note
    except Exception as exc:  # noqa: BLE001 - one backend's failure must not lose the other rows
        row.status, row.error = "failed", one_line(exc)
    finally:
        runner.close()
    return row


def reference_accuracy(model: torch.nn.Module, evaluation: tuple[torch.Tensor, torch.Tensor] | None):
    """--eval-data's images and labels with the fp32 model's own accuracy on them, or None."""
    if evaluation is None:
        return None
    images, labels = evaluation
    if int(labels.max()) >= model.fc.out_features:
        raise UsageError(f"--eval-data has {int(labels.max()) + 1} class folders; the model has "
                         f"{model.fc.out_features} classes")
    with torch.inference_mode():
        return images, labels, parity.accuracy(parity.predict(model, images, 64), labels)


def row_key(row: report.Row) -> tuple:
    return (row.model, row.backend, row.device, row.precision, row.batch_size, row.image_size, row.scenario)


def load_resume(path: str, env: dict) -> dict[tuple, report.Row]:
    """The rows an earlier, interrupted run recorded, by key; refused if it ran somewhere else."""
    document = report.load(path, "--resume")
    for field_ in ("cpu", "gpu", "torch", "onnxruntime", "tensorrt", "threads"):
        if document["env"].get(field_) != env[field_]:
            raise UsageError(f"--resume {path} was measured with {field_} {document['env'].get(field_)}, "
                             f"this run has {env[field_]}: its rows would not compare")
    return {row_key(r): r for r in report.rows_from_json(document)}


def run_rows(plan: Plan, weights_model: torch.nn.Module | None, args: argparse.Namespace,
             done: dict[tuple, report.Row], on_row: Callable[[list[report.Row]], None]) -> tuple[list[report.Row], bool]:
    """Every row of the table: model x precision x batch size x backend, in that nesting. Rows in
    ``done`` (from --resume) are kept, not run again. ``on_row`` gets the rows so far after each
    one finishes. Returns the rows and whether Ctrl-C cut the run short (the row it interrupted is
    dropped; every finished one is kept)."""
    cache_dir = Path(args.cache_dir)
    rows: list[report.Row] = []
    total = len(plan.models) * len(plan.precisions) * len(plan.batch_sizes) * len(plan.backends)
    stderr = Console(stderr=True)
    # The progress display is for a person at a terminal; in a log it would only add blank lines.
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("starting", total=total)
        try:
            for name in plan.models:
                model = None
                for precision in plan.precisions:
                    out_of_memory_at: dict[str, int] = {}
                    for batch_size in plan.batch_sizes:
                        for backend in plan.backends:
                            row = report.Row(name, backend, plan.device.type, precision, batch_size,
                                             plan.image_size, scenario=args.scenario)
                            progress.update(task, description=f"{name} {backend} {precision} batch {batch_size}")
                            runner_cls = RUNNERS[backend]
                            if row_key(row) in done:
                                row = done[row_key(row)]
                            elif precision not in supported_precisions(backend, plan.device, plan.server):
                                row.status = "skipped"
                                row.error = f"{precision} is not supported by {backend} on {plan.device.type}"
                            elif backend in out_of_memory_at and batch_size > out_of_memory_at[backend]:
                                row.status = "skipped"
                                row.error = f"out of memory at batch {out_of_memory_at[backend]}"
                            else:
                                if model is None:
                                    progress.update(task, description=f"{name}: the model and the fp32 reference")
                                    model, parity_x, reference = reference_run(name, weights_model, plan)
                                    # The key of every artifact cached for this model: its name and weights.
                                    ident = f"{name}-{resnet_perf.weights_digest(model)[:12]}"
                                    calibration = quantize.calibration(args, plan.calibration_inputs, plan.image_size,
                                                                       plan.seed, model.fc.out_features)
                                    evaluation = reference_accuracy(model, plan.evaluation)
                                config = RunConfig(ident, plan.device, precision, batch_size, plan.image_size,
                                                   plan.threads, cache_dir, args.compile_mode, onnx=plan.onnx,
                                                   engine=plan.engine, cuda_graph=args.cuda_graph,
                                                   calibration=calibration if precision == "int8" else None,
                                                   server=plan.server)
                                bench_row(runner_cls(model, config), row, parity_x, reference, args, evaluation)
                            if row.error == "out of memory":
                                out_of_memory_at[backend] = batch_size
                                if plan.device.type == "cuda":
                                    torch.cuda.empty_cache()
                            rows.append(row)
                            on_row(rows)
                            progress.advance(task)
                if args.sensitivity and model is not None:
                    progress.update(task, description=f"{name}: int8 sensitivity, one layer in fp32 at a time")
                    analysis = sensitivity.analyse(model, calibration, parity_x, reference, image_size=plan.image_size,
                                                   batch=plan.batch_sizes[0], cache_dir=cache_dir / "calibration")
                    for row in rows:
                        if (row.model, row.backend, row.precision, row.status) == (name, "onnxruntime", "int8", "ok"):
                            row.sensitivity = analysis
                    on_row(rows)
        except KeyboardInterrupt:
            return rows, True
    return rows, False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    if argv[:1] == ["report"]:
        return report.main(argv[1:])
    if argv[:1] == ["serve"]:
        from bench.serving import serve  # PyTriton and its server only where one is served

        return serve.main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        if args.list_backends:
            list_backends(resolve_device(args.device), resolve_server(args, args.model or ["resnet50"]))
            return 0
        plan = resolve(args)
        weights_model = (
            resnet_perf.build_model(plan.models[0], weights=args.weights) if args.weights is not None else None
        )
        torch.set_num_threads(plan.threads)
        if plan.device.type == "cuda":
            # Synchronize and CUDA events act on the current device: make it the one measured.
            torch.cuda.set_device(plan.device)
        if plan.server.url is not None and "triton-server" in plan.backends:
            check_remote(plan.server.url, plan.server.model, batch_sizes=plan.batch_sizes, image_size=plan.image_size,
                         classes=weights_model.fc.out_features if weights_model else resnet_perf.IMAGENET_CLASSES,
                         precisions=plan.precisions)
        env = bench_env.collect(plan.device, plan.threads)
        done = load_resume(args.resume, env) if args.resume else {}
    except (UsageError, ServerError, resnet_perf.WeightsError) as exc:
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 2

    def save(rows: list[report.Row]) -> None:
        """JSON and CSV after every row, each written atomically: a crash or Ctrl-C loses no finished row."""
        if args.json_path:
            write_text(args.json_path, report.to_json(rows, env))
        if args.csv_path:
            write_text(args.csv_path, report.to_csv(rows))

    try:
        rows, interrupted = run_rows(plan, weights_model, args, done, save)
    except UsageError as exc:
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 2

    console = report.console()
    report.print_table(rows, console)
    if any(r.profile for r in rows):
        console.print(report.profile_table(rows))
    if any(r.serving for r in rows):
        console.print(report.serving_table(rows))
    for row in rows:
        if row.serving and isinstance(row.serving["server"], str):
            console.print(f"[dim]{row.model} {row.backend}: {escape(row.serving['server'])}[/dim]", highlight=False)
    for row in rows:
        if row.sensitivity and row.batch_size == plan.batch_sizes[0]:
            console.print(report.sensitivity_table(row))
    for backend, reason in plan.not_run.items():
        console.print(f"[dim]not run: {backend}: {escape(reason)}[/dim]", highlight=False)
    if args.plot_path and any(r.status == "ok" for r in rows):
        title = f"{', '.join(plan.models)} on {plan.device.type} ({env['gpu'] or env['cpu']}), {plan.image_size} px"
        plot.write_plot([asdict(r) for r in rows], args.plot_path, title)
    if interrupted:
        where = f"; {args.json_path} holds them (--resume {args.json_path} runs the rest)" if args.json_path else ""
        print(f"python -m bench: interrupted after {len(rows)} row(s){where}", file=sys.stderr)
        return 130
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
