"""``python -m bench serve``: one of our backends behind a local Triton Inference Server, until Ctrl-C.

The server the triton-server backend starts for itself, started on its own, so that another
process (or another machine's client, through a tunnel) measures it with ``--server-url``, as it
would a deployment. It prints its URLs on one line, then serves.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch

import resnet_perf
from bench.runners import RUNNERS, RunConfig
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS
from bench.serving.local import LocalServer, missing_reason
from resnet_perf.cli import (
    UsageError,
    check_directory,
    default_cache_dir,
    one_line,
    positive_float,
    positive_int,
    resolve_device,
    rng_seed,
)


def hostable() -> list[str]:
    """The backends a server can host: every one that is not itself a server."""
    return [name for name, runner in RUNNERS.items() if not runner.serves_requests]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet50", help=f"{'|'.join(resnet_perf.MODEL_NAMES)} (default resnet50)")
    p.add_argument("--backend", default="onnxruntime", help=f"the backend served: {', '.join(hostable())}")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16, as the backend supports")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--max-batch", type=positive_int, default=8, help="the largest batch the server forms (default 8)")
    p.add_argument("--max-queue-delay-ms", type=positive_float, default=DEFAULT_QUEUE_DELAY_MS,
                   help=f"how long the server's batcher waits to fill a batch (default {DEFAULT_QUEUE_DELAY_MS:g} ms)")
    p.add_argument("--weights", default=None, help="state_dict file; default: the synthetic model of --seed")
    p.add_argument("--seed", type=rng_seed, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--name", default=None, help="the model's name on the server (default: --model)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()))


def _interrupt(*_) -> None:
    """SIGTERM (a supervisor, a test harness) stops the server as Ctrl-C does."""
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Serve as the parsed flags ask, until Ctrl-C or SIGTERM; bad input is exit 2."""
    try:
        if args.model not in resnet_perf.MODEL_NAMES:
            raise UsageError(f"--model {args.model!r}: choose from {', '.join(resnet_perf.MODEL_NAMES)}")
        if args.backend not in hostable():
            raise UsageError(f"--backend {args.backend!r}: choose from {', '.join(hostable())}")
        device = resolve_device(args.device)
        runner_cls = RUNNERS[args.backend]
        reason = missing_reason() or runner_cls.unavailable_reason(device)
        if reason:
            raise UsageError(f"cannot serve {args.backend} on {device}: {reason}")
        precisions = [p for p in runner_cls.precisions(device) if p != "int8"]
        if args.precision not in precisions:
            raise UsageError(f"--precision {args.precision}: {args.backend} on {device.type} serves {', '.join(precisions)}")
        check_directory("--cache-dir", args.cache_dir)
        model = resnet_perf.build_model(args.model, weights=args.weights, image_size=args.image_size, seed=args.seed)
    except (UsageError, resnet_perf.WeightsError) as exc:
        print(f"python -m bench serve: error: {exc}", file=sys.stderr)
        return 2

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    config = RunConfig(f"{args.model}-{resnet_perf.weights_digest(model)[:12]}", device, args.precision, args.max_batch,
                       args.image_size, threads, Path(args.cache_dir))
    signal.signal(signal.SIGTERM, _interrupt)
    runner = runner_cls(model, config)
    server = LocalServer(runner, args.name or args.model, args.max_queue_delay_ms)
    try:
        runner.prepare()
        server.start()
        print(f"serving {server.name} ({args.backend}, {args.precision}, {device}, max batch {args.max_batch}) at "
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
