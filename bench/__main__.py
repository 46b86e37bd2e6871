"""python -m bench: time every backend on the same model and inputs, check each against the fp32
eager reference, and print one table (speed and parity side by side), with JSON and CSV on request.

Read top to bottom: the flags (each backend adds its own), ``resolve``, which turns them into a
frozen Plan and finds every bad input before anything runs (exit 2), then ``main``: run the plan's
rows (bench/run.py), print and write what they measured (bench/report.py).
"""

from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":
    # Importing torch takes seconds. A stop signal meanwhile ends the process as one during the run
    # would (exit 128 + signal), without the traceback of an interrupted import; main() takes over.
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

import argparse
import contextlib
import importlib.util
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

import resnet_perf
from bench import compare, plot, record, report, run, scenarios
from bench import env as bench_env
from bench.plan import Loop, Outputs, Plan
from bench.runners import RUNNERS, RunContext, Runner, packages
from bench.runners.triton_server import hostable
from bench.saver import Saver
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS, SCENARIOS, ScenarioSettings
from bench.serving import serve
from bench.serving.local import missing_reason as local_server_missing
from export import quantize, triton_repo
from export.manifest import ManifestError, load_manifest, manifest_path
from export.onnx import BatchRange, graph_precision
from export.openvino_ir import weights_path
from resnet_perf.images import ImageFolderError, load_labelled
from resnet_perf.parity import PARITY_BATCH
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.cli import (
    Parser,
    Stopped,
    UsageError,
    check_choices,
    check_directory,
    check_thread_variables,
    default_cache_dir,
    held,
    list_of,
    non_negative_float,
    non_negative_int,
    one_line,
    output_file,
    positive_float,
    positive_int,
    resolve_device,
    rng_seed,
    stop_on_signals,
)
from resnet_perf.util.cpu import usable_cores

# More CUDA streams than this share hardware queues (CUDA_DEVICE_MAX_CONNECTIONS is at most 32):
# further streams only queue behind the others.
MAX_CUDA_STREAMS = 32

# More intra-op threads than this many per usable core only oversubscribe the cores: OpenMP runtimes
# hang or crash long before a useful figure (issue 16 saw --threads 1000 hang, 100000 segfault, on 2 cores).
THREADS_PER_CORE = 4

# A lower bound of the fp32 memory one image takes: its input (3 channels) and the stem's output (64
# channels at half the resolution) alone, 4 bytes a value, before any layer after the stem.
STEM_BYTES_PER_PIXEL = 4 * (3 + 64 / 4)

# The flag that gives each kind of exported file a backend can run (Runner.artifacts).
ARTIFACT_FLAGS = {"onnx": "--onnx", "tensorrt": "--engine", "openvino": "--ir", "aoti": "--pt2"}


