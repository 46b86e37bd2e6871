"""summary.md for a scripts/gpu_check.sh folder: the steps, the headline bars, and each table.

    python scripts/gpu_summary.py OUT_DIR

Reads what the steps left (steps.tsv, bench-bs256.json, bench.json, timm.json, layers.json,
bench-layers.json, bench-streams.json, and log.txt, which the environment heads); a file a step did
not write is reported missing, not guessed at.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Issue 20's bars for resnet50 fp16 batch 256 on one H100/H200.
BARS = {"triton_vs_eager": 1.3, "triton_vs_compile": 1.0, "best_ips": 25_000, "timm_within": 0.05}


def load(path: Path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return None


def ok_rows(rows: list[dict] | None) -> dict[tuple, dict]:
    return {(r["backend"], r["precision"], r["batch_size"]): r for r in rows or [] if r.get("status") == "ok"}


def bench_table(rows: list[dict]) -> list[str]:
    lines = ["| backend | precision | batch | img/s | p50 ms | parity cosine | top-1 | passed | note |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {r.get('status')} | | | | | "
                         f"{r.get('error') or ''} |")
            continue
        p = r.get("parity") or {}
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {r['throughput_ips']:,.0f} | "
                     f"{r['latency_ms']['p50']:.3f} | {p.get('cosine', float('nan')):.6f} | "
                     f"{p.get('top1_agreement', float('nan')):.3f} | {p.get('passed')} | {r.get('note') or ''} |")
    return lines


def streams_lines(rows: list[dict] | None) -> list[str]:
    """Each row's requests in flight, how they were kept and chosen, and what they delivered."""
    if not rows:
        return ["bench-streams.json missing: the streams step did not run"]
    lines = ["| backend | precision | batch | streams | img/s | p50 ms | p99.9 ms | kept | chosen by | passed |",
             "|---|---|---:|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        asked = r.get("streams_asked", 1)
        streams = f"{r.get('streams')} (auto)" if asked == "auto" else str(r.get("streams"))
        if r.get("status") != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {streams} | {r.get('status')} "
                         f"| | | | | {r.get('error') or ''} |")
            continue
        how = r.get("streams_how") or {}
        tried = how.get("tried_ips")
        chosen = how.get("chosen_by", "")
        if tried:
            chosen += " (" + ", ".join(f"{n}: {ips:,.0f}" for n, ips in tried.items()) + " img/s)"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {streams} | "
                     f"{r['throughput_ips']:,.0f} | {r['latency_ms']['p50']:.3f} | "
                     f"{r['latency_ms'].get('p99.9', float('nan')):.3f} | {how.get('kept', 'one call at a time')} | "
                     f"{chosen} | {(r.get('parity') or {}).get('passed')} |")
    return lines


def headline(rows: dict[tuple, dict]) -> list[str]:
    eager, triton, compile_ = (rows.get((b, "fp16", 256)) for b in ("eager", "triton", "compile"))
    lines = []
    if triton and eager:
        ratio = triton["throughput_ips"] / eager["throughput_ips"]
        lines.append(f"- triton / eager (channels_last): {ratio:.2f}x (bar {BARS['triton_vs_eager']}x: "
                     f"{'met' if ratio >= BARS['triton_vs_eager'] else 'NOT met'})")
    if triton and compile_:
        ratio = triton["throughput_ips"] / compile_["throughput_ips"]
        lines.append(f"- triton / compile (max-autotune): {ratio:.2f}x (bar {BARS['triton_vs_compile']}x: "
                     f"{'met' if ratio >= BARS['triton_vs_compile'] else 'NOT met'})")
    passing = [r for r in rows.values() if (r.get("parity") or {}).get("passed")]
    if passing:
        best = max(passing, key=lambda r: r["throughput_ips"])
        lines.append(f"- best parity-passing row: {best['backend']} {best['throughput_ips']:,.0f} img/s "
                     f"(bar {BARS['best_ips']:,}: {'met' if best['throughput_ips'] >= BARS['best_ips'] else 'NOT met'})")
    if triton:
        p = triton.get("parity") or {}
        lines.append(f"- triton parity: cosine {p.get('cosine', float('nan')):.6f}, top-1 "
                     f"{p.get('top1_agreement', float('nan')):.3f}, passed {p.get('passed')}")
    return lines or ["- no headline row finished"]


def timm_lines(timm: list[dict] | None, ours: dict[str, dict[tuple, dict]]) -> list[str]:
    if not timm:
        return ["timm.json missing: timm was not timed"]
    lines = ["| timm | precision | batch | timm img/s | ours img/s | ours / timm | within 5% |", "|---|---|---:|---:|---:|---:|---|"]
    for t in timm:
        mode = t["compile_mode"] or "eager"
        source = ours["bs256"] if mode == "max-autotune" else ours["sweep"] if mode == "default" else {**ours["sweep"], **ours["bs256"]}
        mine = source.get((t["backend"], t["precision"], t["batch_size"]))
        if mine is None:
            lines.append(f"| {mode} | {t['precision']} | {t['batch_size']} | {t['throughput_ips']:,.0f} | - | - | - |")
            continue
        ratio = mine["throughput_ips"] / t["throughput_ips"]
        lines.append(f"| {mode} | {t['precision']} | {t['batch_size']} | {t['throughput_ips']:,.0f} | "
                     f"{mine['throughput_ips']:,.0f} | {ratio:.3f} | {'yes' if abs(ratio - 1) <= BARS['timm_within'] else 'NO'} |")
    return lines


