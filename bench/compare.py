"""``python -m bench compare BASE.json NEW.json``: did anything get slower, beyond the noise?

Rows are matched by model, backend, device, precision, batch size, image size and scenario. For each
pair the change is the ratio of mean per-call latency (new / base; for the fixed-batch loop this is
the inverse of the throughput ratio), with a 95% confidence interval from a bootstrap over both
runs' ``samples_ms``. A regression is flagged only when the whole interval lies beyond
``threshold`` (new slower than base by more than 5% by default): a change the noise could explain
is reported, not flagged. A row that ran in BASE but failed, or failed parity, in NEW is a
regression too: a backend that stopped working is the worst slowdown there is.

The interval covers the noise within each run, not a machine that is slower as a whole on another
day (on our shared 2-core VMs whole runs differ by up to 25%). ``--relative-to eager`` compares
each row's latency as a ratio to the same run's row of that backend (same model, precision, batch
and scenario), bootstrapping all four sample sets, so that drift common to a run cancels out.

Exit status: 1 if any row regressed, 0 otherwise, 2 when a file cannot be read or the two runs
have no row in common. Usable as a CI gate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from rich.markup import escape
from rich.table import Table

from bench import report
from resnet_perf.cli import Parser, UsageError, positive_float, positive_int

KEY = ("model", "backend", "device", "precision", "batch_size", "image_size", "scenario")


@dataclass(frozen=True)
class Change:
    """New mean latency over base mean latency, with its bootstrap 95% interval, and the verdict."""

    ratio: float
    low: float
    high: float
    verdict: str  # regression | improvement | unchanged | failed


def _bootstrap_means(rng: np.random.Generator, samples: np.ndarray, resamples: int) -> np.ndarray:
    return rng.choice(samples, size=(resamples, samples.size), replace=True).mean(axis=1)


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


def judge(base: dict, new: dict, threshold: float, *, base_ref: dict | None = None, new_ref: dict | None = None,
          resamples: int = 4000) -> Change:
    if new["status"] != "ok" or not (new.get("parity") or {}).get("passed", True):
        return Change(np.nan, np.nan, np.nan, "failed")

    def samples(row: dict | None) -> np.ndarray | None:
        return None if row is None else np.asarray(row["samples_ms"], float)

    ratio, low, high = bootstrap_ratio(samples(base), samples(new), base_ref=samples(base_ref),
                                       new_ref=samples(new_ref), resamples=resamples)
    if low > 1 + threshold:
        return Change(ratio, low, high, "regression")
    if high < 1 - threshold:
        return Change(ratio, low, high, "improvement")
    return Change(ratio, low, high, "unchanged")


def load_run(path: str) -> dict[tuple, dict]:
    """The rows of a ``python -m bench --json`` file that have samples to compare, by KEY."""
    rows = {}
    for row in report.load(path)["results"]:
        if row["status"] == "skipped":
            continue
        if row["status"] == "ok" and len(row["samples_ms"]) < 2:
            raise UsageError(f"{path}: row {row['backend']} batch {row['batch_size']} has fewer than 2 samples")
        rows[tuple(row[k] for k in KEY)] = row
    return rows


def reference(run: dict[tuple, dict], key: tuple, backend: str) -> dict | None:
    """The successful row of ``backend`` matching ``key`` in everything but the backend."""
    row = run.get((key[0], backend, *key[2:]))
    return row if row is not None and row["status"] == "ok" else None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the baseline run's JSON (python -m bench --json)")
    p.add_argument("new", help="the run to check against it")
    p.add_argument("--threshold", type=positive_float, default=0.05,
                   help="flag a slowdown only when the whole 95%% interval is beyond this fraction (default 0.05)")
    p.add_argument("--resamples", type=positive_int, default=4000, help="bootstrap resamples (default 4000)")
    p.add_argument("--relative-to", default=None, metavar="BACKEND",
                   help="compare each row as a ratio to this backend's row of the same run (cancels machine drift)")
    return p


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.threshold >= 1:
            raise UsageError(f"--threshold {args.threshold}: a fraction below 1 (0.05 is 5%)")
        base, new = load_run(args.base), load_run(args.new)
        common = [key for key in base if key in new and base[key]["status"] == "ok"]
        if not common:
            raise UsageError(f"{args.base} and {args.new} have no successful row in common to compare")
        if args.relative_to is not None:
            missing = [key for key in common if any(reference(run, key, args.relative_to) is None for run in (base, new))]
            if missing:
                raise UsageError(f"--relative-to {args.relative_to}: no successful {args.relative_to} row for "
                                 f"{' '.join(map(str, missing[0]))} in both runs")
            common = [key for key in common if key[1] != args.relative_to]
    except UsageError as exc:
        print(f"python -m bench compare: error: {exc}", file=sys.stderr)
        return 2

    relative = "" if args.relative_to is None else f", each relative to {args.relative_to}"
    grid = Table(title=f"{args.new} against {args.base} (threshold {args.threshold:.0%}{relative})", title_justify="left")
    for name in ("model", "backend", "device", "prec", "batch", "scenario", "base ms", "new ms", "change", "95% CI", ""):
        grid.add_column(name, justify="right" if name in ("batch", "base ms", "new ms", "change", "95% CI") else "left")
    colours = {"regression": "red", "failed": "red", "improvement": "green", "unchanged": "dim"}
    regressions = 0
    for key in common:
        b, n = base[key], new[key]
        refs = {} if args.relative_to is None else {
            "base_ref": reference(base, key, args.relative_to), "new_ref": reference(new, key, args.relative_to)}
        change = judge(b, n, args.threshold, resamples=args.resamples, **refs)
        regressions += change.verdict in ("regression", "failed")
        model, backend, device, precision, batch, _, scenario = key
        if change.verdict == "failed":
            why = n["error"] if n["status"] != "ok" else "parity failed"
            cells = ["-", "-", "-", "-", f"[red]failed[/red]: {escape(str(why))}"]
        else:
            cells = [f"{np.mean(b['samples_ms']):.2f}", f"{np.mean(n['samples_ms']):.2f}", f"{change.ratio - 1:+.1%}",
                     f"{change.low - 1:+.1%} .. {change.high - 1:+.1%}",
                     f"[{colours[change.verdict]}]{change.verdict}[/{colours[change.verdict]}]"]
        grid.add_row(model, backend, device, precision, str(batch), scenario, *cells)
    out = report.console()
    out.print(grid)
    for label, only in (("only in", [k for k in base if k not in new]), ("new in", [k for k in new if k not in base])):
        for key in only:
            out.print(f"[dim]{label} {args.base if label == 'only in' else args.new}: {' '.join(map(str, key))}[/dim]")
    out.print(f"{regressions} regression(s) among {len(common)} compared row(s)", highlight=False)
    return 1 if regressions else 0
