"""Issue 16's output classes: every file python -m bench, bench report and python -m export write.
A symlink is followed and its target replaced atomically; a device, FIFO or socket at an output
path is refused (exit 2) and left as it was; two outputs, or an output and an input, on one file
are refused; a write that fails (a full disk) is one line, the run goes on, the file keeps its last
complete version, and the run ends with exit 1."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest
import torch

import bench.__main__ as cli
import export.__main__ as export_cli
import resnet_perf

RUN = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2", "--warmup", "0", "--iters", "2",
       "--backend", "eager", "--device", "cpu"]


def bench(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv) -> str:
    code, out, err = bench(capsys, *RUN, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("python -m bench: error: "), err
    return err


@pytest.mark.slow
def test_a_symlinked_output_writes_its_target_and_keeps_the_link(capsys, tmp_path):
    target, link = tmp_path / "results" / "run.json", tmp_path / "latest.json"
    target.parent.mkdir()
    link.symlink_to(target)  # dangling until the run writes its target
    csv_target, csv_link = tmp_path / "run.csv", tmp_path / "latest.csv"
    csv_target.write_text("old\n")
    csv_link.symlink_to(csv_target)
    code, _, _ = bench(capsys, *RUN, "--json", str(link), "--csv", str(csv_link))
    assert code == 0
    assert link.is_symlink() and csv_link.is_symlink()
    assert json.loads(target.read_text())["results"][0]["status"] == "ok"
    assert csv_target.read_text().startswith("model,backend")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.csv", "latest.json", "results", "run.csv"]


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_a_fifo_at_an_output_path_is_refused_and_left_alone(capsys, tmp_path, flag):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    err = refused(capsys, flag, str(fifo))
    assert f"{flag} {fifo}: is a FIFO; results are written by renaming a new file over the path" in err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_socket_at_an_output_path_is_refused(capsys, tmp_path):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert "is a socket" in refused(capsys, "--json", str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_link_to_a_character_device_is_refused_and_both_are_left_alone(capsys, tmp_path):
    """Through a link in the temporary folder: were the check broken, the rename would replace the
    link, never /dev/null itself."""
    link = tmp_path / "null.json"
    link.symlink_to("/dev/null")
    err = refused(capsys, "--json", str(link))
    assert f"--json {link} (-> /dev/null): is a character device" in err
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not hasattr(os, "mknod") or os.geteuid() != 0, reason="making a device node needs root")
def test_a_character_device_node_is_refused_and_left_alone(capsys, tmp_path):
    """A node with /dev/null's numbers, in the temporary folder: as root, the rename of a regular
    file over it would succeed, which is how issue 16 saw /dev/null replaced."""
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    assert "is a character device" in refused(capsys, "--csv", str(device))
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_empty_and_directory_paths(capsys, tmp_path):
    assert "--json '': give a file path" in refused(capsys, "--json", "")
    assert f"--csv {tmp_path}: is a directory, expected a file path" in refused(capsys, "--csv", str(tmp_path))


def test_an_output_on_an_input_or_another_output_is_refused(capsys, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(resnet_perf.build_model("resnet18", image_size=32).state_dict(), weights)
    err = refused(capsys, "--weights", str(weights), "--csv", str(weights))
    assert f"--csv {weights} is also --weights's file: give each output its own" in err
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "run.json")
    err = refused(capsys, "--json", str(tmp_path / "run.json"), "--csv", str(link))
    assert f"--csv {link} is also --json's file" in err


@pytest.fixture
def full_disk_after(monkeypatch):
    """``full_disk_after(path, n)``: the n+1-th and later writes of ``path``'s temporary file fail
    half-way with ENOSPC, as on a full disk; ``free()`` ends it."""
    write = Path.write_text
    state = {"writes": 0, "full": True}

    def arm(path: Path, complete: int):
        def write_text(self: Path, text: str, *args, **kwargs):
            if self.name.startswith(f".{path.name}."):
                state["writes"] += 1
                if state["full"] and state["writes"] > complete:
                    write(self, text[: len(text) // 2], *args, **kwargs)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return write(self, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
        return lambda: state.update(full=False)

    return arm


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_running_and_the_last_complete_file(capsys, tmp_path, full_disk_after):
    json_path = tmp_path / "run.json"
    full_disk_after(json_path, 1)
    code, out, err = bench(capsys, *RUN, "--batch-size", "1,2,3", "--json", str(json_path))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [f"python -m bench: could not write {json_path} (No space left on device); the run goes on",
                     (f"python -m bench: the last write of {json_path} failed (No space left on device): it holds "
                      "the 1 row(s) of its last complete write")]
    assert out.count("│ resnet18 │") == 3  # every row still ran and is in the table
    assert [r["batch_size"] for r in json.loads(json_path.read_text())["results"]] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left behind


@pytest.mark.slow
def test_a_disk_that_frees_up_again_ends_with_a_complete_file(capsys, tmp_path, full_disk_after, monkeypatch):
    from bench import saver

    json_path = tmp_path / "run.json"
    free = full_disk_after(json_path, 0)

    save = saver.Saver.__call__

    def call(self, rows):
        if len(rows) == 2:
            free()
        return save(self, rows)

    monkeypatch.setattr(saver.Saver, "__call__", call)
    code, _, err = bench(capsys, *RUN, "--batch-size", "1,2", "--json", str(json_path))
    assert code == 0 and err.count("could not write") == 1
    assert [r["batch_size"] for r in json.loads(json_path.read_text())["results"]] == [1, 2]


@pytest.mark.slow
def test_a_full_disk_before_the_first_write_says_the_file_was_not_written(capsys, tmp_path, full_disk_after):
    csv_path = tmp_path / "run.csv"
    full_disk_after(csv_path, 0)
    code, _, err = bench(capsys, *RUN, "--csv", str(csv_path))
    assert code == 1 and not csv_path.exists()
    assert err.strip().splitlines()[-1] == (f"python -m bench: the last write of {csv_path} failed (No space left on "
                                            "device): it was not written in this run")


@pytest.mark.slow
def test_a_plot_that_cannot_be_written_is_one_line_and_exit_1(capsys, tmp_path, monkeypatch):
    from bench import plot

    def write_plot(rows, path, title):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(plot, "write_plot", write_plot)
    json_path = tmp_path / "run.json"
    code, out, err = bench(capsys, *RUN, "--json", str(json_path), "--plot", str(tmp_path / "run.png"))
    assert code == 1 and "resnet18" in out and json_path.is_file()
    assert err == f"python -m bench: could not write {tmp_path / 'run.png'} (Input/output error)\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two runs of the same file name, from two folders."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for name in ("a", "b"):
        path = root / name / "run.json"
        assert cli.main([*RUN, "--json", str(path)]) == 0
        paths.append(path)
    return paths


@pytest.mark.slow
def test_report_of_two_runs_of_one_name_keeps_both_plots(capsys, tmp_path, two_runs):
    assert cli.main(["report", *map(str, two_runs), "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "run-1.png", "run-2.png"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"## {two_runs[0]}" in text and "(run-2.png)" in text


def test_report_that_fails_while_writing_leaves_nothing(capsys, tmp_path, two_runs, monkeypatch):
    from bench import plot

    calls = []

    def write_plot(rows, path, title):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        Path(path).write_bytes(b"png")

    monkeypatch.setattr(plot, "write_plot", write_plot)
    out = tmp_path / "out"
    assert cli.main(["report", *map(str, two_runs), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"python -m bench report: could not write to {out} (No space left on device); nothing was written\n"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_report_and_export_refuse_an_output_folder_that_is_not_one(capsys, tmp_path, two_runs, kind):
    path = tmp_path / "out"
    path.write_text("") if kind == "file" else os.mkfifo(path)
    described = "a file" if kind == "file" else "a FIFO"
    assert cli.main(["report", str(two_runs[0]), "--output", str(path)]) == 2
    assert capsys.readouterr().err == f"python -m bench report: error: --output {path}: is {described}, not a folder\n"
    assert export_cli.main(["--model", "resnet18", "--format", "onnx", "--output", str(path)]) == 2
    assert capsys.readouterr().err == f"python -m export: error: --output {path}: is {described}, not a folder\n"


def test_report_follows_a_symlinked_folder_and_refuses_a_fifo_in_it(capsys, tmp_path, two_runs):
    target, link = tmp_path / "reports", tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    assert cli.main(["report", str(two_runs[0]), "--output", str(link)]) == 0
    assert link.is_symlink() and (target / "report.md").read_text().startswith("# resnet-perf report")
    os.unlink(target / "report.md")
    os.mkfifo(target / "report.md")
    capsys.readouterr()
    assert cli.main(["report", str(two_runs[0]), "--output", str(link)]) == 2
    assert f"--output {link}/report.md (-> {target}/report.md): is a FIFO" in capsys.readouterr().err
    assert stat.S_ISFIFO((target / "report.md").lstat().st_mode)


EXPORT = ["--model", "resnet18", "--image-size", "32", "--format", "onnx"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_export_checks_every_file_it_replaces_before_building(capsys, tmp_path, kind):
    """A FIFO or a folder at the manifest's path: refused before anything is built, so the old
    artifact is not replaced and then left without a manifest."""
    (tmp_path / "resnet18-fp32.onnx").write_text("old")
    manifest = tmp_path / "resnet18-fp32.onnx.json"
    os.mkfifo(manifest) if kind == "fifo" else manifest.mkdir()
    assert export_cli.main([*EXPORT, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {manifest}: is {'a FIFO' if kind == 'fifo' else 'a directory'}" in err
    assert (tmp_path / "resnet18-fp32.onnx").read_text() == "old"
    assert stat.S_ISFIFO(manifest.lstat().st_mode) if kind == "fifo" else manifest.is_dir()


@pytest.mark.slow
def test_export_through_a_symlinked_artifact_replaces_its_target_and_keeps_the_link(capsys, tmp_path):
    target, link = tmp_path / "store" / "real.onnx", tmp_path / "out" / "resnet18-fp32.onnx"
    target.parent.mkdir()
    link.parent.mkdir()
    target.write_text("old")
    link.symlink_to(target)
    assert export_cli.main([*EXPORT, "--output", str(link.parent)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    manifest = json.loads((link.parent / "resnet18-fp32.onnx.json").read_text())
    from export.manifest import sha256_file
    assert sha256_file(target) == manifest["sha256"]


@pytest.mark.slow
def test_a_model_repository_gains_only_its_own_version(capsys, tmp_path):
    """Another version and the model folder's own files are kept; version 1 is swapped whole, so a
    file of an earlier export (a TensorRT plan) does not linger beside the new model."""
    model = tmp_path / "repo" / "resnet18"
    (model / "2").mkdir(parents=True)
    (model / "2" / "model.onnx").write_text("v2")
    (model / "README").write_text("ours")
    (model / "1").mkdir()
    (model / "1" / "model.plan").write_text("stale")
    argv = ["--model", "resnet18", "--image-size", "32", "--format", "triton-repo", "--output", str(tmp_path / "repo")]
    assert export_cli.main(argv) == 0
    assert (model / "2" / "model.onnx").read_text() == "v2" and (model / "README").read_text() == "ours"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx", "model.onnx.json"]
    assert (model / "config.pbtxt").read_text().startswith('name: "resnet18"')
    assert "also holds version(s) 2, kept" in " ".join(capsys.readouterr().out.split())  # as wrapped to the console


def test_report_never_writes_over_a_run_it_reads(capsys, tmp_path, two_runs):
    run = tmp_path / "report.md"
    run.write_bytes(two_runs[0].read_bytes())
    assert cli.main(["report", str(run), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report.md would replace the run file" in err
    assert run.read_bytes() == two_runs[0].read_bytes()


@pytest.mark.slow
def test_a_run_file_another_run_is_writing_is_refused(capsys, tmp_path):
    """Two runs given one --json would both run to the end, the file keeping one run's rows."""
    from resnet_perf.util.cli import held

    path = tmp_path / "run.json"
    with held("--json", path):
        err = refused(capsys, "--json", str(path))
    assert f"--json {path}: another command (pid {os.getpid()}) is writing it" in err
    assert not path.exists()
    assert bench(capsys, *RUN, "--json", str(path))[0] == 0  # the lock is gone with its holder


def test_a_folder_path_for_a_file_is_refused(capsys, tmp_path):
    err = refused(capsys, "--json", f"{tmp_path}/new/")
    assert f"--json {tmp_path}/new/: names a folder; give a file path" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_plot_with_no_row_to_draw_says_so(capsys, tmp_path, monkeypatch):
    from bench.runners import RUNNERS
    from bench.runners.eager import EagerRunner

    class Broken(EagerRunner):
        name = "broken"

        def prepare_impl(self):
            raise RuntimeError("boom")

    monkeypatch.setitem(RUNNERS, "broken", Broken)
    code, _, err = bench(capsys, *[a if a != "eager" else "broken" for a in RUN], "--plot", str(tmp_path / "run.png"))
    assert code == 1 and not (tmp_path / "run.png").exists()
    assert f"python -m bench: no plot written to {tmp_path / 'run.png'}: no row ran" in err
