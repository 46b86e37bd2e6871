"""What the CPU offers, read from cpuinfo: the features in env and in the table's first line, the
int8 and bf16 decisions made from them, and the note on an emulated bf16 row."""

from __future__ import annotations

import json

import pytest

import bench.__main__ as cli
from bench.runners import base
from export import quantize
from resnet_perf.util import cpu

AMX_XEON = "processor\t: 0\nflags\t\t: fpu sse avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def fake(text: str) -> dict[str, bool] | None:
        path = tmp_path / f"cpuinfo-{abs(hash(text))}"  # cpu_flags keeps what it read, by path
        path.write_text(text)
        monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
        return cpu.speed_features(cpu.cpu_flags(str(path)))

    return fake


def test_features_of_an_amx_xeon_and_of_an_avx2_zen3(cpuinfo):
    xeon, zen3 = cpuinfo(AMX_XEON), cpuinfo(ZEN3)
    assert xeon == {"avx2": True, "avx512f": True, "avx_vnni": False, "avx512_vnni": True, "avx512_bf16": True,
                    "amx_bf16": True, "amx_int8": True}
    assert cpu.native_bf16(xeon) and not cpu.native_bf16(zen3)
    assert cpu.describe(zen3) == "ISA: avx2; lacks avx512f, avx_vnni, avx512_vnni, avx512_bf16, amx_bf16, amx_int8"
    assert cpu.describe(xeon) == "ISA: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8; lacks avx_vnni"


def test_no_flags_is_said_so(tmp_path):
    assert cpu.cpu_flags(str(tmp_path / "absent")) == frozenset()
    assert cpu.speed_features(frozenset()) is None
    assert cpu.describe(None).startswith("ISA features unknown")
    assert not cpu.native_bf16({})


def test_int8_weights_follow_the_cpu(cpuinfo, monkeypatch):
    for text, bits in ((AMX_XEON, 8), (ZEN3, 7)):
        monkeypatch.setattr(quantize, "speed_features", lambda text=text: cpuinfo(text))
        assert quantize.weight_bits("onnxruntime") == bits and quantize.weight_bits("tensorrt") == 8


@pytest.mark.slow
def test_the_run_records_the_features_and_prints_them_first(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(base, "native_bf16", lambda: False)
    json_path = tmp_path / "run.json"
    code = cli.main(["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "1", "--iters", "1", "--warmup",
                     "0", "--backend", "eager", "--device", "cpu", "--precision", "fp32,bf16", "--threads", "2",
                     "--json", str(json_path)])
    out = capsys.readouterr().out
    document = json.loads(json_path.read_text())
    assert code == 0
    assert document["env"]["cpu_features"] == cpu.speed_features()
    assert out.splitlines()[0] == f"{document['env']['cpu']}, {cpu.describe(cpu.speed_features())}; 2 threads"
    fp32, bf16 = document["results"]
    assert fp32["note"] is None and bf16["note"] == "emulated bf16: no avx512_bf16 or amx_bf16 on this CPU"
