"""scripts/gpu_check.sh, the one command prepared for a lent GPU machine: its dry run (the same steps
on CPU, Triton's interpreter, tiny sizes) here, so that the script cannot rot between GPU loans,
and its summary against GPU-shaped results, since the real ones only exist on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_summary  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    return proc, out


@pytest.mark.slow
def test_the_dry_run_runs_every_step(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stderr + (out / "log.txt").read_text()[-3000:]
    summary = (out / "summary.md").read_text()
    for step in ("bench-bs256", "layers", "bench-layers", "bench-streams", "bench-sweep"):
        assert f"| {step} | ok |" in summary, summary
    assert "| timm-bs256 | skipped |" in summary  # timm is not installed here
    # What the suite runs already (tests/test_aot.py, tests/test_fused_conv2d.py), the dry run does not repeat.
    assert "| warm-cache | skipped | 0 | `the test suite compiles for sm_90" in summary
    assert "| kernel-tests | skipped | 0 | `the test suite runs them" in summary


def test_the_dry_run_leaves_few_files_that_parse(dry_run):
    _, out = dry_run
    files = sorted(p.name for p in out.iterdir())
    # The device tool returns at most 8 files from a run.
    assert files == ["bench-bs256.json", "bench-layers.json", "bench-streams.json", "bench.json", "layers.json", "log.txt",
                     "summary.md"]
    assert (out / "log.txt").read_text().startswith("command: scripts/gpu_check.sh --dry-run")
    streams = json.loads((out / "bench-streams.json").read_text())["results"]
    assert [r["streams_asked"] for r in streams] == [1, "auto"] and streams[1]["streams_how"]["tried_ips"]
    rows = json.loads((out / "bench-bs256.json").read_text())["results"]
    assert {(r["backend"], r["status"], r["parity"]["passed"]) for r in rows} == {("eager", "ok", True), ("triton", "ok", True)}
    layers = json.loads((out / "layers.json").read_text())
    assert layers["dry_run"] and layers["records"][0]["fused_max_err"] < 1e-4
    [profiled] = json.loads((out / "bench-layers.json").read_text())["results"]
    assert len(profiled["profile"]["layers"]["lines"]) == 23  # resnet18's 20 convs, its pools and fc
    assert len(profiled["parity"]["layers"]["lines"]) == 23 and profiled["parity"]["layers"]["first_outside"] is None


def row(backend: str, ips: float, passed: bool = True, batch: int = 256) -> dict:
    return {"backend": backend, "precision": "fp16", "batch_size": batch, "status": "ok", "throughput_ips": ips,
            "latency_ms": {"p50": batch * 1e3 / ips}, "note": None,
            "parity": {"cosine": 0.9999, "top1_agreement": 1.0, "passed": passed}}


def test_the_summary_checks_the_headline_bars(tmp_path):
    (tmp_path / "steps.tsv").write_text("bench-bs256\tok\t120\tpython -m bench ...\n")
    (tmp_path / "bench-bs256.json").write_text(json.dumps({"results": [
        row("eager", 20_000), row("compile", 27_000), row("triton", 27_500)]}))
    (tmp_path / "timm.json").write_text(json.dumps({"results": [
        {**row("eager", 20_500), "compile_mode": None}, {**row("compile", 30_000), "compile_mode": "max-autotune"}]}))
    assert gpu_summary.main(tmp_path) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "triton / eager (channels_last): 1.38x (bar 1.3x: met)" in summary
    assert "triton / compile (max-autotune): 1.02x (bar 1.0x: met)" in summary
    assert "best parity-passing row: triton 27,500 img/s (bar 25,000: met)" in summary
    assert "| eager | fp16 | 256 | 20,500 | 20,000 | 0.976 | yes |" in summary
    assert "| max-autotune | fp16 | 256 | 30,000 | 27,000 | 0.900 | NO |" in summary
    assert "layers.json missing" in summary and "bench.json missing" in summary
    assert "bench-layers.json missing" in summary
    assert "bench-layers.json missing: the line parity did not run" in summary


def test_the_summary_shows_each_layer_profile_or_why_there_is_none(tmp_path):
    (tmp_path / "steps.tsv").write_text("")
    lines = {"layer1.0.conv1": {"label": "layer1.0.conv1+bn1+relu", "ms": 0.5, "members": []},
             "fc": {"label": "fc", "ms": 0.1, "members": []}}
    profiled = {**row("eager", 20_000, batch=64), "profile": {"layers": {
        "wall_ms": 4.0, "attributed_ms": 3.6, "unattributed_ms": 0.2, "outside_layers_ms": 0.2, "lines": lines}}}
    profiled["parity"]["layers"] = {"how": "forward hooks on every module", "first_outside": "layer2.0.conv1", "lines": [
        {"line": "conv1", "cosine": 1.0, "rel_l2": 4e-4, "finite": True},
        {"line": "layer2.0.conv1", "cosine": None, "rel_l2": None, "finite": False},
        {"line": "fc", "cosine": 0.99, "rel_l2": 0.2, "finite": True}]}
    failed = {**row("compile", 25_000, batch=64), "profile": {"layers": None, "reason": "no CompiledFxGraph scope"}}
    failed["parity"]["layers"] = {"lines": [], "reason": "compile: int8 (PT2E) gives none"}
    (tmp_path / "bench-layers.json").write_text(json.dumps({"results": [profiled, failed]}))
    gpu_summary.main(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert ("| eager | fp16 | 64 | 3 | layer2.0.conv1 | not finite (layer2.0.conv1) | 2.00e-01 | "
            "forward hooks on every module |") in summary
    assert "| compile | fp16 | 64 | | | | | compile: int8 (PT2E) gives none |" in summary
    assert "| eager | fp16 | 64 | 4.000 | 90.0% | 0.200 | 0.200 | 2 | layer1.0.conv1+bn1+relu 0.500; fc 0.100 |" in summary
    assert "| compile | fp16 | 64 | | | | | | no CompiledFxGraph scope |" in summary


def test_the_summary_shows_each_rows_streams_and_how_auto_chose(tmp_path):
    (tmp_path / "steps.tsv").write_text("")
    (tmp_path / "log.txt").write_text("command: scripts/gpu_check.sh out\ngpu: NVIDIA H100\n\n===== warm-cache\n")
    one = {**row("eager", 9_000, batch=64), "streams": 1, "streams_asked": 1, "streams_how": {
        "kept": "1 CUDA stream(s), calls enqueued ahead", "chosen_by": "--streams", "tried_ips": None}}
    auto = {**row("eager", 9_900, batch=64), "streams": 2, "streams_asked": "auto", "streams_how": {
        "kept": "2 CUDA stream(s), calls enqueued ahead", "chosen_by": "the fastest of 1, 2, 4",
        "tried_ips": {"1": 9000.0, "2": 9800.0, "4": 9700.0}}}
    (tmp_path / "bench-streams.json").write_text(json.dumps({"results": [one, auto]}))
    gpu_summary.main(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# GPU check\n\n```\ncommand: scripts/gpu_check.sh out\ngpu: NVIDIA H100\n```")
    assert "| eager | fp16 | 64 | 1 | 9,000 |" in summary
    assert ("| eager | fp16 | 64 | 2 (auto) | 9,900 | 6.465 | nan | 2 CUDA stream(s), calls enqueued ahead | "
            "the fastest of 1, 2, 4 (1: 9,000, 2: 9,800, 4: 9,700 img/s) | True |") in summary


def test_the_summary_says_when_a_bar_is_missed(tmp_path):
    (tmp_path / "steps.tsv").write_text("")
    (tmp_path / "bench-bs256.json").write_text(json.dumps({"results": [
        row("eager", 20_000), row("triton", 21_000), row("compile", 40_000, passed=False)]}))
    gpu_summary.main(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "1.05x (bar 1.3x: NOT met)" in summary and "0.53x (bar 1.0x: NOT met)" in summary
    # The failing compile row is faster, but only a row that passed parity counts as the best.
    assert "best parity-passing row: triton 21,000 img/s (bar 25,000: NOT met)" in summary


def test_timm_timing_says_in_one_line_what_it_lacks():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "timm_timing.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nothing measured" in proc.stderr and "Traceback" not in proc.stderr
