"""Compile the fused kernels for a GPU that is not here, and report what the compiler decided.

Triton's interpreter, which runs our kernels on CPU machines, checks their numbers but hides every
decision a real compile makes: register allocation and spills, shared memory, the tensor-core
instruction, vector and asynchronous loads, software pipelining. ``triton.compile`` needs no GPU
or driver when given an explicit target, and Triton's wheel carries ptxas and cuobjdump, so the
same kernels compile here to the PTX, cubin and SASS an H100 would run. The command that compiles
them for every convolution of the models is ``python -m resnet_perf.aot`` (the models sit above
this package, which imports nothing of ours):

    python -m resnet_perf.aot --model resnet18,resnet34,resnet50,resnet101,resnet152 --dtype fp16,bf16,fp32 --json out.json

Each convolution is planned by ``kernels.fused_conv2d.plan`` on CPU tensors with the shapes,
strides and dtypes the fused model gives the GPU, and bound by the JIT's own binder, so the
compile sees the specialisation a launch would (16-divisible sizes, unit strides as constants):
a hand-written signature would compile into scalar loads without cp.async or multi-buffering.
These are compiled facts, not measurements: a kernel that compiles well may still run slowly.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from kernels.fused_conv2d import CONFIGS, INTERPRET, Launch, kernel_channels, pack_weight
from kernels.fused_conv2d import plan as plan_launch

TARGETS = {"sm_90": 90, "sm_80": 80}
# What a thread block may use on Hopper (sm_90): 227 KB of shared memory; Ampere (sm_80): 163 KB.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


@dataclass(frozen=True)
class Conv:
    """One convolution as the fused model launches it: input (batch, channels, height, width) and
    weights (out_channels, channels, *kernel), with the epilogue it fuses. ``name`` is its module."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    residual: bool
    relu: bool

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple((size + 2 * p - k) // s + 1
                     for size, k, s, p in zip((self.height, self.width), self.kernel, self.stride, self.padding))

    @property
    def shape(self) -> str:
        (kh, kw), (sh, _), (ph, _) = self.kernel, self.stride, self.padding
        return (f"{self.batch}x{self.channels}x{self.height}x{self.width}->{self.out_channels} {kh}x{kw}/{sh} p{ph}"
                f"{' +res' if self.residual else ''}{' relu' if self.relu else ''}")


def plan(conv: Conv, dtype: torch.dtype, arch: int = 90, device: str = "cpu") -> Launch:
    """The launch ``fused_conv2d`` would make for ``conv`` on an sm_``arch`` GPU, with tensors laid
    out as the fused model lays them out: on the CPU, stand-ins for CUDA ones (torch.empty touches
    no memory, so batch-256 activations cost nothing), or on ``device`` "cuda" real ones."""
    def activation(channels: int, size: tuple[int, int]) -> torch.Tensor:
        # Made channels_last, not converted to it: a conversion would copy (and touch) every byte.
        return torch.empty(conv.batch, channels, *size, dtype=dtype, device=device, memory_format=torch.channels_last)

    # The fused model pads a few-channel input once per forward, and its weights once, as plan
    # would pad them per call.
    channels = kernel_channels(conv.channels)
    x = activation(channels, (conv.height, conv.width))
    weight = pack_weight(torch.empty(conv.out_channels, channels, *conv.kernel, dtype=dtype, device=device))
    residual = activation(conv.out_channels, conv.out_size) if conv.residual else None
    launch = plan_launch(x, weight, torch.empty(conv.out_channels, device=device), stride=conv.stride,
                         padding=conv.padding, residual=residual, relu=conv.relu)
    if launch.path == "gemm_tma" and arch < 90 and device == "cpu":  # as tma_descriptors decides on a CUDA device
        launch.path = "gemm"
        launch.args.update(x_desc=None, w_desc=None)
    return launch


def _bind(launch: Launch, config: triton.Config, backend) -> tuple:
    """What JITFunction.run computes before it compiles: signature, constexprs, attributes, options
    (through the JIT's own internals, as of Triton 3.9; --warm-cache needs none of them)."""
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel.fn
    kwargs = {**launch.args, **launch.constexprs, **config.all_kwargs()}
    if config.pre_hook is not None:
        config.pre_hook(kwargs)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**kwargs)
    return fn._pack_args(backend, kwargs, bound, specialization, options)


def compile_key(launch: Launch, config: triton.Config, arch: int) -> str:
    """Two launches with the same key compile to the same binary: the compile is done once."""
    options, signature, constexprs, attrs = _bind(launch, config, make_backend(GPUTarget("cuda", arch, 32)))
    return repr((launch.kernel.fn.__name__, sorted(signature.items()), sorted(constexprs.items(), key=str),
                 sorted(attrs.items()), sorted(options.__dict__.items(), key=str)))


