"""A deterministic, discriminative stand-in for trained weights, and the parity inputs it tells apart.

A parity check is only as strong as the model under it. A random-init ResNet is a poor one: measured
here, torchvision's random ResNet-50 gives all 16 of 16 random inputs the same top-1 class, and even
with recalibrated BatchNorm only 3 classes among 16, so top-1 agreement proves nothing and a large
logit offset shared by every class inflates cosine similarity. This module makes a model for which
that is not true:

1. Class prototypes are periodic colour textures (a few random low-frequency sinusoids on a
   ``TILE``-pixel tile, plus a colour offset), so one prototype renders at any image size.
2. BatchNorm affine parameters are randomised (a folding bug then shows), and the last BatchNorm of
   each residual branch gets a small scale. With unit scales a deep random ResNet is chaotic:
   measured on ResNet-152, noise of 0.05 on the input flipped 30% of the top-1 classes; with
   branch scales in [0.1, 0.3], as trained ResNets tend to have, none flipped and the top-1 margin
   was ~4 logit standard deviations.
3. BatchNorm running statistics are calibrated on the prototypes at the benchmark image size.
4. The classifier rows of ``PROTOTYPES`` classes are the centred, normalised features of the
   prototypes; the remaining classes get random directions of half the length. An input near a
   prototype is thus classified as that prototype's class, and the parity batch, one input per
   prototype, gets distinct top-1 classes.

The features of a random network depend on the input resolution (calibrated at 64 px and run at
224 px, ResNet-152 told only 2% of the prototypes apart), so the model is calibrated for the image
size it will be benchmarked at.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from resnet_perf.models.resnet import BasicBlock, Bottleneck, ResNet

TILE = 32
PROTOTYPES = 64
PARITY_NOISE = 0.05
# BatchNorm statistics need many positions, not many images: 16 images at 32 px are 16 * 256
# positions per channel in the stem and 16 in layer4; 16 is also a quarter of the cost of 64.
_CALIBRATION_IMAGES = 16
_TOP_LOGIT = 10.0

# Fixed offsets keep the random streams of the weights, the prototypes and the parity noise apart.
_STREAM_WEIGHTS, _STREAM_PROTOTYPES, _STREAM_CALIBRATION, _STREAM_PARITY, _STREAM_QUANTIZATION = range(5)


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 16 + stream)


def prototype_tiles(count: int, seed: int = 0) -> Tensor:
    """``count`` periodic colour textures, each 3 x TILE x TILE, zero-mean within a channel offset."""
    gen = _generator(seed, _STREAM_PROTOTYPES)
    coords = torch.arange(TILE, dtype=torch.float32)
    ys, xs = coords.view(1, 1, -1, 1), coords.view(1, 1, 1, -1)
    tiles = torch.zeros(count, 3, TILE, TILE)
    for _ in range(6):
        # Integer frequencies keep the tile periodic, so tiling it leaves no seams.
        fy = torch.randint(0, 5, (count, 1, 1, 1), generator=gen).float()
        fx = torch.randint(0, 5, (count, 1, 1, 1), generator=gen).float()
        phase = torch.rand(count, 3, 1, 1, generator=gen) * 2 * math.pi
        amplitude = torch.randn(count, 3, 1, 1, generator=gen)
        tiles += amplitude * torch.cos(2 * math.pi * (fy * ys + fx * xs) / TILE + phase)
    tiles /= tiles.flatten(1).std(dim=1).clamp_min(1e-6).view(count, 1, 1, 1)
    tiles += 0.5 * torch.randn(count, 3, 1, 1, generator=gen)
    return tiles


def render(tiles: Tensor, image_size: int, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Tile each prototype over an image_size square and add white noise of std ``noise``."""
    reps = math.ceil(image_size / TILE)
    images = tiles.repeat(1, 1, reps, reps)[:, :, :image_size, :image_size].contiguous()
    if noise:
        images += noise * torch.randn(images.shape, generator=generator)
    return images


def parity_inputs(count: int = 64, image_size: int = 224, seed: int = 0, num_classes: int = 1000) -> Tensor:
    """``count`` inputs, each near one prototype (cycling through them), fp32 NCHW on the CPU."""
    return _near_prototypes(count, image_size, seed, num_classes, _STREAM_PARITY)


def quantization_inputs(count: int = 64, image_size: int = 224, seed: int = 0, num_classes: int = 1000) -> Tensor:
    """Inputs from the parity inputs' distribution but another draw of the noise: what INT8
    calibration sees when no images are given, so that it is not tuned on the inputs it is judged on."""
    return _near_prototypes(count, image_size, seed, num_classes, _STREAM_QUANTIZATION)


def _near_prototypes(count: int, image_size: int, seed: int, num_classes: int, stream: int) -> Tensor:
    tiles = prototype_tiles(min(PROTOTYPES, num_classes), seed)
    index = torch.arange(count) % tiles.shape[0]
    return render(tiles[index], image_size, PARITY_NOISE, _generator(seed, stream))


def _residual_branch_norms(model: ResNet) -> list[nn.BatchNorm2d]:
    norms = []
    for block in model.modules():
        if isinstance(block, Bottleneck):
            norms.append(block.bn3)
        elif isinstance(block, BasicBlock):
            norms.append(block.bn2)
    return norms


@torch.no_grad()
def calibrate(model: ResNet, image_size: int, seed: int = 0) -> ResNet:
    """Make ``model`` discriminative on ``parity_inputs(image_size=image_size, seed=seed)``, in place."""
    gen = _generator(seed, _STREAM_WEIGHTS)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5, generator=gen)
        norm.bias.normal_(0.0, 0.2, generator=gen)
    for norm in _residual_branch_norms(model):
        norm.weight.uniform_(0.1, 0.3, generator=gen)

    num_classes = model.fc.out_features
    tiles = prototype_tiles(min(PROTOTYPES, num_classes), seed)

    model.train()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: the statistics of exactly this batch
    calib_index = torch.randperm(tiles.shape[0], generator=gen)[:_CALIBRATION_IMAGES]
    model(render(tiles[calib_index], image_size, PARITY_NOISE, _generator(seed, _STREAM_CALIBRATION)))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()

    features = model.forward_features(render(tiles, image_size))
    mean = features.mean(dim=0)
    centred = features - mean
    directions = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scale = _TOP_LOGIT / centred.norm(dim=1).median()

    weight = torch.randn(num_classes, features.shape[1], generator=gen)
    weight *= 0.5 / weight.norm(dim=1, keepdim=True)
    weight[: tiles.shape[0]] = directions
    weight *= scale
    model.fc.weight.copy_(weight)
    # The bias subtracts the mean feature, so logits measure distance from the prototypes' centre,
    # not a direction every class shares.
    model.fc.bias.copy_(-(weight @ mean))
    return model
