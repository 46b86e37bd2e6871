"""``python -m bench serve``: one of our backends behind a local Triton Inference Server, until Ctrl-C.

The server the triton-server backend starts for itself, started on its own, so that another
process (or another machine's client, through a tunnel) measures it with ``--server-url``, as it
would a deployment. It prints its URLs on one line, then serves.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import resnet_perf
from bench.runners.base import RunConfig
from bench.scenarios import DEFAULT_QUEUE_DELAY_MS
from bench.serving.local import LocalServer
from resnet_perf.util.cli import default_cache_dir, non_negative_float, one_line, positive_int, rng_seed

if TYPE_CHECKING:
    from bench.runners.base import Runner


def add_arguments(p: argparse.ArgumentParser, hostable: list[str]) -> None:
    p.add_argument("--model", default="resnet50", help=f"{'|'.join(resnet_perf.MODEL_NAMES)} (default resnet50)")
    p.add_argument("--backend", default="onnxruntime", help=f"the backend served: {', '.join(hostable)}")
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


@dataclass(frozen=True)
class Served:
    """What ``bench serve`` serves, resolved and checked as a run's backends are (bench/__main__.py)."""
    model: str
    runner: type[Runner]
    options: Any  # the backend's own, from its flags (Runner.resolve_options)
    device: torch.device
    precision: str
    image_size: int
    max_batch: int
    max_queue_delay_ms: float
    weights: str | None
    seed: int
    threads: int
    name: str  # the model's name on the server
    cache_dir: Path


def serve(served: Served) -> int:
    """Serve until Ctrl-C or SIGTERM (exit 0), or until the server dies (exit 1). Weights that do
    not load raise WeightsError before anything starts."""
    reference = resnet_perf.build_model(served.model, weights=served.weights, image_size=served.image_size,
                                        seed=served.seed)
    torch.set_num_threads(served.threads)
    config = RunConfig(f"{served.model}-{resnet_perf.weights_digest(reference)[:12]}", served.device, served.precision,
                       served.max_batch, served.image_size, served.threads, served.cache_dir, options=served.options)
    runner = served.runner(reference, config)
    server = LocalServer(runner, served.name, served.max_queue_delay_ms)
    try:
        runner.prepare()
        server.start()
        print(f"serving {server.name} ({runner.name}, {served.precision}, {served.device}, max batch "
              f"{served.max_batch}) at {server.grpc.url} and {server.http.url}; Ctrl-C stops it", flush=True)
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
