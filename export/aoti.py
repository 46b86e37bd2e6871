"""AOTInductor packages (``.pt2``): what a PyTorch user ships to start without compiling. The model
captured by torch.export is compiled ahead of time by TorchInductor into one shared library with its
weights, zipped with its generated code; ``torch._inductor.aoti_load_package`` in Python, or
``AOTIModelPackageLoader`` in C++, loads it.

What the package is tied to, the manifest records and ``check_target`` enforces, naming both sides:
- the torch that built it: the library calls libtorch's C ABI as that release has it (the package
  itself records no torch version; we add it to its metadata and to the manifest);
- on CPU, the instruction sets of the CPU it was built on: Inductor compiles with ``-march=native``,
  so a package built on an AMX Xeon holds AVX-512 and AMX instructions, and on a CPU without them
  would die of an illegal instruction, not fail with a message (torch warns and loads it anyway);
- on CUDA, the GPU model and compute capability its Triton kernels were built for.

Found building our ResNets (torch 2.13): ``freezing`` (BatchNorm folded into the convolutions,
weights pre-packed for oneDNN) only applies when the export and the compilation run without
autograd, silently otherwise; the input's memory format is baked in by the example's strides (a
package built for NCHW fed channels_last computes garbage without a word), so the manifest names
it; the thread count is left to the process (``cpp.dynamic_threads``) rather than baked in when the
build's count differs from the machine's cores.

Loading: ``aoti_load_package`` probes the CPU's instruction sets by compiling and running test
programs with g++ (ten of them, up to 19 s on an empty Inductor cache here), only to print a warning
(pytorch/pytorch#191715); ``load`` builds the same loader directly, which takes 0.1 s. A CPU package
is loaded with device index -1: any other fails ("Incorrect device passed to aoti_runner_cpu"); a
CUDA package is loaded on the row's GPU (device_index), not the first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from export.manifest import ManifestError
from export.onnx import BatchRange
from resnet_perf.mixed import keep_fp32
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.cpu import cpu_flags

# The instruction-set extensions that decide which CPUs a package built with -march=native runs on.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
INPUT_NAME, OUTPUT_NAME = "x", "logits"
# Weights frozen into the library (BatchNorm folded, oneDNN's packed layouts), the thread count left
# to the process at run time.
INDUCTOR_CONFIGS = {"freezing": True, "cpp.dynamic_threads": True}


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor builds with ($CXX, then g++, clang++ or c++), or None: compile's
    CPU kernels need one, and every AOTInductor package (its wrapper is C++ on CUDA too)."""
    return next((c for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c and shutil.which(c)), None)


def missing_reason() -> str | None:
    """Why no package can be built here, or None."""
    if cxx_compiler() is None:
        return "AOTInductor compiles C++: install g++ or clang++, or set CXX"
    return None


def cpu_isa() -> list[str]:
    """This CPU's extensions among ISA_FLAGS, as /proc/cpuinfo names them."""
    flags = cpu_flags()
    return [flag for flag in ISA_FLAGS if flag in flags]


def target(device: torch.device) -> dict:
    """What a package built on ``device`` is tied to: the torch release, and the CPU's extensions or
    the GPU."""
    if device.type == "cuda":
        from export.tensorrt import gpu_target

        return {"torch": torch.__version__, "device": "cuda", "gpu": gpu_target(device)}
    return {"torch": torch.__version__, "device": "cpu", "cpu_isa": cpu_isa()}


