"""python -m bench run options: incremental results and --resume, Ctrl-C, --repeat, --profile and
the noisy flag. resnet18 at 32 px, eager and onnxruntime on CPU."""

from __future__ import annotations

import json
import signal

import pytest

import bench.__main__ as cli
from bench.runners import RUNNERS
from bench.runners.eager import EagerRunner

SMALL = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--warmup", "0", "--iters", "3"]


@pytest.fixture(autouse=True)
def _no_interpreted_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


class InterruptedRunner(EagerRunner):
    """Ctrl-C (a real SIGINT, through the run's own handler) while this backend runs."""

    name = "interrupted"
    signum = signal.SIGINT

    def run_impl(self, inputs):
        signal.raise_signal(self.signum)
        return super().run_impl(inputs)


class CountingRunner(EagerRunner):
    """Eager, recording the batch size of every row it runs."""

    ran: list[int] = []

    def prepare_impl(self):
        CountingRunner.ran.append(self.config.batch_size)
        super().prepare_impl()


@pytest.fixture
def extra_runners(monkeypatch):
    monkeypatch.setitem(RUNNERS, InterruptedRunner.name, InterruptedRunner)


def results(path):
    return [(r["backend"], r["batch_size"], r["status"]) for r in json.loads(path.read_text())["results"]]


@pytest.mark.slow
def test_ctrl_c_keeps_every_finished_row_and_resume_runs_the_rest(capsys, tmp_path, extra_runners, monkeypatch):
    json_path, csv_path = tmp_path / "run.json", tmp_path / "run.csv"
    code = cli.main([*SMALL, "--backend", "eager,interrupted", "--batch-size", "1,2", "--json", str(json_path),
                     "--csv", str(csv_path)])
    assert code == 130
    assert capsys.readouterr().err == (f"python -m bench: interrupted by SIGINT after 1 row(s); {json_path} holds them "
                                       f"(--resume {json_path} runs the rest)\n")
    assert results(json_path) == [("eager", 1, "ok")]
    assert len(csv_path.read_text().splitlines()) == 2  # header and the finished row

    # Resuming keeps the recorded row, runs every other one (Ctrl-C is not pressed this time), and
    # writes the whole run back to the same file.
    monkeypatch.setitem(RUNNERS, "eager", CountingRunner)
    monkeypatch.setitem(RUNNERS, "interrupted", EagerRunner)
    CountingRunner.ran.clear()
    code = cli.main([*SMALL, "--backend", "eager,interrupted", "--batch-size", "1,2", "--resume", str(json_path)])
    assert code == 0
    assert CountingRunner.ran == [2]  # eager at batch 1 came from the file
    assert results(json_path) == [("eager", 1, "ok"), ("interrupted", 1, "ok"), ("eager", 2, "ok"),
                                  ("interrupted", 2, "ok")]


@pytest.mark.slow
def test_resume_runs_a_failed_row_again(tmp_path, monkeypatch):
    """A row that failed (a one-off full disk, a crashed runtime) is run again, not kept failed."""
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1,2", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    document["results"][1] = {**document["results"][1], "status": "failed", "error": "OSError: no space left"}
    path.write_text(json.dumps(document))
    monkeypatch.setitem(RUNNERS, "eager", CountingRunner)
    CountingRunner.ran.clear()
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1,2", "--resume", str(path)]) == 0
    assert CountingRunner.ran == [2]
    assert results(path) == [("eager", 1, "ok"), ("eager", 2, "ok")]


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "key"), [(["--seed", "5"], "seed"), (["--iters", "4"], "iters"),
                                           (["--warmup", "1"], "warmup")])
def test_resume_refuses_rows_measured_with_other_settings(capsys, tmp_path, flags, key):
    """A file's rows from the synthetic model, seed 0, kept beside rows of other weights or timing
    settings would read as one run."""
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--json", str(path)]) == 0
    capsys.readouterr()
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1,2", *flags, "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume {path} was measured with {key} " in err


@pytest.mark.slow
@pytest.mark.slow
def test_resume_refuses_rows_measured_with_other_layers_kept_in_fp32(capsys, tmp_path):
    """--keep-fp is recorded only where given; a run without it must not take such rows as its own."""
    path = tmp_path / "run.json"
    int8 = ["--backend", "onnxruntime", "--precision", "int8", "--batch-size", "1", "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*SMALL, *int8, "--keep-fp", "fc", "--json", str(path)]) == 0
    capsys.readouterr()
    assert cli.main([*SMALL, *int8, "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume {path} was measured with keep_fp ['fc'], this run has None" in err


def test_resume_refuses_a_run_from_another_machine(capsys, tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    document["env"]["cpu"] = "Some Other CPU"
    path.write_text(json.dumps(document))
    capsys.readouterr()
    assert cli.main([*SMALL, "--backend", "eager", "--resume", str(path)]) == 2
    assert "was measured with cpu Some Other CPU" in capsys.readouterr().err
    assert cli.main([*SMALL, "--backend", "eager", "--resume", str(tmp_path / "no" / "none.json")]) == 2
    assert f"--resume {tmp_path / 'no' / 'none.json'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()  # refused before any output folder is made


@pytest.mark.slow
def test_resume_with_a_narrower_plan_keeps_the_files_other_rows(tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1,2", "--json", str(path)]) == 0
    measured = json.loads(path.read_text())["results"]
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "4", "--resume", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [(r["batch_size"], r["status"]) for r in rows] == [(4, "ok"), (1, "ok"), (2, "ok")]
    assert rows[1:] == measured  # kept as they were measured


@pytest.mark.slow
def test_resume_of_a_file_whose_row_lacks_a_key_is_one_line(capsys, tmp_path):
    """Defect 2 of issue 15, for --resume: a KeyError traceback before."""
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    del document["results"][0]["scenario"]
    path.write_text(json.dumps(document))
    capsys.readouterr()
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--resume", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"python -m bench: error: --resume {path}: row 0: missing key 'scenario'\n"


@pytest.mark.slow
def test_repeat_reports_each_repetition(tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "2", "--repeat", "3", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["results"]
    assert len(row["repeats"]) == 3 and all(t > 0 for t in row["repeats"])
    assert row["iters"] == 9 and len(row["samples_ms"]) == 9


@pytest.mark.slow
def test_profile_times_each_stage_where_the_backend_has_stages(capsys, tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager,onnxruntime", "--batch-size", "2", "--profile", "--json", str(path),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    eager, onnxruntime = json.loads(path.read_text())["results"]
    assert list(eager["profile"]["stages"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert all(ms > 0 for ms in eager["profile"]["stages"].values())
    assert onnxruntime["profile"] is None  # one opaque session: no stages to time
    assert "per-stage time" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("threshold", ["1e-12", "1000"])
def test_noisy_rows_are_flagged(tmp_path, threshold):
    """The flag is the row's own cv against the threshold, whatever this machine's noise (a fast,
    quiet CPU once gave a cv of 3.4e-05): 1e-12 flags any run whose samples differ at all, 1000 none."""
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--noise-threshold", threshold,
                     "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["results"]
    assert row["noisy"] is (row["cv"] > float(threshold))
    assert row["noisy"] is (threshold == "1e-12") or row["cv"] == 0


@pytest.mark.slow
def test_environment_records_what_figures_depend_on(tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "eager", "--batch-size", "1", "--json", str(path)]) == 0
    env = json.loads(path.read_text())["env"]
    assert env["cpu_cores_usable"] >= 1 and env["interop_threads"] >= 1
    assert set(env["thread_env"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    assert env["gpu_state"] is None  # a CPU run
