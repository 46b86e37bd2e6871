"""AOTInductor packages: exported for channels_last inputs with a dynamic batch, proven against the
fp32 model, refused when changed or built for another torch, CPU or GPU (both sides named), run by
the aoti backend (--pt2, or built and cached), its load time beside compile's compile time; the
CUDA loading path checked with what a CPU allows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import export.__main__ as export_cli
from bench.runners.aoti import GIL_LIMIT
from export import aoti
from export.manifest import ManifestError, load_manifest, manifest_path
from tests.bench_runs import bench_rows

SMALL = ["--model", "resnet18", "--image-size", "32"]
RUN = ["--streams", "1", "--warmup", "0", "--iters", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt2")
    assert export_cli.main([*SMALL, "--format", "aoti", "--dynamic-batch", "1:2:4", "--device", "cpu",
                            "--output", str(out)]) == 0
    return out / "resnet18-fp32.pt2"


def bench(capsys, tmp_path, *argv) -> tuple[int, list[dict], str]:
    return bench_rows(capsys, tmp_path, *RUN, "--cache-dir", str(tmp_path / "cache"), *argv)


def edited(package, tmp_path, **target) -> str:
    """A copy of the package whose manifest says it was built for ``target``."""
    copy = tmp_path / package.name
    shutil.copy(package, copy)
    manifest = json.loads(manifest_path(package).read_text())
    manifest["target"].update(target)
    manifest_path(copy).write_text(json.dumps(manifest))
    return str(copy)


@pytest.mark.slow
def test_the_package_is_proven_and_says_what_it_is_tied_to(package):
    manifest = load_manifest(package)
    assert manifest["format"] == "aoti" and manifest["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 32, 32],
                                   "memory_format": "channels_last"}]
    assert manifest["target"] == {"torch": torch.__version__, "device": "cpu", "cpu_isa": aoti.cpu_isa()}
    assert manifest["inductor_configs"] == {"freezing": True, "cpp.dynamic_threads": True}
    assert set(manifest["parity"]["batches"]) == {"1", "4"}
    assert all(p["cosine"] >= 0.9999 for p in manifest["parity"]["batches"].values())
    # The loaded package tells the same story, and runs every batch size of its range.
    loaded = aoti.load(package, torch.device("cpu"))
    assert loaded.get_metadata()["torch_version"] == torch.__version__
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert loaded(x).shape == (3, 1000)


@pytest.mark.slow
def test_bench_runs_a_given_package_and_reports_its_load(capsys, tmp_path, package):
    code, rows, _ = bench(capsys, tmp_path, "--pt2", str(package), "--backend", "aoti,compile")
    assert code == 0
    by = {r["backend"]: r for r in rows}
    row = by["aoti"]
    assert (row["model"], row["batch_size"], row["image_size"]) == ("resnet18", 2, 32)
    assert row["parity"]["passed"] and row["parity"]["cosine"] >= 0.9999
    assert row["note"].startswith("package loaded in ") and "built" not in row["note"]
    assert row["runtime"]["build_s"] is None and row["runtime"]["model_file"] == package.name
    assert by["compile"]["setup_s"] > row["runtime"]["load_s"]  # compiling costs more than loading
    assert not (tmp_path / "cache" / "aoti").exists()


@pytest.mark.slow
def test_bench_builds_caches_and_keeps_one_request_in_flight(capsys, tmp_path):
    argv = (*SMALL, "--backend", "aoti", "--batch-size", "2", "--streams", "1,2")
    code, rows, err = bench(capsys, tmp_path, *argv)
    assert code == 0
    one, two = rows
    assert one["status"] == "ok" and one["parity"]["passed"] and "built in" in one["note"]
    assert two["status"] == "skipped" and GIL_LIMIT in two["error"]
    (cached,) = (tmp_path / "cache" / "aoti").glob("*.pt2")
    assert load_manifest(cached)["target"]["cpu_isa"] == aoti.cpu_isa()
    code, rows, err = bench(capsys, tmp_path, *argv)
    assert code == 0 and "rebuilding" not in err and "built in" not in rows[0]["note"]


@pytest.mark.parametrize(("target", "message"), [
    ({"torch": "2.0.0"}, f"was built with torch 2.0.0, this is torch {torch.__version__}"),
    ({"cpu_isa": ["avx2", "avx10_2"]}, "was built for a CPU with avx2 avx10_2; this CPU lacks avx10_2"),
    ({"device": "cuda"}, "was built for cuda, this run is on cpu"),
])
def test_a_package_for_another_machine_is_refused_naming_both(capsys, tmp_path, package, target, message):
    code, rows, err = bench(capsys, tmp_path, "--pt2", edited(package, tmp_path, **target), "--backend", "aoti")
    assert code == 2 and rows == [] and err.count("\n") == 1 and message in err


def test_a_changed_package_is_refused(capsys, tmp_path, package):
    copy = tmp_path / package.name
    copy.write_bytes(package.read_bytes() + b"\0")
    shutil.copy(manifest_path(package), manifest_path(copy))
    code, _, err = bench(capsys, tmp_path, "--pt2", str(copy), "--backend", "aoti")
    assert code == 2 and err.count("\n") == 1 and "does not match its manifest" in err


def test_another_gpu_is_refused_and_a_cuda_package_loads_on_the_rows_gpu(monkeypatch):
    """No GPU here: the GPU's identity and the C++ loader are stand-ins; what is checked is our
    side, the target comparison and the device index handed to the loader."""
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    monkeypatch.setattr("export.tensorrt.gpu_target", lambda device: h100)
    built = {"artifact": "m.pt2", "target": {"torch": torch.__version__, "device": "cuda",
                                             "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}}}
    with pytest.raises(ManifestError, match="built for NVIDIA A100-SXM4-80GB .* this GPU is NVIDIA H100"):
        aoti.check_target(built, torch.device("cuda", 1))
    aoti.check_target({**built, "target": {**built["target"], "gpu": h100}}, torch.device("cuda", 1))

    calls = []
    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", lambda *args: calls.append(args) or object())
    aoti.load("m.pt2", torch.device("cuda", 1))
    aoti.load("m.pt2", torch.device("cpu"))
    assert [args[4] for args in calls] == [1, -1]  # cuda:1 on device 1, not the first; a CPU package on -1


@pytest.mark.parametrize(("argv", "message"), [
    (["--precision", "int8"], "an AOTInductor package is exported fp32, fp16 or bf16"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16: CPU convolutions in fp16"),
])
def test_export_refuses_what_a_package_is_not_built_in(capsys, tmp_path, argv, message):
    code = export_cli.main([*SMALL, "--format", "aoti", *argv, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "o").exists()


def test_bench_refuses_a_missing_package(capsys, tmp_path):
    code, _, err = bench(capsys, tmp_path, "--pt2", str(tmp_path / "none.pt2"), "--backend", "aoti")
    assert code == 2 and err.count("\n") == 1 and "none.pt2: no such file" in err
