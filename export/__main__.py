"""python -m export: write a deployable artifact (ONNX, a TensorRT engine, OpenVINO IR, an
AOTInductor package, or a Triton Inference Server model repository), prove it against the fp32
PyTorch model, and record what it was built for.

Read top to bottom: argument parsing, resolving the arguments into a plan (every bad input stops
here with exit 2, before anything is written), the model and its reference logits, then the
artifact, built in a hidden staging folder inside --output, checked at the smallest and the largest
batch it accepts, and published with its manifest only if it passes. A failure leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":
    # Importing torch takes seconds. A stop signal meanwhile ends the process as one later would
    # (exit 128 + signal, nothing written), without the traceback of an interrupted import.
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_signum, lambda signum, frame: os._exit(128 + signum))

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
from rich.console import Console
from rich.table import Table

import resnet_perf
from export import aoti, openvino_ir, quantize, tensorrt, triton_repo
from export.manifest import manifest_path, sha256_file, versions, write_manifest
from export.onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ONNX_PRECISIONS,
    BatchRange,
    cpu_session,
    export_onnx,
    graph_io,
)
from resnet_perf import parity
from resnet_perf.util.atomic import publish, staging_dir, write_text
from resnet_perf.util.cli import (
    Parser,
    Stopped,
    UsageError,
    check_directory,
    check_thread_variables,
    default_cache_dir,
    non_negative_float,
    one_line,
    output_file,
    positive_int,
    replaceable_file,
    resolve_device,
    rng_seed,
    stop_on_signals,
)

FORMATS = ("onnx", "tensorrt", "triton-repo", "openvino", "aoti")
SUFFIXES = {"onnx": "onnx", "tensorrt": "plan", "openvino": "xml", "aoti": "pt2"}
DEFAULT_BATCH = "1:8:32"
# Flags of one kind of artifact, by dest, with their defaults: given for another kind, where they
# would do nothing, they are refused.
ENGINE_FLAGS = {"timing_cache": None, "workspace_mib": 4096, "opt_level": 3}
REPO_FLAGS = {"triton_platform": "onnxruntime_onnx", "name": None, "instances": 1, "max_queue_delay_ms": 0.1}


class ExportFailed(Exception):
    """The artifact was built but is not kept (it failed parity, or a runtime refused it): exit 1."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help=", ".join(resnet_perf.MODEL_NAMES))
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="folder the artifact and its manifest are written to")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=positive_int, default=None, help="one static batch size")
    size.add_argument("--dynamic-batch", default=None, metavar="MIN:OPT:MAX",
                      help=f"a dynamic batch axis (default {DEFAULT_BATCH}; for openvino a static batch of its OPT); "
                           "OPT is the size TensorRT tunes for")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--precision", choices=(*ONNX_PRECISIONS, "bf16", "int8"), default="fp32")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET)
    p.add_argument("--weights", default=None, help="state_dict file (torchvision or ours); default: synthetic")
    p.add_argument("--seed", type=rng_seed, default=0, help="seed of the synthetic model and of the parity inputs")
    p.add_argument("--device", default="auto",
                   help="the GPU a TensorRT engine, or the device an AOTInductor package, is built for: cpu (aoti), "
                        "cuda, cuda:N or auto")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--timing-cache", default=None, help="TensorRT timing cache, read if present and saved")
    trt.add_argument("--workspace-mib", type=positive_int, default=None,
                     help=f"builder workspace limit (default {ENGINE_FLAGS['workspace_mib']})")
    trt.add_argument("--opt-level", type=int, choices=range(6), default=None, metavar="0..5",
                     help=f"builder optimization level (default {ENGINE_FLAGS['opt_level']}; 5 searches longest)")
    quantize.add_arguments(p)
    repo = p.add_argument_group("Triton Inference Server repository")
    repo.add_argument("--triton-platform", choices=tuple(triton_repo.PLATFORMS), default=None,
                      help=f"what the repository serves: the ONNX file or a TensorRT plan (default "
                           f"{REPO_FLAGS['triton_platform']})")
    repo.add_argument("--name", default=None, help="model name in the repository (default: --model)")
    repo.add_argument("--instances", type=positive_int, default=None,
                      help=f"model instances (instance_group count, default {REPO_FLAGS['instances']})")
    repo.add_argument("--max-queue-delay-ms", type=non_negative_float, default=None,
                      help=f"how long Triton's dynamic batcher waits to fill a batch (default "
                           f"{REPO_FLAGS['max_queue_delay_ms']})")
    return p


