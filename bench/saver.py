"""The run's files kept current as it goes: its JSON and CSV written after every row."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.record import Row, row_key, to_csv, to_json
from resnet_perf.util.atomic import write_text
from resnet_perf.util.cli import one_line

if TYPE_CHECKING:
    from bench.plan import Plan


class Saver:
    """Writes the run's JSON and CSV, each atomically, after every row, so that a crash or Ctrl-C
    loses no finished one. The rows of a --resume file that are not (yet) among the run's are
    written after them: a rerun with a narrower plan never drops a measured row.

    A file that cannot be written (a full disk, an I/O error) is reported in one line, once per
    cause; the run goes on, the file keeps its last complete version (the rename never happened),
    and ``failed`` tells main to end with exit 1."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.saved: dict[Path, int] = {}  # rows in each file's last complete version of this run
        self.failed: dict[Path, str] = {}  # why each file's latest write failed

    def __call__(self, rows: list[Row]) -> None:
        named = {row_key(r) for r in rows}
        rows = rows + [r for key, r in self.plan.resumed.items() if key not in named]
        views = ((self.plan.outputs.json, lambda: to_json(rows, self.plan.env)),
                 (self.plan.outputs.csv, lambda: to_csv(rows)))
        for path, render in views:
            if path is None:
                continue
            try:
                write_text(path, render())
            except OSError as exc:
                cause = exc.strerror or one_line(exc)
                if self.failed.get(path) != cause:
                    print(f"python -m bench: could not write {path} ({cause}); the run goes on", file=sys.stderr)
                self.failed[path] = cause
            else:
                self.saved[path] = len(rows)
                self.failed.pop(path, None)

    def report_failures(self) -> None:
        """What each file that could not be written last holds."""
        for path, cause in self.failed.items():
            if path in self.saved:
                held = f"it holds the {self.saved[path]} row(s) of its last complete write"
            else:
                held = "it was not written in this run" + (", and holds what it held before" if path.exists() else "")
            print(f"python -m bench: the last write of {path} failed ({cause}): {held}", file=sys.stderr)
