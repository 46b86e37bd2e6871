"""A run as a picture: throughput against batch size per backend, and latency against batch size.

One line per model x backend x precision x scenario x streams asked, over the batch sizes it ran; a failed or
skipped row is a gap in its line, not a zero. Batch sizes are spaced on a log2 axis, as sweeps
double them. The latency panel shows p50 (solid) and p99 (dashed) per batch, in the same colour.
"""

from __future__ import annotations

import os
from collections import defaultdict

from resnet_perf.util.atomic import atomic_path


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    lines = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r.get("throughput_ips") is not None:
            scenario = "" if r["scenario"] == "offline" else f" {r['scenario']}"
            asked = r.get("streams_asked", r.get("streams", 1))
            streams = "" if asked == 1 else f" {asked} streams"
            quantizer = f" {r['quantizer']}" if r.get("quantizer") else ""
            lines[f"{r['model']} {r['backend']} {r['precision']}{quantizer}{scenario}{streams}"].append(r)
    return {label: sorted(points, key=lambda r: r["batch_size"]) for label, points in lines.items()}


def write_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Write the two panels for ``rows`` (result records, as in the JSON) to ``path`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files, not windows: no display is needed or wanted
    import matplotlib.pyplot as plt

    lines = _series(rows)
    if not lines:
        raise ValueError("no successful row to plot")
    fig, (speed, latency) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for i, (label, points) in enumerate(lines.items()):
        colour = f"C{i % 10}"
        batches = [p["batch_size"] for p in points]
        speed.plot(batches, [p["throughput_ips"] for p in points], "o-", color=colour, label=label)
        latency.plot(batches, [p["latency_ms"]["p50"] for p in points], "o-", color=colour, label=f"{label} p50")
        latency.plot(batches, [p["latency_ms"]["p99"] for p in points], "x--", color=colour, alpha=0.7,
                     label=f"{label} p99")
    all_batches = sorted({r["batch_size"] for points in lines.values() for r in points})
    for ax in (speed, latency):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches, [str(b) for b in all_batches])
        ax.set_xlabel("batch size")
        ax.grid(True, which="major", alpha=0.3)
    speed.set_ylabel("throughput (images/s)")
    speed.set_ylim(bottom=0)
    speed.set_title("throughput (higher is better)")
    latency.set_ylabel("latency per request, one batch (ms)")
    latency.set_yscale("log")
    latency.set_title("latency: p50 solid, p99 dashed (lower is better)")
    speed.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def layer_stages(profile: dict) -> dict[str, float]:
    """A layer profile (a row's ``profile.layers``) summed by ResNet stage, with the time on no line
    and between layers beside them: ms per call, adding up to the call's wall time."""
    from bench.layers.groups import stage_of

    stages = dict.fromkeys(STAGES, 0.0)
    for anchor, line in profile["lines"].items():
        stages[stage_of(anchor)] += line["ms"]
    return {**stages, "unattributed": profile["unattributed_ms"], "between layers": profile["outside_layers_ms"]}


def write_layer_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Stacked bars, one per row with a layer profile: its profiled call's time by ResNet stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiled = [r for r in rows if (r.get("profile") or {}).get("layers")]
    if not profiled:
        raise ValueError("no row with a layer profile to plot")
    labels = [f"{r['model']} {r['backend']} {r['precision']} b{r['batch_size']}" for r in profiled]
    stacks = [layer_stages(r["profile"]["layers"]) for r in profiled]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(profiled) + 3), 4.8), constrained_layout=True)
    bottom = [0.0] * len(profiled)
    for i, part in enumerate(stacks[0]):
        heights = [max(s[part], 0.0) for s in stacks]  # a runtime's counters can overrun the wall a little
        ax.bar(labels, heights, bottom=bottom, label=part, color=f"C{i % 10}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("ms per profiled call")
    ax.set_title("where a call's time goes, by ResNet stage (profiled calls, not the timed ones)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_parity_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """--parity layers: each row's relative L2 error against the fp32 model, line by line in model
    order (log scale), with the ResNet stages marked: where error enters and how it grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.layers.groups import stage_of

    compared = [r for r in rows if ((r.get("parity") or {}).get("layers") or {}).get("lines")]
    if not compared:
        raise ValueError("no row with layer parity to plot")
    lines = list(dict.fromkeys(f["line"] for r in compared for f in r["parity"]["layers"]["lines"]))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.18 * len(lines) + 3), 4.8), constrained_layout=True)
    for r in compared:
        figures = {f["line"]: f["rel_l2"] for f in r["parity"]["layers"]["lines"] if f["finite"]}
        xs = [i for i, line in enumerate(lines) if line in figures]
        quantizer = f" {r['quantizer']}" if r.get("quantizer") else ""
        # An exact line (rel_l2 0) is drawn at the axis floor rather than dropped from a log scale.
        ax.plot(xs, [max(figures[lines[i]], 1e-9) for i in xs], marker=".",
                label=f"{r['model']} {r['backend']} {r['precision']}{quantizer} b{r['batch_size']}")
    stages = [stage_of(line) for line in lines]
    for i, stage in enumerate(stages):
        if i == 0 or stage != stages[i - 1]:
            ax.axvline(i - 0.5, color="0.85", linewidth=0.8)
            ax.text(i - 0.4, 1.0, stage, transform=ax.get_xaxis_transform(), fontsize=8, va="top", color="0.4")
    ax.set_yscale("log")
    ax.set_ylabel("rel_l2 against the fp32 model")
    ax.set_xlabel("line, in model order")
    ax.set_title("error through the network, line by line (--parity layers)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
