"""Per-layer micro-benchmark: our fused conv kernel against cuDNN's conv + BatchNorm (+ add) + ReLU,
run as separate ops in eager PyTorch and fused by torch.compile, on every distinct conv of a model.

    python scripts/conv_layers.py --model resnet50 --batch-size 256 --dtype fp16,bf16 --json layers.json

Each provider computes the same layer from the same tensors: the unfused ones from the conv's
weights and BatchNorm statistics, ours from the folded weights, as each model runs it. Times come
from triton.testing.do_bench (median, 20th and 80th percentiles, CUDA events, L2 flushed between
runs) and are printed with TFLOP/s and ours against each other provider; each layer's row also
names the autotune config our kernel picked. ``--dry-run`` runs the same code on CPU, ours under
Triton's interpreter, at a tiny size: it checks the script, its figures are not performance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

PROVIDERS = ("fused", "eager", "compile")


def layer_inputs(conv, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    c, k = conv.channels, conv.out_channels
    fan_in = c * conv.kernel[0] * conv.kernel[1]
    x = randn(conv.batch, c, conv.height, conv.width).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = randn(k, c, *conv.kernel, scale=fan_in ** -0.5)
    bn = {"mean": randn(k, scale=0.1), "var": randn(k).abs() + 0.5, "gamma": randn(k).abs() + 0.5, "beta": randn(k)}
    residual = None
    if conv.residual:
        residual = randn(conv.batch, k, *conv.out_size).to(dtype).contiguous(memory_format=torch.channels_last)
    return {"x": x, "weight": weight, "bn": bn, "residual": residual}


def unfused(conv, inputs: dict, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """conv, BatchNorm, add, ReLU as an eager fp16/bf16 model runs them: cuDNN's conv, then one
    kernel per op."""
    x, residual = inputs["x"], inputs["residual"]
    weight = inputs["weight"].to(dtype).contiguous(memory_format=torch.channels_last)
    bn = {name: t.to(dtype) for name, t in inputs["bn"].items()}

    def layer():
        y = F.conv2d(x, weight, None, conv.stride, conv.padding)
        y = F.batch_norm(y, bn["mean"], bn["var"], bn["gamma"], bn["beta"], training=False, eps=1e-5)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if conv.relu else y

    return layer


def fused(conv, inputs: dict, dtype: torch.dtype) -> tuple[Callable[[], torch.Tensor], str]:
    """Our kernel on the folded weights, and the kernel path it takes."""
    from kernels.fused_conv2d import fused_conv2d, kernel_channels, pack_weight, pad_channels, plan
    from resnet_perf.fold import fold_conv_bn_weights

    bn = inputs["bn"]
    weight, bias = fold_conv_bn_weights(inputs["weight"], None, bn["mean"], bn["var"], 1e-5, bn["gamma"], bn["beta"])
    weight = weight.to(dtype)
    # As the fused model lays out the stem: padded once, not per call.
    channels = kernel_channels(conv.channels)
    x, weight = pad_channels(inputs["x"], channels), pad_channels(weight, channels)
    weight, bias = pack_weight(weight), bias.float()
    args = dict(stride=conv.stride, padding=conv.padding, residual=inputs["residual"], relu=conv.relu)
    return lambda: fused_conv2d(x, weight, bias, **args), plan(x, weight, bias, **args).path


def chosen_config(path: str) -> str | None:
    """The autotune config our kernel last ran on ``path`` with: the layer just measured."""
    from kernels import aot
    from kernels.fused_conv2d import INTERPRET, KERNELS

    best = None if INTERPRET else KERNELS[path].best_config
    return f"{path} {aot.config_name(best)}" if best is not None else None


def bench(fn: Callable[[], torch.Tensor], device: torch.device, rep_ms: int) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile ms: triton's do_bench on CUDA, a plain clock on CPU."""
    if device.type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))
    fn()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="fp16,bf16")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--layers", type=int, help="only the first N distinct convs")
    parser.add_argument("--rep-ms", type=int, default=50, help="do_bench's measuring time per provider and layer")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, a tiny model size")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined, at their import below
        args.batch_size, args.image_size, args.layers = 1, 32, args.layers or 1
    device = torch.device("cpu" if args.dry_run else "cuda")
    from rich.console import Console
    from rich.table import Table

    from resnet_perf.aot import kernel_dtypes
    from resnet_perf.fused import conv_layers

    # One entry per distinct conv, with every module that has its shape.
    distinct: dict[str, list] = {}
    for conv in conv_layers(args.model, args.image_size, args.batch_size):
        distinct.setdefault(conv.shape, []).append(conv)
    layers = list(distinct.values())[: args.layers]
    providers = args.providers.split(",")
    records = []
    dtypes = kernel_dtypes()
    for dtype_name in args.dtype.split(","):
        dtype = dtypes[dtype_name]
        for convs in layers:
            conv = convs[0]
            inputs = layer_inputs(conv, dtype, device)
            fused_call, path = fused(conv, inputs, dtype)
            calls = {"fused": fused_call, "eager": unfused(conv, inputs, dtype)}
            if "compile" in providers:
                calls["compile"] = torch.compile(unfused(conv, inputs, dtype), dynamic=False)
            expected = calls["eager"]().float()
            record = {"dtype": dtype_name, "shape": conv.shape, "modules": [c.name for c in convs],
                      "gflop": 2 * conv.batch * conv.out_channels * conv.out_size[0] * conv.out_size[1]
                      * conv.channels * conv.kernel[0] * conv.kernel[1] / 1e9}
            for name in providers:
                got = calls[name]().float()  # compiles, autotunes
                # The unfused providers round after conv and after BN; ours once, at the end.
                record[f"{name}_max_err"] = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
                record[name] = bench(calls[name], device, args.rep_ms)
            record["fused_config"] = chosen_config(path) if "fused" in providers else None
            records.append(record)

    table = Table(title=f"{args.model} convolutions, batch {args.batch_size}, {args.image_size} px, on "
                        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (dry run: interpreter)'}")
    for column in ("dtype", "conv", "x", *[f"{p} ms" for p in providers], "fused TFLOP/s",
                   *[f"vs {p}" for p in providers if p != "fused"], "fused config"):
        table.add_column(column)
    totals: dict[tuple[str, str], float] = {}
    for r in records:
        count = len(r["modules"])
        for p in providers:
            totals[r["dtype"], p] = totals.get((r["dtype"], p), 0.0) + count * r[p][0]
        table.add_row(r["dtype"], r["shape"], str(count), *[f"{r[p][0]:.3f}" for p in providers],
                      f"{r['gflop'] / r['fused'][0]:.1f}" if "fused" in providers else "",
                      *[f"{r[p][0] / r['fused'][0]:.2f}x" for p in providers if p != "fused"], r["fused_config"] or "")
    console = Console(width=200)
    console.print(table)
    for dtype_name in args.dtype.split(","):
        line = ", ".join(f"{p} {totals[dtype_name, p]:.2f} ms" for p in providers)
        console.print(f"{dtype_name}: every conv of one forward pass (layers x count): {line}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        report = {"model": args.model, "batch_size": args.batch_size, "image_size": args.image_size,
                  "device": table.title, "dry_run": args.dry_run, "providers": providers, "records": records,
                  "totals_ms": {f"{d} {p}": t for (d, p), t in totals.items()}}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