@dataclass(frozen=True)
class Repository:
    """--format triton-repo: how the model is served."""
    platform: str  # Triton's backend: onnxruntime_onnx or tensorrt_plan
    instances: int
    max_queue_delay_ms: float


@dataclass(frozen=True)
class Plan:
    """Everything the export reads, checked: nothing after resolve looks at the command line."""
    model: str
    format: str
    output: Path
    artifact: Path  # where the artifact goes, inside output
    batch: BatchRange
    precision: str
    image_size: int
    opset: int
    weights: str | None  # a state_dict file, or None for the synthetic model of ``seed``
    seed: int
    device: torch.device | None  # the GPU an engine is built for, the device an AOTInductor package is
    engine: tensorrt.BuildSettings | None  # a TensorRT engine is built (tensorrt, or a repository serving one)
    trt_version: str | None
    repository: Repository | None
    calibration_flags: quantize.CalibrationFlags
    calibration_inputs: torch.Tensor | None = None  # int8: the --calib-data inputs (None: synthetic)


def resolve(args: argparse.Namespace) -> Plan:
    """Check every argument against what this machine has; raise UsageError on the first bad one."""
    check_thread_variables()
    if args.model not in resnet_perf.MODEL_NAMES:
        raise UsageError(f"--model {args.model!r}: unknown model; choose from {', '.join(resnet_perf.MODEL_NAMES)}")
    repo = given_or_default(args, REPO_FLAGS, args.format == "triton-repo", "a Triton repository (--format triton-repo)")
    engine = args.format == "tensorrt" or repo["triton_platform"] == "tensorrt_plan"
    build = given_or_default(args, ENGINE_FLAGS, engine,
                             "a TensorRT engine (--format tensorrt, or --triton-platform tensorrt_plan)")
    if args.batch_size is not None:
        batch = BatchRange.static(args.batch_size)
    elif args.format == "openvino" and args.dynamic_batch is None:
        # A static IR, at the default's OPT: benchmark_app runs it as it is (a dynamic one it refuses
        # without -data_shape), and OpenVINO's CPU plugin plans a static graph once.
        batch = BatchRange.static(BatchRange.parse(DEFAULT_BATCH).opt)
    else:
        try:
            batch = BatchRange.parse(args.dynamic_batch or DEFAULT_BATCH)
        except ValueError as exc:
            raise UsageError(f"--dynamic-batch {exc}") from None
    if not MIN_OPSET <= args.opset <= onnx.defs.onnx_opset_version():
        raise UsageError(f"--opset {args.opset}: torch's exporter writes opsets {MIN_OPSET} to "
                         f"{onnx.defs.onnx_opset_version()} (this onnx's newest; it converts graphs up from "
                         f"{MIN_OPSET}, not down)")
    if args.format == "openvino":
        if args.precision not in ("fp32", "int8"):
            raise UsageError(f"--precision {args.precision}: OpenVINO IR is exported fp32 or int8 (OpenVINO runs an "
                             "fp32 IR in bf16 or fp16 itself where the CPU has them)")
        missing = openvino_ir.missing_reason(args.precision == "int8")
        if missing:
            raise UsageError(missing)
    if args.precision == "bf16" and args.format != "aoti":
        raise UsageError(f"--precision bf16: --format {args.format} is exported fp32, fp16 or int8")
    device = resolve_device(args.device) if args.format == "aoti" else None
    if args.format == "aoti":
        missing = aoti.missing_reason()
        if missing:
            raise UsageError(missing)
        if args.precision == "int8":
            raise UsageError("--precision int8: an AOTInductor package is exported fp32, fp16 or bf16")
        if device.type == "cpu" and args.precision == "fp16":
            raise UsageError("--precision fp16: CPU convolutions in fp16 run PyTorch's slow reference kernels; "
                             "build fp32 or bf16 for the CPU")
    if args.format == "triton-repo":
        if batch.dynamic and batch.min != 1:
            raise UsageError(f"--dynamic-batch {batch}: Triton's dynamic batcher sends every batch size from 1 "
                             "up, so MIN must be 1")
        if repo["name"] is not None and not triton_repo.usable_name(repo["name"]):
            raise UsageError(f"--name {repo['name']!r}: not a usable folder name")

    trt_version = None
    if engine:
        missing = tensorrt.missing_reason()
        if missing:
            raise UsageError(missing)
        device = resolve_device(args.device)
        if device.type != "cuda":
            raise UsageError("TensorRT engines are built on the GPU they run on, and PyTorch sees no CUDA GPU here")
        trt_version = tensorrt.version()
        capability = tensorrt.gpu_target(device)["compute_capability"]
        if args.precision == "fp16" and not tensorrt.has_fast_fp16(capability):
            raise UsageError(f"--precision fp16: {torch.cuda.get_device_name(device)} (compute capability "
                             f"{capability}) has no fast fp16; build fp32")
        if args.precision == "int8" and not tensorrt.has_int8(capability):
            raise UsageError(f"--precision int8: {torch.cuda.get_device_name(device)} (compute capability "
                             f"{capability}) has no int8 instructions; build fp32")
        output_file("--timing-cache", build["timing_cache"])
    flags = quantize.CalibrationFlags(args.calib_data, args.calib_method, args.calib_samples, tuple(args.keep_fp or ()))
    calibration_inputs = quantize.check_arguments(flags, [args.model], args.image_size, [args.precision])
    if flags.keep_fp and args.precision == "fp16":
        if engine and not tensorrt.strongly_typed(trt_version):
            raise UsageError(f"--keep-fp: TensorRT {trt_version} builds fp16 from the fp32 graph with the FP16 flag, "
                             "choosing each layer's type itself; keeping layers in fp32 needs TensorRT 11")
    if args.precision == "int8" and args.format == "openvino":
        quantize.check_quantizer(flags, "nncf", "--format openvino")
    if args.format == "triton-repo":
        artifact = Path(repo["name"] or args.model) / "1" / triton_repo.artifact_name(repo["triton_platform"])
    else:
        artifact = Path(f"{args.model}-{args.precision}.{SUFFIXES['tensorrt' if engine else args.format]}")
    check_replaced(Path(args.output), artifact, args.format)
    check_directory("--output", args.output)  # last: a refused export creates nothing
    settings = None
    if engine:
        timing_cache = Path(build["timing_cache"]) if build["timing_cache"] else None
        settings = tensorrt.BuildSettings(args.precision, batch, args.image_size, build["workspace_mib"],
                                          build["opt_level"], timing_cache,
                                          flags.keep_fp if args.precision == "fp16" else ())
    repository = None
    if args.format == "triton-repo":
        repository = Repository(repo["triton_platform"], repo["instances"], repo["max_queue_delay_ms"])
    return Plan(args.model, args.format, Path(args.output), artifact, batch, args.precision, args.image_size,
                args.opset, args.weights, args.seed, device, settings, trt_version, repository, flags,
                calibration_inputs)


