"""kernels.aot and python -m resnet_perf.aot: the fused kernels compiled for sm_90 (Hopper) on this CPU machine, with Triton's own
compiler and ptxas, and held to the rules of the autotune space: every config compiles, spills
nothing, fits the shared memory a block may use, issues wgmma for fp16/bf16, and every conv kernel
is one loop. These are compiled facts; what they cost in time is for a GPU to measure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kernels import aot
from kernels.fused_conv2d import CONFIGS, KERNELS, in_space

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "results" / "aot" / "resnets-sm90.json"
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def run_aot(*args: str) -> subprocess.CompletedProcess:
    # The compiler needs the real kernels, which TRITON_INTERPRET (set for the other tests) replaces.
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run([sys.executable, "-m", "resnet_perf.aot", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


def configs_of(records: list[dict]) -> set[tuple[str, str, str]]:
    return {(r["path"], r["dtype"], r["config"]) for r in records}


def space() -> set[tuple[str, str, str]]:
    # gemm (no TMA) is the sm_80 path; on sm_90 every ResNet 1x1 takes gemm_tma, whose space holds it.
    return {(path, name, aot.config_name(c)) for path in ("gemm_tma", "conv", "few_channels")
            for name, dtype in DTYPES.items() for c in CONFIGS[path] if in_space(path, c, dtype)}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    """Each config once, on the compile class where the committed full sweep shows it peaking in
    registers, plus every conv class of the five ResNets once: 70 compiles, two processes at a time
    (docs/kernels.md says how long it took, where)."""
    out = tmp_path_factory.mktemp("aot") / "peaks.json"
    proc = run_aot("--model", ",".join(MODELS), "--dtype", ",".join(DTYPES), "--peaks-of", str(REPORT),
                   "--jobs", "2", "--json", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(out.read_text())["records"]


def test_the_committed_sweep_covers_todays_autotune_spaces_on_every_resnet():
    """results/aot/resnets-sm90.json is the full sweep the spaces were pruned from: a config added
    or changed since must be swept again (python -m resnet_perf.aot --json ...)."""
    report = json.loads(REPORT.read_text())
    assert tuple(report["models"]) == MODELS and set(report["batch_sizes"]) == {256} and report["image_size"] == 224
    assert configs_of(report["records"]) == space()
    assert all(not aot.failures(r) for r in report["records"])


@pytest.mark.parametrize("path", list(CONFIGS))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_the_autotuner_tries_what_in_space_keeps(path, dtype):
    """The kernels' autotuners prune by the same predicate kernels.aot sweeps by."""
    kept = KERNELS[path].early_config_prune(CONFIGS[path], {"x_ptr": torch.empty(1, dtype=dtype)})
    assert kept == [c for c in CONFIGS[path] if in_space(path, c, dtype)] and kept
    if path == "conv" and dtype == torch.float32:
        assert {aot.config_name(c) for c in CONFIGS[path]} - {aot.config_name(c) for c in kept} == {
            "128x128x32 w4 s3", "128x128x64 w4 s3"}


@pytest.mark.slow
def test_every_config_compiles_for_sm90_without_spills(compiled):
    assert space() <= configs_of(compiled)
    problems = [(r["path"], r["dtype"], r["config"], r["shapes"][0], aot.failures(r)) for r in compiled if aot.failures(r)]
    assert not problems
    for r in compiled:
        assert r["shared_bytes"] <= 227 * 1024 and r["spill_store_bytes"] == r["spill_load_bytes"] == 0
        assert r["local_memory_ops"] == 0  # what a spill would compile to
        if r["dtype"] != "fp32":
            assert r["mma"] == "HGMMA", r


def test_every_conv_class_of_every_resnet_is_compiled(compiled):
    report = json.loads(REPORT.read_text())
    classes = {(r["path"], r["dtype"], r["shapes"][0]) for r in report["records"]}
    assert classes <= {(r["path"], r["dtype"], r["shapes"][0]) for r in compiled}


def test_every_kernel_reduces_in_one_pipelined_loop(compiled):
    """The windowed kernel loops once over (kh, kw, channel block), not once per tap (the stem's
    seven steps may also be unrolled whole), with shared memory for at least two stages of tiles."""
    for r in compiled:
        assert r["loops"] == 1 or (r["path"] == "few_channels" and r["loops"] == 0), r
        assert r["operand_buffers"] >= 2, r  # pipelined: the next tiles load while these multiply


def test_operands_load_asynchronously_in_16_byte_vectors(compiled):
    for r in compiled:
        if r["path"] == "conv" or (r["path"] == "gemm_tma" and "tma" not in r["config"]):
            assert r["loads"].get("LDGSTS 16B", 0) > 0, r
        if "tma" in r["config"]:
            assert r["loads"].get("TMA (UTMALDG)", 0) > 0, r
        if r["path"] == "few_channels":  # 4-channel rows: 8-byte (fp16) or 16-byte (fp32) async copies
            assert r["loads"].get("LDGSTS 8B", 0) + r["loads"].get("LDGSTS 16B", 0) > 0, r


