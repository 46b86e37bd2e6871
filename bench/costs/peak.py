"""What this machine's matrix units reach, measured: a short GEMM probe per precision, the scale a
row's achieved FLOP/s is read against.

A datasheet peak assumes clocks and vector widths a VM, a power limit or a 2-core slice of a
socket may not give; the probe is a large square matmul in the row's precision through PyTorch's
own BLAS (oneDNN/MKL on CPU, cuBLAS on CUDA), its best call over a short run. A convolution
backend that keeps its matrix units as busy as a plain GEMM reads near 100%. Well above it (over
~110%) means a count or probe is wrong, or a runtime does fewer multiplies than the count (Winograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench import timing
from resnet_perf.cli import one_line

SIZES = (256, 512, 1024, 2048, 4096, 8192)
CALL_MS = 20.0  # the smallest size whose call takes this long is big enough to reach the peak


def _operands(precision: str, n: int, device: torch.device) -> tuple[Callable[[], object], str]:
    """The probe's call at size ``n``, and what it runs, in words."""
    if precision == "int8":
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        return (lambda: torch._int_mm(a, b)), "torch._int_mm int8"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return (lambda: a @ b), f"torch.matmul {'tf32' if _tf32(precision, device) else precision}"


def _tf32(precision: str, device: torch.device) -> bool:
    """cuDNN runs fp32 convolutions as TF32 by default (torch.backends.cudnn.allow_tf32), so an fp32
    row on CUDA is read against the TF32 GEMM it actually competes with."""
    return device.type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32


def probe(precision: str, device: torch.device, seconds: float = 0.5) -> dict:
    """The best GEMM rate of ``precision`` on ``device``: {"gflops", "how"}, or {"gflops": None,
    "how": why} where the precision's GEMM does not run here."""
    matmul = torch.backends.cuda.matmul
    was, matmul.allow_tf32 = matmul.allow_tf32, _tf32(precision, device)
    try:
        for n in SIZES:
            call, how = _operands(precision, n, device)
            first = timing.measure(call, device, warmup=1, iters=1)
            if first.samples_ms[0] >= CALL_MS or n == SIZES[-1]:
                break
        measured = timing.measure(call, device, warmup=1, iters=3, min_time=seconds)
    except (RuntimeError, NotImplementedError) as exc:
        return {"gflops": None, "how": f"no {precision} GEMM here: {one_line(exc)}"}
    finally:
        matmul.allow_tf32 = was
    best_ms = min(measured.samples_ms)
    return {"gflops": 2 * n**3 / best_ms / 1e6, "how": f"{how} {n}x{n}x{n}, best of {len(measured.samples_ms)}"}
