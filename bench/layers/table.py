"""``--profile layers`` and ``--parity layers`` on the console: every backend's layer profile, or
its line outputs against the fp32 model's, side by side, one line per convolution (with what
joined it), pooling and fc; then each backend's ten slowest layers."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.table import Table

from bench.layers.groups import label

TOP = 10


def order(anchor: str) -> tuple:
    """Lines in the model's order: the stem, each block's convolutions then its shortcut, the head."""
    if anchor in ("conv1", "maxpool"):
        return (0, anchor != "conv1")
    block = re.match(r"layer(\d+)\.(\d+)\.(downsample\.)?\D*(\d+)", anchor)
    if block:
        stage, index, shortcut, n = block.groups()
        return (1, int(stage), int(index), shortcut is not None, int(n))
    return (2, ("avgpool", "fc").index(anchor) if anchor in ("avgpool", "fc") else 2, anchor)


def _column(r) -> str:
    return f"{r.backend} {r.precision} b{r.batch_size}"


def side_by_side(rows: Sequence) -> list[Table]:
    """One table per model: a line per model line, a column per profiled row (ms per call, share
    of its wall time), then what no line holds."""
    tables = []
    profiled = [r for r in rows if r.profile and r.profile.get("layers")]
    for model in dict.fromkeys(r.model for r in profiled):
        ours = [r for r in profiled if r.model == model]
        members: dict[str, list[str]] = {}
        for r in ours:
            for anchor, line in r.profile["layers"]["lines"].items():
                names = members.setdefault(anchor, [])
                names += [m for m in line["members"] if m not in names]
        grid = Table(title=f"{model}: time per layer, ms per call (share of the call's wall time)", title_justify="left")
        grid.add_column("layer (PyTorch modules)")
        for r in ours:
            grid.add_column(_column(r), justify="right")
        for anchor in sorted(members, key=order):
            cells = []
            for r in ours:
                p = r.profile["layers"]
                line = p["lines"].get(anchor)
                cells.append("-" if line is None else _cell(line["ms"], p["wall_ms"]))
            grid.add_row(label(members[anchor]), *cells)
        grid.add_section()
        for name, key in (("on no line (unattributed)", "unattributed_ms"),
                          ("between layers (runtime, profiler)", "outside_layers_ms")):
            grid.add_row(name, *(_cell(r.profile["layers"][key], r.profile["layers"]["wall_ms"]) for r in ours))
        grid.add_row("wall per profiled call", *(f"{r.profile['layers']['wall_ms']:.2f}" for r in ours))
        # What profiling cost: the row's own timed calls, unprofiled, beside the profiled ones.
        grid.add_row("timed call (the row's mean)", *(f"{r.latency_ms['mean']:.2f}" if r.latency_ms else "-" for r in ours))
        grid.add_row("profiler", *(r.profile["layers"]["source"].split(",")[0] for r in ours))
        tables.append(grid)
    return tables


def _cell(ms: float, wall_ms: float) -> str:
    return f"{ms:.2f} {ms / wall_ms:4.0%}" if wall_ms else f"{ms:.2f}"


def top_layers(r) -> Table:
    """A row's slowest runtime layers, with what the runtime ran and the model line each is on."""
    p = r.profile["layers"]
    lines = p["lines"]
    grid = Table(title=f"{r.model} {_column(r)}: its {TOP} slowest layers ({p['calls']} profiled calls)",
                 title_justify="left")
    for name, justify in (("#", "right"), ("runtime layer", "left"), ("ran as", "left"), ("ms", "right"),
                          ("share", "right"), ("model line", "left")):
        grid.add_column(name, justify=justify)
    for rank, layer in enumerate(sorted(p["layers"], key=lambda x: -x["ms"])[:TOP], 1):
        line = "(unattributed)" if layer["line"] is None else lines[layer["line"]]["label"]
        grid.add_row(str(rank), layer["name"], layer["kind"], f"{layer['ms']:.2f}",
                     f"{layer['ms'] / p['wall_ms']:.0%}", line)
    return grid


def parity_side_by_side(rows: Sequence) -> list[Table]:
    """--parity layers: one table per model, a line per model line in order, a column per row with
    the line's cosine and rel_l2 against the fp32 model; the first line outside a row's tolerance
    in red, and every line after it dimmed (its error is carried, not new)."""
    tables = []
    compared = [r for r in rows if ((r.parity or {}).get("layers") or {}).get("lines")]
    for model in dict.fromkeys(r.model for r in compared):
        ours = [r for r in compared if r.model == model]
        grid = Table(title=f"{model}: each line's output against the fp32 model's (worst sample's cosine, rel_l2)",
                     title_justify="left")
        grid.add_column("line (its anchor)")
        for r in ours:
            grid.add_column(_column(r), justify="right")
        figures = {id(r): {f["line"]: f for f in r.parity["layers"]["lines"]} for r in ours}
        for line in dict.fromkeys(f["line"] for r in ours for f in r.parity["layers"]["lines"]):
            cells = []
            for r in ours:
                f, first = figures[id(r)].get(line), r.parity["layers"]["first_outside"]
                cell = "-" if f is None else f"{f['cosine']:.5f} {f['rel_l2']:.1e}" if f["finite"] else "NaN/Inf"
                cells.append(f"[red]{cell}[/red]" if line == first else cell)
            grid.add_row(line, *cells)
        grid.add_section()
        grid.add_row("how", *(r.parity["layers"]["how"] for r in ours))
        tables.append(grid)
    return tables