def check_target(manifest: dict, device: torch.device) -> None:
    """Refuse a package this machine cannot run as built: another torch, another kind of device,
    a CPU without an extension the package was compiled for, another GPU."""
    built, here = manifest.get("target") or {}, target(device)
    name = manifest.get("artifact")
    if built.get("torch") != here["torch"]:
        raise ManifestError(f"{name} was built with torch {built.get('torch')}, this is torch {here['torch']}: "
                            "rebuild it with python -m export --format aoti")
    if built.get("device") != here["device"]:
        raise ManifestError(f"{name} was built for {built.get('device')}, this run is on {here['device']}")
    if here["device"] == "cpu":
        missing = [flag for flag in built.get("cpu_isa", []) if flag not in here["cpu_isa"]]
        if missing:
            raise ManifestError(f"{name} was built for a CPU with {' '.join(built['cpu_isa'])}; this CPU lacks "
                                f"{' '.join(missing)} (it would stop on an illegal instruction): rebuild it here")
    elif built.get("gpu") != here["gpu"]:
        gpu, ours = built.get("gpu") or {}, here["gpu"]
        raise ManifestError(f"{name} was built for {gpu.get('name')} (compute capability "
                            f"{gpu.get('compute_capability')}), this GPU is {ours['name']} (compute capability "
                            f"{ours['compute_capability']}): rebuild it on this GPU")


def build_package(model: nn.Module, path: Path, *, batch: BatchRange, image_size: int, precision: str,
                  device: torch.device, keep_fp: tuple[str, ...] = ()) -> dict:
    """Write ``model`` at ``precision`` as an AOTInductor package at ``path`` for channels_last
    inputs on ``device`` (a dynamic batch axis where ``batch`` is a range). In fp16 the layers named
    in ``keep_fp`` compute in fp32 (``resnet_perf.mixed.keep_fp32``: torch.export traces its casts
    into the graph Inductor compiles). Returns the manifest's fields describing it."""
    if keep_fp and precision != "fp16":
        raise ValueError(f"keep_fp: a {precision} package has no lower-precision layer to keep in fp32")
    dtype = PRECISIONS[precision].dtype
    model = keep_fp32(model, keep_fp, dtype).eval().to(device, memory_format=torch.channels_last)
    example = torch.zeros(batch.opt, 3, image_size, image_size, device=device, dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    dynamic = ({0: torch.export.Dim("batch", min=batch.min, max=batch.max)},) if batch.dynamic else None
    configs = {**INDUCTOR_CONFIGS,
               "aot_inductor.metadata": {"torch_version": torch.__version__, "input_memory_format": "channels_last"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix=".resnet-perf-pt2-", dir=path.parent) as tmp:
        # Built beside its place under its own name (the package's folders are named after it), then
        # moved in with one rename: no reader sees half a package. Frozen only without autograd.
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        staged = Path(tmp) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(staged),
                                               inductor_configs=dict(configs))  # it adds keys of its own
        os.replace(staged, path)
    n, dtype_name = "batch" if batch.dynamic else batch.opt, PRECISIONS[precision].dtype_name
    return {
        "inputs": [{"name": INPUT_NAME, "dtype": dtype_name, "shape": [n, 3, image_size, image_size],
                    "memory_format": "channels_last"}],
        "outputs": [{"name": OUTPUT_NAME, "dtype": dtype_name, "shape": [n, model.fc.out_features]}],
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}} if batch.dynamic else {},
        "target": target(device),
        "inductor_configs": INDUCTOR_CONFIGS,
    }


def load(path: str | os.PathLike, device: torch.device):
    """The package at ``path`` loaded for ``device``: a callable on channels_last inputs there.
    Built as ``aoti_load_package`` builds it, without its compiler probe of the CPU."""
    from torch.export.pt2_archive._package import AOTICompiledModel

    index = -1 if device.type == "cpu" else (device.index if device.index is not None else torch.cuda.current_device())
    loader = torch._C._aoti.AOTIModelPackageLoader(os.fspath(path), "model", False, 1, index)
    return AOTICompiledModel(loader)


def runner_for_parity(path: Path, device: torch.device, precision: str):
    """A function of fp32 NCHW CPU batches, as the export's parity check feeds them."""
    package = load(path, device)
    dtype = PRECISIONS[precision].dtype

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            y = package(x.to(device, dtype).contiguous(memory_format=torch.channels_last))
        return (y[0] if isinstance(y, (list, tuple)) else y).float().cpu()

    return run