def streams_value(text: str) -> int | str:
    """One value of --streams: a positive count, or "auto"."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def artifact_paths(args: argparse.Namespace) -> dict[str, str]:
    """The exported files given, by kind."""
    given = {kind: getattr(args, flag[2:]) for kind, flag in ARTIFACT_FLAGS.items()}
    return {kind: path for kind, path in given.items() if path is not None}


def flag_groups() -> list[tuple[type[Runner], list[str]]]:
    """Each distinct set of backend flags, with the backends that share it (a subclass shares its
    parent's), in registry order."""
    groups: dict[Any, tuple[type[Runner], list[str]]] = {}
    for name, runner in RUNNERS.items():
        method = runner.add_arguments.__func__
        if method is not Runner.add_arguments.__func__:
            groups.setdefault(method, (runner, []))[1].append(name)
    return list(groups.values())


def backend_flags(runner: type[Runner]) -> dict[str, Any]:
    """The dest and default ("not given") of every flag ``runner`` adds."""
    probe = argparse.ArgumentParser(add_help=False)
    runner.add_arguments(probe)
    return vars(probe.parse_args([]))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    backends = ", ".join(RUNNERS)
    # --model, --image-size, --precision and --seed default to what a given artifact (--onnx...) was
    # exported with, else to the values in their help.
    p.add_argument("--model", type=list_of(str), default=None, help="resnet18|34|50|101|152, comma-separated; resnet50")
    p.add_argument("--backend", type=list_of(str), default=["all"], help=f"{backends}, or all")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--batch-size", type=list_of(positive_int), default=None, help="8, or an artifact's OPT size")
    p.add_argument("--streams", type=list_of(streams_value), default=None, metavar="N[,N..]|auto",
                   help="requests in flight at once, each a batch (a row dimension like --batch-size); auto: what "
                        "the runtime's own tool would pick; default 1,auto: a latency and a throughput row per backend")
    p.add_argument("--image-size", type=positive_int, default=None, help="224")
    p.add_argument("--precision", type=list_of(str), default=None, help=f"{', '.join(PRECISIONS)}; fp32")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls before timing")
    p.add_argument("--iters", type=positive_int, default=20, help="timed calls (at least this many with --min-time)")
    p.add_argument("--min-time", type=positive_float, default=None, help="time calls until this many seconds")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--weights", default=None, help="state_dict file (torchvision or ours); default: synthetic")
    p.add_argument("--seed", type=rng_seed, default=None, help="seed of the synthetic model and inputs; 0")
    p.add_argument("--onnx", default=None, help="run this exported ONNX file in the backends that run ONNX")
    p.add_argument("--engine", default=None, help="run this TensorRT engine in the tensorrt backend")
    p.add_argument("--ir", default=None, help="run this OpenVINO IR (.xml, its .bin beside it) in the openvino backend")
    p.add_argument("--pt2", default=None, help="run this AOTInductor package in the aoti backend")
    p.add_argument("--host-io", action="store_true",
                   help="on CUDA, time the copies of the batch to the GPU and of the logits back as well")
    p.add_argument("--json", dest="json_path", default=None, help="write results as JSON here")
    p.add_argument("--csv", dest="csv_path", default=None, help="write results as CSV here")
    p.add_argument("--resume", default=None, metavar="RUN.json",
                   help="keep the rows an interrupted run recorded there and run the rest, and again the rows "
                   "that failed (a full disk, a crash); also its --json")
    p.add_argument("--plot", dest="plot_path", default=None, help="write a PNG: throughput and latency against batch size")
    p.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help="where exported ONNX files and TensorRT engines are kept between runs")
    p.add_argument("--parity", choices=("layers",), default=None,
                   help="besides the logits, compare every line's output (a convolution with what joins it, a "
                        "pooling, the fc) with the fp32 model's, in model order: where a row's error enters")
    p.add_argument("--profile", nargs="?", const="stages", choices=("stages", "layers"), default=None,
                   help="also time each stage of the model (stem, layer1..4, head; a bare --profile), or each layer "
                        "from the backend's own profiler, lined up by PyTorch module across backends (layers); "
                        "one request at a time, on the rows of the first --streams value")
    p.add_argument("--profile-calls", type=positive_int, default=None,
                   help=f"with --profile layers: the profiled calls, separate from the timed ones (default {Loop.profile_calls})")
    p.add_argument("--profile-dir", default=None, metavar="DIR",
                   help="with --profile layers: keep each row's raw trace here (torch Chrome trace, onnxruntime's "
                        "JSON, OpenVINO's counters), for Perfetto or chrome://tracing")
    p.add_argument("--sensitivity", action="store_true",
                   help="with --precision int8: rank the layers by how much INT8 costs them (onnxruntime); with "
                        "--parity layers, an int8 or fp16 row that fails parity also gets the fewest layers to keep "
                        "in fp32 (--keep-fp) for it to pass, bisected from its first line outside tolerance")
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
    load.add_argument("--scenario", choices=("offline", *SCENARIOS), default="offline",
                      help="offline: the fixed-batch loop (default); the others run under MLPerf LoadGen")
    load.add_argument("--duration", type=positive_float, default=None,
                      help=f"seconds per LoadGen run (default {ScenarioSettings.duration_s:g})")
    load.add_argument("--target-qps", type=positive_float, default=None, help="server: Poisson arrival rate")
    load.add_argument("--max-batch", type=positive_int, default=None,
                      help="server: the dynamic batcher's largest batch (default: --batch-size)")
    load.add_argument("--max-queue-delay-ms", type=non_negative_float, default=None,
                      help=f"server: how long the batcher waits to fill a batch (default {DEFAULT_QUEUE_DELAY_MS:g} ms)")
    load.add_argument("--find-max-qps", action="store_true", help="server: the highest rate whose p99 stays within --p99-ms")
    load.add_argument("--p99-ms", type=positive_float, default=None, help="server: the p99 latency bound LoadGen judges")
    load.add_argument("--mlperf-rules", action="store_true",
                      help="keep LoadGen's own minimum duration and query count (MLPerf's: minutes per run)")
    load.add_argument("--loadgen-logs", default=None, help="keep LoadGen's logs under this folder, one per row")
    add_backend_flags(p, list(RUNNERS))


def add_backend_flags(p: argparse.ArgumentParser, backends: list[str]) -> None:
    """The flags of each of ``backends`` that has its own, a group per distinct set."""
    for runner, names in flag_groups():
        if set(names) & set(backends):
            runner.add_arguments(p.add_argument_group(f"the {' and '.join(names)} backend"))


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    served = hostable(RUNNERS)
    serve.add_arguments(p, served)
    add_backend_flags(p, served)


