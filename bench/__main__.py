"""python -m bench: time every backend on the same model and inputs, check each against the fp32
eager reference, and print one table (speed and parity side by side), with JSON and CSV on request.

Read top to bottom: argument parsing, resolving the arguments into a plan (every bad input stops
here, with exit 2), the reference, then one row per model x precision x batch size x backend.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import resnet_perf
from bench import env as bench_env
from bench import parity, report, timing
from bench.runners import BACKENDS, COMPILE_MODES, PRECISIONS, RUNNERS, RunConfig, Runner, unavailable_reason
from export.atomic import write_text
from resnet_perf.synthetic import parity_inputs

PARITY_BATCH = 64


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage plus the message; the contract wants one line
        raise UsageError(message)


def _list_of(kind):
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(item) for item in items]

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not below 2**32")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=_list_of(str), default=["resnet50"], help="resnet18|34|50|101|152, comma-separated")
    p.add_argument("--backend", type=_list_of(str), default=["all"], help=f"{', '.join(BACKENDS)}, or all")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--batch-size", type=_list_of(_positive_int), default=[8])
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--precision", type=_list_of(str), default=["fp32"], help=", ".join(PRECISIONS))
    p.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed calls before timing")
    p.add_argument("--iters", type=_positive_int, default=20, help="timed calls (at least this many with --min-time)")
    p.add_argument("--min-time", type=_positive_float, default=None, help="time calls until this many seconds")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    p.add_argument("--weights", default=None, help="state_dict file (torchvision or ours); default: synthetic")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic model and inputs")
    p.add_argument("--json", dest="json_path", default=None, help="write results as JSON here")
    p.add_argument("--csv", dest="csv_path", default=None, help="write results as CSV here")
    p.add_argument("--cache-dir", default=os.environ.get("RESNET_PERF_CACHE", str(Path.home() / ".cache" / "resnet-perf")),
                   help="where exported ONNX files are kept between runs")
    p.add_argument("--list-backends", action="store_true", help="list every backend and whether it runs here")
    return p


@dataclass(frozen=True)
class Plan:
    models: list[str]
    backends: list[str]
    not_run: dict[str, str]  # backend -> why, for `--backend all`
    device: torch.device
    precisions: list[str]
    batch_sizes: list[int]
    threads: int


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r}: choose cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text!r}: choose cpu, cuda, cuda:N or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is visible to PyTorch here (torch {torch.__version__})")
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def _check_writable(flag: str, path: str | None) -> None:
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create its folder ({exc.strerror})") from None
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {target.parent} is not writable")


def _check_directory(flag: str, path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def resolve(args: argparse.Namespace) -> Plan:
    """Check every argument against what this machine has; raise UsageError on the first bad one."""
    for name in args.model:
        if name not in resnet_perf.MODEL_NAMES:
            raise UsageError(f"--model {name!r}: unknown model; choose from {', '.join(resnet_perf.MODEL_NAMES)}")
    for precision in args.precision:
        if precision not in PRECISIONS:
            raise UsageError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    device = resolve_device(args.device)

    explicit = args.backend != ["all"]
    not_run: dict[str, str] = {}
    if explicit:
        for name in args.backend:
            if name not in BACKENDS:
                raise UsageError(f"--backend {name!r}: unknown backend; choose from {', '.join(BACKENDS)} or all")
            reason = unavailable_reason(name, device)
            if reason:
                raise UsageError(f"--backend {name}: not available on {device}: {reason}")
            for precision in args.precision:
                if precision not in RUNNERS[name].precisions(device):
                    supported = ", ".join(RUNNERS[name].precisions(device))
                    raise UsageError(f"--precision {precision}: {name} on {device.type} supports {supported}")
        backends = list(dict.fromkeys(args.backend))
    else:
        backends = []
        for name in BACKENDS:
            reason = unavailable_reason(name, device)
            if reason:
                not_run[name] = reason
            else:
                backends.append(name)
        for precision in args.precision:
            if not any(precision in RUNNERS[name].precisions(device) for name in backends):
                raise UsageError(f"--precision {precision}: no backend available here runs it on {device.type}")

    if args.weights is not None and len(args.model) > 1:
        raise UsageError("--weights holds one model's weights: give exactly one --model with it")
    _check_writable("--json", args.json_path)
    _check_directory("--cache-dir", args.cache_dir)
    _check_writable("--csv", args.csv_path)
    threads = args.threads or torch.get_num_threads()
    return Plan(args.model, backends, not_run, device, args.precision, args.batch_size, threads)


def list_backends(device: torch.device) -> None:
    console = report.console()
    for name in BACKENDS:
        reason = unavailable_reason(name, device)
        status = "[green]available[/green]" if reason is None else f"[yellow]unavailable[/yellow]: {escape(reason)}"
        console.print(f"{name:<16} {status}", highlight=False)


def model_id(name: str, model: torch.nn.Module) -> str:
    """The model name and a digest of its weights: the key of every cached artifact built from it."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}-{digest.hexdigest()[:12]}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # CPU allocators and onnxruntime report exhaustion as plain errors with these words.
    allocator = ("out of memory", "failed to allocate memory", "defaultcpuallocator")
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or any(a in text.lower() for a in allocator):
        return "out of memory"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def reference_run(name: str, weights_model: torch.nn.Module | None, args: argparse.Namespace):
    """The model, the parity inputs and the fp32 eager reference logits, on the CPU. Without them
    no row can run, so a failure here (an image size too large for memory) is a usage error."""
    try:
        model = weights_model or resnet_perf.build_model(name, image_size=args.image_size, seed=args.seed)
        parity_x = parity_inputs(PARITY_BATCH, args.image_size, args.seed, model.fc.out_features)
        with torch.inference_mode():
            reference = model(parity_x)
    except Exception as exc:  # noqa: BLE001 - whatever it was, it is reported in one line
        raise UsageError(f"{name} at {args.image_size} px: {_one_line(exc)}") from None
    return model, parity_x, reference


