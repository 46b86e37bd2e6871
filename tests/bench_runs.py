"""Running ``python -m bench`` in-process the way the end-to-end tests read it: the exit status, the
rows of its --json file, and what it said on stderr."""

from __future__ import annotations

import json

import bench.__main__ as cli


def bench_rows(capsys, tmp_path, *argv: str) -> tuple[int, list[dict], str]:
    """``python -m bench ARGV --json tmp_path/run.json``: its exit status, the rows of that file (none
    where the run wrote none, as a refused one does) and its stderr."""
    json_path = tmp_path / "run.json"
    code = cli.main([*argv, "--json", str(json_path)])
    err = capsys.readouterr().err
    rows = json.loads(json_path.read_text())["results"] if json_path.exists() else []
    return code, rows, err
