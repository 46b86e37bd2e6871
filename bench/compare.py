"""``python -m bench compare BASE.json NEW.json``: did anything get slower, beyond the noise?

Rows are matched by model, backend, device, precision (and for int8 the quantizer), batch size,
image size, scenario and the streams asked for (files from before streams read as one); where the
two runs were asked for other settings (seed, weights, timing, --keep-fp), it says which. For each
pair the change is the ratio of the mean time per batch delivered (new / base): a call's latency
with one stream; with N requests in flight, a request's latency over N (Little's law: N in flight, each taking L, deliver N per L), so an
auto row that chose another N is still judged on its throughput. For the fixed-batch loop this is
the inverse of the throughput ratio. Its 95% confidence interval comes from a bootstrap over both
runs' ``samples_ms``. A regression is flagged only when the whole interval lies beyond
``threshold`` (new slower than base by more than 5% by default): a change the noise could explain
is reported, not flagged. A row that ran in BASE but failed, failed parity, was skipped or is
missing in NEW is a regression too: a backend that stopped working is the worst slowdown there is.

Costs are compared too, each with a threshold of its own: a row whose running peak memory grew by
more than ``--mem-threshold`` (10% by default, and by more than MEMORY_FLOOR_MB, below which
resident sets move with the allocator's chunks; the whole peak where a file has no running one:
setup's depends on what the cache held), or whose energy per image grew by more than
``--energy-threshold``, is a regression like a slowdown. Each is one figure per row, with no
samples to bootstrap: the threshold is the whole judgement. A file without costs compares speed only.

The interval covers the noise within each run, not a machine that is slower as a whole on another
day (on our shared 2-core VMs whole runs differ by up to 25%). ``--relative-to eager`` compares
each row's latency as a ratio to the same run's row of that backend (same model, precision, batch
and scenario), bootstrapping all four sample sets, so that drift common to a run cancels out.

Exit status: 1 if any row regressed, 0 otherwise, 2 when a file cannot be read or the two runs
have no row in common. Usable as a CI gate.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from rich.markup import escape
from rich.table import Table

from bench import record, report
from bench.record import Row
from resnet_perf.util.cli import UsageError, positive_float, positive_int


@dataclass(frozen=True)
class Change:
    """New mean latency over base mean latency, with its bootstrap 95% interval, and the verdict."""

    ratio: float
    low: float
    high: float
    verdict: str  # regression | improvement | unchanged | failed


# Past this many samples, a mean's bootstrap distribution is its normal limit (mean, std / sqrt(n))
# to well within the percentiles' own noise, and is drawn from that directly: resampling millions
# of samples thousands of times would take minutes and, drawn at once, the 149 GiB a 5-million-sample
# file asked. Below it, resamples are drawn a bounded number of values at a time.
MAX_BOOTSTRAP_SAMPLES = 100_000
MAX_RESAMPLES = 100_000
_DRAW = 4_000_000


def _bootstrap_means(rng: np.random.Generator, samples: np.ndarray, resamples: int) -> np.ndarray:
    if samples.size > MAX_BOOTSTRAP_SAMPLES:
        return rng.normal(samples.mean(), samples.std() / np.sqrt(samples.size), resamples)
    rows = max(1, _DRAW // samples.size)
    return np.concatenate([rng.choice(samples, size=(min(rows, resamples - start), samples.size)).mean(axis=1)
                           for start in range(0, resamples, rows)])


def bootstrap_ratio(base: np.ndarray, new: np.ndarray, *, base_ref: np.ndarray | None = None,
                    new_ref: np.ndarray | None = None, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """mean(new) / mean(base), or with references (mean(new) / mean(new_ref)) / (mean(base) / mean(base_ref)),
    and the 2.5th and 97.5th percentiles of that ratio over bootstrap resamples of every sample set
    (each resampled with replacement, independently)."""
    rng = np.random.default_rng(seed)
    sets = [new, base] if base_ref is None else [new, new_ref, base, base_ref]
    means = [_bootstrap_means(rng, samples, resamples) for samples in sets]
    point = [samples.mean() for samples in sets]
    if base_ref is None:
        ratio, boot = point[0] / point[1], means[0] / means[1]
    else:
        ratio, boot = (point[0] / point[1]) / (point[2] / point[3]), (means[0] / means[1]) / (means[2] / means[3])
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(ratio), float(low), float(high)


def per_batch_ms(row: Row) -> np.ndarray:
    """The row's samples as the time per batch it delivered: latency over the requests in flight."""
    return np.asarray(row.samples_ms, float) / (row.streams or 1)


