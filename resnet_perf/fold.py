"""Folding eval-mode BatchNorm into the convolution before it.

``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` is one convolution with
``W' = W * s`` and ``b' = (b - mean) * s + beta``, where ``s = gamma / sqrt(var + eps)`` per output
channel. ``fold_conv_bn_weights`` is that formula on tensors; ``fold_batchnorm`` applies it to a
model, as torch.nn.utils.fusion.fuse_conv_bn_eval does for one pair.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def fold_conv_bn_weights(
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    bn_weight: Tensor | None,
    bn_bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The folded (weight, bias), in the dtype of ``conv_weight``.

    The arithmetic runs in fp64 and rounds once at the end, so the folded fp32 model differs from
    conv+BN only by the rounding of its own convolution, not by rounding in the fold.
    """
    dtype = conv_weight.dtype
    scale = torch.rsqrt(running_var.double() + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.double()
    shift = -running_mean.double() * scale
    if conv_bias is not None:
        shift = shift + conv_bias.double() * scale
    if bn_bias is not None:
        shift = shift + bn_bias.double()
    weight = conv_weight.double() * scale.view(-1, *([1] * (conv_weight.dim() - 1)))
    return weight.to(dtype), shift.to(dtype)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias) computing ``bn(conv(x))`` in eval mode."""
    if conv.training or bn.training:
        raise ValueError("fold_conv_bn needs eval-mode modules: training-mode BatchNorm uses batch statistics")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_conv_bn needs BatchNorm with running statistics (track_running_stats=True)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} features but the conv has {conv.out_channels} outputs")
    weight, bias = fold_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(weight.detach(), conv.weight.requires_grad)
    folded.bias = nn.Parameter(bias.detach(), conv.weight.requires_grad)
    return folded


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) child names that torchvision's ResNet pairs: convK with bnK, and in a
    Sequential a conv followed by a BatchNorm (the downsample shortcut)."""
    children = dict(parent.named_children())
    pairs = []
    if isinstance(parent, nn.Sequential):
        names = list(children)
        pairs += [
            (a, b)
            for a, b in zip(names, names[1:])
            if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)
        ]
    for name, child in children.items():
        if name.startswith("conv") and isinstance(child, nn.Conv2d):
            bn_name = "bn" + name[len("conv"):]
            if isinstance(children.get(bn_name), nn.BatchNorm2d):
                pairs.append((name, bn_name))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A new eval-mode copy of ``model`` with every BatchNorm2d folded into its conv and replaced by
    nn.Identity, so module names and forward code stay as they were. ``model`` is left untouched."""
    folded = copy.deepcopy(model).eval()
    for parent_name, parent in list(folded.named_modules()):
        for conv_name, bn_name in _conv_bn_pairs(parent):
            setattr(parent, conv_name, fold_conv_bn(getattr(parent, conv_name), getattr(parent, bn_name)))
            setattr(parent, bn_name, nn.Identity())
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"fold_batchnorm: no conv to fold BatchNorm {left[0]!r} into ({len(left)} left)")
    return folded