def layer_lines(report: dict | None) -> list[str]:
    if not report:
        return ["layers.json missing: the per-layer benchmark did not finish"]
    providers = report["providers"]
    lines = [f"{report['device']}", "", "| dtype | conv | x | " + " | ".join(f"{p} ms" for p in providers)
             + " | fused vs others | fused config |", "|---|---|---:|" + "---:|" * len(providers) + "---|---|"]
    for r in report["records"]:
        vs = ", ".join(f"{p} {r[p][0] / r['fused'][0]:.2f}x" for p in providers if p != "fused" and "fused" in r)
        lines.append(f"| {r['dtype']} | {r['shape']} | {len(r['modules'])} | "
                     + " | ".join(f"{r[p][0]:.3f}" for p in providers) + f" | {vs} | {r.get('fused_config') or ''} |")
    lines += ["", "Every conv of one forward pass: " + "; ".join(f"{k} {v:.2f} ms" for k, v in report["totals_ms"].items())]
    return lines


def profile_lines(rows: list[dict] | None) -> list[str]:
    """Each row's layer profile: how much of its profiled wall time is on the model's lines, and
    its slowest lines."""
    if not rows:
        return ["bench-layers.json missing: the layer profiles did not run"]
    lines = [("| backend | precision | batch | wall ms | on lines | unattributed ms | between layers ms | lines | "
              "slowest lines (ms) |"), "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        p = (r.get("profile") or {}).get("layers")
        if not p:
            reason = (r.get("profile") or {}).get("reason") or r.get("error") or r.get("status")
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | | | | | | {reason} |")
            continue
        slowest = sorted(p["lines"].values(), key=lambda line: -line["ms"])[:3]
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {p['wall_ms']:.3f} | "
                     f"{p['attributed_ms'] / p['wall_ms']:.1%} | {p['unattributed_ms']:.3f} | "
                     f"{p['outside_layers_ms']:.3f} | {len(p['lines'])} | "
                     + "; ".join(f"{line['label']} {line['ms']:.3f}" for line in slowest) + " |")
    return lines


def parity_lines(rows: list[dict] | None) -> list[str]:
    """Each row's --parity layers: how many lines, the first outside its tolerance, and its worst
    and last lines' relative L2 (the error's growth from the stem to the logits)."""
    if not rows:
        return ["bench-layers.json missing: the line parity did not run"]
    lines = ["| backend | precision | batch | lines | first outside | worst rel_l2 (line) | last rel_l2 | how |",
             "|---|---|---:|---:|---|---|---:|---|"]
    for r in rows:
        p = (r.get("parity") or {}).get("layers")
        if not p or not p.get("lines"):
            reason = (p or {}).get("reason") or r.get("error") or r.get("status")
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | | | | | {reason} |")
            continue
        figures = p["lines"]
        worst = max(figures, key=lambda f: float("inf") if f["rel_l2"] is None else f["rel_l2"])
        rel = "not finite" if worst["rel_l2"] is None else f"{worst['rel_l2']:.2e}"
        last = "not finite" if figures[-1]["rel_l2"] is None else f"{figures[-1]['rel_l2']:.2e}"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {len(figures)} | "
                     f"{p.get('first_outside') or 'none'} | {rel} ({worst['line']}) | {last} | {p.get('how', '')} |")
    return lines


def main(out: Path) -> int:
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
    log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").exists() else ""
    ours = {"bs256": ok_rows(load(out / "bench-bs256.json")), "sweep": ok_rows(load(out / "bench.json"))}
    tests = re.findall(r"^(?:=+ )?(\d+ (?:passed|failed|error).*?) in [\d.]+s", log, re.M)
    environment = log.split("\n===== ", 1)[0].strip() or "log.txt missing, or without its environment"
    md = ["# GPU check", "", "```", environment, "```", "", "## Steps", "", "| step | outcome | s | command |",
          "|---|---|---:|---|"]
    md += [f"| {s[0]} | {s[1]} | {s[2]} | `{s[3]}` |" for s in steps]
    md += ["", f"Kernel tests: {tests[-1] if tests else 'no pytest summary in log.txt'}", "",
           "## resnet50 fp16 batch 256 (bench-bs256.json)", ""]
    md += headline(ours["bs256"]) + [""] + bench_table(load(out / "bench-bs256.json") or [])
    md += ["", "## timm's resnet50 at the same settings (timm.json)", ""] + timm_lines(load(out / "timm.json"), ours)
    layers = out / "layers.json"
    md += ["", "## Per layer (layers.json)", ""] + layer_lines(json.loads(layers.read_text()) if layers.exists() else None)
    md += ["", "## Layer profiles (bench-layers.json)", ""] + profile_lines(load(out / "bench-layers.json"))
    md += ["", "## Line parity (bench-layers.json)", ""] + parity_lines(load(out / "bench-layers.json"))
    md += ["", "## Requests in flight (bench-streams.json)", ""] + streams_lines(load(out / "bench-streams.json"))
    md += ["", "## Sweep (bench.json)", ""] + (bench_table(load(out / "bench.json")) if load(out / "bench.json") else
                                              ["bench.json missing: the sweep did not run"])
    (out / "summary.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python scripts/gpu_summary.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