def judge(base: Row, new: Row, threshold: float, *, base_ref: Row | None = None, new_ref: Row | None = None,
          resamples: int = 4000) -> Change:
    if new.status != "ok" or not (new.parity or {}).get("passed", True):
        return Change(np.nan, np.nan, np.nan, "failed")

    def samples(row: Row | None) -> np.ndarray | None:
        return None if row is None else per_batch_ms(row)

    ratio, low, high = bootstrap_ratio(samples(base), samples(new), base_ref=samples(base_ref),
                                       new_ref=samples(new_ref), resamples=resamples)
    if low > 1 + threshold:
        return Change(ratio, low, high, "regression")
    if high < 1 - threshold:
        return Change(ratio, low, high, "improvement")
    return Change(ratio, low, high, "unchanged")


MEMORY_FLOOR_MB = 4.0

# The costs compare judges: (figures, first that both rows have wins; the column that shows them;
# its flag's dest; the smallest rise that counts).
COSTS = ((("run_peak_mem_mb", "peak_mem_mb"), "peak MB", "mem_threshold", MEMORY_FLOOR_MB),
         (("energy_j_per_img",), "J/img", "energy_threshold", 0.0))


def cost_change(base: Row, new: Row, figures: tuple[str, ...], threshold: float, floor: float) -> tuple[str, bool]:
    """The change of one cost between two rows, as a cell, and whether it is a regression."""
    pairs = [tuple((row.costs or {}).get(figure) for row in (base, new)) for figure in figures]
    before, after = next((pair for pair in pairs if None not in pair), (None, None))
    if before is None or after is None:
        return "-", False
    rise = after / before - 1 if before > 0 else float("inf") if after > 0 else 0.0
    regressed = rise > threshold and after - before > floor
    cell = f"{before:.3g}→{after:.3g}" + (f" ({rise:+.0%})" if before > 0 else "")
    return (f"[red]{cell}[/red]" if regressed else cell), regressed


def load_run(path: str) -> tuple[dict[tuple, Row], dict]:
    """The rows of a ``python -m bench --json`` file by their key, each that ran with samples to
    compare, and the run's settings (seed, weights, timing, --keep-fp: env.settings)."""
    document = record.load(path)
    rows = {}
    for row in record.rows_from_json(document):
        if row.status == "ok" and len(row.samples_ms) < 2:
            raise UsageError(f"{path}: row {row.backend} batch {row.batch_size} has fewer than 2 samples")
        rows[record.row_key(row)] = row
    return rows, document["env"].get("settings") or {}


def settings_changed(base: dict, new: dict) -> list[str]:
    """What the two runs were asked to do differently (a key only one records counts), as
    ``name base -> new``: rows that match by key may still not measure the same thing."""
    return [f"{key} {base.get(key)} -> {new.get(key)}" for key in dict.fromkeys([*base, *new])
            if base.get(key) != new.get(key)]


def reference(run: dict[tuple, Row], key: tuple, backend: str) -> Row | None:
    """The successful row of ``backend`` matching ``key`` in everything but the backend."""
    fields = dict(zip(record.KEY, key), backend=backend)
    row = run.get(tuple(fields[name] for name in record.KEY))
    return row if row is not None and row.status == "ok" else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="the baseline run's JSON (python -m bench --json)")
    p.add_argument("new", help="the run to check against it")
    p.add_argument("--threshold", type=positive_float, default=0.05,
                   help="flag a slowdown only when the whole 95%% interval is beyond this fraction (default 0.05)")
    p.add_argument("--resamples", type=positive_int, default=4000,
                   help=f"bootstrap resamples (default 4000, at most {MAX_RESAMPLES:,})")
    p.add_argument("--mem-threshold", type=positive_float, default=0.10,
                   help="flag a row whose peak memory grew by more than this fraction (default 0.10)")
    p.add_argument("--energy-threshold", type=positive_float, default=0.10,
                   help="flag a row whose energy per image grew by more than this fraction (default 0.10)")
    p.add_argument("--relative-to", default=None, metavar="BACKEND",
                   help="compare each row as a ratio to this backend's row of the same run (cancels machine drift)")