def given_or_default(args: argparse.Namespace, flags: dict, applies: bool, what: str) -> dict:
    """The values of ``flags``, their defaults where not given; one given where it does not apply is refused."""
    values = {}
    for dest, default in flags.items():
        given = getattr(args, dest)
        if given is not None and not applies:
            raise UsageError(f"--{dest.replace('_', '-')} applies to {what}, not --format {args.format}")
        values[dest] = default if given is None else given
    return values


def check_replaced(output: Path, artifact: Path, format: str) -> None:
    """What the export will replace in ``output``, checked before anything is built: each file a
    regular file or nothing yet (symlinks followed), each folder a folder, so that publishing never
    stops half-way (an artifact replaced, its manifest not) nor replaces a FIFO or a device. A model
    repository's model folder is kept, its config.pbtxt replaced and its version folder swapped."""
    files = [artifact, manifest_path(artifact)]
    folders = []
    if format == "openvino":
        files.append(openvino_ir.weights_path(artifact))
    if format == "triton-repo":
        files.append(artifact.parents[1] / "config.pbtxt")
        folders = [artifact.parents[1], artifact.parent]
    for folder in folders:
        if (output / folder).exists() and not (output / folder).is_dir():
            raise UsageError(f"--output {output}: {folder} is there and is not a folder; the export writes a folder "
                             "of that name")
    for file in files:
        replaceable_file("--output", output / file)