COMMANDS = {
    "run": "time and check backends, print the table (the default: python -m bench --model resnet50 runs it)",
    "compare": "did anything get slower between two --json runs, beyond the noise? (exit 1 if so)",
    "report": "a Markdown report (tables and plots) of one or more --json runs",
    "serve": "one of our backends behind a local Triton Inference Server, until Ctrl-C",
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench", description=__doc__.split("\n\n")[0],
               epilog="Without a command, run: `python -m bench --model resnet50` is `python -m bench run --model "
                      "resnet50`. `python -m bench COMMAND --help` lists a command's flags.")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    adders = {"run": add_run_arguments, "compare": compare.add_arguments, "report": report.add_arguments,
              "serve": add_serve_arguments}
    for name, description in COMMANDS.items():
        adders[name](commands.add_parser(name, help=description, description=description))
    return p


def _listed(value: Any) -> str:
    return (",".join(map(str, value)) or "none") if isinstance(value, list) else str(value)


def resolve_artifacts(args: argparse.Namespace) -> tuple[dict[str, dict], dict]:
    """The manifests of the given artifacts (--onnx, --engine, --ir, --pt2) by kind, checked against
    their files, and what the artifacts fix about the run (model, image size, precision, seed), each
    checked against the flag where it was given too: an artifact computes one thing. Batch sizes
    default to the size it was tuned for."""
    manifests, fixed = {}, {}
    paths = artifact_paths(args)
    for kind, path in paths.items():
        flag = ARTIFACT_FLAGS[kind]
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            raise UsageError(f"{flag} {exc}") from None
        if manifest.get("format") != kind or "weights_digest" not in manifest:
            raise UsageError(f"{flag} {path}: not an artifact of python -m export --format {kind}")
        if manifest.get("model") not in resnet_perf.MODEL_NAMES:
            raise UsageError(f"{flag} {path}: its manifest names model {manifest.get('model')!r}, which this version "
                             f"does not build ({', '.join(resnet_perf.MODEL_NAMES)})")
        if kind == "onnx" and (found := graph_precision(path)) != manifest["precision"]:
            raise UsageError(f"{flag} {path}: its manifest says {manifest['precision']}, but the graph computes "
                             f"in {found}: the manifest was edited, or belongs to another file")
        weights = manifest["weights"]
        if weights["source"] == "file" and args.weights is None:
            raise UsageError(f"{flag} {path} was exported from the weights in {weights['path']}: pass them with --weights")
        exported = {"--model": [manifest["model"]], "--image-size": manifest["image_size"],
                    "--precision": [manifest["precision"]]}
        if weights["source"] == "synthetic":
            exported["--seed"] = weights["seed"]
        if manifest["precision"] == "fp16":  # the layers an fp16 export keeps in fp32 are in the file
            exported["--keep-fp"] = manifest.get("keep_fp", [])
        for option, value in exported.items():
            given = fixed.get(option, getattr(args, option[2:].replace("-", "_")))
            if given is not None and given != value:
                raise UsageError(f"{flag} {path} was exported with {option} {_listed(value)}; this run asks for "
                                 f"{_listed(given)}")
            fixed[option] = value
        fixed.setdefault("--batch-size", [manifest["batch"]["opt"]])
        manifests[kind] = manifest
    if len({m["weights_digest"] for m in manifests.values()}) > 1:
        given = " and ".join(ARTIFACT_FLAGS[kind] for kind in manifests)
        raise UsageError(f"{given} were exported from different weights")
    return manifests, fixed


def check_artifact_batches(args: argparse.Namespace, manifests: Mapping[str, dict], batch_sizes: list[int]) -> None:
    """Every batch size of the run lies in the range each given artifact accepts."""
    for kind, manifest in manifests.items():
        accepted = BatchRange(**manifest["batch"])
        for size in batch_sizes:
            if size not in accepted:
                raise UsageError(f"--batch-size {size}: {ARTIFACT_FLAGS[kind]} {artifact_paths(args)[kind]} accepts "
                                 f"batches of {accepted.min} to {accepted.max}")


def resolve_options(args: argparse.Namespace, context: RunContext) -> dict[str, Any]:
    """Every backend's own options from its flags. Servers come last, so that a server started
    here sees the options of the backend it hosts."""
    options: dict[str, Any] = {}
    for name, runner in sorted(RUNNERS.items(), key=lambda item: item[1].serves_requests):
        options[name] = backend_options(runner, args, replace(context, options=dict(options)))
    return options


def backend_options(runner: type[Runner], args: argparse.Namespace, context: RunContext) -> Any:
    """One backend's own options, from its flags."""
    return runner.resolve_options({dest: getattr(args, dest) for dest in backend_flags(runner)}, context)


