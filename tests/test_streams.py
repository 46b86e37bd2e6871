"""Requests in flight through python -m bench: the default latency and throughput rows, auto's choice
recorded in the row, the row key in JSON, compare and --resume (files from before streams read as
one), and what the table says about the best row and the precisions a run left out. resnet18 at
32 px on CPU."""

from __future__ import annotations

import json

import pytest
import torch

import bench.__main__ as cli
from bench.compare import per_batch_ms
from bench.record import SCHEMA, Row, load, row_key, rows_from_json
from bench.runners import packages
from resnet_perf.util.cli import UsageError

SMALL = ["--model", "resnet18", "--image-size", "32", "--batch-size", "2", "--warmup", "1", "--iters", "3",
         "--device", "cpu"]


def run(capsys, tmp_path, *argv) -> tuple[int, list[dict], str]:
    path = tmp_path / "run.json"
    code = cli.main([*SMALL, "--json", str(path), "--cache-dir", str(tmp_path / "cache"), *argv])
    out = capsys.readouterr().out
    return code, json.loads(path.read_text())["results"], out


@pytest.mark.slow
def test_the_default_run_has_a_latency_row_and_a_throughput_row_per_backend(capsys, tmp_path):
    code, rows, out = run(capsys, tmp_path, "--backend", "eager,onnxruntime")
    assert code == 0
    assert [(r["backend"], r["streams_asked"]) for r in rows] == [
        ("eager", 1), ("eager", "auto"), ("onnxruntime", 1), ("onnxruntime", "auto")]
    one, auto = rows[0], rows[1]
    assert one["streams"] == 1 and one["streams_how"] is None and len(one["samples_ms"]) == 3
    # auto searched 1, 2, ... up to the cores, recorded each trial, and kept one of them.
    how = auto["streams_how"]
    assert auto["streams"] in [int(n) for n in how["tried_ips"]] and how["tried_ips"]["1"] > 0
    assert how["chosen_by"].startswith("the fastest of 1") and "after 2 (more kept only if 5% faster)" in how["chosen_by"]
    n = auto["streams"]
    # One stream on the CPU, asked for or chosen, is one call at a time: timed exactly as the latency row.
    assert how["kept"] == ("one call at a time" if n == 1 else f"{n} thread(s), {max(1, 2 // n)} intra-op thread(s) each")
    assert len(auto["samples_ms"]) == 3 * n
    assert f"auto kept {n} of trials 1: " in " ".join(out.split())
    assert 0 < auto["costs"]["cpu_cores_busy"] and auto["costs"]["cpu_cores_usable"] >= 1
    assert "p99.9" in auto["latency_ms"]
    # The table: the streams column, a starred best row and the line that names it.
    assert " (auto)" in out and "best throughput (resnet18, parity passing): " in out


@pytest.mark.slow
def test_fixed_streams_run_that_many_threads_with_the_intra_op_threads_split(capsys, tmp_path):
    code, rows, _ = run(capsys, tmp_path, "--backend", "eager", "--streams", "2", "--threads", "2")
    assert code == 0
    [row] = rows
    assert row["streams"] == 2 and row["streams_asked"] == 2
    assert row["streams_how"] == {"kept": "2 thread(s), 1 intra-op thread(s) each", "chosen_by": "--streams",
                                  "tried_ips": None}


def record(backend="eager", latency=10.0, **fields) -> dict:
    parity = {"passed": True, "cosine": 1.0, "rel_l2": 0.0, "top1_agreement": 1.0, "distinct_top1": 1.0}
    samples = [latency * (1 + 0.01 * (i % 3)) for i in range(30)]
    row = {"model": "resnet18", "backend": backend, "device": "cpu", "precision": "fp32", "batch_size": 2,
           "image_size": 32, "scenario": "offline", "status": "ok", "error": None, "samples_ms": samples,
           "parity": parity, "throughput_ips": 2e3 / latency,
           "latency_ms": {"mean": latency, "p50": latency, "p99": latency}}
    return {**row, **fields}


