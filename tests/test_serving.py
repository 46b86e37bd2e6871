"""The triton-server backend against real Triton Inference Servers (PyTriton's tritonserver binary):
one started by the row itself, and one started in another process with ``python -m bench serve``
and measured through ``--server-url`` over gRPC and HTTP. Parity, the LoadGen path (asynchronous
requests the server batches), the server's own statistics, bad URLs and models (exit 2), a server
killed mid-run (a failed row, the others kept), Ctrl-C, and no server process left behind."""

from __future__ import annotations

import http.server
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bench.__main__ as cli
from bench.serving.local import missing_reason
from tests.bench_runs import bench_rows

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

SMALL = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--device", "cpu", "--warmup", "1", "--iters", "4"]


@pytest.fixture(autouse=True)
def _no_interpreted_triton(monkeypatch):
    # A user's shell has Triton's interpreter off; conftest turns it on for the kernel tests.
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def processes(name: str, parent: int | None = None) -> list[int]:
    """PIDs of running processes called ``name`` (children of ``parent`` where given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm is cut to 15 characters.
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == name[:15] and (parent is None or int(fields[1]) == parent):
            found.append(int(entry.name))
    return found


def tritonservers(parent: int | None = None) -> list[int]:
    return processes("tritonserver", parent)


def stubs() -> set[int]:
    """Python-backend stubs: the process in which a server runs a Python model; a killed server's
    stubs outlive it unless someone stops them."""
    return set(processes("triton_python_backend_stub"))


def leftovers(servers: list[int]) -> list[int]:
    """What still runs of ``servers`` and of their stubs (a stub's arguments name its server's PID)."""
    alive = [pid for pid in servers if Path(f"/proc/{pid}").exists()]
    for pid in stubs():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if any(str(server) in args for server in servers):
            alive.append(pid)
    return alive


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """resnet18 at 32 px, max batch 4, served by `python -m bench serve` in its own process."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench", "serve", "--model", "resnet18", "--image-size", "32", "--device", "cpu",
             "--max-batch", "4", "--name", "r18"],
            stdout=subprocess.PIPE, stderr=sink, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    line = process.stdout.readline()  # the one line naming the URLs, once the model is ready
    if "serving" not in line:
        process.kill()
        pytest.fail(f"python -m bench serve did not start: {line!r} {log.read_text()[-2000:]}")
    urls = dict(zip(("grpc", "http"), (word.rstrip(";") for word in line.split() if "://" in word)))
    servers = tritonservers(process.pid)
    yield urls
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert not leftovers(servers), "tritonserver outlived bench serve"


@pytest.mark.slow
def test_local_server_row_has_parity_and_the_servers_split(capsys, tmp_path):
    before = stubs()
    code, (row,), _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server", "--batch-size", "4")
    assert code == 0 and row["status"] == "ok" and row["parity"]["passed"]
    assert row["parity"]["cosine"] > 0.99999
    s = row["serving"]
    assert s["url"].startswith("grpc://127.0.0.1:") and s["hosted_backend"] == "onnxruntime"
    # Every timed call was one request the server counted, each a full batch of 4.
    assert s["requests"] == row["iters"] == s["server"]["requests"]
    assert s["server"]["mean_batch"] == 4 and s["server"]["failed"] == 0
    assert s["server"]["compute_infer_ms"] > 0 and s["direct_ms"] > 0
    # The direct call is timed on both sides of the window, so the machine's drift shows beside it.
    first, last = s["direct_before_after_ms"]
    assert first > 0 and last > 0 and s["direct_ms"] == pytest.approx((first + last) / 2)
    assert s["overhead_ms"] == pytest.approx(s["client_ms"] - s["direct_ms"])
    assert s["client_ms"] >= s["server"]["request_ms"]
    assert not tritonservers(os.getpid()) and stubs() <= before, "the row's server outlived it"


