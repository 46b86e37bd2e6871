"""timm's ResNet-50, timed at our bench's settings: an outside check of our eager and compile rows.

timm builds its resnet50 from its own code (nothing of ours), so a bench row that strays from this
figure by more than the noise means our harness or our model differs, not the GPU. Settings as
bench's: eval mode, weights and inputs in the precision, channels_last, inference_mode, CUDA
events around each call after a synchronise, after warm-up calls (torch.compile's compile happens
before those and is reported apart).

    python scripts/timm_timing.py --precision fp16 --batch-size 256 --mode eager,max-autotune --json timm.json

Rows are written after each measurement, so an interrupted run keeps what it finished; --append
adds to an existing file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("eager", "default", "reduce-overhead", "max-autotune")


def measure(model, x: torch.Tensor, iters: int, warmup: int) -> list[float]:
    """Per-call milliseconds as bench times CUDA rows: synchronise, then one CUDA event pair around
    the call, so a call's host-side launch cost is not hidden behind the previous call's work."""
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            model(x)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch-size", default="256")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--mode", default="eager", help=f"comma-separated: {', '.join(MODES)} (the last three compile)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--append", action="store_true", help="add to the rows already in --json")
    args = parser.parse_args(argv)
    try:
        import timm
    except ImportError as exc:
        print(f"timm_timing: timm is not importable here ({exc}); nothing measured", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("timm_timing: needs a CUDA GPU (it times as bench times CUDA rows); nothing measured", file=sys.stderr)
        return 2

    out = Path(args.json) if args.json else None
    rows = json.loads(out.read_text())["results"] if out and args.append and out.exists() else []
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__}
    for mode, precision, batch in itertools.product(args.mode.split(","), args.precision.split(","),
                                                   [int(b) for b in args.batch_size.split(",")]):
        dtype = DTYPES[precision]
        model = timm.create_model(args.model, pretrained=False).eval()
        model = model.to("cuda", dtype, memory_format=torch.channels_last)
        x = torch.randn(batch, 3, args.image_size, args.image_size, device="cuda", dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        if mode != "eager":
            model = torch.compile(model, mode=mode, dynamic=False, fullgraph=True)
            # As bench's compile backend: frozen weights, so Inductor folds BatchNorm into the convs.
            with torch._inductor.config.patch(freezing=True), torch.inference_mode():
                model(x)
            torch.cuda.synchronize()
        setup_s = time.perf_counter() - start
        samples = measure(model, x, args.iters, args.warmup)
        mean = statistics.fmean(samples)
        row = {"model": f"timm/{args.model}", "backend": "eager" if mode == "eager" else "compile",
               "compile_mode": None if mode == "eager" else mode, "precision": precision, "batch_size": batch,
               "image_size": args.image_size, "throughput_ips": batch * 1e3 / mean,
               "latency_ms": {"mean": mean, "p50": statistics.median(samples), "min": min(samples)},
               "setup_s": setup_s, "iters": args.iters}
        rows.append(row)
        print(f"{row['model']} {mode} {precision} batch {batch}: {row['throughput_ips']:.0f} img/s, "
              f"mean {mean:.3f} ms (setup {setup_s:.1f} s)", flush=True)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"env": env, "results": rows}, indent=1) + "\n")
            tmp.replace(out)
        del model
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