def bench_row(
    runner: Runner,
    row: report.Row,
    parity_x: torch.Tensor,
    reference: torch.Tensor,
    args: argparse.Namespace,
) -> report.Row:
    """Prepare, time and check one runner, filling ``row``; the runner is closed whatever happens."""
    try:
        start = time.perf_counter()
        runner.prepare()
        row.setup_s = time.perf_counter() - start

        # The timed batch is the parity batch's first batch_size inputs (cycled where it is larger).
        first_batch, _ = next(parity.batches(parity_x, row.batch_size))
        x = runner.to_input(first_batch)
        measured = timing.measure(lambda: runner.run(x), runner.config.device,
                                  warmup=args.warmup, iters=args.iters, min_time=args.min_time)
        row.first_run_ms = measured.first_run_ms
        row.samples_ms = measured.samples_ms
        row.iters = len(measured.samples_ms)
        stats = timing.summarize(measured.samples_ms, row.batch_size)
        row.throughput_ips, row.latency_ms = stats["throughput_ips"], stats["latency_ms"]

        logits = parity.predict(lambda b: runner.to_logits(runner.run(runner.to_input(b))), parity_x, row.batch_size)
        row.parity = parity.compare(reference, logits, row.precision)
        row.note = runner.timing_note
    except Exception as exc:  # noqa: BLE001 - one backend's failure must not lose the other rows
        row.status, row.error = "failed", _one_line(exc)
    finally:
        runner.close()
    return row


def run_rows(plan: Plan, weights_model: torch.nn.Module | None, args: argparse.Namespace) -> list[report.Row]:
    """Every row of the table: model x precision x batch size x backend, in that nesting."""
    cache_dir = Path(args.cache_dir)
    rows: list[report.Row] = []
    total = len(plan.models) * len(plan.precisions) * len(plan.batch_sizes) * len(plan.backends)
    stderr = Console(stderr=True)
    # The progress display is for a person at a terminal; in a log it would only add blank lines.
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("starting", total=total)
        for name in plan.models:
            progress.update(task, description=f"{name}: building the model and the fp32 reference")
            model, parity_x, reference = reference_run(name, weights_model, args)
            ident = model_id(name, model)

            for precision in plan.precisions:
                out_of_memory_at: dict[str, int] = {}
                for batch_size in plan.batch_sizes:
                    for backend in plan.backends:
                        row = report.Row(name, backend, plan.device.type, precision, batch_size, args.image_size)
                        rows.append(row)
                        progress.update(task, description=f"{name} {backend} {precision} batch {batch_size}")
                        runner_cls = RUNNERS[backend]
                        if precision not in runner_cls.precisions(plan.device):
                            row.status = "skipped"
                            row.error = f"{precision} is not supported by {backend} on {plan.device.type}"
                        elif backend in out_of_memory_at and batch_size > out_of_memory_at[backend]:
                            row.status = "skipped"
                            row.error = f"out of memory at batch {out_of_memory_at[backend]}"
                        else:
                            config = RunConfig(ident, plan.device, precision, batch_size, args.image_size,
                                               plan.threads, cache_dir, args.compile_mode)
                            bench_row(runner_cls(model, config), row, parity_x, reference, args)
                            if row.error == "out of memory":
                                out_of_memory_at[backend] = batch_size
                                if plan.device.type == "cuda":
                                    torch.cuda.empty_cache()
                        progress.advance(task)

    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.list_backends:
            list_backends(resolve_device(args.device))
            return 0
        plan = resolve(args)
        weights_model = (
            resnet_perf.build_model(plan.models[0], weights=args.weights) if args.weights is not None else None
        )
    except (UsageError, resnet_perf.WeightsError) as exc:
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 2

    torch.set_num_threads(plan.threads)
    if plan.device.type == "cuda":
        # Synchronize and CUDA events act on the current device: make it the one measured.
        torch.cuda.set_device(plan.device)
    env = bench_env.collect(plan.device, plan.threads)
    try:
        rows = run_rows(plan, weights_model, args)
    except UsageError as exc:
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 2

    console = report.console()
    report.print_table(rows, console)
    for backend, reason in plan.not_run.items():
        console.print(f"[dim]not run: {backend}: {escape(reason)}[/dim]", highlight=False)
    if args.json_path:
        write_text(args.json_path, report.to_json(rows, env))
    if args.csv_path:
        write_text(args.csv_path, report.to_csv(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
