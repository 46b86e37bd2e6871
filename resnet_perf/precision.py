"""What each precision means, in one table: the element type of a model's inputs and outputs as
PyTorch, numpy, ONNX and Triton Inference Server name it; its name is the key of its parity
tolerance (resnet_perf.parity.TOLERANCES).

Every layer that turns a precision's name into a type (runners, export, the kernels' command line,
the serving client) reads it here: when each kept its own map, a runner could label fp32 as int8.
An int8 model is a QDQ graph: it takes and returns fp32, its Quantize/Dequantize nodes do the
int8 inside, so int8's types are fp32's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | fp16 | bf16 | int8: the contract's --precision, and the key of parity.TOLERANCES
    dtype: torch.dtype  # of inputs and outputs, and of a PyTorch model's weights
    numpy: np.dtype | None  # of inputs and outputs; None where numpy has no such type (bf16)
    onnx: int  # ONNX TensorProto element type of inputs and outputs (FLOAT 1, FLOAT16 10, BFLOAT16 16)
    triton: str  # Triton Inference Server datatype of inputs and outputs; config.pbtxt's is "TYPE_" + this

    @property
    def dtype_name(self) -> str:
        """The element type's name as torch, numpy, onnx and our manifests all write it ("float32")."""
        return str(self.dtype).removeprefix("torch.")


# Integers rather than onnx.TensorProto's names: importing resnet_perf must not need onnx.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", torch.float32, np.dtype(np.float32), 1, "FP32"),
    Precision("fp16", torch.float16, np.dtype(np.float16), 10, "FP16"),
    Precision("bf16", torch.bfloat16, None, 16, "BF16"),
    Precision("int8", torch.float32, np.dtype(np.float32), 1, "FP32"),
)}


# Lookups by element type: several precisions share one (int8 and fp32 both take fp32), so each
# answers with the first in PRECISIONS, which is the precision that computes in that type.
def by_dtype(dtype: torch.dtype | np.dtype | type | str) -> Precision | None:
    """The precision whose inputs and outputs are ``dtype``: a torch or numpy dtype, or its name as
    numpy, onnx's graph_io and manifests write it ("float32", "float16", "bfloat16"); None if none."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return next((p for p in PRECISIONS.values() if p.dtype_name == name), None)


def by_triton(datatype: str) -> Precision | None:
    """The precision whose inputs and outputs are Triton's ``datatype`` ("FP32"); None if none."""
    return next((p for p in PRECISIONS.values() if p.triton == datatype), None)
