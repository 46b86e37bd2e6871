"""The docs: generated tables match what generates them, and every relative link resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("**/README.md"))]
# [text](target) outside code spans; targets with a scheme are not ours to check.
_LINK = re.compile(r"(?<!`)\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.slow
def test_the_kernel_tables_are_the_committed_reports_own():
    """docs/kernels.md's tables are scripts/aot_tables.py's output on results/aot/, unedited: after a
    new sweep, run it with --write."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "aot_tables.py")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| conv | 128x128x64 w4 s3 |" in proc.stdout  # the table has rows, not only its header
    assert proc.stdout in (ROOT / "docs" / "kernels.md").read_text()


def test_the_readme_results_table_is_the_committed_runs_own():
    """README.md's results table is scripts/readme_table.py's output on the run it names, unedited:
    after pointing it at a newer run, or a change to bench report's Markdown, run it with --write."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_table.py")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| resnet50 | eager | cpu | fp32 | 8 |" in proc.stdout  # the table has rows, not only its header
    assert proc.stdout in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to what is not there: {missing}"