@pytest.mark.slow
def test_streams_are_concurrent_requests_and_the_local_server_runs_as_many_instances(capsys, tmp_path):
    code, (row,), err = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server", "--batch-size", "4",
                                  "--streams", "2")
    assert code == 0 and row["status"] == "ok" and row["parity"]["passed"], (row["error"], row["parity"], err[-2000:])
    assert row["streams"] == 2 and row["streams_how"]["kept"] == "2 concurrent request(s) from the grpc client"
    assert row["note"] == "the local server runs 2 instances of onnxruntime"
    s = row["serving"]
    # Every request the client sent from the window's start (those drained after it included) reached
    # the server, which answered each as a full batch of 4. The window opens with the other stream's
    # request in flight: client and server each count it by when they saw it finish against their own
    # snapshot, so the two counts may differ by that one request (seen here once in ten runs).
    assert len(row["samples_ms"]) == 2 * 4 and s["requests"] >= 2 * 4
    assert abs(s["requests"] - s["server"]["requests"]) <= 1, s
    assert s["server"]["mean_batch"] == 4 and s["server"]["failed"] == 0


@pytest.mark.slow
def test_server_scenario_sends_single_requests_the_server_batches(capsys, tmp_path):
    code, (row,), _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server", "--scenario", "server",
                                "--target-qps", "60", "--duration", "2", "--max-batch", "4")
    assert code == 0 and row["status"] == "ok" and row["parity"]["passed"]
    s = row["serving"]
    # LoadGen's queries reached the server one sample each, and the server (not our batcher) batched them.
    assert s["server"]["requests"] == s["requests"] == len(row["samples_ms"]) >= 100
    assert 1 <= s["server"]["mean_batch"] <= 4 and s["server"]["batches"] <= s["requests"]
    assert s["max_batch_size"] == 4
    assert row["loadgen"]["result"] in ("VALID", "INVALID") and row["achieved_qps"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_remote_server_over_both_protocols(capsys, tmp_path, served, protocol):
    code, (row,), _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server", "--batch-size", "4",
                                "--server-url", served[protocol], "--server-model", "r18")
    assert code == 0 and row["status"] == "ok" and row["parity"]["passed"]
    s = row["serving"]
    assert s["url"] == served[protocol] and s["model"] == "r18" and s["hosted_backend"] is None
    assert s["direct_ms"] is None and s["requests"] == s["server"]["requests"] == row["iters"]


@pytest.mark.slow
def test_remote_server_under_loadgen(capsys, tmp_path, served):
    code, (remote, direct), _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server,onnxruntime",
                                          "--server-url", served["grpc"], "--server-model", "r18",
                                          "--scenario", "offline-loadgen", "--batch-size", "4", "--duration", "1")
    assert code == 0
    assert remote["backend"] == "triton-server" and remote["status"] == "ok" and remote["parity"]["passed"]
    # Offline issues every sample at once; the client splits them into requests of the batch size.
    samples = len(remote["samples_ms"])
    assert remote["serving"]["requests"] == remote["serving"]["server"]["requests"] == math.ceil(samples / 4)
    assert direct["status"] == "ok" and direct["serving"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "batch", "per_request"), [("single-stream", [], 1),
                                                                ("multi-stream", ["--batch-size", "4"], 4)])
