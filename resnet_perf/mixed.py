"""A model in a lower precision with chosen layers kept in fp32, as ``--keep-fp`` asks of fp16.

The kept layers are the convolutions and the classifier, by module name, each with the BatchNorm it
is folded with. Where a layer is kept, every convolution and pooling casts its input to its own
type, and the residual block (or the model) casts its output to the lower precision: a kept
layer's output stays fp32 through what joins it (its ReLU; for a block's last convolution or its
shortcut, the residual add and the ReLU after it) until the next layer or the block's end casts
it, where runtimes fuse a line and ``--parity layers`` reads it. An export of the model holds the
same casts, which is how an fp16 ONNX file keeps layers in fp32 too.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from resnet_perf.build import layers_of
from resnet_perf.models.resnet import BasicBlock, Bottleneck

# The modules that cast what they read to their own type. A BatchNorm reads its own convolution's
# output, in its type already; ReLU and the residual add compute in the type they are given.
_CASTING = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


def batchnorm_of(layer: str) -> str | None:
    """The BatchNorm folded into the convolution ``layer`` ("layer1.0.conv2" -> "layer1.0.bn2",
    "layer2.0.downsample.0" -> "layer2.0.downsample.1"); None for the classifier."""
    head, _, leaf = layer.rpartition(".")
    if leaf.startswith("conv"):
        leaf = "bn" + leaf[4:]
    elif leaf == "0" and head.endswith("downsample"):
        leaf = "1"
    else:
        return None
    return f"{head}.{leaf}" if head else leaf


def keep_fp32(model: nn.Module, layers: Iterable[str], dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` computing in ``dtype`` but for ``layers`` (module names: "conv1",
    "layer2.0.conv2", "fc") and their BatchNorms, which compute in fp32; ValueError naming any
    layer that is no convolution or classifier of the model."""
    model = copy.deepcopy(model).to(dtype)
    layers = list(dict.fromkeys(layers))
    modules = dict(model.named_modules())
    known = set(layers_of(model))
    wrong = [name for name in layers if name not in known]
    if wrong:
        raise ValueError(f"--keep-fp {','.join(wrong)}: no such layer (a convolution or the fc, by module name)")
    blocks = [name for name, module in modules.items() if isinstance(module, (BasicBlock, Bottleneck))]

    def scope(name: str) -> str:
        """The residual block ``name`` is in, or "" for the model's own layers (the stem, the head)."""
        return next((block for block in blocks if name.startswith(block + ".")), "")

    for name in layers:
        modules[name].float()
        norm = batchnorm_of(name)
        if norm in modules:
            modules[norm].float()
        if name.endswith("downsample.0"):
            # ``out += identity`` adds in place, in the main path's type: it must hand fp32 on.
            block = modules[scope(name)]
            last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
            last.register_forward_hook(functools.partial(_cast_output, torch.float32))
    # A value arrives in the other type only where a layer is kept: in its block, which hands the
    # lower precision on, or among the model's own layers; hooks elsewhere would only cost time.
    scopes = {scope(name) for name in layers}
    for name, module in modules.items():
        if isinstance(module, _CASTING) and scope(name) in scopes:
            own = next(module.parameters(), None)
            module.register_forward_pre_hook(functools.partial(_cast_input, dtype if own is None else own.dtype))
    for name in scopes:  # a block holding a kept layer, or the model ("") where it holds one itself
        modules[name].register_forward_hook(functools.partial(_cast_output, dtype))
    return model


def _cast_input(dtype: torch.dtype, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(a.to(dtype) for a in args)


def _cast_output(dtype: torch.dtype, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return output.to(dtype)
