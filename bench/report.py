"""The views of a run's rows: the console table and what is printed below it, and the Markdown
report (``python -m bench report``) of one or more run files."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.layers import table as layers
from bench.record import Row, load, rows_from_json
from resnet_perf.util.atomic import publish, staging_dir, write_text
from resnet_perf.util.cli import UsageError, check_directory, output_file
from resnet_perf.util.cpu import describe

if TYPE_CHECKING:
    from bench.plan import Plan

def precision_cell(r: Row) -> str:
    """The row's precision, and for int8 what quantized it: "int8 nncf"."""
    return f"{r.precision} {r.quantizer}" if r.quantizer else r.precision


def streams_cell(r: Row) -> str:
    """The requests a row kept in flight: "1", "2", or "2 (auto)"."""
    if r.streams_asked != "auto":
        return str(r.streams)
    return "auto" if r.streams is None else f"{r.streams} (auto)"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _throughput(r: Row) -> str:
    """Throughput, with half the range of the repetitions around their median where there were several."""
    text = _fmt(r.throughput_ips, ".1f")
    if r.repeats and len(r.repeats) > 1:
        text += f" ±{(max(r.repeats) - min(r.repeats)) / 2 / float(np.median(r.repeats)):.0%}"
    return text


def _eager_throughputs(rows: list[Row]) -> dict[tuple, float]:
    return {(r.model, r.device, r.precision, r.batch_size, r.scenario, r.streams_asked): r.throughput_ips
            for r in rows if r.backend == "eager" and r.status == "ok"}


def _baseline(eager: dict, r: Row) -> float | None:
    """The eager throughput a row is compared with: eager at the row's precision and streams, or
    for int8, which eager cannot run, eager in fp32."""
    precision = "fp32" if r.precision == "int8" else r.precision
    return eager.get((r.model, r.device, precision, r.batch_size, r.scenario, r.streams_asked))


def best_rows(rows: list[Row]) -> dict[tuple, Row]:
    """The fastest parity-passing row of each model (on its device, image size and scenario): the
    answer to "which should I ship", whatever its backend, precision, batch or streams."""
    best: dict[tuple, Row] = {}
    for r in rows:
        group = (r.model, r.device, r.image_size, r.scenario)
        if r.passed and (group not in best or r.throughput_ips > best[group].throughput_ips):
            best[group] = r
    return best


def best_line(r: Row) -> str:
    return (f"best throughput ({r.model}, parity passing): {r.backend} {precision_cell(r)} batch {r.batch_size}, "
            f"{streams_cell(r)} in flight: {r.throughput_ips:.1f} img/s")


ABOVE_PEAK = 110.0  # % of the GEMM probe beyond which a count, the probe, or Winograd explains it


def _notes(r: Row) -> list[str]:
    """What a reader of a row's figures must know: the runner's note, copies in the timed call,
    the clocks during it, and costs that need explaining."""
    c = r.costs or {}
    notes = [n for n in (r.note, "incl. host-device copies" if r.host_io else None, _auto_note(r)) if n]
    if c.get("clock_min_mhz") is not None:
        notes.append(f"clock min/mean {c['clock_min_mhz']:.0f}/{c['clock_mean_mhz']:.0f} MHz")
    if c.get("throttled"):
        notes.append(f"throttled: {'; '.join(c['throttle_reasons'])}")
    if (c.get("pct_of_peak") or 0) > ABOVE_PEAK:
        notes.append("above the GEMM probe: Winograd, or a low probe")
    return notes


def _auto_note(r: Row) -> str | None:
    """Why an auto row kept what it kept: each candidate's trial, or the runtime's own choice."""
    how = r.streams_how
    if r.streams_asked != "auto" or not how:
        return None
    if how.get("tried_ips"):
        trials = ", ".join(f"{n}: {ips:.1f}" for n, ips in how["tried_ips"].items())
        return f"auto kept {r.streams} of trials {trials} img/s"
    return f"auto kept {r.streams}: {how['chosen_by']}"


