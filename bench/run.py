"""Running a plan: every row in turn, each prepared, timed, checked against the fp32 eager
reference and closed, one backend's failure never losing another's row.

The reference (the model, the parity inputs and their fp32 logits) is built once per model, on
the CPU, the first time a row of that model runs. Timing, parity and reporting never see which
backend they measure: a row's runner comes from the registry it is handed.

A row keeps ``streams`` requests in flight (``--streams``): one is today's latency measurement, one
call at a time on every thread (on CUDA, enqueued ahead on one stream, as trtexec does); N or
``auto`` open the runner's streams, and ``auto`` first picks N as the runtime's own tool would.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import resnet_perf
from bench import scenarios, timing
from bench.costs.meter import Gauges, RowMeter, complete
from bench.layers import numerics
from bench.plan import Loop, Plan, RowSpec
from bench.record import Row, row_key
from bench.report import precision_cell
from bench.runners import RunConfig, Runner
from bench.streams import Streams
from export import quantize, sensitivity
from resnet_perf import parity
from resnet_perf.flops import macs_per_image
from resnet_perf.synthetic import parity_inputs
from resnet_perf.util.cli import Stopped, one_line
from resnet_perf.util.cpu import usable_cores


@dataclass(frozen=True)
class Reference:
    """What every row of one model is measured against."""

    model: torch.nn.Module
    ident: str  # the key of every artifact cached for this model: its name and weights
    inputs: torch.Tensor  # the parity inputs
    logits: torch.Tensor  # the fp32 eager model's on them
    accuracy: dict | None  # --eval-data: the fp32 model's own top-1 and top-5
    gmac_per_image: float  # the convolutions' and fc's multiply-accumulates, for achieved FLOP/s
    # --parity layers: the fp32 model's line outputs on each row's first batch, by batch size
    line_outputs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def lines(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(batch) not in self.line_outputs:
            self.line_outputs[len(batch)] = numerics.torch_line_outputs(self.model, lambda: self.model(batch))
        return self.line_outputs[len(batch)]


class ReferenceFailed(RuntimeError):
    """A model's reference (or its int8 calibration) could not be built: its rows fail with this."""


class References:
    """Each model's Reference, built on first use. One that fails is remembered as failed, so that
    every row of its model fails with the same one line and the run goes on with the next model."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.built: dict[str, Reference | ReferenceFailed] = {}
        self.calibrations: dict[str, quantize.Calibration] = {}

    def __call__(self, name: str) -> Reference:
        if name not in self.built:
            try:
                self.built[name] = self._build(name)
            except Exception as exc:  # noqa: BLE001 - a failed reference fails its model's rows, not the run
                self.built[name] = ReferenceFailed(
                    f"the fp32 reference of {name} at {self.plan.image_size} px failed: {one_line(exc)}")
        built = self.built[name]
        if isinstance(built, ReferenceFailed):
            raise built
        return built

    def _build(self, name: str) -> Reference:
        plan = self.plan
        model = plan.model or resnet_perf.build_model(name, image_size=plan.image_size, seed=plan.seed)
        inputs = parity_inputs(parity.PARITY_BATCH, plan.image_size, plan.seed, model.fc.out_features)
        with torch.inference_mode():
            logits = model(inputs)
            accuracy = None
            if plan.evaluation is not None:
                images, labels = plan.evaluation
                accuracy = parity.accuracy(parity.predict(model, images, 64), labels)
        return Reference(model, f"{name}-{resnet_perf.weights_digest(model)[:12]}", inputs, logits, accuracy,
                         macs_per_image(model, plan.image_size) / 1e9)

    def calibration(self, name: str) -> quantize.Calibration:
        """The model's int8 calibration, drawn once and only for an int8 row."""
        if name not in self.calibrations:
            classes = self(name).model.fc.out_features
            try:
                self.calibrations[name] = quantize.calibration(self.plan.calibration, self.plan.calibration_inputs,
                                                               self.plan.image_size, self.plan.seed, classes)
            except Exception as exc:  # noqa: BLE001 - as for the reference: its int8 rows fail
                raise ReferenceFailed(f"the int8 calibration inputs of {name}: {one_line(exc)}") from None
        return self.calibrations[name]