def resolve_backends(args: argparse.Namespace, device: torch.device, precisions: list[str],
                     options: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The backends to run, and for --backend all those that cannot run here, with why."""
    if args.backend != ["all"]:
        for name in args.backend:
            if name not in RUNNERS:
                raise UsageError(f"--backend {name!r}: unknown backend; choose from {', '.join(RUNNERS)} or all")
            runner = RUNNERS[name]
            reason = runner.unavailable_reason(device, options[name])
            if reason:
                raise UsageError(f"--backend {name}: not available on {device}: {reason}")
            # A backend named for precisions it runs only some of runs those, the others its rows skip
            # with the reason (eager beside onnxruntime at fp32,int8); named for none of them, it is refused.
            supported = runner.precisions(device, options[name])
            if not set(precisions) & set(supported):
                precision = precisions[0]
                why = runner.why_unsupported(precision, device, options[name])
                raise UsageError(f"--precision {precision}: {name} on {device.type} supports {', '.join(supported)}"
                                 + (f": {why}" if why else ""))
        return args.backend, {}
    backends, not_run = [], {}
    for name, runner in RUNNERS.items():
        reason = runner.unavailable_reason(device, options[name])
        if reason:
            not_run[name] = reason
        else:
            backends.append(name)
    for precision in precisions:
        if not any(precision in RUNNERS[name].precisions(device, options[name]) for name in backends):
            raise UsageError(f"--precision {precision}: no backend available here runs it on {device.type}")
    return backends, not_run


def check_backend_flags(args: argparse.Namespace, backends: list[str], not_run: Mapping[str, str],
                        options: Mapping[str, Any]) -> None:
    """A backend's own flag, or an artifact, given to a run without a backend that reads it (run,
    or hosted by a server that is run)."""
    explicit = args.backend != ["all"]
    reading = {*backends, *(RUNNERS[name].hosted(options[name]) for name in backends)}
    applies = [(flag, True, names) for flag, names in given_backend_flags(args)]
    for kind, flag in ARTIFACT_FLAGS.items():
        names = [name for name, runner in RUNNERS.items() if kind in runner.artifacts]
        applies.append((flag, kind in artifact_paths(args), names))
    for flag, given, names in applies:
        if given and not set(names) & reading:
            why = "add it to --backend" if explicit else f"it cannot run here ({not_run[names[0]]})"
            raise UsageError(f"{flag} applies to the {' or '.join(names)} backend: {why}")
    # openvino runs an --ir where one is given; the ONNX file only for its QDQ int8 rows.
    onnx_readers = {name for name, runner in RUNNERS.items() if "onnx" in runner.artifacts} - {"openvino"}
    paths = artifact_paths(args)
    if "onnx" in paths and "openvino" in paths and not onnx_readers & reading and "int8" not in (args.precision or []):
        raise UsageError("--onnx: no row of this run reads it (openvino runs the --ir); leave it out, or add a "
                         "backend that runs it")


def given_backend_flags(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """Each backend's own flag that was given (not left at its default), with the backends it belongs to."""
    given = []
    for runner, names in flag_groups():
        for dest, default in backend_flags(runner).items():
            if getattr(args, dest, default) != default:
                given.append((f"--{dest.replace('_', '-')}", names))
    return given


def queue_delay_ms(args: argparse.Namespace) -> float:
    """The dynamic batcher's wait: --max-queue-delay-ms (0 sends each batch at once), or the default."""
    return DEFAULT_QUEUE_DELAY_MS if args.max_queue_delay_ms is None else args.max_queue_delay_ms


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
        for flag, given in (("--mlperf-rules", args.mlperf_rules), ("--loadgen-logs", args.loadgen_logs),
                            ("--duration", args.duration)):
            if given:
                raise UsageError(f"{flag} applies to the LoadGen scenarios, not the offline loop (whose length "
                                 "--iters and --min-time set)")
    elif importlib.util.find_spec("mlperf_loadgen") is None:
        raise UsageError(f"--scenario {args.scenario} runs under MLPerf LoadGen, which is not installed "
                         "(pip install mlcommons-loadgen)")
    if args.loadgen_logs is not None:
        check_directory("--loadgen-logs", args.loadgen_logs)
    if args.scenario == "single-stream" and args.batch_size not in (None, [1]):
        raise UsageError("--scenario single-stream issues one sample per query: leave out --batch-size")
    if args.max_batch is not None and args.batch_size is not None:
        raise UsageError("--max-batch and --batch-size both set the server's batch: give one")
    if args.profile and args.scenario != "offline":
        raise UsageError("--profile times the stages in the fixed-batch loop: use it with --scenario offline")
    if args.scenario == "server" and args.max_queue_delay_ms and not args.mlperf_rules:
        duration = args.duration or ScenarioSettings.duration_s
        if args.max_queue_delay_ms >= duration * 1000:
            raise UsageError(f"--max-queue-delay-ms {args.max_queue_delay_ms:g}: as long as the whole {duration:g} s run "
                             "(--duration); the batcher would wait past its end for a batch that cannot fill")
    if args.profile_calls is not None and args.profile != "layers":
        raise UsageError("--profile-calls sets how many calls --profile layers profiles: add --profile layers")
    if args.profile_dir is not None:
        if args.profile != "layers":
            raise UsageError("--profile-dir keeps the traces of --profile layers: add it")
        check_directory("--profile-dir", args.profile_dir)