def _cost_cells(r: Row) -> list[str]:
    c = r.costs or {}
    memory = f"{_fmt(c.get('peak_mem_mb'), '.0f')}/{_fmt(c.get('run_peak_mem_mb'), '.0f')}" if c else "-"
    cpu = f"{_fmt(c.get('cpu_cores_busy'), '.1f')}/{c['cpu_cores_usable']}" if c.get("cpu_cores_usable") else "-"
    return [memory, _fmt(c.get("energy_j_per_img"), ".3f"), _fmt(c.get("pct_of_peak"), ".0f"), cpu]


def _accuracy_cell(r: Row) -> str:
    a = r.accuracy
    return "-" if a is None else f"{a['top1']:.3f} ({a['reference_top1']:.3f})"


def _loadgen_cell(r: Row) -> str:
    lg = r.loadgen
    if lg is None:
        return "-"
    if lg["result"] == "VALID":
        return "[green]VALID[/green]"
    return f"[yellow]INVALID[/yellow]: {escape('; '.join(lg['reasons']))}"


def table(rows: list[Row]) -> Table:
    """Speed and parity side by side; speedup is against eager at the same model, precision, batch,
    scenario and streams; the best throughput of each model is starred. LoadGen rows add the
    scenario, the rate asked for and achieved, and LoadGen's verdict; --eval-data adds each row's
    accuracy on the labelled images beside the fp32 model's."""
    baseline = _eager_throughputs(rows)
    best = [id(r) for r in best_rows(rows).values()]
    with_loadgen = any(r.scenario != "offline" for r in rows)
    with_accuracy = any(r.accuracy for r in rows)
    columns = [("model", "left"), ("backend", "left"), ("device", "left"), ("prec", "left"), ("batch", "right"),
               ("streams", "right")]
    if with_loadgen:
        columns += [("scenario", "left"), ("qps target/got", "right")]
    measured = [("img/s", "right"), ("vs eager", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
                ("p99.9 ms", "right"), ("cv", "right"), ("setup s", "right"), ("peak/run MB", "right"),
                ("J/img", "right"), ("% peak", "right"), ("CPU busy", "right"), ("cosine", "right"), ("rel_l2", "right"),
                ("top1", "right"), ("top5", "right"), ("distinct", "right")]
    columns += [*measured, ("parity", "left")]
    if with_accuracy:
        columns.append(("top1 acc (fp32)", "right"))
    if with_loadgen:
        columns.append(("loadgen", "left"))
    grid = Table(title="resnet-perf", title_justify="left")
    for name, justify in columns:
        grid.add_column(name, justify=justify)

    for r in rows:
        head = [r.model, r.backend, r.device, precision_cell(r), str(r.batch_size), streams_cell(r)]
        if with_loadgen:
            target = (r.loadgen or {}).get("target_qps")
            rate = f"{_fmt(target, '.1f')}/{_fmt(r.achieved_qps, '.1f')}" if r.achieved_qps is not None else "-"
            head += [r.scenario, rate]
        if r.status != "ok":
            colour = "red" if r.status == "failed" else "yellow"
            cells = [*head, *["-"] * len(measured), f"[{colour}]{r.status}: {escape(r.error or '')}[/{colour}]"]
            grid.add_row(*cells, *["-"] * (with_accuracy + with_loadgen))
            continue
        base = _baseline(baseline, r)
        speedup = f"{r.throughput_ips / base:.2f}x" if base else "-"
        p = r.parity
        verdict = "[green]pass[/green]" if p["passed"] else f"[red]FAIL[/red] {escape(p.get('error', ''))}"
        for note in _notes(r):
            verdict += f" [dim]({escape(note)})[/dim]"
        cv = _fmt(r.cv, ".2f") + (" [yellow]noisy[/yellow]" if r.noisy else "")
        grid.add_row(
            *head,
            f"[bold green]{_throughput(r)} *[/bold green]" if id(r) in best else _throughput(r),
            speedup,
            _fmt(r.latency_ms["p50"], ".2f"),
            _fmt(r.latency_ms["p99"], ".2f"),
            _fmt(r.latency_ms.get("p99.9"), ".2f"),
            cv,
            _fmt(r.setup_s, ".1f"),
            *_cost_cells(r),
            _fmt(p["cosine"], ".6f"),
            _fmt(p["rel_l2"], ".1e"),
            _fmt(p["top1_agreement"], ".3f"),
            _fmt(p.get("top5_agreement"), ".3f"),
            _fmt(p["distinct_top1"], ".2f"),
            verdict,
            *([_accuracy_cell(r)] if with_accuracy else []),
            *([_loadgen_cell(r)] if with_loadgen else []),
        )
    return grid


def profile_table(rows: list[Row]) -> Table:
    """--profile: where each backend spends its time, stage by stage, and each stage's share."""
    profiled = [r for r in rows if r.profile and r.profile.get("stages")]
    grid = Table(title="per-stage time, ms (share of the stages' sum)", title_justify="left")
    for name in ("model", "backend", "prec", "batch", *profiled[0].profile["stages"], "sum"):
        grid.add_column(name, justify="left" if name in ("model", "backend", "prec") else "right")
    for r in profiled:
        total = sum(r.profile["stages"].values())
        cells = [f"{ms:.2f} ({ms / total:.0%})" for ms in r.profile["stages"].values()]
        grid.add_row(r.model, r.backend, precision_cell(r), str(r.batch_size), *cells, f"{total:.2f}")
    return grid


def serving_table(rows: list[Row]) -> Table:
    """What serving costs, per triton-server row: the server's split of a request's time (its
    statistics), what the client waited beyond it, the hosted backend called directly, and the
    client's own CPU per request."""
    grid = Table(title="serving: mean ms per request (server statistics; client send to receive)", title_justify="left")
    columns = ("model", "prec", "batch", "scenario", "server", "requests", "server batch", "queue", "compute",
               "server total", "client", "transport", "direct (before/after)", "overhead vs direct", "client cpu", "client busy")
    for name in columns:
        grid.add_column(name, justify="left" if name in ("model", "prec", "scenario", "server") else "right")
    for r in rows:
        s = r.serving
        if not s:
            continue
        server = s["server"] if isinstance(s["server"], dict) else {}
        compute = sum(server.get(f"{k}_ms", math.nan) for k in ("compute_input", "compute_infer", "compute_output"))
        hosted = f" ({s['hosted_backend']})" if s.get("hosted_backend") else ""
        grid.add_row(
            r.model, precision_cell(r), str(r.batch_size), r.scenario, escape(f"{s['url']}{hosted}"), str(s["requests"]),
            _fmt(server.get("mean_batch"), ".2f"), _fmt(server.get("queue_ms"), ".2f"), _fmt(compute, ".2f"),
            _fmt(server.get("request_ms"), ".2f"), _fmt(s["client_ms"], ".2f"), _fmt(s.get("transport_ms"), ".2f"),
            _direct_cell(s), _fmt(s["overhead_ms"], "+.2f") + ("*" if (s["overhead_ms"] or 0) < 0 else ""),
            _fmt(s["client_cpu_ms"], ".3f"),
            _fmt(s["client_busy"], ".0%"),
        )
    return grid


def _direct_cell(s: dict) -> str:
    spread = s.get("direct_before_after_ms")  # absent in files from before it was measured twice
    return _fmt(s["direct_ms"], ".2f") + (f" ({spread[0]:.2f}/{spread[1]:.2f})" if spread else "")


def serving_notes(rows: list[Row]) -> list[str]:
    """Why a row's serving figures read as they do: the server's statistics missing, or an overhead
    below zero (the client's time under the direct call's, which the machine's drift can do)."""
    notes = []
    for r in rows:
        s = r.serving
        if not s:
            continue
        if isinstance(s["server"], str):
            notes.append(f"{r.model} {r.backend}: {s['server']}")
        if (s["overhead_ms"] or 0) < 0:
            before, after = s.get("direct_before_after_ms") or (s["direct_ms"], s["direct_ms"])
            notes.append(f"* {r.model} {r.backend} b{r.batch_size}: served faster than called directly "
                         f"({s['client_ms']:.2f} ms against {before:.2f} before and {after:.2f} after the window): "
                         "what serving costs here is below the machine's drift between measurements")
    return notes


def sensitivity_table(row: Row, top: int = 15) -> Table:
    """--sensitivity: the layers whose INT8 costs the most, with onnxruntime's SQNR figures."""
    s = row.sensitivity
    grid = Table(title=f"{row.model} int8 sensitivity: all layers int8 gives rel_l2 {s['int8']['rel_l2']:.3f}, "
                       f"top-1 {s['int8']['top1_agreement']:.3f}; each row keeps one layer in fp32", title_justify="left")
    for name in ("layer", "rel_l2 kept fp32", "gain", "cosine", "top1", "top5", "weight SQNR dB",
                 "output vs fp32 SQNR dB"):
        grid.add_column(name, justify="left" if name == "layer" else "right")
    for layer in s["layers"][:top]:
        kept = layer["kept_fp32"]
        grid.add_row(layer["layer"], f"{kept['rel_l2']:.3f}", f"{layer['rel_l2_gain']:+.3f}", f"{kept['cosine']:.4f}",
                     f"{kept['top1_agreement']:.3f}", f"{kept['top5_agreement']:.3f}",
                     _fmt(layer["weight_sqnr_db"], ".1f"), _fmt(layer["output_vs_fp32_sqnr_db"], ".1f"))
    if s.get("from_lines"):
        grid.caption, grid.caption_justify = escape(keep_fp_advice(s["from_lines"])), "left"
    return grid


def keep_fp_advice(bisected: dict) -> str:
    """The bisection from a failing row's first line outside tolerance, in a sentence."""
    if "error" in bisected:
        return f"bisection from the failing lines failed: {bisected['error']}"
    builds = "quantizations" if bisected.get("precision", "int8") == "int8" else "fp16 runs"
    judged = f" by {bisected['judged_on']}" if "judged_on" in bisected else ""
    where = (f"bisected over {bisected['candidates']} layers from {bisected['from_line']}, "
             f"{len(bisected['tried'])} {builds}{judged}")
    if bisected["keep_fp"] is None:
        return f"no --keep-fp found ({where}): {bisected['why']}"
    f = bisected["figures"]
    return (f"to pass, keep in fp32 ({where}): --keep-fp {','.join(bisected['keep_fp'])} gives rel_l2 "
            f"{f['rel_l2']:.3f}, cosine {f['cosine']:.4f}, top-1 {f['top1_agreement']:.3f}")


def console() -> Console:
    """stdout, at least 300 columns wide: rich assumes 80 when stdout is a pipe or a file, and the
    table would then be squeezed into unreadable ellipses in every log a user keeps."""
    out = Console()
    return out if out.is_terminal and out.width >= 300 else Console(width=max(out.width, 300))


def machine_line(env: dict) -> str:
    """Where a run ran, in one line: the CPU and what it offers, the threads, the GPU."""
    gpu = f"; {env['gpu']} (driver {env.get('driver')}, CUDA {env.get('cuda')})" if env.get("gpu") else ""
    return f"{env.get('cpu')}, {describe(env.get('cpu_features'))}; {env.get('threads')} threads{gpu}"


def costs_line(env: dict) -> str:
    """Where the costs columns come from on this machine, or why a column is empty."""
    c = env.get("costs")
    if c is None:
        return "costs: not recorded (a run from before rows had them)"
    energy = c.get("energy") or f"none ({c.get('energy_reason')})"
    clock = c.get("clock") or f"none ({c.get('clock_reason')})"
    return (f"peak/run MB: the row's peak above its start (its artifacts built, its backend's runtime loaded "
            f"once per process before), setup included / while running (on CUDA the GPU's); "
            f"energy: {energy}; clocks: {clock}; "
            "% peak: achieved FLOP/s over the fastest GEMM this machine ran in the row's precision "
            "(torch's; on CPU also onnxruntime's)")


# The instructions that make each precision fast on a CPU, as /proc/cpuinfo names them.
NATIVE = {"bf16": ("amx_bf16", "avx512_bf16"), "int8": ("amx_int8", "avx512_vnni", "avx_vnni")}


def precision_hint(plan: Plan) -> str | None:
    """Where the CPU computes bf16 or int8 natively and the run measured fp32 alone, what it left
    out and the command that measures it (on AMX, int8 runs several times faster than fp32)."""
    features = plan.env.get("cpu_features") or {}
    fast = {p: [f for f in flags if features.get(f)] for p, flags in NATIVE.items()}
    fast = {p: flags for p, flags in fast.items() if flags}
    if plan.device.type != "cpu" or set(plan.precisions) != {"fp32"} or not fast:
        return None
    said = " and ".join(f"{p} ({', '.join(flags)})" for p, flags in fast.items())
    return (f"this CPU computes {said} natively, and this run measured fp32 only: python -m bench --model "
            f"{','.join(plan.models)} --device cpu --precision fp32,{','.join(fast)} measures them")


def print_run(rows: list[Row], plan: Plan, out: Console) -> None:
    """The run's sections on ``out``: the table, the best row and what the run left out, then where
    the rows have them the stage profile, the serving split, INT8 sensitivity, and the backends
    that could not run here."""
    out.print(f"[dim]{escape(machine_line(plan.env))}[/dim]", highlight=False)
    out.print(f"[dim]{escape(costs_line(plan.env))}[/dim]", highlight=False)
    out.print(table(rows))
    for r in best_rows(rows).values():
        out.print(f"[bold green]* {escape(best_line(r))}[/bold green]", highlight=False)
    if (hint := precision_hint(plan)) is not None:
        out.print(f"[yellow]{escape(hint)}[/yellow]", highlight=False)
    if any(r.profile and r.profile.get("stages") for r in rows):
        out.print(profile_table(rows))
    for grid in layers.side_by_side(rows):
        out.print(grid)
    for r in rows:
        if r.profile and r.profile.get("layers"):
            out.print(layers.top_layers(r))
            for note in r.profile["layers"]["notes"]:
                out.print(f"[dim]{r.backend} {precision_cell(r)} b{r.batch_size}: {escape(note)}[/dim]", highlight=False)
        elif r.profile and "reason" in r.profile:
            out.print(f"[dim]no layer profile: {r.backend} {precision_cell(r)} b{r.batch_size}: {escape(r.profile['reason'])}[/dim]",
                      highlight=False)
    for grid in layers.parity_side_by_side(rows):
        out.print(grid)
    for r in rows:
        reason = ((r.parity or {}).get("layers") or {}).get("reason")
        if reason:
            out.print(f"[dim]no layer parity: {r.backend} {precision_cell(r)} b{r.batch_size}: {escape(reason)}[/dim]",
                      highlight=False)
    if any(r.serving for r in rows):
        out.print(serving_table(rows))
    for note in serving_notes(rows):
        out.print(f"[dim]{escape(note)}[/dim]", highlight=False)
    for row in rows:
        if not row.sensitivity:
            continue
        if "int8" not in row.sensitivity and "error" not in row.sensitivity:  # a failing fp16 row: its bisection
            elsewhere = row.sensitivity.get("keep_fp_backends")
            where = f" (on {', '.join(elsewhere)}: {row.backend}'s rows keep no layer)" if elsewhere else ""
            out.print(f"{row.model} {row.backend} {precision_cell(row)} b{row.batch_size}: "
                      f"{escape(keep_fp_advice(row.sensitivity['from_lines']))}{escape(where)}", highlight=False)
        elif row.batch_size == plan.batch_sizes[0]:  # one ranking per model, shared by its int8 rows
            if "error" in row.sensitivity:
                out.print(f"[yellow]{row.model} int8 sensitivity failed[/yellow]: {escape(row.sensitivity['error'])}",
                          highlight=False)
            else:
                out.print(sensitivity_table(row))
    for backend, reason in plan.not_run.items():
        out.print(f"[dim]not run: {backend}: {escape(reason)}[/dim]", highlight=False)


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell: its pipes escaped, its lines joined."""
    return " ".join(text.replace("|", "\\|").split())


def to_markdown(rows: list[Row], env: dict, title: str, plot: str | None) -> str:
    """One run as Markdown: where it ran, the table (speed, parity, LoadGen's verdict), the plot."""
    baseline = _eager_throughputs(rows)
    best = [id(r) for r in best_rows(rows).values()]
    lines = [f"## {title}", "",
             (f"{machine_line(env)}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
              f"OpenVINO {env.get('openvino')}, TensorRT {env.get('tensorrt')}, Python {env.get('python')}."), "",
             f"{costs_line(env)}.", "",
             ("| model | backend | device | precision | batch | streams | scenario | img/s | vs eager | p50 ms | p99 ms "
              "| p99.9 ms | cv | peak/run MB | J/img | % peak | CPU busy | cosine | top-1 | top-5 | parity | LoadGen |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = (f"| {r.model} | {r.backend} | {r.device} | {precision_cell(r)} | {r.batch_size} | {streams_cell(r)} "
                f"| {r.scenario} |")
        if r.status != "ok":
            lines.append(f"{head} {'- | ' * 13}{r.status}: {_cell(str(r.error))} | - |")
            continue
        base = _baseline(baseline, r)
        speedup = f"{r.throughput_ips / base:.2f}x" if base else "-"
        notes = _notes(r)
        parity = ("pass" if r.parity["passed"] else "**FAIL**") + (f" ({_cell(', '.join(notes))})" if notes else "")
        loadgen = "-" if r.loadgen is None else r.loadgen["result"] + (
            f": {_cell('; '.join(r.loadgen['reasons']))}" if r.loadgen["reasons"] else "")
        throughput = f"**{_throughput(r)}**" if id(r) in best else _throughput(r)
        lines.append(f"{head} {throughput} | {speedup} | {_fmt(r.latency_ms['p50'], '.2f')} | "
                     f"{_fmt(r.latency_ms['p99'], '.2f')} | {_fmt(r.latency_ms.get('p99.9'), '.2f')} | "
                     f"{_fmt(r.cv, '.2f')}{' noisy' if r.noisy else ''} | "
                     f"{' | '.join(_cost_cells(r))} | "
                     f"{_fmt(r.parity['cosine'], '.6f')} | {_fmt(r.parity['top1_agreement'], '.3f')} | "
                     f"{_fmt(r.parity.get('top5_agreement'), '.3f')} | {parity} | {loadgen} |")
    lines += ["", *(f"{best_line(r)} (in bold above)." for r in best_rows(rows).values())]
    if plot:
        lines += ["", f"![throughput and latency against batch size]({plot})"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="JSON files written by python -m bench --json")
    parser.add_argument("--output", required=True, help="folder for report.md and its plots")


def write_report(runs: list[str], output: str) -> Path:
    """``python -m bench report``: a Markdown report of the runs in ``runs`` (their tables, and a
    plot of each) written to ``output``/report.md; returns its path. Every file is read and checked
    before anything is written (UsageError), and the report and its plots are built in a staging
    folder and moved in together, so a failure leaves no half-built report."""
    from bench import plot

    # The figures drawn below a run's table where a row has their data: the file's suffix, what a
    # row must hold, the plot, its caption.
    figures = (("-layers", lambda r: (r.get("profile") or {}).get("layers"), plot.write_layer_plot,
                "time per profiled call by ResNet stage, per backend"),
               ("-parity", lambda r: ((r.get("parity") or {}).get("layers") or {}).get("lines"),
                plot.write_parity_plot, "each line's rel_l2 against the fp32 model, per backend"))
    documents = [(Path(path), load(path)) for path in runs]
    folder = check_directory("--output", output)
    # Runs of the same name from different folders (a/run.json, b/run.json) get numbered plots.
    stems = [path.stem for path, _ in documents]
    names = [stem if stems.count(stem) == 1 else f"{stem}-{i + 1}" for i, stem in enumerate(stems)]
    plots = [f"{name}.png" if any(r["status"] == "ok" for r in document["results"]) else None
             for name, (_, document) in zip(names, documents)]
    extras = [[(f"{name}{suffix}.png", write, caption) for suffix, wanted, write, caption in figures
               if any(wanted(r) for r in document["results"])] for name, (_, document) in zip(names, documents)]
    inputs = {Path(os.path.realpath(path)) for path, _ in documents}
    for name in ("report.md", *filter(None, plots), *(file for drawn in extras for file, _, _ in drawn)):
        target = output_file("--output", os.path.join(output, name))
        if target in inputs:
            raise UsageError(f"--output {output}: the report's {name} would replace the run file {target} it reads; "
                             "give another folder")
    sections = ["# resnet-perf report", ""]
    with staging_dir(folder) as stage:
        for (path, document), name, main_plot, drawn in zip(documents, names, plots, extras):
            if main_plot:
                plot.write_plot(document["results"], stage / main_plot, name)
            title = path.name if name == path.stem else str(path)
            sections.append(to_markdown(rows_from_json(document), document["env"], title, main_plot))
            for file, write, caption in drawn:
                write(document["results"], stage / file, name)
                sections.append(f"![{caption}]({file})\n")
        write_text(stage / "report.md", "\n".join(sections))
        publish(stage, folder)
    return Path(output) / "report.md"
