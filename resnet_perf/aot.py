"""``python -m resnet_perf.aot``: the fused kernels compiled for sm_90 (or another target) for every
convolution of the models, on this machine without a GPU, and what the compiler decided for each
(registers, spills, shared memory, tensor-core instructions, pipelining; kernels.aot does the
compiling). Compiled facts, not measurements.

    python -m resnet_perf.aot --model resnet18,resnet34,resnet50,resnet101,resnet152 --dtype fp16,bf16,fp32 --json out.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch
import triton

from kernels.aot import TARGETS, compiled_on, failures, peaks, read_records, records_table, sweep, warm_cache
from kernels.fused_conv2d import CONFIGS, DTYPES, INTERPRET
from resnet_perf.fused import conv_layers
from resnet_perf.models.resnet import MODEL_NAMES
from resnet_perf.precision import by_dtype
from resnet_perf.util.atomic import write_text
from resnet_perf.util.cli import (
    Parser,
    Stopped,
    UsageError,
    check_choices,
    list_of,
    output_file,
    positive_int,
    stop_on_signals,
)


def kernel_dtypes() -> dict[str, torch.dtype]:
    """The dtypes the kernels take, by the names of the precisions that compute in them (the
    command lines' names; int8, which the kernels do not run, has none)."""
    return {by_dtype(dtype).name: dtype for dtype in DTYPES}


def main(argv: list[str] | None = None) -> int:
    named_dtypes = kernel_dtypes()

    parser = Parser(prog="python -m resnet_perf.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=list_of(str), default=["resnet50"],
                        help=f"one or more of {', '.join(MODEL_NAMES)}: their convolutions share most compile "
                        "classes, each compiled once")
    parser.add_argument("--dtype", type=list_of(str), default=["fp16", "bf16", "fp32"],
                        help="fp16, bf16 and/or fp32 (compiled as TF32, PyTorch's default for convolutions)")
    parser.add_argument("--target", default="sm_90", choices=sorted(TARGETS))
    parser.add_argument("--batch-size", type=list_of(positive_int), default=[256])
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--path", type=list_of(str), help="only these kernel paths (gemm, gemm_tma, conv, few_channels)")
    parser.add_argument("--peaks-of", metavar="REPORT", help="compile each config only on the class where this "
                        "earlier --json report shows it peaking in registers, and each class once")
    parser.add_argument("--warm-cache", action="store_true", help="on a CUDA machine: compile every config through "
                        "the JIT into Triton's cache, so that autotuning later only measures (no report)")
    parser.add_argument("--jobs", type=positive_int, default=os.cpu_count())
    parser.add_argument("--json", metavar="PATH")
    try:
        args = parser.parse_args(argv)
        check_choices("--model", args.model, MODEL_NAMES)
        check_choices("--dtype", args.dtype, named_dtypes)
        check_choices("--path", args.path or [], CONFIGS)
        if args.peaks_of is not None and not os.path.isfile(args.peaks_of):
            raise UsageError(f"--peaks-of {args.peaks_of!r}: no such file")
        try:
            earlier = read_records(args.peaks_of) if args.peaks_of is not None else None
        except ValueError as exc:
            raise UsageError(f"--peaks-of {args.peaks_of}: {exc}") from None
        if args.target != "sm_90" and "gemm_tma" in (args.path or []):
            raise UsageError(f"--path gemm_tma: TMA needs sm_90; on {args.target} the 1x1s take the gemm path")
        json_target = output_file("--json", args.json)
        if INTERPRET:
            raise UsageError("TRITON_INTERPRET=1 is set: resnet_perf.aot compiles the real kernels, run it without")
        if args.warm_cache and not torch.cuda.is_available():
            raise UsageError("--warm-cache fills a CUDA machine's Triton cache: no CUDA GPU is visible here")
    except UsageError as exc:
        print(f"python -m resnet_perf.aot: error: {exc}", file=sys.stderr)
        return 2

    arch = TARGETS[args.target]
    dtypes = {name: named_dtypes[name] for name in args.dtype}
    # A conv is named by its model and module ("resnet18:layer1.0.conv2"), so a record says which
    # models' convolutions its one compile serves.
    convs = [replace(conv, name=f"{model}:{conv.name}") for model in args.model for batch in args.batch_size
             for conv in conv_layers(model, args.image_size, batch)]
    models = ", ".join(args.model)
    select = peaks(earlier) if earlier is not None else None
    if args.path:
        keep = select
        select = lambda r: r["path"] in args.path and (keep is None or keep(r))  # noqa: E731
    from rich.console import Console
    from rich.progress import Progress

    console = Console(width=max(Console().width, 160))
    start = time.perf_counter()
    try:
        with stop_on_signals(), Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("compiling")
            progress = lambda **kw: bar.update(task, **kw)  # noqa: E731
            if args.warm_cache:
                count = warm_cache(convs, list(dtypes.values()), args.jobs, progress)
            else:
                records = sweep(convs, dtypes, arch, args.jobs, select, progress)
    except KeyboardInterrupt as exc:
        stopped = Stopped.of(exc)
        print(f"python -m resnet_perf.aot: stopped by {stopped}; its compile processes ended, nothing written",
              file=sys.stderr)
        return stopped.exit_status
    elapsed = time.perf_counter() - start
    if not args.warm_cache and not records:
        paths = ", ".join(args.path or ["any"])
        print(f"python -m resnet_perf.aot: error: no convolution of {models} takes the {paths} path on "
              f"{args.target}{' in the classes ' + args.peaks_of + ' names' if args.peaks_of else ''}", file=sys.stderr)
        return 2
    if args.warm_cache:
        console.print(f"{count} compiles into Triton's cache for {len(convs)} convolutions of {models} "
                      f"in {elapsed:.0f} s ({args.jobs} processes)")
        return 0

    console.print(records_table(records))
    rejected = [(r, failures(r, arch)) for r in records if failures(r, arch)]
    for r, why in rejected:
        console.print(f"[red]{r['path']} {r['dtype']} {r['config']} on {r['shapes'][0]}:[/red] {'; '.join(why)}")
    console.print(f"{len(records)} compiles for {len(convs)} convolutions of {models} in {elapsed:.0f} s "
                  f"({args.jobs} processes); {len(rejected)} fail the autotune space's rules")
    if json_target is not None:
        command = "python -m resnet_perf.aot " + " ".join(sys.argv[1:] if argv is None else argv)
        report = {"schema": "resnet-perf/aot/2", "command": command, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                  "compiled_on": compiled_on(args.jobs), "models": args.model,
                  "batch_sizes": args.batch_size, "image_size": args.image_size,
                  "target": args.target, "triton": triton.__version__, "torch": torch.__version__,
                  "convs": [asdict(c) for c in convs], "records": records}
        write_text(json_target, json.dumps(report, indent=1) + "\n")
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