def skip_reason(spec: RowSpec, plan: Plan, runners: Mapping[str, type[Runner]],
                out_of_memory_at: Mapping[tuple, int]) -> str | None:
    """Why a row is not run, or None."""
    runner, options = runners[spec.backend], plan.options.get(spec.backend)
    if spec.precision not in runner.precisions(plan.device, options):
        why = runner.why_unsupported(spec.precision, plan.device, options)
        return f"{spec.precision} is not supported by {spec.backend} on {plan.device.type}" + (f": {why}" if why else "")
    if spec.precision == "fp16" and plan.keep_fp and not runner.keeps_fp16_layers():
        return f"{spec.backend}'s fp16 rows keep no layer in fp32 (--keep-fp {','.join(plan.keep_fp)})"
    failed_at = out_of_memory_at.get((spec.model, spec.precision, spec.backend))
    if failed_at is not None and spec.batch_size > failed_at:
        return f"out of memory at batch {failed_at}"
    if runner.serves_requests and plan.scenario.scenario != "offline" and spec.streams != 1:
        return "a server takes LoadGen's queries as they come: its own queue keeps them in flight (streams 1)"
    limit = runner.streams_limit(plan.device, options)
    if limit is not None and spec.streams != "auto" and spec.streams > limit[0]:
        return f"at most {limit[0]} request(s) in flight: {limit[1]}"
    return None


def run_rows(plan: Plan, runners: Mapping[str, type[Runner]],
             on_row: Callable[[list[Row]], None]) -> tuple[list[Row], Stopped | None]:
    """Every row of the plan; rows it resumes are kept, not run again. ``on_row`` gets the rows so
    far after each one. Returns the rows and, where a stop signal (Ctrl-C, SIGTERM, SIGHUP under
    ``stop_on_signals``) cut the run short, that signal: the row it interrupted is dropped, every
    finished one kept."""
    references = References(plan)
    gauges = Gauges.open(plan.device)
    rows: list[Row] = []
    out_of_memory_at: dict[tuple, int] = {}  # (model, precision, backend) -> the batch that ran out
    loaded: dict[str, dict] = {}  # backend -> what loading its runtime into this process cost
    stderr = Console(stderr=True)
    # The progress display is for a person at a terminal; in a log it would only add blank lines.
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("starting", total=len(plan.rows))
        try:
            for spec in plan.rows:
                row = Row(spec.model, spec.backend, plan.device.type, spec.precision, spec.batch_size, plan.image_size,
                          scenario=plan.scenario.scenario, streams=spec.streams if spec.streams != "auto" else None,
                          streams_asked=spec.streams, quantizer=spec.quantizer)
                progress.update(task, description=f"{spec.model} {spec.backend} {precision_cell(row)} batch "
                                                  f"{spec.batch_size} streams {spec.streams}")
                # A resumed row is kept unless it failed: a failure (a full disk, a crashed runtime) may
                # not happen again, and a row that never retried would stay failed for good.
                kept = plan.resumed.get(row_key(row))
                row = kept if kept is not None and kept.status != "failed" else run_row(
                    spec, row, plan, runners, references, gauges, out_of_memory_at, loaded)
                if row.error == "out of memory":
                    out_of_memory_at[(spec.model, spec.precision, spec.backend)] = spec.batch_size
                    if plan.device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                on_row(rows)
                progress.advance(task)
            if plan.sensitivity:
                progress.update(task, description="int8 sensitivity, then the failing fp16 rows' bisection")
                rank_int8_layers(plan, rows, references)
                bisect_fp16_rows(plan, rows, references, runners)
                on_row(rows)
        except KeyboardInterrupt as exc:
            return rows, Stopped.of(exc)
        finally:
            gauges.close()
    return rows, None


def run_row(spec: RowSpec, row: Row, plan: Plan, runners: Mapping[str, type[Runner]], references: References,
            gauges: Gauges, out_of_memory_at: Mapping[tuple, int], loaded: dict[str, dict]) -> Row:
    """One row: skipped with its reason, failed with its reference's error, or measured. The
    backend's runtime is loaded before its first measured row (``loaded`` keeps what that cost),
    and every row of the backend carries that one-time cost beside its own."""
    skipped = skip_reason(spec, plan, runners, out_of_memory_at)
    if skipped:
        row.status, row.error = "skipped", skipped
        return row
    try:
        reference = references(spec.model)
        calibration = references.calibration(spec.model) if spec.precision == "int8" else None
    except ReferenceFailed as exc:
        row.status, row.error = "failed", str(exc)
        return row
    keep_fp = plan.keep_fp if spec.precision == "fp16" else ()
    config = RunConfig(reference.ident, plan.device, spec.precision, spec.batch_size, plan.image_size, plan.threads,
                       plan.cache_dir, artifacts=plan.artifacts, options=plan.options.get(spec.backend),
                       calibration=calibration, keep_fp=keep_fp, streams=spec.streams, quantizer=spec.quantizer)
    if spec.backend not in loaded:
        loaded[spec.backend] = gauges.runtime_load(lambda: runners[spec.backend].load_runtime(plan.device))
    row = bench_row(runners[spec.backend](reference.model, config), row, reference, plan, gauges)
    if row.costs is not None:
        row.costs.update(loaded[spec.backend])
    return row


