"""The views of a run besides the table: --plot's PNG and `python -m bench report`'s Markdown."""

from __future__ import annotations

import json

import pytest

import bench.__main__ as cli
from bench import report
from bench.record import SCHEMA, Row

SWEEP = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--warmup", "0", "--iters", "3", "--backend", "eager,onnxruntime",
         "--batch-size", "1,2,4"]


@pytest.fixture(autouse=True)
def _no_interpreted_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    assert cli.main([*SWEEP, "--json", str(folder / "sweep.json"), "--plot", str(folder / "sweep.png"),
                     "--cache-dir", str(folder / "cache")]) == 0
    return folder


@pytest.mark.slow
def test_plot_is_a_png_with_both_panels(sweep):
    import matplotlib.image

    data = (sweep / "sweep.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(sweep / "sweep.png").shape
    assert width > 1.8 * height  # two panels side by side


def test_plot_series_follow_the_rows(sweep):
    from bench.plot import _series

    rows = json.loads((sweep / "sweep.json").read_text())["results"]
    rows[0]["status"] = "failed"  # a failed row is a gap in its line
    series = _series(rows)
    assert sorted(series) == ["resnet18 eager fp32", "resnet18 onnxruntime fp32"]
    assert [r["batch_size"] for r in series["resnet18 eager fp32"]] == [2, 4]
    assert [r["batch_size"] for r in series["resnet18 onnxruntime fp32"]] == [1, 2, 4]


def test_report_writes_markdown_with_tables_and_plots(capsys, sweep, tmp_path):
    out = tmp_path / "report"
    assert cli.main(["report", str(sweep / "sweep.json"), "--output", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# resnet-perf report") and "## sweep.json" in text
    assert "| model | backend | device | precision | batch | streams | scenario | img/s | vs eager |" in text
    assert "best throughput (resnet18, parity passing): " in text
    assert text.count("| resnet18 | onnxruntime | cpu | fp32 |") == 3
    assert "![throughput and latency against batch size](sweep.png)" in text
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "/nonexistent.json", "--output", "OUT"], "/nonexistent.json: not a readable JSON file"),
    (["report", "--output", "OUT"], "the following arguments are required: runs"),
    (["report", "BAD", "--output", "OUT"], "not a python -m bench result"),
    (["report", "NOSTATUS", "--output", "OUT"], "nostatus.json: row 0: missing key 'status'"),
])
def test_report_bad_input(capsys, tmp_path, argv, message):
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    row = {"model": "resnet18", "backend": "eager", "device": "cpu", "precision": "fp32", "batch_size": 2,
           "image_size": 32, "scenario": "offline"}  # no status: defect 2 of issue 15 ended in a KeyError
    (tmp_path / "nostatus.json").write_text(json.dumps({"schema": SCHEMA, "env": {}, "results": [row]}))
    files = {"BAD": tmp_path / "bad.json", "NOSTATUS": tmp_path / "nostatus.json", "OUT": tmp_path / "out"}
    assert cli.main([str(files.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_negative_serving_overhead_is_explained():
    """Served faster than called directly: the machine's drift, said beside the figure, not a gain."""
    serving = {"server": {}, "overhead_ms": -1.5, "client_ms": 10.0, "direct_ms": 11.5,
               "direct_before_after_ms": [12.5, 10.5]}
    row = Row("resnet18", "triton-server", "cpu", "fp32", 4, 32, serving=serving)
    (note,) = report.serving_notes([row])
    assert note == ("* resnet18 triton-server b4: served faster than called directly (10.00 ms against 12.50 before "
                    "and 10.50 after the window): what serving costs here is below the machine's drift between "
                    "measurements")
    assert report.serving_notes([Row("resnet18", "triton-server", "cpu", "fp32", 4, 32,
                                            serving={**serving, "overhead_ms": 0.5})]) == []


def test_a_markdown_row_stays_one_row_whatever_its_error_says():
    row = Row("resnet18", "onnxruntime", "cpu", "fp32", 4, 32, status="failed", error="a | b\nc")
    text = report.to_markdown([row], {}, "run", None)
    (line,) = [line for line in text.splitlines() if line.startswith("| resnet18 |")]
    assert "failed: a \\| b c |" in line