def resolve_streams(args: argparse.Namespace, device: torch.device, threads: int, cores: int) -> tuple[int | str, ...]:
    """--streams checked against the scenario and the machine. By default a latency row (1) and a
    throughput row (auto) wherever the loop can keep requests in flight: the offline loop and
    LoadGen's offline scenario, without --host-io's per-call copies."""
    in_flight = args.scenario in ("offline", "offline-loadgen") and not args.host_io
    if args.streams is None:
        return (1, "auto") if in_flight else (1,)
    given = ",".join(map(str, args.streams))
    if args.streams != [1] and args.host_io:
        raise UsageError(f"--streams {given}: --host-io times each call's copies one call at a time; give --streams 1")
    if args.streams != [1] and not in_flight:
        raise UsageError(f"--streams {given}: --scenario {args.scenario} issues its own queries; requests in flight "
                         "apply to the offline loop and --scenario offline-loadgen")
    for count in args.streams:
        if count == "auto":
            continue
        if device.type == "cuda" and count > MAX_CUDA_STREAMS:
            raise UsageError(f"--streams {count}: at most {MAX_CUDA_STREAMS} CUDA streams (more share the GPU's "
                             "hardware queues and only wait behind the others)")
        if device.type != "cuda" and count > min(cores, threads):
            raise UsageError(f"--streams {count}: each stream needs a core and an intra-op thread of its own; this "
                             f"process may use {cores} core(s) and {threads} thread(s)")
    return tuple(args.streams)


def fixed_model(args: argparse.Namespace, models: list[str], image_size: int, seed: int,
                manifests: Mapping[str, dict]) -> torch.nn.Module | None:
    """The model every row runs when the run fixes it: --weights, or the synthetic model a given
    artifact was exported from, checked against the artifact's weights."""
    if args.weights is not None and len(models) > 1:
        raise UsageError("--weights holds one model's weights: give exactly one --model with it")
    if args.weights is None and not manifests:
        return None
    try:
        model = resnet_perf.build_model(models[0], weights=args.weights, image_size=image_size, seed=seed)
    except resnet_perf.WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model cannot be built at all: nothing can run
        raise UsageError(f"{models[0]} at {image_size} px: {one_line(exc)}") from None
    digest = resnet_perf.weights_digest(model)
    run_weights = f"from {args.weights}" if args.weights else f"synthetic, seed {seed}"
    for kind, manifest in manifests.items():
        if digest != manifest["weights_digest"]:
            weights = manifest["weights"]
            exported = f"from {weights['path']}" if weights["source"] == "file" else f"synthetic, seed {weights['seed']}"
            raise UsageError(
                f"{ARTIFACT_FLAGS[kind]} {artifact_paths(args)[kind]} was exported from {manifest['model']} at "
                f"{manifest['image_size']} px with weights {exported} (digest {manifest['weights_digest'][:12]}); "
                f"this run's {models[0]} at {image_size} px, weights {run_weights}, has digest {digest[:12]}: "
                "pass the --weights it was exported from")
    return model


def check_memory(image_size: int, batch_sizes: list[int], device: torch.device) -> None:
    """A run whose images cannot fit is refused before it starts: the fp32 reference computes
    PARITY_BATCH images at once on the CPU (and a row on the CPU its largest batch), and the
    input and first activation of those images alone must fit in the machine's memory."""
    images = max(PARITY_BATCH, *(batch_sizes if device.type == "cpu" else ()))
    needed = images * STEM_BYTES_PER_PIXEL * image_size**2
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise UsageError(f"--image-size {image_size}: {images} images at once (the fp32 reference's parity batch, or "
                         f"the largest --batch-size) need at least {needed / 2**30:,.0f} GiB for their input and "
                         f"first activation alone; this machine has {memory / 2**30:.1f} GiB")


