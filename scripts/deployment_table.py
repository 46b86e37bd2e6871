"""The deployment table of docs/deployment.md, generated from a ``python -m bench --json`` file: per
row the artifact it ran, its size on disk, the setup (for aoti the load; for compile the compile),
throughput, and parity against the fp32 model.

    python scripts/deployment_table.py results/cpu/RUN.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import record, report
from resnet_perf.util.cli import Parser, script

KINDS = {".onnx": "ONNX", ".xml": "OpenVINO IR", ".pt2": "AOTInductor package"}


def main() -> None:
    p = Parser(prog="scripts/deployment_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="python -m bench --json files")
    args = p.parse_args()
    rows = [row for run in args.runs for row in record.rows_from_json(record.load(run))]
    print("| backend | precision | streams | artifact | MB on disk | setup s | load s | img/s | cosine | rel_l2 |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.status != "ok":
            continue
        facts = r.runtime or {}
        artifact = KINDS.get(Path(facts.get("model_file", "")).suffix, "the PyTorch model")
        size = facts.get("model_mb")
        cells = [r.backend, report.precision_cell(r), report.streams_cell(r), artifact,
                 "-" if size is None else f"{size:.1f}", f"{r.setup_s:.1f}",
                 "-" if facts.get("load_s") is None else f"{facts['load_s']:.2f}", f"{r.throughput_ips:.1f}",
                 f"{r.parity['cosine']:.5f}", f"{r.parity['rel_l2']:.1e}"]
        print(f"| {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(script("scripts/deployment_table.py", main))