def test_stream_scenarios_through_a_remote_server(capsys, tmp_path, served, scenario, batch, per_request):
    code, (row,), _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server", "--server-url", served["http"],
                                "--server-model", "r18", "--scenario", scenario, *batch, "--duration", "1")
    assert code == 0 and row["status"] == "ok" and row["parity"]["passed"]
    # One request per LoadGen query, holding the query's samples; the server counted each.
    s = row["serving"]
    assert s["requests"] == s["server"]["requests"] == len(row["samples_ms"]) // per_request >= 100
    assert s["server"]["mean_batch"] == per_request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server-url", "127.0.0.1:8001"], "--server-url '127.0.0.1:8001': give grpc://HOST:PORT or http://HOST:PORT"),
        (["--server-url", "grpc://127.0.0.1"], "give the port"),
        (["--server-model", "r18"], "--server-model names a model on the server at --server-url"),
        (["--served-backend", "triton-server"], "--served-backend 'triton-server': choose from eager"),
        (["--served-backend", "eager", "--server-url", "grpc://127.0.0.1:1"], "--served-backend is what a locally"),
        (["--server-url", "grpc://127.0.0.1:1", "--model", "resnet18,resnet34"], "give exactly one --model"),
    ],
)
def test_bad_server_flags(capsys, argv, message):
    code = cli.main(["--backend", "triton-server", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_server_flags_need_the_backend(capsys):
    code = cli.main(["--backend", "eager", "--device", "cpu", "--server-url", "grpc://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "--server-url applies to the triton-server backend: add it to --backend" in err


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_a_usage_error(capsys, protocol):
    url = f"{protocol}://127.0.0.1:{_free_port()}"
    code = cli.main([*SMALL, "--backend", "triton-server", "--server-url", url])
    err = capsys.readouterr().err
    assert code == 2 and f"Triton server at {url} does not answer" in err and err.count("\n") == 1, err


class _NotTriton(http.server.BaseHTTPRequestHandler):
    """A web server that answers every request with 200 and a body that is not Triton's."""

    body = b"<html>hello</html>"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class _JsonNotTriton(_NotTriton):
    body = b'{"status": "ok"}'


@pytest.mark.parametrize("handler", [_NotTriton, _JsonNotTriton])
def test_a_server_that_is_not_triton_is_a_usage_error(capsys, handler):
    """Readiness is only an HTTP 200, which any web server answers: the server's metadata tells."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code = cli.main([*SMALL, "--backend", "triton-server", "--server-url", url])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{url} answers, but not in Triton's (KServe v2) protocol" in err


def test_wrong_model_name_and_wrong_shape_are_usage_errors(capsys, served):
    code = cli.main([*SMALL, "--backend", "triton-server", "--server-url", served["grpc"], "--server-model", "r50"])
    err = capsys.readouterr().err
    assert code == 2 and "has no model 'r50' ready" in err and err.count("\n") == 1, err

    code = cli.main([*SMALL[:2], "--image-size", "64", "--device", "cpu", "--backend", "triton-server",
                     "--server-url", served["http"], "--server-model", "r18", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "served model 'r18' takes input of shape [3, 32, 32]; this run's model takes [3, 64, 64]" in err

    code = cli.main([*SMALL, "--backend", "triton-server", "--server-url", served["grpc"], "--server-model", "r18",
                     "--batch-size", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "takes batches of at most 4; this run asks for 8" in err


def wait_until_serving(server: int) -> None:
    """Until the tritonserver ``server`` runs its model (the Python backend's stub process is up)."""
    deadline = time.monotonic() + 120
    while not processes("triton_python_backend_stub", server):
        if time.monotonic() > deadline:
            raise TimeoutError("the local server never started its model")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_server_killed_mid_run_fails_its_row_and_keeps_the_others(capsys, tmp_path):
    killed, before = [], stubs()

    def kill_once_serving() -> None:
        deadline = time.monotonic() + 120
        while not (servers := tritonservers(os.getpid())) and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_until_serving(servers[0])
        time.sleep(3)  # into the LoadGen run: the row checks the server and probes a few calls first
        os.kill(servers[0], signal.SIGKILL)
        killed.append(servers[0])

    killer = threading.Thread(target=kill_once_serving)
    killer.start()
    code, rows, _ = bench_rows(capsys, tmp_path, *SMALL, "--backend", "triton-server,onnxruntime", "--scenario",
                              "server", "--target-qps", "40", "--duration", "6", "--max-batch", "4")
    killer.join()
    assert killed
    served, direct = rows
    assert code == 1 and served["status"] == "failed" and "\n" not in served["error"]
    assert direct["status"] == "ok" and direct["parity"]["passed"]
    assert not leftovers(killed) and stubs() <= before


@pytest.mark.slow
def test_ctrl_c_stops_the_local_server(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", *SMALL, "--backend", "triton-server", "--scenario", "server",
         "--target-qps", "20", "--duration", "10", "--max-batch", "4", "--json", str(tmp_path / "run.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TRITON_INTERPRET": "0"})
    deadline = time.monotonic() + 120
    while not (servers := tritonservers(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers, "no local server started"
    time.sleep(4)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert not leftovers(servers)