def resolve_outputs(args: argparse.Namespace) -> Outputs:
    """The files the run writes, each a regular file (or none yet) with its symlinks followed, none
    the same file as another output or as an input of the run."""
    inputs = {"--weights": args.weights, **{flag: getattr(args, flag[2:]) for flag in ARTIFACT_FLAGS.values()}}
    for kind, path in artifact_paths(args).items():
        inputs[f"{ARTIFACT_FLAGS[kind]}'s manifest"] = str(manifest_path(path))
        if kind == "openvino":
            inputs["--ir's weights"] = str(weights_path(path))
    taken = {Path(os.path.realpath(path)): flag for flag, path in inputs.items() if path}
    json_flag, json_path = ("--json", args.json_path) if args.json_path is not None else ("--resume", args.resume)
    outputs = []
    for flag, path in ((json_flag, json_path), ("--csv", args.csv_path), ("--plot", args.plot_path)):
        target = output_file(flag, path)
        if target in taken:
            raise UsageError(f"{flag} {path} is also {taken[target]}'s file: give each output its own")
        if target is not None:
            taken[target] = flag
        outputs.append(target)
    return Outputs(*outputs)


def load_resume(path: str, env: dict) -> dict[tuple, record.Row]:
    """The rows an earlier, interrupted run recorded, by key; refused if it ran somewhere else."""
    document = record.load(path, "--resume")
    recorded = document["env"].get("settings")
    if not isinstance(recorded, dict):
        raise UsageError(f"--resume {path} does not record its seed, weights and timing settings (written before "
                         "run files did): its rows cannot be checked against this run's; start a new --json")
    # The machine and libraries, then what the run asked for: every figure depends on each.
    machine = ("cpu", "gpu", "threads", "torch", *packages())
    measured, ours = {**document["env"], **recorded}, {**{key: env[key] for key in machine}, **env["settings"]}
    # Both runs' settings: one that only one of them records (--keep-fp) differs too.
    for key in dict.fromkeys([*ours, *recorded]):
        if measured.get(key) != ours.get(key):
            raise UsageError(f"--resume {path} was measured with {key} {measured.get(key)}, this run has "
                             f"{ours.get(key)}: its rows would not compare")
    return {record.row_key(r): r for r in record.rows_from_json(document)}


