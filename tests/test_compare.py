"""python -m bench compare: the statistics on synthetic samples (no change, noise only, a real
slowdown), the verdicts, and the command's exit status as a CI gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench.__main__ as cli
from bench.compare import bootstrap_ratio, judge
from bench.record import SCHEMA, Row
from bench.timing import summarize


def samples(mean_ms: float, noise: float, n: int = 50, seed: int = 0) -> list[float]:
    """Per-call latencies around ``mean_ms`` with relative normal noise ``noise``."""
    return list(np.random.default_rng(seed).normal(mean_ms, noise * mean_ms, n))


def row(backend: str, latencies: list[float], status: str = "ok", passed: bool = True, batch: int = 8) -> dict:
    """A row as --json writes it."""
    parity = {"passed": passed, "cosine": 1.0, "rel_l2": 0.0, "top1_agreement": 1.0, "distinct_top1": 1.0}
    record = {"model": "resnet18", "backend": backend, "device": "cpu", "precision": "fp32", "batch_size": batch,
              "image_size": 32, "scenario": "offline", "status": status, "error": None if status == "ok" else "boom",
              "samples_ms": latencies if status == "ok" else [], "parity": parity if status == "ok" else None}
    return {**record, **summarize(latencies, batch)} if status == "ok" else record


def measured(*args, **kwargs) -> Row:
    return Row(**row(*args, **kwargs))


def test_identical_samples_give_a_ratio_of_one():
    s = np.asarray(samples(10.0, 0.03))
    ratio, low, high = bootstrap_ratio(s, s.copy())
    assert ratio == pytest.approx(1.0) and low < 1.0 < high


@pytest.mark.parametrize("seed", range(10))
def test_noise_only_is_not_flagged(seed):
    base, new = measured("eager", samples(10.0, 0.03, seed=seed)), measured("eager", samples(10.0, 0.03, seed=100 + seed))
    assert judge(base, new, 0.05).verdict == "unchanged"


@pytest.mark.parametrize("seed", range(10))
def test_a_ten_percent_slowdown_with_normal_noise_is_flagged(seed):
    base, new = measured("eager", samples(10.0, 0.03, seed=seed)), measured("eager", samples(11.0, 0.03, seed=100 + seed))
    change = judge(base, new, 0.05)
    assert change.verdict == "regression"
    assert change.low > 1.05 and change.ratio == pytest.approx(1.10, abs=0.02)


def test_a_slowdown_the_noise_could_explain_is_not_flagged():
    """Ten samples with 40% noise: a 10% difference is inside the interval, so no verdict either way."""
    base, new = measured("eager", samples(10.0, 0.4, n=10, seed=1)), measured("eager", samples(11.0, 0.4, n=10, seed=2))
    change = judge(base, new, 0.05)
    assert change.verdict == "unchanged" and change.low < 1.05 < change.high


def test_a_speedup_is_an_improvement_and_a_broken_backend_a_failure():
    base = measured("eager", samples(10.0, 0.03))
    assert judge(base, measured("eager", samples(8.0, 0.03, seed=5)), 0.05).verdict == "improvement"
    assert judge(base, measured("eager", [], status="failed"), 0.05).verdict == "failed"
    assert judge(base, measured("eager", samples(10.0, 0.03), passed=False), 0.05).verdict == "failed"


def write_run(path, rows, settings=None):
    env = {} if settings is None else {"settings": settings}
    path.write_text(json.dumps({"schema": SCHEMA, "env": env, "results": rows}))
    return str(path)


def test_exit_status_is_a_ci_gate(capsys, tmp_path):
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03)), row("onnxruntime", samples(5.0, 0.03))])
    same = write_run(tmp_path / "same.json", [row("eager", samples(10.0, 0.03, seed=7)),
                                              row("onnxruntime", samples(5.0, 0.03, seed=8))])
    slower = write_run(tmp_path / "slower.json", [row("eager", samples(10.0, 0.03, seed=7)),
                                                  row("onnxruntime", samples(5.5, 0.03, seed=8))])
    assert cli.main(["compare", base, same]) == 0
    assert "0 regression(s) among 2 compared row(s)" in capsys.readouterr().out
    assert cli.main(["compare", base, slower]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s) among 2 compared row(s)" in out and "regression" in out
    # A looser threshold lets the 10% through.
    assert cli.main(["compare", base, slower, "--threshold", "0.2"]) == 0


def test_runs_asked_for_other_settings_say_so(capsys, tmp_path):
    """Rows match by key, but a run with layers kept in fp32 (or other timing) measured another thing."""
    settings = {"seed": 0, "iters": 50}
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03))], settings)
    same = write_run(tmp_path / "same.json", [row("eager", samples(10.0, 0.03, seed=7))], settings)
    kept = write_run(tmp_path / "kept.json", [row("eager", samples(10.0, 0.03, seed=7))],
                     {**settings, "iters": 20, "keep_fp": ["fc"]})
    assert cli.main(["compare", base, same]) == 0
    assert "other settings" not in capsys.readouterr().out
    assert cli.main(["compare", base, kept]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the runs were asked for other settings: iters 50 -> 20; keep_fp None -> ['fc']" in out


def test_drift_common_to_a_run_cancels_relative_to_a_backend(capsys, tmp_path):
    """A machine 30% slower on the second day: every row slower, no backend slower than the others."""
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03)), row("onnxruntime", samples(5.0, 0.03))])
    drifted = write_run(tmp_path / "new.json", [row("eager", samples(13.0, 0.03, seed=3)),
                                                row("onnxruntime", samples(6.5, 0.03, seed=4))])
    assert cli.main(["compare", base, drifted]) == 1
    capsys.readouterr()
    assert cli.main(["compare", base, drifted, "--relative-to", "eager"]) == 0
    assert "0 regression(s) among 1 compared row(s)" in capsys.readouterr().out


@pytest.mark.parametrize(("key", "status"), [("status", "ok"), ("scenario", "ok"), ("batch_size", "failed"),
                                             ("samples_ms", "ok"), ("model", "skipped")])
def test_a_row_missing_a_key_is_one_line_naming_file_row_and_key(capsys, tmp_path, key, status):
    """Defect 2 of issue 15: a file that parses as JSON but whose row lacks a key (an older version's,
    or edited by hand) ended in a KeyError traceback."""
    broken = row("eager", samples(10.0, 0.03), status=status)
    del broken[key]
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03))])
    new = write_run(tmp_path / "new.json", [row("onnxruntime", samples(5.0, 0.03)), broken])
    assert cli.main(["compare", base, new]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"python -m bench compare: error: {new}: row 1: missing key {key!r}\n"


@pytest.mark.parametrize(("document", "message"), [
    ({"schema": SCHEMA, "env": {}}, "a python -m bench result has an 'env' object and a 'results' list"),
    ({"schema": SCHEMA, "env": {}, "results": [1]}, "row 0: not an object"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "status": "fine"}]},
     "row 0: status is 'fine', not one of ok, failed, skipped"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "batch_size": "8"}]},
     "row 0: batch_size is '8'"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "latency_ms": {"mean": 1.5}}]},
     "row 0: missing key latency_ms.'p50'"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "parity": None}]},
     "row 0: parity is None"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "samples_ms": ["x", "y"]}]},
     "row 0: samples_ms holds something other than times in ms"),
    ({"schema": SCHEMA, "env": {}, "results": [row("eager", [1.0, float("nan")])]}, "row 0: latency_ms.mean is nan"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "samples_ms": [1e308, 1e308]}]},
     "row 0: samples_ms holds something other than times in ms (numbers above 0 and below 1e+09)"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "loadgen": "VALID"}]},
     "row 0: loadgen is 'VALID', not an object"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "loadgen": {"result": "OK"}}]},
     "row 0: loadgen.result is 'OK'"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "repeats": "fast"}]},
     "row 0: repeats is 'fast', not a list of throughputs"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "costs": [1]}]}, "row 0: costs is [1]"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "accuracy": {"top1": "all"}}]},
     "row 0: accuracy.top1 is 'all'"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "throughput_ips": float("nan")}]},
     "row 0: throughput_ips is nan, not a positive number"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "batch_size": 0}]},
     "row 0: batch_size 0 and image_size 32 are not both 1 or more"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "precision": "fp64"}]},
     "row 0: precision is 'fp64', not one of fp32, fp16, bf16, int8"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "cv": "low"}]}, "row 0: cv is 'low'"),
    ({"schema": SCHEMA, "env": {}, "results": [{**row("eager", [1.0, 2.0]), "note": 5}]}, "row 0: note is 5"),
    ({"schema": SCHEMA, "env": {"costs": "x"}, "results": [row("eager", [1.0, 2.0])]}, "env.costs is 'x'"),
    ({"schema": SCHEMA, "env": {"cpu_features": ["avx2"]}, "results": [row("eager", [1.0, 2.0])]},
     "env.cpu_features is ['avx2']"),
    ({"schema": SCHEMA, "env": {}, "results": [row("eager", [1.0, 2.0]), row("eager", [3.0, 4.0])]},
     "rows 0 and 1 are the same row (resnet18 eager cpu fp32 None 8 32 offline 1)"),
])
def test_a_document_that_is_not_a_run_is_one_line(capsys, tmp_path, document, message):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(document))
    assert cli.main(["compare", str(path), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {message}" in err


@pytest.mark.parametrize(("files", "message"), [
    (["missing.json", "base.json"], "missing.json: not a readable JSON file"),
    (["garbage.json", "base.json"], "garbage.json: not a readable JSON file"),
    (["other.json", "base.json"], "other.json: not a python -m bench result"),
    (["base.json", "disjoint.json"], "have no successful row in common"),
    (["base.json", "base.json", "--relative-to", "tensorrt"], "--relative-to tensorrt: no successful tensorrt row"),
    (["base.json", "base.json", "--threshold", "1.5"], "--threshold 1.5: a fraction below 1"),
])
def test_bad_input_is_exit_2(capsys, tmp_path, files, message):
    write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03))])
    write_run(tmp_path / "disjoint.json", [row("eager", samples(10.0, 0.03), batch=4)])
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/else"}))
    argv = [str(tmp_path / f) if f.endswith(".json") else f for f in files]
    assert cli.main(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_int8_rows_are_matched_by_quantizer_and_older_files_held_only_qdq(capsys, tmp_path):
    """An int8 row of a file from before quantizers were recorded ran the QDQ file: it is compared
    with the new QDQ row, never with the NNCF row beside it, which has no base to be judged on."""
    def int8(quantizer, mean_ms, seed):
        record = {**row("openvino", samples(mean_ms, 0.03, seed=seed)), "precision": "int8"}
        return record if quantizer is None else {**record, "quantizer": quantizer}

    base = write_run(tmp_path / "base.json", [int8(None, 10.0, 1)])
    new = write_run(tmp_path / "new.json", [int8("qdq", 10.0, 2), int8("nncf", 20.0, 3)])
    assert cli.main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "0 regression(s) among 1 compared row(s)" in out and "int8 qdq" in out
    slower = write_run(tmp_path / "slower.json", [int8("qdq", 12.0, 2)])
    assert cli.main(["compare", base, slower]) == 1


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_document_nested_past_the_parser_is_one_line(capsys, tmp_path, command):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    argv = [str(path), str(path)] if command == "compare" else [str(path), "--output", str(tmp_path / "out")]
    assert cli.main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested deeper than Python's parser goes" in err


@pytest.mark.parametrize("new_row", [None, "skipped"])
def test_a_row_that_stopped_running_is_a_regression(capsys, tmp_path, new_row):
    """A row that ran in BASE and is missing, or skipped, in NEW stopped running: exit 1, named."""
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03)), row("onnxruntime", samples(5.0, 0.03))])
    rows = [row("eager", samples(10.0, 0.03, seed=7))] + ([row("onnxruntime", [], status="skipped")] if new_row else [])
    new = write_run(tmp_path / "new.json", rows)
    assert cli.main(["compare", base, new]) == 1
    out = capsys.readouterr().out
    assert "stopped running" in out and ("skipped: boom" if new_row else "not in this run") in out
    assert "1 regression(s) among 2 compared row(s)" in out


def test_resamples_are_bounded_and_millions_of_samples_are_sampled(capsys, tmp_path):
    base = write_run(tmp_path / "base.json", [row("eager", samples(10.0, 0.03))])
    assert cli.main(["compare", base, base, "--resamples", "1000000000"]) == 2
    assert "--resamples 1000000000: at most 100,000" in capsys.readouterr().err
    big = np.random.default_rng(0).normal(10.0, 0.3, 2_000_000)
    low, high = bootstrap_ratio(big, big * 1.1, resamples=200)[1:]
    assert 1.099 < low < 1.1 < high < 1.101