def write(path, rows, env=None):
    path.write_text(json.dumps({"schema": SCHEMA, "env": env or {}, "results": rows}))
    return str(path)


def test_files_from_before_streams_read_as_one_stream(tmp_path):
    [old] = rows_from_json(load(write(tmp_path / "old.json", [record()])))
    assert old.streams == 1 and old.streams_asked == 1
    assert row_key(old) == row_key(Row("resnet18", "eager", "cpu", "fp32", 2, 32, streams=1))
    assert row_key(old) != row_key(Row("resnet18", "eager", "cpu", "fp32", 2, 32, streams=None,
                                                     streams_asked="auto"))


@pytest.mark.parametrize(("fields", "problem"), [
    ({"streams": 0}, "streams is 0"),
    ({"streams": "2"}, "streams is '2'"),
    ({"streams": 2, "streams_asked": "many"}, "streams_asked is 'many'"),
    ({"streams": None, "streams_asked": "auto"}, "streams is None"),  # a row that ran chose a count
])
def test_a_bad_streams_field_is_refused(tmp_path, fields, problem):
    with pytest.raises(UsageError, match=f"row 0: {problem}"):
        load(write(tmp_path / "bad.json", [record(**fields)]))


def test_compare_matches_rows_by_streams_asked_and_judges_throughput(capsys, tmp_path):
    """An old file's row matches the one-stream row; auto rows match each other whatever N they
    chose, judged on the time per batch delivered (latency over streams): 2 in flight at 18 ms a
    request deliver a batch every 9 ms, faster than 1 at 10 ms, though each request took longer."""
    base = write(tmp_path / "base.json", [record(latency=10.0), record(latency=10.0, streams=1, streams_asked="auto")])
    new = write(tmp_path / "new.json", [record(latency=10.0, streams=1, streams_asked=1),
                                        record(latency=18.0, streams=2, streams_asked="auto")])
    assert cli.main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "2 (auto)" in out and "-10.0%" in out and "improvement" in out and "0 regression(s) among 2" in out
    assert per_batch_ms(Row(**record(latency=18.0, streams=2))).mean() == pytest.approx(18.0 * 1.01 / 2)


