"""The scripts beside the commands: bad input is one line and exit 2, as for the commands, and the
timing crosscheck runs (it once failed on every backend, on a renamed runner attribute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.parametrize(("name", "args", "message"), [
    ("crosscheck_timing.py", ["--backend", "nope"], "--backend 'nope': choose from eager"),
    ("crosscheck_timing.py", ["--streams", "0"], "argument --streams: '0' is not a positive integer"),
    ("int8_flavours.py", ["--rounds", "0"], "argument --rounds: '0' is not a positive integer"),
    ("int8_flavours.py", ["--seconds", "nan"], "argument --seconds: 'nan' is not a positive, finite number"),
    ("deployment_table.py", ["nope.json"], "nope.json: not a readable JSON file"),
])
def test_bad_input_is_one_line_and_exit_2(name, args, message):
    proc = script(name, *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_the_timing_crosscheck_runs_and_leaves_no_cache(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "crosscheck_timing.py"), "--model", "resnet18",
                           "--image-size", "32", "--batch-size", "2", "--iters", "2", "--rounds", "1", "--streams", "1",
                           "--backend", "eager"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].split()[:3] == ["eager", "fp32", "1"]
    assert not list(tmp_path.glob("crosscheck-*"))


def test_a_stop_signal_unwinds_a_script_and_its_temporary_folders(capsys, tmp_path):
    """A script's temporary folder (int8_flavours builds 68 MB of models in one) is removed when a
    SIGTERM stops it, as the commands' are."""
    import signal
    import tempfile

    from resnet_perf.util.cli import script as run_script

    made = []

    def main():
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            made.append(folder)
            signal.raise_signal(signal.SIGTERM)

    assert run_script("scripts/x.py", main) == 143
    assert capsys.readouterr().err == "scripts/x.py: interrupted by SIGTERM\n"
    assert made and not Path(made[0]).exists()