@pytest.mark.slow
def test_the_sm80_path_compiles_too(tmp_path):
    """Before Hopper: no TMA (the plain gemm path), and mma.sync (HMMA) instead of wgmma."""
    proc = run_aot("--model", "resnet50", "--image-size", "32", "--batch-size", "2", "--dtype", "fp16",
                   "--target", "sm_80", "--path", "gemm", "--jobs", "2", "--json", str(tmp_path / "sm80.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    records = json.loads((tmp_path / "sm80.json").read_text())["records"]
    assert {r["config"] for r in records} == {aot.config_name(c) for c in CONFIGS["gemm"]}
    assert all(r["mma"] == "HMMA" and not aot.failures(r, arch=80) for r in records)


@pytest.mark.slow
def test_a_path_no_conv_takes_is_a_usage_error():
    proc = run_aot("--model", "resnet18", "--image-size", "32", "--batch-size", "2", "--path", "gemm")
    assert proc.returncode == 2
    assert "no convolution of resnet18 takes the gemm path" in proc.stderr


SASS = """Function:kernel
--:-:-:-:1\tLDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64], P0;
LBB0:
--:-:-:-:1\tHGMMA.64x64x16.F32 R56, gdesc[UR8].tnspB, R56;
--:-:-:-:1\t@!P6 LDG.E.64 R2, desc[UR4][R4.64];
--:-:-:-:5\t@!P6 BRA LBB0;
--:-:-:-:1\tSTG.E.128 desc[UR4][R6.64], R8;
--:-:-:-:1\t@!P0 BRA LBB2;
--:-:-:-:1\tEXIT;
LBB2:
--:-:0:-:2\tSYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR12+0x18000], R5;
--:-:-:-:1\t@!P0 BRA LBB2;
--:-:-:-:1\tBRA LBB0;
LBB1:
--:-:-:Y:0\tBRA LBB1;
"""


def test_sass_facts_reads_instructions_loops_and_widths():
    facts = aot._sass_facts(SASS)
    assert facts["mma"] == "HGMMA" and facts["mma_count"] == 1
    assert facts["loads"] == {"LDG 8B": 1, "LDGSTS 16B": 1}
    assert facts["stores"] == {"STG 16B": 1}
    # Not loops: the forward branch, the barrier wait, the jump back from after EXIT, the last self-branch.
    assert facts["loops"] == 1
    assert facts["sass_instructions"] == 11


def test_failures_name_each_rule():
    ok = {"compiled": True, "dtype": "fp16", "spill_store_bytes": 0, "spill_load_bytes": 0, "shared_bytes": 1024,
          "mma": "HGMMA"}
    assert aot.failures(ok) == []
    assert aot.failures({**ok, "spill_store_bytes": 8}) == ["spills 8 B stores / 0 B loads"]
    assert aot.failures({**ok, "shared_bytes": 228 * 1024}) == ["needs 228 KB shared memory (limit 227 KB)"]
    assert aot.failures({**ok, "mma": "HMMA"}) == ["no wgmma (HGMMA): HMMA"]
    assert aot.failures({**ok, "mma": "HMMA"}, arch=80) == []
    assert aot.failures({"compiled": False, "error": "boom"}) == ["does not compile: boom"]


@pytest.mark.parametrize(("args", "message"), [
    (["--dtype", "fp64"], "--dtype 'fp64': choose from fp32, fp16, bf16"),
    (["--path", "winograd"], "--path 'winograd': choose from gemm, gemm_tma, conv, few_channels"),
    (["--peaks-of", "/nonexistent.json"], "--peaks-of '/nonexistent.json': no such file"),
    (["--peaks-of", ""], "--peaks-of '': no such file"),
    (["--peaks-of", str(ROOT / "README.md")], "README.md: not a resnet_perf.aot --json report (JSONDecodeError"),
    (["--peaks-of", str(ROOT / "pyproject.toml")], "not a resnet_perf.aot --json report"),
    (["--peaks-of", str(ROOT / "results" / "cpu" / "2026-11-29-xeon-avx512-2core-resnet50-bs8.json")],
     "not a resnet_perf.aot --json report: it holds no compile records"),
    (["--target", "sm_80", "--path", "gemm_tma"], "--path gemm_tma: TMA needs sm_90; on sm_80 the 1x1s take the gemm"),
    (["--json", "/dev/null"], "--json /dev/null: is a character device"),
    (["--json", "/tmp"], "--json /tmp: is a directory"),
    (["--json", "/tmp/new/"], "--json /tmp/new/: names a folder; give a file path"),
    (["--model", "resnet18,vgg16"], "--model 'vgg16': choose from resnet18, resnet34, resnet50, resnet101, resnet152"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = run_aot(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # it has ended since pgrep saw it
        return ""


@pytest.mark.slow
def test_a_stop_signal_ends_the_compile_processes_too(tmp_path):
    """SIGTERM while compiling: exit 143 with one line, no report, and no compile process or
    temporary file left (Triton removes its .ptx and ptxas log only when a compile completes)."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TRITON_INTERPRET": "0", "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-m", "resnet_perf.aot", "--model", "resnet18", "--dtype", "fp16,bf16",
                             "--jobs", "2", "--json", str(tmp_path / "r.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    workers: list[str] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [c for c in children if "spawn_main" in _cmdline(c)]
    assert len(workers) == 2, "the compile processes never started"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == ("python -m resnet_perf.aot: stopped by SIGTERM; its compile processes "
                                               "ended, nothing written") and "Traceback" not in stderr
    time.sleep(1)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    assert not (tmp_path / "r.json").exists()
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor")]


def test_the_interpreter_is_refused_in_one_line():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "resnet_perf.aot"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "TRITON_INTERPRET=1 is set" in proc.stderr and "Traceback" not in proc.stderr