def compare(base_path: str, new_path: str, *, threshold: float = 0.05, resamples: int = 4000,
            relative_to: str | None = None, mem_threshold: float = 0.10, energy_threshold: float = 0.10) -> int:
    """Print the comparison of two runs; returns the exit status (1 on a regression). Raises
    UsageError, before printing anything, when a file cannot be read or the runs share no row."""
    if threshold >= 1:
        raise UsageError(f"--threshold {threshold}: a fraction below 1 (0.05 is 5%)")
    if resamples > MAX_RESAMPLES:
        raise UsageError(f"--resamples {resamples}: at most {MAX_RESAMPLES:,} (the 95% interval's ends settle "
                         "within a few thousand)")
    (base, base_settings), (new, new_settings) = load_run(base_path), load_run(new_path)
    common = [key for key in base if key in new and base[key].status == "ok" and new[key].status != "skipped"]
    # A row that ran in BASE and did not in NEW (left out of the run, or skipped) stopped running.
    stopped = [key for key in base if base[key].status == "ok" and key not in common]
    if not common:
        raise UsageError(f"{base_path} and {new_path} have no successful row in common to compare")
    if relative_to is not None:
        missing = [key for key in common if any(reference(run, key, relative_to) is None for run in (base, new))]
        if missing:
            raise UsageError(f"--relative-to {relative_to}: no successful {relative_to} row for "
                             f"{' '.join(map(str, missing[0]))} in both runs")
        common = [key for key in common if base[key].backend != relative_to]

    against = "" if relative_to is None else f", each relative to {relative_to}"
    grid = Table(title=f"{new_path} against {base_path} (threshold {threshold:.0%}{against})", title_justify="left")
    numbers = ("batch", "streams", "base ms/batch", "new ms/batch", "change", "95% CI", "peak MB", "J/img")
    for name in ("model", "backend", "device", "prec", "batch", "streams", "scenario", "base ms/batch", "new ms/batch",
                 "change", "95% CI", "peak MB", "J/img", ""):
        grid.add_column(name, justify="right" if name in numbers else "left")
    cost_thresholds = {"mem_threshold": mem_threshold, "energy_threshold": energy_threshold}
    colours = {"regression": "red", "failed": "red", "improvement": "green", "unchanged": "dim"}
    regressions = 0
    for key in common:
        b, n = base[key], new[key]
        refs = {} if relative_to is None else {
            "base_ref": reference(base, key, relative_to), "new_ref": reference(new, key, relative_to)}
        change = judge(b, n, threshold, resamples=resamples, **refs)
        if change.verdict == "failed":
            why = n.error if n.status != "ok" else "parity failed"
            regressions += 1
            cells = ["-", "-", "-", "-", "-", "-", f"[red]failed[/red]: {escape(str(why))}"]
        else:
            costs = {label: cost_change(b, n, figure, cost_thresholds[flag], floor)
                     for figure, label, flag, floor in COSTS}
            verdicts = [f"[{colours[change.verdict]}]{change.verdict}[/{colours[change.verdict]}]"]
            verdicts += [f"[red]{label} regression[/red]" for label, (_, regressed) in costs.items() if regressed]
            regressions += change.verdict == "regression" or any(regressed for _, regressed in costs.values())
            cells = [f"{per_batch_ms(b).mean():.2f}", f"{per_batch_ms(n).mean():.2f}", f"{change.ratio - 1:+.1%}",
                     f"{change.low - 1:+.1%} .. {change.high - 1:+.1%}", *(cell for cell, _ in costs.values()),
                     ", ".join(verdicts)]
        grid.add_row(n.model, n.backend, n.device, report.precision_cell(n), str(n.batch_size), report.streams_cell(n), n.scenario,
                     *cells)
    for key in stopped:
        b, n = base[key], new.get(key)
        why = "not in this run" if n is None else f"skipped: {n.error}"
        regressions += 1
        grid.add_row(b.model, b.backend, b.device, report.precision_cell(b), str(b.batch_size), report.streams_cell(b),
                     b.scenario, f"{per_batch_ms(b).mean():.2f}", "-", "-", "-", "-", "-",
                     f"[red]stopped running[/red]: {escape(why)}")
    out = report.console()
    out.print(grid)
    for label, path, only in (("only in", base_path, [k for k in base if k not in new and k not in stopped]),
                              ("new in", new_path, [k for k in new if k not in base])):
        for key in only:
            out.print(f"[dim]{label} {path}: {' '.join(map(str, key))}[/dim]")
    changed = settings_changed(base_settings, new_settings)
    if changed:
        out.print(f"[yellow]the runs were asked for other settings[/yellow]: {escape('; '.join(changed))}",
                  highlight=False)
    out.print(f"{regressions} regression(s) among {len(common) + len(stopped)} compared row(s)", highlight=False)
    return 1 if regressions else 0
