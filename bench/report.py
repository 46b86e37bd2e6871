"""Result rows, and the three views of them: a rich table, JSON and CSV, all from one list."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

SCHEMA = "resnet-perf/bench/1"


@dataclass
class Row:
    """One model x backend x device x precision x batch size: the contract's result record."""

    model: str
    backend: str
    device: str
    precision: str
    batch_size: int
    image_size: int
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    throughput_ips: float | None = None
    latency_ms: dict | None = None
    iters: int = 0
    setup_s: float | None = None
    first_run_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    scenario: str = "offline"
    achieved_qps: float | None = None
    loadgen: dict | None = None
    parity: dict | None = None
    host_io: bool = False  # the timed call included the host-to-device and device-to-host copies
    cv: float | None = None  # coefficient of variation of samples_ms: std / mean
    noisy: bool | None = None  # cv above the run's --noise-threshold: the figures are less trustworthy
    note: str | None = None  # e.g. "interpreter timing": figures that are not performance

    @property
    def ok(self) -> bool:
        return self.status != "failed" and (self.parity is None or self.parity["passed"])


def _finite(value):
    """JSON has no NaN or Infinity: a non-finite figure becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(rows: list[Row], env: dict) -> str:
    document = {"schema": SCHEMA, "env": env, "results": [_finite(asdict(r)) for r in rows]}
    return json.dumps(document, indent=2) + "\n"


_CSV_LATENCY = ("mean", "p50", "p90", "p95", "p99", "min", "max", "std")
_CSV_PARITY = ("max_abs", "rel_l2", "cosine", "top1_agreement", "distinct_top1", "passed")


def to_csv(rows: list[Row]) -> str:
    """One line per row; nested figures flattened (latency_p50_ms, parity_cosine), samples left out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    scalar = ["model", "backend", "device", "precision", "batch_size", "image_size", "status", "error",
              "throughput_ips", "iters", "setup_s", "first_run_ms", "scenario", "achieved_qps", "host_io", "cv", "noisy", "note"]
    writer.writerow([*scalar, *(f"latency_{k}_ms" for k in _CSV_LATENCY), *(f"parity_{k}" for k in _CSV_PARITY),
                     "loadgen_result", "loadgen_reasons", "loadgen_target_qps"])
    for row in rows:
        record = _finite(asdict(row))
        latency = record["latency_ms"] or {}
        parity = record["parity"] or {}
        writer.writerow([
            *(record[k] for k in scalar),
            *(latency.get(k) for k in _CSV_LATENCY),
            *(parity.get(k) for k in _CSV_PARITY),
            *((lg["result"], "; ".join(lg["reasons"]), lg["target_qps"]) if (lg := record["loadgen"]) else (None,) * 3),
        ])
    return buffer.getvalue()


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _loadgen_cell(r: Row) -> str:
    lg = r.loadgen
    if lg is None:
        return "-"
    if lg["result"] == "VALID":
        return "[green]VALID[/green]"
    return f"[yellow]INVALID[/yellow]: {escape('; '.join(lg['reasons']))}"


def table(rows: list[Row]) -> Table:
    """Speed and parity side by side; speedup is against eager at the same model, precision, batch and
    scenario. LoadGen rows add the scenario, the rate asked for and achieved, and LoadGen's verdict."""
    baseline = {
        (r.model, r.device, r.precision, r.batch_size, r.scenario): r.throughput_ips
        for r in rows
        if r.backend == "eager" and r.status == "ok"
    }
    with_loadgen = any(r.scenario != "offline" for r in rows)
    columns = [("model", "left"), ("backend", "left"), ("device", "left"), ("prec", "left"), ("batch", "right")]
    if with_loadgen:
        columns += [("scenario", "left"), ("qps target/got", "right")]
    columns += [("img/s", "right"), ("vs eager", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
                ("cv", "right"), ("setup s", "right"), ("cosine", "right"), ("rel_l2", "right"), ("top1", "right"),
                ("distinct", "right"), ("parity", "left")]
    if with_loadgen:
        columns.append(("loadgen", "left"))
    grid = Table(title="resnet-perf", title_justify="left")
    for name, justify in columns:
        grid.add_column(name, justify=justify)

    for r in rows:
        head = [r.model, r.backend, r.device, r.precision, str(r.batch_size)]
        if with_loadgen:
            target = (r.loadgen or {}).get("target_qps")
            rate = f"{_fmt(target, '.1f')}/{_fmt(r.achieved_qps, '.1f')}" if r.achieved_qps is not None else "-"
            head += [r.scenario, rate]
        if r.status != "ok":
            colour = "red" if r.status == "failed" else "yellow"
            cells = [*head, *["-"] * 10, f"[{colour}]{r.status}: {escape(r.error or '')}[/{colour}]"]
            grid.add_row(*cells, *(["-"] if with_loadgen else []))
            continue
        base = baseline.get((r.model, r.device, r.precision, r.batch_size, r.scenario))
        speedup = f"{r.throughput_ips / base:.2f}x" if base else "-"
        p = r.parity
        verdict = "[green]pass[/green]" if p["passed"] else f"[red]FAIL[/red] {escape(p.get('error', ''))}"
        for note in (r.note, "incl. host-device copies" if r.host_io else None):
            if note:
                verdict += f" [dim]({note})[/dim]"
        cv = _fmt(r.cv, ".2f") + (" [yellow]noisy[/yellow]" if r.noisy else "")
        grid.add_row(
            *head,
            _fmt(r.throughput_ips, ".1f"),
            speedup,
            _fmt(r.latency_ms["p50"], ".2f"),
            _fmt(r.latency_ms["p99"], ".2f"),
            cv,
            _fmt(r.setup_s, ".1f"),
            _fmt(p["cosine"], ".6f"),
            _fmt(p["rel_l2"], ".1e"),
            _fmt(p["top1_agreement"], ".3f"),
            _fmt(p["distinct_top1"], ".2f"),
            verdict,
            *([_loadgen_cell(r)] if with_loadgen else []),
        )
    return grid


def console() -> Console:
    """stdout, at least 160 columns wide: rich assumes 80 when stdout is a pipe or a file, and the
    table would then be squeezed into unreadable ellipses in every log a user keeps."""
    out = Console()
    return out if out.is_terminal and out.width >= 160 else Console(width=max(out.width, 160))


def print_table(rows: list[Row], out: Console) -> None:
    out.print(table(rows))