def check_parity(run, reference: torch.Tensor, inputs: torch.Tensor, batch: BatchRange, precision: str) -> dict:
    """The artifact's logits against the fp32 PyTorch model at its smallest and largest batch size."""
    figures = {str(n): parity.compare(reference, parity.predict(run, inputs, n), precision)
               for n in sorted({batch.min, batch.max})}
    return {"reference": parity.REFERENCE, "batches": figures, "passed": all(f["passed"] for f in figures.values())}


def engine_run(path: Path, device: torch.device):
    engine = tensorrt.Engine(path, device)
    return lambda x: engine(x.to(device, engine.input_dtype).contiguous()).float().cpu()


def build_artifact(plan: Plan, model: torch.nn.Module, path: Path, describe: dict) -> dict:
    """Write the artifact at ``path`` with its manifest, after it passes parity; returns the manifest."""
    inputs = resnet_perf.parity_inputs(parity.PARITY_BATCH, plan.image_size, plan.seed, model.fc.out_features)
    with torch.inference_mode():
        reference = model(inputs)

    calibration = None
    if plan.precision == "int8":
        calibration = quantize.calibration(plan.calibration_flags, plan.calibration_inputs, plan.image_size,
                                           plan.seed, model.fc.out_features)
    # INT8 calibration ranges are kept beside the artifact, so re-exporting with the same inputs skips
    # them; but not inside a Triton model repository, where any folder is taken for a model.
    calibration_cache = plan.output / "calibration"
    if plan.format == "triton-repo":
        calibration_cache = default_cache_dir() / "calibration"
    if plan.engine is not None:
        built = tensorrt.export_engine(model, path, plan.engine, plan.device, plan.opset, calibration, calibration_cache)
        fields = {"format": "tensorrt", **describe, **built}
        write_manifest(path, fields)  # the engine loader reads it: the version and GPU check runs here too
        run = engine_run(path, plan.device)
    elif plan.format == "openvino":
        built = openvino_ir.export_ir(model, path, batch=plan.batch, image_size=plan.image_size, opset=plan.opset,
                                      calibration=calibration)
        fields = {"format": "openvino", **describe, **built, "opset": plan.opset,
                  "versions": {**describe["versions"], **openvino_ir.versions()}, "gpu": None, "tensorrt": None}
        run = openvino_ir.cpu_run(path)
    elif plan.format == "aoti":
        built = aoti.build_package(model, path, batch=plan.batch, image_size=plan.image_size,
                                   precision=plan.precision, device=plan.device, keep_fp=plan.calibration_flags.keep_fp)
        fields = {"format": "aoti", **describe, **built, "gpu": (built["target"].get("gpu")), "tensorrt": None}
        run = aoti.runner_for_parity(path, plan.device, plan.precision)
    else:
        quantization = None
        if calibration is not None:
            quantization = quantize.export_quantized(model, path, batch=plan.batch, image_size=plan.image_size,
                                                     opset=plan.opset, calibration=calibration, flavour="onnxruntime",
                                                     cache_dir=calibration_cache)
        else:
            export_onnx(model, path, batch=plan.batch, image_size=plan.image_size, precision=plan.precision,
                        opset=plan.opset, keep_fp=plan.calibration_flags.keep_fp)
        fields = {"format": "onnx", **describe, **graph_io(path), "opset": plan.opset, "quantization": quantization,
                  "gpu": None, "tensorrt": None}
        run = cpu_session(path, plan.precision)

    checked = check_parity(run, reference, inputs, plan.batch, plan.precision)
    if not checked["passed"]:
        worst = min(checked["batches"].items(), key=lambda kv: kv[1]["cosine"])
        raise ExportFailed(f"{path.name} failed parity against the PyTorch model at batch {worst[0]} "
                           f"(cosine {worst[1]['cosine']:.6f}, top-1 agreement {worst[1]['top1_agreement']:.3f}); "
                           "not kept")
    return write_manifest(path, {**fields, "parity": checked})