def resolve(args: argparse.Namespace) -> Plan:
    """The run the flags ask for, checked against what this machine has; UsageError on the first
    bad input, before anything runs."""
    check_thread_variables()
    manifests, fixed = resolve_artifacts(args)
    models = args.model or fixed.get("--model", ["resnet50"])
    precisions = args.precision or fixed.get("--precision", ["fp32"])
    image_size = args.image_size or fixed.get("--image-size", 224)
    seed = args.seed if args.seed is not None else fixed.get("--seed", 0)
    for name in models:
        if name not in resnet_perf.MODEL_NAMES:
            raise UsageError(f"--model {name!r}: unknown model; choose from {', '.join(resnet_perf.MODEL_NAMES)}")
    check_choices("--precision", precisions, PRECISIONS)
    device = resolve_device(args.device)
    if args.host_io and device.type != "cuda":
        raise UsageError("--host-io times host-device copies, so it needs --device cuda")
    check_scenario(args)
    if args.resume is not None and Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: is a directory; give the run file in it")
    if args.resume is not None and not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: no such file")
    if args.scenario == "single-stream":
        batch_sizes = [1]
    elif args.max_batch is not None:
        batch_sizes = [args.max_batch]
    else:
        batch_sizes = args.batch_size or fixed.get("--batch-size", [8])
    check_artifact_batches(args, manifests, batch_sizes)
    check_memory(image_size, batch_sizes, device)
    model = fixed_model(args, models, image_size, seed, manifests)

    artifacts = {kind: Path(path) for kind, path in artifact_paths(args).items()}
    context = RunContext(tuple(models), device, tuple(precisions), tuple(batch_sizes), image_size,
                         model.fc.out_features if model else resnet_perf.IMAGENET_CLASSES,
                         queue_delay_ms(args), args.scenario, artifacts,
                         runners=dict(RUNNERS))
    options = resolve_options(args, context)
    backends, not_run = resolve_backends(args, device, precisions, options)
    check_backend_flags(args, backends, not_run, options)
    ranks = "int8" in precisions and "onnxruntime" in backends
    bisects = "fp16" in precisions and args.parity == "layers"
    if args.sensitivity and not (ranks or bisects):
        raise UsageError("--sensitivity ranks layers for INT8 on onnxruntime (--precision int8 and the onnxruntime "
                         "backend) or bisects failing fp16 rows (--precision fp16 with --parity layers)")
    outputs = resolve_outputs(args)
    check_directory("--cache-dir", args.cache_dir)
    calibration = quantize.CalibrationFlags(args.calib_data, args.calib_method, args.calib_samples,
                                            tuple(args.keep_fp or fixed.get("--keep-fp", [])))
    calibration_inputs = quantize.check_arguments(calibration, models, image_size, precisions)
    # A backend named for fp16 rows it cannot keep the layers in is refused; --backend all skips those rows.
    if calibration.keep_fp and "fp16" in precisions and args.backend != ["all"]:
        for name in backends:
            if "fp16" in RUNNERS[name].precisions(device, options[name]) and not RUNNERS[name].keeps_fp16_layers():
                keeping = ", ".join(n for n in RUNNERS if RUNNERS[n].keeps_fp16_layers())
                given = "--keep-fp" if args.keep_fp else "the exported file's --keep-fp"
                raise UsageError(f"{given}: the {name} backend's fp16 rows keep no layer in fp32 ({keeping} do)")
    # int8 rows, a row per quantizer of each backend that runs int8 (None for the others' skipped rows)
    quantizers = {name: RUNNERS[name].quantizers(options[name]) if "int8" in RUNNERS[name].precisions(
        device, options[name]) else (None,) for name in backends}
    if "int8" in precisions:
        for name in backends:
            for quantizer in quantizers[name]:
                if quantizer is not None:
                    quantize.check_quantizer(calibration, quantizer, f"the {name} backend")
    if args.eval_samples is not None and args.eval_data is None:
        raise UsageError("--eval-samples applies to --eval-data")
    try:
        evaluation = None if args.eval_data is None else load_labelled(args.eval_data, image_size, args.eval_samples)
    except ImageFolderError as exc:
        raise UsageError(str(exc)) from None
    if evaluation is not None and int(evaluation[1].max()) >= context.classes:
        raise UsageError(f"--eval-data has {int(evaluation[1].max()) + 1} class folders; the model has "
                         f"{context.classes} classes")
    for name in backends:
        RUNNERS[name].check_ready(options[name], context)
    threads = args.threads or torch.get_num_threads()
    cores = usable_cores()
    if threads > THREADS_PER_CORE * cores:
        raise UsageError(f"--threads {threads}: this process may use {cores} core(s); more than "
                         f"{THREADS_PER_CORE * cores} threads ({THREADS_PER_CORE} per core) only oversubscribe them")
    streams = resolve_streams(args, device, threads, cores)
    # What the rows' figures also depend on, so that --resume can refuse a file measured otherwise.
    settings = {"seed": seed, "weights": "synthetic" if args.weights is None else resnet_perf.weights_digest(model),
                "warmup": args.warmup, "iters": args.iters, "min_time": args.min_time, "repeat": args.repeat}
    if calibration.keep_fp:  # recorded only where given, so that files written without it still resume
        settings["keep_fp"] = list(calibration.keep_fp)
    env = {**bench_env.collect(device, threads, packages()), "settings": settings}
    return Plan(
        tuple(models), tuple(backends), tuple(precisions), tuple(batch_sizes), device, image_size, seed, threads,
        Path(args.cache_dir), env, options={name: options[name] for name in backends},
        artifacts=artifacts, not_run=not_run,
        loop=Loop(args.warmup, args.iters, args.min_time, args.repeat, args.noise_threshold, args.host_io, args.profile,
                  args.profile_calls or Loop.profile_calls, Path(args.profile_dir) if args.profile_dir else None),
        streams=streams, quantizers=quantizers,
        scenario=ScenarioSettings(args.scenario, args.duration or ScenarioSettings.duration_s, args.target_qps, args.p99_ms, args.max_queue_delay_ms,
                                  args.mlperf_rules, Path(args.loadgen_logs) if args.loadgen_logs else None),
        find_max_qps=args.find_max_qps, model=model, calibration=calibration if "int8" in precisions else None,
        keep_fp=calibration.keep_fp if "fp16" in precisions else (),
        calibration_inputs=calibration_inputs, evaluation=evaluation, sensitivity=args.sensitivity,
        parity_layers=args.parity == "layers",
        outputs=outputs, resumed=load_resume(args.resume, env) if args.resume else {},
    )


def list_backends(args: argparse.Namespace) -> int:
    """--list-backends: every backend, and whether it runs here (with the backend flags given)."""
    device = resolve_device(args.device)
    context = RunContext(tuple(args.model or ["resnet50"]), device, ("fp32",), (8,), 224, resnet_perf.IMAGENET_CLASSES,
                         queue_delay_ms(args), runners=dict(RUNNERS))
    options = resolve_options(args, context)
    console = report.console()
    for name, runner in RUNNERS.items():
        reason = runner.unavailable_reason(device, options[name])
        status = "[green]available[/green]" if reason is None else f"[yellow]unavailable[/yellow]: {escape(reason)}"
        console.print(f"{name:<16} {status}", highlight=False)
    return 0


def other_command(args: argparse.Namespace) -> int:
    """compare, report and serve: each its own small program."""
    if args.command == "compare":
        return compare.compare(args.base, args.new, threshold=args.threshold, resamples=args.resamples,
                               relative_to=args.relative_to, mem_threshold=args.mem_threshold,
                               energy_threshold=args.energy_threshold)
    if args.command == "report":
        try:
            print(f"wrote {report.write_report(args.runs, args.output)}")
        except OSError as exc:
            print(f"python -m bench report: could not write to {args.output} ({exc.strerror or one_line(exc)}); "
                  "nothing was written", file=sys.stderr)
            return 1
        return 0
    return serve.serve(resolve_serve(args))