def bench_row(runner: Runner, row: Row, reference: Reference, plan: Plan, gauges: Gauges) -> Row:
    """Prepare, time and check one runner, filling ``row``; the runner is closed whatever happens.
    Its costs are metered from the end of its build (an export, an engine) to the end of its timed
    calls; setup_s counts the build too, and opening its streams (for auto, choosing how many)."""
    try:
        probe = gauges.peak(row.precision)  # before the meter starts: the probe's memory is not the row's
        start = time.perf_counter()
        runner.build()  # also before it: the artifact's export or engine build is not the runtime's memory
        with RowMeter(gauges, runner.device_memory) as meter:
            runner.prepare()
            row.runtime = runner.run_facts()
            batch = parity.cycled(reference.inputs, row.batch_size)  # the offline loop's: the first batch_size
            with open_streams(runner, row, plan.loop) or contextlib.nullcontext() as streams:
                row.setup_s = time.perf_counter() - start
                if row.scenario == "offline":
                    loop_row(runner, streams, row, batch, plan.loop, meter)
                else:
                    loadgen_row(runner, streams, row, reference.inputs, plan, meter)
            row.costs = complete(meter.costs(), row.throughput_ips, reference.gmac_per_image, probe)
        if runner.memory_note:
            row.costs["mem_note"] = runner.memory_note
        if row.scenario == "offline" and plan.loop.profile and row.streams_asked == plan.streams[0]:
            profile_row(runner, row, batch, plan.loop)

        row.parity = parity.compare(reference.logits, parity.predict(runner.infer, reference.inputs, row.batch_size),
                                    row.precision)
        if plan.parity_layers:
            layer_parity(runner, row, reference.lines(batch), batch)
        if plan.evaluation is not None:
            images, labels = plan.evaluation
            measured = parity.accuracy(parity.predict(runner.infer, images, row.batch_size), labels)
            row.accuracy = {"images": len(labels), **measured, "reference_top1": reference.accuracy["top1"],
                            "reference_top5": reference.accuracy["top5"]}
        row.note = "; ".join(filter(None, (runner.timing_note, layer_note(row)))) or None
    except Exception as exc:  # noqa: BLE001 - one backend's failure must not lose the other rows
        row.status, row.error = "failed", one_line(exc)
    finally:
        runner.close()
    return row


# --streams auto: each candidate's trial, and how much faster more requests in flight must be to be
# kept over fewer (which answer sooner): these VMs drift by more than the noise of a short trial.
AUTO_TRIAL_WARMUP = 2  # per stream: a new stream's first calls start its threads and caches
AUTO_TRIAL_ITERS = 3
AUTO_MARGIN = 0.05
# On a GPU, more streams than this only queue on the same SMs (perf_analyzer's and trtexec's users
# rarely go past it for one model).
GPU_AUTO_MAX = 4


def auto_candidates(device: torch.device, threads: int) -> list[int]:
    """What --streams auto tries where the runtime does not pick: 1, 2, 4, ... up to the usable
    cores (each stream needs a thread of its own), or up to GPU_AUTO_MAX on a GPU."""
    top = GPU_AUTO_MAX if device.type == "cuda" else min(usable_cores(), threads)
    return [2**k for k in range(top.bit_length()) if 2**k <= top]


def open_streams(runner: Runner, row: Row, loop: Loop) -> Streams | None:
    """The row's requests in flight, opened on the prepared runner and recorded in the row; None
    for one call at a time: one stream on the CPU (asked for, or what auto chose), --host-io, or a
    LoadGen scenario's single stream (its calls go from host memory to host logits)."""
    cpu = runner.config.device.type != "cuda"
    if row.streams_asked == 1 and (cpu or loop.host_io or row.scenario != "offline"):
        return None
    count, chosen_by, tried = streams_count(runner, row.streams_asked)
    row.streams = count
    row.streams_how = {"kept": "one call at a time", "chosen_by": chosen_by, "tried_ips": tried}
    if count == 1 and cpu:
        # Opened and closed: a runtime that auto's trials reconfigured (a local server's instances)
        # is back to one stream for the calls one at a time.
        runner.streams(1).close()
        return None
    streams = runner.streams(count)
    row.streams_how["kept"] = streams.how
    return streams


