"""Cross-check the harness's throughput against plain timing loops written without it.

For each backend the harness's figure (its runner, timed by bench.timing) and a plain loop over
the framework's own call (the torch module, the compiled module, InferenceSession.run with numpy)
are measured alternately, twice each, in one process, and the median figures compared. A harness
that added overhead, or skipped work, would show as a ratio away from 1.

    python scripts/crosscheck_timing.py --model resnet50 --batch-size 8 --image-size 224
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

import resnet_perf
from bench import timing
from bench.runners import RUNNERS, RunConfig


def plain_loop(call, iters: int, warmup: int) -> float:
    """Images per second of ``call`` in the simplest loop there is."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return iters / (time.perf_counter() - start)


def plain_call(backend: str, model: torch.nn.Module, x: torch.Tensor, onnx_path: Path):
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    module = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    if backend == "compile":
        module = torch.compile(module, dynamic=False)
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            module(xc)

    def call():
        with torch.inference_mode():
            module(xc)

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--backend", default="eager,compile,onnxruntime")
    args = p.parse_args()

    model = resnet_perf.build_model(args.model, image_size=args.image_size)
    x = resnet_perf.parity_inputs(args.batch_size, args.image_size)
    device = torch.device("cpu")
    cache = Path(tempfile.mkdtemp(prefix="crosscheck-"))
    print(f"{args.model} bs{args.batch_size} {args.image_size}px, {torch.get_num_threads()} threads, "
          f"{args.iters} iterations per measurement, 2 alternating rounds")
    print(f"{'backend':<12} {'harness img/s':>14} {'plain img/s':>12} {'harness/plain':>14}")
    for backend in args.backend.split(","):
        config = RunConfig(f"{args.model}-crosscheck", device, "fp32", args.batch_size, args.image_size,
                           torch.get_num_threads(), cache)
        with RUNNERS[backend](model, config) as runner:
            onnx_path = runner.onnx_path() if backend == "onnxruntime" else None
            native = runner.to_input(x)
            call = plain_call(backend, model, x, onnx_path)
            harness, plain = [], []
            for _ in range(2):
                measured = timing.measure(lambda: runner.run(native), device, warmup=3, iters=args.iters)
                harness.append(timing.summarize(measured.samples_ms, args.batch_size)["throughput_ips"])
                plain.append(args.batch_size * plain_loop(call, args.iters, warmup=3))
        h, q = statistics.median(harness), statistics.median(plain)
        print(f"{backend:<12} {h:>14.1f} {q:>12.1f} {h / q:>14.3f}")


if __name__ == "__main__":
    main()