def describe_model(plan: Plan, model: torch.nn.Module) -> dict:
    """The manifest fields saying what the artifact computes: which model, weights and shapes, and
    for fp16 the layers kept in fp32 (int8's are in its quantization's description)."""
    if plan.weights is None:
        weights = {"source": "synthetic", "seed": plan.seed, "calibrated_for": plan.image_size}
    else:
        weights = {"source": "file", "path": os.path.abspath(plan.weights), "sha256": sha256_file(plan.weights)}
    return {
        "model": plan.model,
        "num_classes": model.fc.out_features,
        "weights": weights,
        "weights_digest": resnet_perf.weights_digest(model),
        "precision": plan.precision,
        "image_size": plan.image_size,
        "batch": asdict(plan.batch),
        "versions": versions(plan.trt_version),
        **({"keep_fp": list(plan.calibration_flags.keep_fp)} if plan.precision == "fp16" else {}),
    }


def export(plan: Plan, model: torch.nn.Module) -> tuple[list[Path], dict]:
    """Build, check and publish the artifact; returns what was published and the manifest."""
    describe = describe_model(plan, model)
    with staging_dir(plan.output) as stage:
        if plan.repository is not None:
            name, repository = plan.artifact.parts[0], plan.repository
            (stage / plan.artifact).parent.mkdir(parents=True)
            manifest = build_artifact(plan, model, stage / plan.artifact, describe)
            config = triton_repo.config_pbtxt(name, repository.platform, manifest, instances=repository.instances,
                                              max_queue_delay_us=round(repository.max_queue_delay_ms * 1000))
            write_text(stage / name / "config.pbtxt", config)
        else:
            manifest = build_artifact(plan, model, stage / plan.artifact, describe)
        return publish(stage, plan.output), manifest


def report(published: list[Path], manifest: dict, seconds: float, console: Console) -> None:
    grid = Table(title=f"{manifest['artifact']}: parity against the fp32 PyTorch model", title_justify="left")
    for column in ("batch", "cosine", "rel_l2", "max_abs", "top1", "top5", "distinct", "parity"):
        grid.add_column(column, justify="left" if column == "parity" else "right")
    for size, p in manifest["parity"]["batches"].items():
        grid.add_row(size, f"{p['cosine']:.6f}", f"{p['rel_l2']:.1e}", f"{p['max_abs']:.1e}",
                     f"{p['top1_agreement']:.3f}", f"{p['top5_agreement']:.3f}", f"{p['distinct_top1']:.2f}",
                     "[green]pass[/green]")
    console.print(grid)
    io = manifest["inputs"][0]
    console.print(f"input {io['name']} {io['dtype']} {io['shape']}; sha256 {manifest['sha256']}", highlight=False)
    for path in published:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"done in {seconds:.1f} s", highlight=False)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    with stop_on_signals():
        try:
            return export_command(argv, start)
        except KeyboardInterrupt as exc:  # the staging folder is gone: nothing half-built is left
            stopped = Stopped.of(exc)
            print(f"python -m export: interrupted by {stopped}; nothing was written", file=sys.stderr)
            return stopped.exit_status


def export_command(argv: list[str] | None, start: float) -> int:
    try:
        args = build_parser().parse_args(argv)
        plan = resolve(args)
        model = resnet_perf.build_model(plan.model, weights=plan.weights, image_size=plan.image_size, seed=plan.seed)
    except (UsageError, resnet_perf.WeightsError) as exc:
        print(f"python -m export: error: {exc}", file=sys.stderr)
        return 2

    try:
        published, manifest = export(plan, model)
    except ExportFailed as exc:
        print(f"python -m export: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - an exporter, parser or builder failure, in one line
        print(f"python -m export: failed: {one_line(exc)}", file=sys.stderr)
        return 1
    console = Console(width=max(Console().width, 120))
    report(published, manifest, time.perf_counter() - start, console)
    if plan.format == "triton-repo":
        folder = plan.output / plan.artifact.parts[0]
        later = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 1)
        if later:
            console.print(f"note: {folder} also holds version(s) {', '.join(map(str, later))}, kept; Triton's default "
                          "version policy serves the latest", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