def streams_count(runner: Runner, asked: int | str) -> tuple[int, str, dict[int, float] | None]:
    """How many requests to keep in flight, why, and each candidate's trial throughput where there
    was a search: N as asked; for auto, as many as the runtime's own tool would keep, picked by the
    runtime or by a short trial of each candidate."""
    if asked != "auto":
        return asked, "--streams", None
    if (own := runner.own_streams()) is not None:
        return (*own, None)
    candidates = auto_candidates(runner.config.device, runner.config.threads)
    limit = runner.streams_limit(runner.config.device, runner.config.options)
    if limit is not None:
        candidates = [n for n in candidates if n <= limit[0]]
    if candidates == [1]:
        return 1, limit[1] if limit is not None and limit[0] == 1 else "1: the usable cores and threads allow no more", None
    count, tried = search_streams(runner, runner.config.batch_size, candidates)
    return count, (f"the fastest of {', '.join(map(str, tried))} in flight over {AUTO_TRIAL_ITERS} requests per "
                   f"stream after {AUTO_TRIAL_WARMUP} (more kept only if {AUTO_MARGIN:.0%} faster)"), tried


def search_streams(runner: Runner, batch_size: int, candidates: list[int]) -> tuple[int, dict[int, float]]:
    """Each candidate's throughput in a short trial, and the one to keep: the fastest, unless fewer
    streams come within AUTO_MARGIN of it."""
    inputs = runner.to_input(torch.zeros(runner.config.input_shape))
    tried = {}
    for count in candidates:
        with runner.streams(count) as streams:
            trial = timing.measure_streams(streams, inputs, warmup=AUTO_TRIAL_WARMUP, iters=AUTO_TRIAL_ITERS)
        tried[count] = trial.throughput(batch_size)
    best = max(tried.values())
    return next(n for n in candidates if tried[n] >= best * (1 - AUTO_MARGIN)), tried


@contextlib.contextmanager
def timed_window(runner: Runner, meter: RowMeter, fresh: bool = False) -> Iterator[None]:
    """A timed window: the backend's own account of it starts (a server's statistics), and the
    row's meter runs over it (``fresh``: forgetting the windows before)."""
    runner.mark()
    with meter.window(fresh):
        yield


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


def loop_row(runner: Runner, streams: Streams | None, row: Row, batch: torch.Tensor, loop: Loop,
             meter: RowMeter) -> None:
    """The offline scenario: the fixed-batch loop, ``loop.repeat`` times over, one call at a time
    or with the row's streams kept busy. The backend's own report (a server's statistics) covers
    the last repetition's timed calls; energy, clocks and CPU time cover every repetition's."""

    settings = {"warmup": loop.warmup, "iters": loop.iters, "min_time": loop.min_time,
                "window": functools.partial(timed_window, runner, meter)}
    if streams is None:
        call = timed_call(runner, batch, loop.host_io)
        runs = [timing.measure(call, runner.config.device, **settings) for _ in range(loop.repeat)]
    else:
        inputs = runner.to_input(batch)
        runs = [timing.measure_streams(streams, inputs, **settings) for _ in range(loop.repeat)]
    row.serving = runner.window()
    row.first_run_ms = runs[0].first_run_ms
    row.samples_ms = [sample for run in runs for sample in run.samples_ms]
    row.iters = len(row.samples_ms)
    if loop.repeat > 1:
        row.repeats = [run.throughput(row.batch_size) for run in runs]
    stats = timing.summarize(row.samples_ms, row.batch_size, window_s=sum(run.window_s for run in runs))
    row.throughput_ips, row.latency_ms = stats["throughput_ips"], stats["latency_ms"]
    row.host_io = loop.host_io
    row.cv = stats["latency_ms"]["std"] / stats["latency_ms"]["mean"]
    row.noisy = row.cv > loop.noise_threshold


