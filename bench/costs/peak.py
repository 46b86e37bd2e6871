"""What this machine's matrix units reach, measured: a short GEMM probe per precision, the scale a
row's achieved FLOP/s is read against.

A datasheet peak assumes clocks and vector widths a VM, a power limit or a 2-core slice of a
socket may not give; the probe is a large square matmul in the row's precision, its best call over
a short run. No single GEMM library is the fastest everywhere: MKL, behind torch.matmul fp32 on
CPU, takes a slow path on AMD CPUs (176 GFLOP/s on a Zen 5 EPYC whose onnxruntime ResNet-50 row
reached 408), so on CPU the probe also runs onnxruntime's MLAS GEMM and keeps the faster. A
convolution backend that keeps its matrix units as busy as the best plain GEMM reads near 100%.
Well above it (over ~110%) means a count or probe is wrong, or a runtime does fewer multiplies than
the count (Winograd).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bench import timing
from resnet_perf.util.cli import one_line

SIZES = (256, 512, 1024, 2048, 4096, 8192)
CALL_MS = 20.0  # the smallest size whose call takes this long is big enough to reach the peak

Gemm = Callable[[int], Callable[[], object]]  # a size to the call of one n x n x n product


def _torch_gemm(precision: str, device: torch.device) -> Gemm:
    def at(n: int) -> Callable[[], object]:
        if precision == "int8":
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
            return lambda: torch._int_mm(a, b)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        return lambda: a @ b

    return at


def _onnxruntime_gemm(precision: str) -> Gemm:
    """onnxruntime's own GEMM on the CPU provider, with the threads torch has: MatMul for fp32,
    MatMulInteger (uint8 activations, int8 weights, as its int8 rows run) for int8. The output is
    bound once, so a call is the product alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def at(n: int) -> Callable[[], object]:
        rng = np.random.default_rng(0)
        if precision == "int8":
            a = rng.integers(0, 256, (n, n), dtype=np.uint8)
            b = rng.integers(-128, 128, (n, n), dtype=np.int8)
            node, kinds, out = "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8), np.empty((n, n), np.int32)
        else:
            a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
            node, kinds, out = "MatMul", (TensorProto.FLOAT, TensorProto.FLOAT), np.empty((n, n), np.float32)
        graph = helper.make_graph(
            [helper.make_node(node, ["a", "b"], ["y"])], "gemm",
            [helper.make_tensor_value_info("a", kinds[0], [n, n])],
            [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(out.dtype), [n, n])],
            [onnx.numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        binding.bind_cpu_input("a", a)
        binding.bind_output("y", "cpu", 0, out.dtype, out.shape, out.ctypes.data)

        def call(a=a, out=out):  # the binding holds the buffers' addresses only: the call keeps them alive
            session.run_with_iobinding(binding)

        return call

    return at


def _gemms(precision: str, device: torch.device) -> Iterator[tuple[str, Gemm]]:
    """Each GEMM library that runs ``precision`` on ``device``, named as the probe reports it."""
    tf32 = _tf32(precision, device)
    yield f"torch.matmul {'tf32' if tf32 else precision}" if precision != "int8" else "torch._int_mm int8", \
        _torch_gemm(precision, device)
    if device.type == "cpu" and precision in ("fp32", "int8") and importlib.util.find_spec("onnxruntime"):
        yield f"onnxruntime {'MatMulInteger u8s8' if precision == 'int8' else 'MatMul fp32'}", \
            _onnxruntime_gemm(precision)


def _tf32(precision: str, device: torch.device) -> bool:
    """cuDNN runs fp32 convolutions as TF32 by default (torch.backends.cudnn.allow_tf32), so an fp32
    row on CUDA is read against the TF32 GEMM it actually competes with."""
    return device.type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32


def _rate(gemm: Gemm, device: torch.device, seconds: float) -> tuple[float, int, int]:
    """The best GFLOP/s of ``gemm``: at the smallest size whose call takes CALL_MS; with that size
    and the number of calls timed."""
    for n in SIZES:
        call = gemm(n)
        if timing.measure(call, device, warmup=1, iters=1).samples_ms[0] >= CALL_MS:
            break
    measured = timing.measure(call, device, warmup=1, iters=3, min_time=seconds)
    return 2 * n**3 / min(measured.samples_ms) / 1e6, n, len(measured.samples_ms)


def probe(precision: str, device: torch.device, seconds: float = 0.5) -> dict:
    """The best GEMM rate of ``precision`` on ``device`` over the libraries that run it:
    {"gflops", "how", "gemms": {library: gflops or why it did not run}}, with gflops None and
    how saying why where no library's GEMM of that precision runs here."""
    matmul = torch.backends.cuda.matmul
    was, matmul.allow_tf32 = matmul.allow_tf32, _tf32(precision, device)
    rates: dict[str, float | str] = {}
    best: tuple[float, str] | None = None
    try:
        for name, gemm in _gemms(precision, device):
            try:
                gflops, n, calls = _rate(gemm, device, seconds)
            except Exception as exc:  # noqa: BLE001 - one library's failure leaves the others' rates
                rates[name] = f"did not run: {one_line(exc)}"
                continue
            rates[name] = gflops
            if best is None or gflops > best[0]:
                best = gflops, f"{name} {n}x{n}x{n}, best of {calls}"
    finally:
        matmul.allow_tf32 = was
    if best is None:
        return {"gflops": None, "how": f"no {precision} GEMM here: " + "; ".join(f"{k} {v}" for k, v in rates.items()),
                "gemms": rates}
    return {"gflops": best[0], "how": best[1], "gemms": rates}
