"""The arithmetic a model does per image: the multiply-accumulates of its convolutions and linear
layers, counted once from their shapes at a given image size.

This is the work every backend must do, whatever it fuses or reorders (a folded BatchNorm, a ReLU
or a residual add costs no multiply-accumulate), so achieved FLOP/s (2 per MAC) compares backends
and precisions on one scale. A runtime that uses Winograd or FFT convolutions does fewer real
multiplies than this count and can appear to run above the machine's GEMM peak.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def macs_per_image(model: nn.Module, image_size: int) -> int:
    """The multiply-accumulates of one ``image_size`` x ``image_size`` image through ``model``'s
    Conv2d and Linear layers, from the output shapes a forward pass on the meta device gives."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # Shapes are all the count needs: with meta tensors in place of the weights and the image,
    # the pass allocates and computes nothing, and the caller's model is left as it was.
    on_meta = {name: torch.empty_like(t, device="meta")
               for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, on_meta, (torch.empty(1, 3, image_size, image_size, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    return total