def layer_parity(runner: Runner, row: Row, reference: dict[str, torch.Tensor], batch: torch.Tensor) -> None:
    """--parity layers: the row's line outputs on its first batch against the fp32 model's, into
    ``row.parity["layers"]``; a backend that gives none says why there, and the row stands."""
    try:
        outputs, how = runner.line_outputs(runner.to_input(batch))
        figures = numerics.compare_lines(reference, outputs)
    except Exception as exc:  # noqa: BLE001 - the row's own parity and timing stand without its lines
        row.parity["layers"] = {"reason": str(exc) if isinstance(exc, NotImplementedError) else one_line(exc)}
        return
    row.parity["layers"] = numerics.to_json(figures, how)
    first = numerics.first_outside(figures, row.precision)
    row.parity["layers"]["first_outside"] = None if first is None else first.line


def layer_note(row: Row) -> str | None:
    """The row's note on its lines: the first outside its precision's tolerance, where its error enters."""
    layers = (row.parity or {}).get("layers") or {}
    first = layers.get("first_outside")
    if first is None:
        return None
    figures = next(f for f in layers["lines"] if f["line"] == first)
    return (f"first line outside {row.precision} tolerance: {first} (cosine {figures['cosine']:.4f}, "
            f"rel_l2 {figures['rel_l2']:.2e})")


def profile_row(runner: Runner, row: Row, batch: torch.Tensor, loop: Loop) -> None:
    """--profile, after the row's timed calls and apart from them: profiling perturbs what it
    measures, so the row's figures never come from these calls."""
    if loop.profile == "layers":
        trace = None if loop.profile_dir is None else loop.profile_dir / f"{'-'.join(map(str, row_key(row)))}.json"
        try:
            profile = runner.profile_layers(runner.to_input(batch), loop.profile_calls, trace)
        except Exception as exc:  # noqa: BLE001 - a profiler's failure leaves the row's own figures standing
            row.profile = {"layers": None, "reason": str(exc) if isinstance(exc, NotImplementedError) else one_line(exc)}
        else:
            row.profile = {"layers": profile.to_json()}
        return
    stages = runner.stages()
    if stages is not None:
        row.profile = {"stages": stage_times(runner, stages, batch, loop)}


def stage_times(runner: Runner, stages: list, batch: torch.Tensor, loop: Loop) -> dict[str, float]:
    """The median time of each stage of the model (stem, layer1..4, head) on the backend, each fed
    the previous stage's real output."""
    x, times = runner.to_input(batch), {}
    for name, stage in stages:
        def call(stage=stage, x=x):
            with torch.inference_mode():
                return stage(x)

        measured = timing.measure(call, runner.config.device, warmup=loop.warmup, iters=loop.iters)
        times[name] = float(np.median(measured.samples_ms))
        x = call()
    return times


def loadgen_row(runner: Runner, streams: Streams | None, row: Row, inputs: torch.Tensor, plan: Plan,
                meter: RowMeter) -> None:
    """A LoadGen scenario: LoadGen issues the queries; every call goes from host memory to host logits,
    or with streams (offline-loadgen) from host memory into a free stream."""
    # One batch's time (with streams, the streams' throughput) sizes LoadGen's query counts and the
    # top of a rate search.
    batch = parity.cycled(inputs, row.batch_size)
    if streams is None:
        probe = timing.measure(lambda: runner.infer(batch), runner.config.device, warmup=plan.loop.warmup, iters=5)
        expected_s = float(np.median(probe.samples_ms)) / 1e3
    else:
        probe = timing.measure_streams(streams, runner.to_input(batch), warmup=plan.loop.warmup, iters=AUTO_TRIAL_ITERS)
        expected_s = row.batch_size / probe.throughput(row.batch_size)
    row.first_run_ms = probe.first_run_ms
    settings = plan.scenario
    if settings.log_dir is not None:
        settings = replace(settings, log_dir=Path(settings.log_dir) / "-".join(
            map(str, (row.model, row.backend, row.precision, f"b{row.batch_size}",
                      *(() if row.streams_asked == 1 else (f"streams-{row.streams_asked}",)), row.scenario))))
    sut = scenarios.System(runner.infer, runner.submit if runner.serves_requests else None, streams, runner.to_input)
    search = None
    if plan.find_max_qps:
        # The backend's own report (a server's statistics), energy and clocks cover the last,
        # confirming run.
        result, target, search = scenarios.find_max_qps(sut, inputs, row.batch_size, settings, runner.config.device,
                                                        expected_s, window=functools.partial(timed_window, runner,
                                                                                             meter, fresh=True))
    else:
        with timed_window(runner, meter):
            result = scenarios.run(sut, inputs, row.batch_size, settings, runner.config.device, expected_s)
        target = settings.target_qps
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
        "p99_bound_ms": settings.p99_ms,
        "duration_s": None if settings.mlperf_rules else settings.duration_s,
        "version": result.details["loadgen_version"],
        "log_dir": result.log_dir,
        "search": search,
    }