def resolve_serve(args: argparse.Namespace) -> serve.Served:
    """What ``bench serve`` serves, checked as a run's backends are: the backend from the registry,
    its options from its flags, then whether it runs here and at that precision."""
    check_choices("--model", args.model, resnet_perf.MODEL_NAMES)
    if args.name is not None and not triton_repo.usable_name(args.name):
        raise UsageError(f"--name {args.name!r}: not a usable model name")
    check_choices("--backend", args.backend, hostable(RUNNERS))
    for flag, names in given_backend_flags(args):
        if args.backend not in names:
            raise UsageError(f"{flag} applies to the {' or '.join(names)} backend, not {args.backend}")
    device = resolve_device(args.device)
    runner = RUNNERS[args.backend]
    context = RunContext((args.model,), device, (args.precision,), (args.max_batch,), args.image_size,
                         resnet_perf.IMAGENET_CLASSES, args.max_queue_delay_ms, runners=dict(RUNNERS))
    options = backend_options(runner, args, context)
    reason = local_server_missing() or runner.unavailable_reason(device, options)
    if reason:
        raise UsageError(f"cannot serve {args.backend} on {device}: {reason}")
    # int8 needs its calibration, which a run resolves for its rows: a served int8 model is exported first.
    precisions = [p for p in runner.precisions(device, options) if p != "int8"]
    if args.precision not in precisions:
        raise UsageError(f"--precision {args.precision}: {args.backend} on {device.type} serves {', '.join(precisions)}")
    check_directory("--cache-dir", args.cache_dir)
    return serve.Served(args.model, runner, options, device, args.precision, args.image_size, args.max_batch,
                        args.max_queue_delay_ms, args.weights, args.seed, args.threads or torch.get_num_threads(),
                        args.name or args.model, Path(args.cache_dir))


def run_plan(plan: Plan) -> int:
    """The plan's rows, saved after each; then the table, the plot, and why the run ended early."""
    torch.set_num_threads(plan.threads)
    if plan.device.type == "cuda":
        # Synchronize and CUDA events act on the current device: make it the one measured.
        torch.cuda.set_device(plan.device)
    saver = Saver(plan)
    rows, stopped = run.run_rows(plan, RUNNERS, on_row=saver)

    report.print_run(rows, plan, report.console())
    plotted = True
    if plan.outputs.plot and any(r.status == "ok" for r in rows):
        where = plan.env["gpu"] or plan.env["cpu"]
        title = f"{', '.join(plan.models)} on {plan.device.type} ({where}), {plan.image_size} px"
        try:
            plot.write_plot([asdict(r) for r in rows], plan.outputs.plot, title)
        except OSError as exc:
            print(f"python -m bench: could not write {plan.outputs.plot} ({exc.strerror or one_line(exc)})",
                  file=sys.stderr)
            plotted = False
    elif plan.outputs.plot:
        print(f"python -m bench: no plot written to {plan.outputs.plot}: no row ran", file=sys.stderr)
    saver.report_failures()
    if stopped:
        json_path = plan.outputs.json
        kept = json_path is not None and json_path not in saver.failed and (json_path in saver.saved or plan.resumed)
        where = f"; {json_path} holds them (--resume {json_path} runs the rest)" if kept else ""
        print(f"python -m bench: interrupted by {stopped} after {len(rows)} row(s){where}", file=sys.stderr)
        return stopped.exit_status
    return 0 if all(r.ok for r in rows) and plotted and not saver.failed else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    prog = "python -m bench" if argv[0] == "run" else f"python -m bench {argv[0]}"
    with stop_on_signals(), contextlib.ExitStack() as held_files:
        try:
            try:
                args = build_parser().parse_args(argv)
                if args.command != "run":
                    return other_command(args)
                if args.list_backends:
                    return list_backends(args)
                plan = resolve(args)
                held_files.enter_context(held("--json" if args.json_path else "--resume", plan.outputs.json))
            except (UsageError, resnet_perf.WeightsError) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
            return run_plan(plan)
        except KeyboardInterrupt as exc:  # before the first row started, or after the last one ended
            stopped = Stopped.of(exc)
            print(f"{prog}: interrupted by {stopped}", file=sys.stderr)
            return stopped.exit_status


if __name__ == "__main__":
    status = main()
    if scenarios.abandoned():
        # A LoadGen run a stop signal ended still runs in its thread (bench/scenarios.py): the process
        # ends here, its output flushed, before the interpreter's finalisation would wait on it or abort.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