@pytest.mark.slow
def test_resume_keeps_an_old_files_rows_as_the_one_stream_rows(capsys, tmp_path):
    import bench.env as bench_env

    env = {**bench_env.collect(torch.device("cpu"), torch.get_num_threads(), packages()),
           "settings": {"seed": 0, "weights": "synthetic", "warmup": 1, "iters": 3, "min_time": None, "repeat": 1}}
    resumed = write(tmp_path / "run.json", [record(backend="eager", latency=123.0)], env=env)
    code = cli.main([*SMALL, "--backend", "eager", "--resume", resumed, "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    rows = json.loads((tmp_path / "run.json").read_text())["results"]
    assert [(r["streams_asked"], r["latency_ms"]["mean"] == 123.0) for r in rows] == [(1, True), ("auto", False)]
    capsys.readouterr()


@pytest.mark.slow
def test_the_table_names_the_fast_precisions_a_fp32_run_left_out(capsys, tmp_path, monkeypatch):
    amx = {"avx2": True, "avx512f": True, "avx_vnni": True, "avx512_vnni": True, "avx512_bf16": True,
           "amx_bf16": True, "amx_int8": True}
    import bench.env as bench_env

    collect = bench_env.collect
    monkeypatch.setattr(bench_env, "collect", lambda *a: {**collect(*a), "cpu_features": amx})
    hint = "this CPU computes bf16 (amx_bf16, avx512_bf16) and int8 (amx_int8, avx512_vnni, avx_vnni) natively"
    _, _, out = run(capsys, tmp_path, "--backend", "eager", "--streams", "1")
    assert hint in " ".join(out.split()) and "--precision fp32,bf16,int8 measures them" in " ".join(out.split())
    _, _, out = run(capsys, tmp_path, "--backend", "onnxruntime", "--streams", "1", "--precision", "fp32,int8")
    assert "natively" not in out
    monkeypatch.setattr(bench_env, "collect", lambda *a: {**collect(*a), "cpu_features": dict.fromkeys(amx, False)})
    _, _, out = run(capsys, tmp_path, "--backend", "eager", "--streams", "1")
    assert "natively" not in out


def test_auto_tries_powers_of_two_up_to_the_cores_and_threads_or_four_on_a_gpu(monkeypatch):
    from bench import run as bench_run

    monkeypatch.setattr(bench_run, "usable_cores", lambda: 8)
    assert bench_run.auto_candidates(torch.device("cpu"), 8) == [1, 2, 4, 8]
    assert bench_run.auto_candidates(torch.device("cpu"), 6) == [1, 2, 4]
    assert bench_run.auto_candidates(torch.device("cpu"), 1) == [1]
    assert bench_run.auto_candidates(torch.device("cuda"), 8) == [1, 2, 4]


def test_a_runtime_that_runs_one_request_at_a_time_keeps_auto_at_one_and_skips_more(resnet18_32, tmp_path):
    from bench.plan import Plan, RowSpec
    from bench.run import skip_reason, streams_count
    from bench.runners import RUNNERS, RunConfig

    cpu = torch.device("cpu")
    triton = RUNNERS["triton"](resnet18_32, RunConfig("resnet18-test", cpu, "fp32", 2, 32, 2, tmp_path, streams="auto"))
    count, chosen_by, tried = streams_count(triton, "auto")
    assert (count, tried) == (1, None) and "Triton's interpreter runs one launch at a time" in chosen_by
    plan = Plan(("resnet18",), ("triton",), ("fp32",), (2,), cpu, 32, 0, 2, tmp_path, {}, streams=(1, 2))
    assert skip_reason(RowSpec("resnet18", "fp32", 2, "triton", 2), plan, RUNNERS, {}) == (
        "at most 1 request(s) in flight: Triton's interpreter runs one launch at a time (it is not thread-safe)")
    assert skip_reason(RowSpec("resnet18", "fp32", 2, "triton", 1), plan, RUNNERS, {}) is None
    # On CUDA, graph replays share their memory: one request in flight for those that replay graphs.
    from bench.runners.compile import CompileOptions

    cuda = torch.device("cuda")
    assert "CUDA graph replays share one static memory pool" in RUNNERS["triton"].streams_limit(cuda)[1]
    assert RUNNERS["compile"].streams_limit(cuda, CompileOptions("max-autotune"))[0] == 1
    assert RUNNERS["compile"].streams_limit(cuda, CompileOptions()) is None
    assert RUNNERS["eager"].streams_limit(cuda) is None


def test_an_auto_row_that_keeps_one_stream_puts_the_runtime_back_to_one(resnet18_32, tmp_path, monkeypatch):
    """auto's trials reconfigure some runtimes (a local server runs as many instances as there are
    streams): keeping one, the row is timed one call at a time on a runtime set for one, not for
    the last trial's two."""
    from bench import run as bench_run
    from bench.plan import Loop
    from bench.runners import RunConfig
    from bench.runners.eager import EagerRunner

    opened = []

    class Recording(EagerRunner):
        def streams_impl(self, n):
            opened.append(n)
            return super().streams_impl(n)

    monkeypatch.setattr(bench_run, "AUTO_MARGIN", 1.0)  # fewer streams always come within it: keep one
    monkeypatch.setattr(bench_run, "usable_cores", lambda: 2)
    config = RunConfig("resnet18-test", torch.device("cpu"), "fp32", 2, 32, 2, tmp_path, streams="auto")
    row = Row("resnet18", "eager", "cpu", "fp32", 2, 32, streams=None, streams_asked="auto")
    with Recording(resnet18_32, config) as runner:
        assert bench_run.open_streams(runner, row, Loop()) is None
    assert opened == [1, 2, 1] and row.streams == 1 and row.streams_how["kept"] == "one call at a time"