def rank_int8_layers(plan: Plan, rows: list[Row], references: References) -> None:
    """--sensitivity: each model's layers ranked by how much INT8 costs them, attached to its
    successful onnxruntime int8 rows (those --resume kept have theirs already); with --parity
    layers, a row that failed parity gets the fewest layers to keep in fp32 for it to pass,
    bisected from its first line outside tolerance. An analysis that fails is recorded as its
    one-line error."""
    for name in plan.models:
        measured = [r for r in rows if (r.model, r.backend, r.precision, r.status) == (name, "onnxruntime", "int8", "ok")
                    and r.sensitivity is None]
        if not measured:
            continue
        with contextlib.ExitStack() as folder:
            try:
                reference = references(name)
                # One export of the model serves the ranking and the bisections.
                quantized = folder.enter_context(sensitivity.requantized(
                    reference.model, references.calibration(name), reference.inputs, reference.logits,
                    image_size=plan.image_size, batch=plan.batch_sizes[0], cache_dir=plan.cache_dir / "calibration"))
                analysis = sensitivity.analyse(quantized)
            except Exception as exc:  # noqa: BLE001 - the rows keep their figures without the ranking
                analysis = {"error": one_line(exc)}
            bisected: dict[tuple[str, ...], dict] = {}
            for row in measured:
                row.sensitivity = analysis
                lines = failing_lines(row)
                if "error" in analysis or not lines:
                    continue
                if lines not in bisected:
                    try:
                        bisected[lines] = sensitivity.keep_fp_from_lines(quantized, list(lines))
                    except Exception as exc:  # noqa: BLE001 - the ranking stands without the bisection
                        bisected[lines] = {"error": one_line(exc)}
                row.sensitivity = {**analysis, "from_lines": bisected[lines]}


def bisect_fp16_rows(plan: Plan, rows: list[Row], references: References,
                     runners: Mapping[str, type[Runner]]) -> None:
    """--sensitivity with --parity layers: each fp16 row that failed parity gets the fewest layers
    to keep in fp32 for it to pass, bisected from its first line outside tolerance and judged by
    PyTorch's fp16 on the run's device (export.sensitivity.Halved); a row of a backend that keeps
    no layer also gets the backends that do. A bisection that fails is recorded as its one-line
    error."""
    keeping = [name for name, runner in runners.items() if runner.keeps_fp16_layers()]
    bisected: dict[tuple, dict] = {}
    for row in rows:
        lines = failing_lines(row)
        if row.precision != "fp16" or row.status != "ok" or row.sensitivity is not None or not lines:
            continue
        if (row.model, lines) not in bisected:
            try:
                reference = references(row.model)
                halved = sensitivity.Halved(reference.model, reference.inputs, reference.logits, device=plan.device,
                                            batch=plan.batch_sizes[0], keep_fp=plan.keep_fp)
                bisected[row.model, lines] = sensitivity.keep_fp_from_lines(halved, list(lines))
            except Exception as exc:  # noqa: BLE001 - the row keeps its figures without the bisection
                bisected[row.model, lines] = {"error": one_line(exc)}
        row.sensitivity = {"from_lines": bisected[row.model, lines],
                           **({} if row.backend in keeping else {"keep_fp_backends": keeping})}


def failing_lines(row: Row) -> tuple[str, ...]:
    """A row that failed parity: its lines from where its error shows on (none without --parity
    layers, or where every line was inside). fp16 shows it at the first line outside its tolerance,
    whose own output overflows or rounds away. int8 shows it one line later than where it enters:
    the line before is where the failing line's input was quantized, and an outlier channel that
    spoils that quantization dominates its own tensor's figures, so the bisection starts there."""
    layers = (row.parity or {}).get("layers") or {}
    first = layers.get("first_outside")
    if row.parity is None or row.parity.get("passed", True) or first is None:
        return ()
    names = [f["line"] for f in layers["lines"]]
    start = names.index(first) - (row.precision == "int8")
    return tuple(names[max(0, start):])
