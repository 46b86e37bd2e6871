"""Triton kernels, each file holding a kernel, its launcher and a pure-PyTorch reference of the same math.

The ops are exported at package level, as the contract names them (``from kernels import
fused_conv2d`` is the function). That name then shadows its module as an attribute of this package:
the module's other names are imported from it directly (``from kernels.fused_conv2d import plan``).
"""

from kernels.fused_conv2d import fused_conv2d

__all__ = ["fused_conv2d"]
