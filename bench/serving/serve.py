"""``python -m bench serve``: one of our backends behind a local Triton Inference Server, until Ctrl-C.

The server the triton-server backend starts for itself, started on its own, so that another
process (or another machine's client, through a tunnel) measures it with ``--server-url``, as it
would a deployment. It prints its URLs on one line, then serves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import resnet_perf
from bench.runners import RUNNERS, RunConfig
from bench.runners.triton_server import hostable
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS
from bench.serving.local import LocalServer, missing_reason
from export import triton_repo
from resnet_perf.cli import (
    UsageError,
    check_choices,
    check_directory,
    default_cache_dir,
    non_negative_float,
    one_line,
    positive_int,
    resolve_device,
    rng_seed,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet50", help=f"{'|'.join(resnet_perf.MODEL_NAMES)} (default resnet50)")
    p.add_argument("--backend", default="onnxruntime", help=f"the backend served: {', '.join(hostable(RUNNERS))}")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16, as the backend supports")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--max-batch", type=positive_int, default=8, help="the largest batch the server forms (default 8)")
    p.add_argument("--max-queue-delay-ms", type=non_negative_float, default=DEFAULT_QUEUE_DELAY_MS,
                   help=f"how long the server's batcher waits to fill a batch (default {DEFAULT_QUEUE_DELAY_MS:g} ms)")
    p.add_argument("--weights", default=None, help="state_dict file; default: the synthetic model of --seed")
    p.add_argument("--seed", type=rng_seed, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--name", default=None, help="the model's name on the server (default: --model)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()))


def serve(*, model: str, backend: str, device: str, precision: str, image_size: int, max_batch: int,
          max_queue_delay_ms: float, weights: str | None, seed: int, threads: int | None, name: str | None,
          cache_dir: str) -> int:
    """Serve ``backend`` until Ctrl-C or SIGTERM (exit 0), or until the server dies (exit 1). Bad
    input raises UsageError (or WeightsError) before anything starts."""
    check_choices("--model", model, resnet_perf.MODEL_NAMES)
    if name is not None and not triton_repo.usable_name(name):
        raise UsageError(f"--name {name!r}: not a usable model name")
    check_choices("--backend", backend, hostable(RUNNERS))
    where = resolve_device(device)
    runner_cls = RUNNERS[backend]
    reason = missing_reason() or runner_cls.unavailable_reason(where)
    if reason:
        raise UsageError(f"cannot serve {backend} on {where}: {reason}")
    precisions = [p for p in runner_cls.precisions(where) if p != "int8"]
    if precision not in precisions:
        raise UsageError(f"--precision {precision}: {backend} on {where.type} serves {', '.join(precisions)}")
    check_directory("--cache-dir", cache_dir)
    reference = resnet_perf.build_model(model, weights=weights, image_size=image_size, seed=seed)

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    config = RunConfig(f"{model}-{resnet_perf.weights_digest(reference)[:12]}", where, precision, max_batch,
                       image_size, threads, Path(cache_dir))
    runner = runner_cls(reference, config)
    server = LocalServer(runner, name or model, max_queue_delay_ms)
    try:
        runner.prepare()
        server.start()
        print(f"serving {server.name} ({backend}, {precision}, {where}, max batch {max_batch}) at "
              f"{server.grpc.url} and {server.http.url}; Ctrl-C stops it", flush=True)
        while server.alive():
            time.sleep(0.5)
        print(f"python -m bench serve: the server stopped: {server.log_tail() or 'no error in its log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"python -m bench serve: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        runner.close()
