"""The openvino backend's two int8 models side by side, as the harness times them and as OpenVINO's
own benchmark_app does, alternated round by round in one process (these VMs drift by 25% within
minutes: only ratios within a round mean anything):

- our rows: NNCF's IR and onnxruntime's QDQ file, each with --streams 1 and 2 (bench's runner,
  timed by bench.timing, parity against the fp32 model once);
- benchmark_app on the same two files, -hint latency and -hint throughput, with the int8 model's
  unquantized layers in f32 (as our rows pin them) and in bf16 (benchmark_app's default where the
  CPU has it): whether letting them run in bf16 pays.

    python scripts/int8_flavours.py --model resnet50 --batch-size 8 --rounds 4 --seconds 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from crosscheck_timing import benchmark_app, harness  # this folder's: run as python scripts/int8_flavours.py

import resnet_perf
from bench.env import collect
from bench.report import machine_line
from bench.run import streams_count
from bench.runners import RunConfig, packages
from bench.runners.openvino import OpenVINORunner
from export import quantize
from resnet_perf import parity
from resnet_perf.util.cli import Parser, positive_float, positive_int, script


def main() -> None:
    p = Parser(prog="scripts/int8_flavours.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", choices=resnet_perf.MODEL_NAMES)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--rounds", type=positive_int, default=4)
    p.add_argument("--seconds", type=positive_float, default=8.0, help="each measurement's length")
    args = p.parse_args()

    model = resnet_perf.build_model(args.model, image_size=args.image_size)
    inputs = resnet_perf.parity_inputs(parity.PARITY_BATCH, args.image_size, 0, model.fc.out_features)
    with torch.inference_mode():
        reference = model(inputs)
    calibration = quantize.calibration(quantize.CalibrationFlags(None, "minmax", 64, ()), None, args.image_size, 0,
                                       model.fc.out_features)
    threads = torch.get_num_threads()
    print(machine_line(collect(torch.device("cpu"), threads, packages())))
    with tempfile.TemporaryDirectory(prefix="resnet-perf-int8-") as cache:
        alternate(args, model, Path(cache), calibration, inputs, reference, threads)


def alternate(args: argparse.Namespace, model: torch.nn.Module, cache: Path, calibration: quantize.Calibration,
              inputs: torch.Tensor, reference: torch.Tensor, threads: int) -> None:
    """Both int8 models built in ``cache`` and checked, then every measurement, round by round."""
    measured = defaultdict(list)
    files = {}
    runners = {}
    for quantizer in ("nncf", "qdq"):
        for streams in (1, 2):
            config = RunConfig(f"{args.model}-flavours", torch.device("cpu"), "int8", args.batch_size,
                               args.image_size, threads, cache, calibration=calibration, streams=streams,
                               quantizer=quantizer)
            runner = OpenVINORunner(model, config)
            runner.build()
            files[quantizer] = runner.model_path()
            runners[quantizer, streams] = runner
    for quantizer in ("nncf", "qdq"):
        with runners[quantizer, 1] as runner:
            figures = parity.compare(reference, parity.predict(runner.infer, inputs, args.batch_size), "int8")
        print(f"{quantizer}: {files[quantizer].name}: cosine {figures['cosine']:.6f} rel_l2 {figures['rel_l2']:.4f}")
    for round_ in range(1, args.rounds + 1):
        line = []
        for (quantizer, streams), runner in runners.items():
            with runner:
                count, _, _ = streams_count(runner, streams)
                ips = harness(runner, count, iters=5, seconds=args.seconds)
            measured[f"ours {quantizer} streams {streams}"].append(ips)
            line.append(f"ours {quantizer} s{streams} {ips:.1f}")
        for quantizer, path in files.items():
            for hint in ("latency", "throughput"):
                for precision in ("f32", "bf16"):
                    fps = benchmark_app(path, hint, args.seconds, infer_precision=precision)["throughput_ips"]
                    measured[f"benchmark_app {quantizer} -hint {hint} -infer_precision {precision}"].append(fps)
                    line.append(f"app {quantizer} {hint} {precision} {fps:.1f}")
        print(f"round {round_}: " + ", ".join(line), flush=True)
    print("\nratios within each round (median over rounds, then each round):")
    pairs = [("ours nncf streams 1", "ours qdq streams 1"), ("ours nncf streams 2", "ours qdq streams 2")]
    for quantizer in files:
        for hint in ("latency", "throughput"):
            stem = f"benchmark_app {quantizer} -hint {hint} -infer_precision"
            pairs.append((f"{stem} bf16", f"{stem} f32"))
    for hint in ("latency", "throughput"):
        pairs.append((f"benchmark_app nncf -hint {hint} -infer_precision f32",
                      f"benchmark_app qdq -hint {hint} -infer_precision f32"))
    for a, b in dict.fromkeys(pairs):
        ratios = [x / y for x, y in zip(measured[a], measured[b], strict=True)]
        print(f"{a} / {b}: median {statistics.median(ratios):.2f} ({' '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    sys.exit(script("scripts/int8_flavours.py", main))
