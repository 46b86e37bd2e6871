"""Issue 16's signal class: SIGTERM and SIGHUP end a run as Ctrl-C does (finished rows kept, one
line saying so, exit 128 + signal), a stop during start-up exits quietly, and the line names only
files that exist. In-process through the real handlers (signal.raise_signal), and end to end
through `python -m bench` and `python -m export` processes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.__main__ as cli
import export.__main__ as export_cli
from bench.runners import RUNNERS
from bench.runners.eager import EagerRunner

RUN = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--warmup", "0", "--iters", "2", "--device", "cpu"]


class SignalledRunner(EagerRunner):
    """Eager, but the signal ``signum`` arrives while it prepares its ``at``-th row."""

    name = "signalled"
    signum, at, prepared = signal.SIGTERM, 2, 0

    def prepare_impl(self):
        SignalledRunner.prepared += 1
        if SignalledRunner.prepared == self.at:
            signal.raise_signal(self.signum)
        super().prepare_impl()


@pytest.fixture
def signalled(monkeypatch):
    def arm(signum: int, at: int) -> None:
        monkeypatch.setattr(SignalledRunner, "signum", signum)
        monkeypatch.setattr(SignalledRunner, "at", at)
        monkeypatch.setattr(SignalledRunner, "prepared", 0)
        monkeypatch.setitem(RUNNERS, SignalledRunner.name, SignalledRunner)

    return arm


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_the_run_like_ctrl_c(capsys, tmp_path, signalled, signum):
    signalled(signum, at=2)
    json_path = tmp_path / "run.json"
    # As this process had them (a shell that starts it in the background ignores SIGINT; nohup, SIGHUP).
    handlers = signal.getsignal(signum), signal.getsignal(signal.SIGINT)
    code = cli.main([*RUN, "--backend", "signalled", "--batch-size", "1,2,3", "--json", str(json_path)])
    out, err = capsys.readouterr()
    name = signal.Signals(signum).name
    assert code == 128 + signum
    assert err == (f"python -m bench: interrupted by {name} after 1 row(s); {json_path} holds them "
                   f"(--resume {json_path} runs the rest)\n")
    assert [r["batch_size"] for r in json.loads(json_path.read_text())["results"]] == [1]
    assert "resnet18" in out  # the table of the finished rows is still printed
    assert (signal.getsignal(signum), signal.getsignal(signal.SIGINT)) == handlers  # put back after the run


@pytest.mark.slow
def test_a_stop_before_the_first_row_names_no_file(capsys, tmp_path, signalled):
    signalled(signal.SIGTERM, at=1)
    json_path = tmp_path / "run.json"
    code = cli.main([*RUN, "--backend", "signalled", "--batch-size", "1", "--json", str(json_path)])
    assert code == 143 and not json_path.exists()
    assert capsys.readouterr().err == "python -m bench: interrupted by SIGTERM after 0 row(s)\n"


@pytest.mark.slow
def test_a_stop_before_the_first_row_of_a_resumed_run_names_the_file_it_kept(capsys, tmp_path, signalled, monkeypatch):
    json_path = tmp_path / "run.json"
    assert cli.main([*RUN, "--backend", "eager", "--batch-size", "1", "--json", str(json_path)]) == 0
    signalled(signal.SIGINT, at=1)
    code = cli.main([*RUN, "--backend", "eager,signalled", "--batch-size", "1", "--resume", str(json_path)])
    err = capsys.readouterr().err
    assert code == 130 and err == (f"python -m bench: interrupted by SIGINT after 1 row(s); {json_path} holds them "
                                   f"(--resume {json_path} runs the rest)\n")


def test_a_stop_while_resolving_exits_quietly(capsys, monkeypatch):
    def build_model(*args, **kwargs):
        signal.raise_signal(signal.SIGHUP)

    monkeypatch.setattr(cli.resnet_perf, "build_model", build_model)
    code = cli.main([*RUN, "--backend", "eager", "--weights", __file__])
    assert code == 129 and capsys.readouterr().err == "python -m bench: interrupted by SIGHUP\n"


def test_a_stop_during_export_leaves_nothing(capsys, tmp_path, monkeypatch):
    def export_onnx(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(export_cli, "export_onnx", export_onnx)
    out = tmp_path / "engines"
    code = export_cli.main(["--model", "resnet18", "--image-size", "32", "--format", "onnx", "--output", str(out)])
    assert code == 143
    assert capsys.readouterr().err == "python -m export: interrupted by SIGTERM; nothing was written\n"
    assert list(out.iterdir()) == []


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "0"})


@pytest.mark.slow
def test_sigterm_to_a_real_run_keeps_its_rows(tmp_path):
    json_path = tmp_path / "run.json"
    process = start("-m", "bench", *RUN, "--backend", "eager", "--batch-size", "1,2,4,8,16,32,64,128",
                    "--iters", "50", "--json", str(json_path))
    deadline = time.monotonic() + 120
    while not json_path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    rows = json.loads(json_path.read_text())["results"]
    assert process.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip() == (f"python -m bench: interrupted by SIGTERM after {len(rows)} row(s); {json_path} holds "
                           f"them (--resume {json_path} runs the rest)")
    assert 1 <= len(rows) < 8 and all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize(("module", "signum"), [("bench", signal.SIGINT), ("export", signal.SIGTERM)])
def test_a_stop_during_start_up_exits_quietly(tmp_path, module, signum):
    """Sent while the process imports torch (seconds); a later arrival ends it the same way."""
    argv = ["--model", "resnet18", "--image-size", "32"]
    argv += ["--backend", "eager"] if module == "bench" else ["--format", "onnx", "--output", str(tmp_path / "out")]
    process = start("-m", module, *argv)
    time.sleep(0.5)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert not list(Path(tmp_path).rglob("*.onnx"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlperf_loadgen") is None, reason="MLPerf LoadGen is not installed")
def test_sigterm_during_a_loadgen_run_ends_it_within_seconds(tmp_path):
    """Raised in LoadGen's frames, the stop crashed the process (SIGSEGV); deferred to the run's end,
    it would wait out the rest of a 60 s run."""
    process = start("-m", "bench", *RUN, "--backend", "eager", "--batch-size", "2", "--scenario", "server",
                    "--target-qps", "20", "--duration", "60", "--json", str(tmp_path / "run.json"))
    time.sleep(15)  # start-up, the reference and parity, then into the LoadGen run
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 15, "the LoadGen run was waited out"
    assert process.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "python -m bench: interrupted by SIGTERM after 0 row(s)"