def compile_launch(launch: Launch, config: triton.Config, arch: int = 90) -> dict:
    """Compile one launch with one config for ``arch``; the compiled facts, or the error."""
    from triton import knobs

    if INTERPRET:
        raise RuntimeError("kernels.aot compiles the real kernels: run it with TRITON_INTERPRET unset or 0")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options, signature, constexprs, attrs = _bind(launch, config, backend)
    log = io.StringIO()
    start = time.perf_counter()
    # ptxas's -v report (registers, spills) is printed only by a compile that runs ptxas, so the
    # on-disk cache, which would skip it, is bypassed.
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        try:
            compiled = triton.compile(ASTSource(launch.kernel.fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
        except Exception as exc:  # noqa: BLE001 - any compiler failure is a finding, reported per config
            return {"compiled": False, "error": " ".join(str(exc).split())[:500]}
    k = config.kwargs
    stage_bytes = (k["BLOCK_M"] * k["BLOCK_K"] + k["BLOCK_K"] * k["BLOCK_N"]) * launch.args["x_ptr"].element_size()
    return {"compiled": True, "compile_s": round(time.perf_counter() - start, 2),
            **_ptxas_facts(log.getvalue()), "shared_bytes": compiled.metadata.shared,
            # How many stages of operand tiles fit the shared memory the kernel holds: at least 2
            # means loads run ahead of the MMAs (the pipeliner's multi-buffering).
            "operand_buffers": compiled.metadata.shared // stage_bytes,
            **_sass_facts(compiled.asm["sass"])}


def _ptxas_facts(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if not (regs and spills and stack):
        raise RuntimeError(f"ptxas printed no resource report: {log[-300:]!r}")
    return {"registers": int(regs[1]), "spill_store_bytes": int(spills[1]), "spill_load_bytes": int(spills[2]),
            "stack_bytes": int(stack[1])}


_OPCODE = re.compile(r"^\S+\t(?:@!?U?P\w+ )?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)", re.M)
_BRANCH = re.compile(r"BRA (\w+);")


def _sass_facts(sass: str) -> dict:
    """The tensor-core instruction, global memory traffic by width, and loops, from SASS as
    triton.tools.disasm prints it (one instruction a line, labels on their own lines)."""
    ops = _OPCODE.findall(sass)
    names = Counter(name for name, _ in ops)
    mma = "HGMMA" if names["HGMMA"] else "HMMA" if names["HMMA"] else "none"

    def width(suffix: str) -> str:
        bits = re.search(r"\.(128|64|32|16|U8|S8|U16|S16)\b", suffix)
        return {"128": "16B", "64": "8B"}.get(bits[1], "4B or less") if bits else "4B"

    loads = Counter(f"{name} {width(suffix)}" for name, suffix in ops if name in ("LDG", "LDGSTS"))
    loads.update({"TMA (UTMALDG)": names["UTMALDG"]} if names["UTMALDG"] else {})
    stores = Counter(f"{name} {width(suffix)}" for name, suffix in ops if name == "STG")
    # A reduction loop is a branch back to an earlier label over a body that holds MMAs and no EXIT.
    # Not loops: the waits on TMA barriers (they spin without computing), and the jump back from a
    # wait's out-of-line slow path, placed after the kernel's EXIT, into the loop it left.
    lines = sass.splitlines()
    labels = {line[:-1]: i for i, line in enumerate(lines) if line.endswith(":") and "\t" not in line}

    def is_loop(target: str, end: int) -> bool:
        body = lines[labels[target]:end] if target in labels and labels[target] < end else []
        return any("MMA" in line for line in body) and not any("EXIT" in line for line in body)

    loops = sum(is_loop(target, i) for i, line in enumerate(lines) for target in _BRANCH.findall(line))
    return {"mma": mma, "mma_count": names[mma] if mma != "none" else 0, "loads": dict(sorted(loads.items())),
            "stores": dict(sorted(stores.items())), "local_memory_ops": names["LDL"] + names["STL"], "loops": loops,
            "sass_instructions": len(ops)}


def config_name(config: triton.Config) -> str:
    k = config.kwargs
    tma = " tma" if k.get("USE_TMA") else ""
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{config.num_warps} s{config.num_stages}{tma}"


# --- sweeps ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One compile: the first conv (and dtype) of a compile class, with one config of its path."""

    conv: Conv
    dtype: torch.dtype
    config: int  # index into fused_conv2d.CONFIGS[path]


def _work(job: Job, arch: int) -> dict:
    launch = plan(job.conv, job.dtype, arch)
    return compile_launch(launch, CONFIGS[launch.path][job.config], arch)


def sweep(convs: list[Conv], dtypes: dict[str, torch.dtype], arch: int = 90, jobs: int | None = None,
          select=None, progress=None) -> list[dict]:
    """Compile every config of every conv's autotune space (or the records ``select`` keeps), each distinct
    compile once, ``jobs`` at a time in separate processes. One record per (compile class, dtype,
    config), naming every conv it serves; ``dtypes`` maps the name records give a dtype to it."""
    classes: dict[str, dict] = {}
    for name, dtype in dtypes.items():
        for conv in convs:
            launch = plan(conv, dtype, arch)
            for index, config in launch.space.items():
                key = compile_key(launch, config, arch)
                record = classes.get(key)
                if record is None:
                    record = classes[key] = {"path": launch.path, "dtype": name, "config": config_name(config),
                                             "config_index": index, "convs": [], "shapes": [], "target": f"sm_{arch}",
                                             "job": Job(conv, dtype, index)}
                record["convs"].append(conv.name)
                if conv.shape not in record["shapes"]:
                    record["shapes"].append(conv.shape)
    chosen = [r for r in classes.values() if select is None or select(r)]
    for record, facts in _in_processes(_work, [(r.pop("job"), arch) for r in chosen], chosen, jobs, progress):
        record.update(facts)
    return sorted(chosen, key=lambda r: (r["path"], r["dtype"], r["config_index"], r["shapes"][0]))


def _in_processes(fn, calls: list[tuple], tags: list, jobs: int | None, progress) -> Iterator[tuple]:
    """``fn(*call)`` for every call, ``jobs`` processes at a time; yields (tag, result) as each
    finishes. The processes are spawned, not forked: they import the kernels afresh (a fork would
    inherit a parent's interpreted ones), and torch's threads do not survive a fork. Whatever ends
    the iteration early (an error, a stop signal raised in this process) terminates the workers
    at once, so that none is left compiling after the command has ended."""
    if progress is not None:
        progress(total=len(calls))
    # The workers' temporary files (Triton's .ptx and ptxas logs, removed by Triton only when a
    # compile completes) go in a folder of the pool's, removed with it whatever stopped it.
    scratch = tempfile.mkdtemp(prefix="kernels-aot-")
    pool = multiprocessing.get_context("spawn").Pool(jobs or os.cpu_count(), initializer=_worker, initargs=(scratch,))
    try:
        for index, result in pool.imap_unordered(_indexed, [(i, fn, call) for i, call in enumerate(calls)]):
            yield tags[index], result
            if progress is not None:
                progress(advance=1)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
        shutil.rmtree(scratch, ignore_errors=True)


def _indexed(item: tuple) -> tuple:
    index, fn, call = item
    return index, fn(*call)


def _worker(scratch: str) -> None:
    """A compile process: its temporary files in ``scratch``. A terminal's Ctrl-C or hang-up reaches
    the whole process group, and the parent, which stops its workers itself, is the one to answer
    it (a worker's own KeyboardInterrupt would print a traceback per worker)."""
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def _specialisation(launch: Launch, index: int) -> tuple:
    """Triton's rule for what a launch compiles to, short of the compiler's own key: the kernel and
    config, its constexprs, each integer argument's being 1 or a multiple of 16, and tensor dtypes."""
    ints = tuple((name, v == 1, v % 16 == 0) for name, v in launch.args.items() if isinstance(v, int))
    dtypes = tuple(str(v.dtype) for v in launch.args.values() if isinstance(v, torch.Tensor))
    return launch.path, index, tuple(sorted(launch.constexprs.items(), key=str)), ints, dtypes


def _warm(job: Job) -> None:
    launch = plan(job.conv, job.dtype, device="cuda")
    config = CONFIGS[launch.path][job.config]
    kwargs = {**launch.args, **launch.constexprs, **config.all_kwargs()}
    if config.pre_hook is not None:
        config.pre_hook(kwargs)
    launch.kernel.fn.warmup(grid=(1,), **kwargs)


def warm_cache(convs: list[Conv], dtypes: list[torch.dtype], jobs: int | None = None, progress=None) -> int:
    """On a CUDA machine: compile every config of every conv's path through the JIT, ``jobs``
    processes at a time, into Triton's on-disk cache, so that autotuning afterwards, which compiles
    one config after another in one process, only loads and measures. Returns the compile count."""
    if not torch.cuda.is_available():
        raise RuntimeError("warm_cache compiles into a CUDA machine's Triton cache: no CUDA GPU is visible")
    major, minor = torch.cuda.get_device_capability()
    firsts: dict[tuple, Job] = {}
    for dtype in dtypes:
        for conv in convs:
            launch = plan(conv, dtype, arch=major * 10 + minor)
            for index in launch.space:
                firsts.setdefault(_specialisation(launch, index), Job(conv, dtype, index))
    for _ in _in_processes(_warm, [(job,) for job in firsts.values()], list(firsts), jobs, progress):
        pass
    return len(firsts)


def failures(record: dict, arch: int = 90) -> list[str]:
    """What keeps a compiled config out of an autotune space: it failed, spills, uses more shared
    memory than a block may, or (fp16/bf16 on Hopper) misses wgmma."""
    if not record["compiled"]:
        return [f"does not compile: {record['error']}"]
    found = []
    if record["spill_store_bytes"] or record["spill_load_bytes"]:
        found.append(f"spills {record['spill_store_bytes']} B stores / {record['spill_load_bytes']} B loads")
    if record["shared_bytes"] > SHARED_LIMIT[arch]:
        found.append(f"needs {record['shared_bytes'] // 1024} KB shared memory (limit {SHARED_LIMIT[arch] // 1024} KB)")
    if arch >= 90 and record["dtype"] in ("fp16", "bf16") and record["mma"] != "HGMMA":
        found.append(f"no wgmma (HGMMA): {record['mma']}")
    return found


# --- reports: what python -m resnet_perf.aot prints, and reads back with --peaks-of ------------------
def records_table(records: list[dict]):
    from rich.table import Table

    table = Table(title="compiled for " + ", ".join(sorted({r["target"] for r in records})))
    for column in ("path", "dtype", "config", "shape (first of class)", "regs", "spill B", "smem KB", "buffers",
                   "mma", "operand loads", "loops", "SASS", "s"):
        table.add_column(column, justify="left" if column in ("path", "dtype", "config", "shape (first of class)",
                                                              "mma", "operand loads") else "right")
    for r in records:
        if not r["compiled"]:
            table.add_row(r["path"], r["dtype"], r["config"], r["shapes"][0], "[red]failed[/red]", *[""] * 8)
            continue
        loads = ", ".join(f"{k} x{v}" for k, v in r["loads"].items() if not k.startswith("LDG 4B"))
        spill = r["spill_store_bytes"] + r["spill_load_bytes"]
        table.add_row(r["path"], r["dtype"], r["config"], r["shapes"][0], str(r["registers"]),
                      f"[red]{spill}[/red]" if spill else "0", f"{r['shared_bytes'] / 1024:.0f}",
                      str(r["operand_buffers"]), r["mma"], loads,
                      str(r["loops"]), str(r["sass_instructions"]), f"{r['compile_s']:.0f}")
    return table


def read_records(path: str) -> list[dict]:
    """The compile records of an earlier ``--json`` report; ValueError saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a resnet_perf.aot --json report ({type(exc).__name__}: {str(exc)[:120]})") from None
    records = document.get("records") if isinstance(document, dict) else None
    fields = {"path": str, "dtype": str, "config": str, "config_index": int, "shapes": list, "compiled": bool}
    if not records or not isinstance(records, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in fields.items()) and r["shapes"]
            and (not r["compiled"] or isinstance(r.get("registers"), int)) for r in records):
        raise ValueError("not a resnet_perf.aot --json report: it holds no compile records (path, dtype, config, "
                         "config_index, shapes, compiled, registers)")
    return records


def peaks(earlier: list[dict]):
    """A ``select`` for sweep: each config on the compile class where ``earlier`` (the records of
    an earlier full sweep) shows it peaking in registers, plus every class once with its first config."""
    peak: dict[tuple, tuple] = {}
    first: dict[tuple, int] = {}
    for r in earlier:
        cls = (r["path"], r["dtype"], r["shapes"][0])
        first[cls] = min(first.get(cls, r["config_index"]), r["config_index"])
        if r["compiled"]:
            key = (r["path"], r["dtype"], r["config"])
            if key not in peak or r["registers"] > peak[key][0]:
                peak[key] = (r["registers"], r["shapes"][0])

    def select(record: dict) -> bool:
        chosen = peak.get((record["path"], record["dtype"], record["config"]))
        return (record["config_index"] == first.get((record["path"], record["dtype"], record["shapes"][0]), 0)
                or (chosen is not None and chosen[1] == record["shapes"][0]))

    return select


def compiled_on(jobs: int) -> str:
    """The machine the compile times were measured on: its CPU model and the processes used."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {jobs} compile processes"
