"""Numerical parity of a backend's logits against the fp32 eager reference on the same inputs.

cosine and rel_l2 are computed on logits centred per sample: every logit of a sample can share a
large offset, and that offset alone would push an uncentred cosine towards 1 whatever the rest
does. Top-1 agreement only means something when the reference tells the inputs apart, so the
fraction of distinct top-1 classes in the parity batch is reported beside it.

It lives beside the reference models rather than in bench because export proves every artifact
against the same tolerances before keeping it, and export does not import bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

REFERENCE = "eager-fp32"
# Inputs per parity check: with the synthetic model's 64 prototypes, every one a distinct class.
PARITY_BATCH = 64


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    max_rel_l2: float
    min_top1_agreement: float
    why: str


# All tolerances live here, each with its reason.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(
        min_cosine=0.9999,
        max_rel_l2=5e-3,
        min_top1_agreement=1.0,
        why="fp32 backends differ from eager only in summation order (rel_l2 ~1e-6 on CPU), except "
        "that cuDNN runs fp32 convolutions in TF32 on Ampere and later by default (rel_l2 ~1e-3)",
    ),
    "fp16": Tolerance(
        min_cosine=0.999,
        max_rel_l2=0.05,
        min_top1_agreement=0.99,
        why="fp16 keeps 11 significant bits; with fp32 accumulation, ResNet logits stay within ~1% rel_l2 "
        "(0.99 top-1 allows no flip in the 64-input parity batch, one in a batch of 100 or more)",
    ),
    "bf16": Tolerance(
        min_cosine=0.995,
        max_rel_l2=0.1,
        min_top1_agreement=0.95,
        why="bf16 keeps 8 significant bits, ~8x coarser than fp16, so errors are ~8x larger",
    ),
    "int8": Tolerance(
        min_cosine=0.98,
        max_rel_l2=0.2,
        min_top1_agreement=0.99,
        why="256 levels per tensor (per channel for weights), set by calibration: measured on ResNet-50 at "
        "224 px with minmax calibration on 64 synthetic inputs, worst cosine 0.992 and rel_l2 0.09; a "
        "mis-scaled or uncalibrated layer falls far outside these, and no top-1 flip is allowed",
    ),
}


def cycled(samples, size: int, start: int = 0):
    """``size`` samples of ``samples`` (a torch tensor or numpy array) from ``start`` on, wrapping
    around to the first as often as needed. Static-shape backends (an engine, an ONNX file, CUDA
    graphs) take exactly ``size`` samples, so a short batch is filled up with its own samples,
    whose outputs the caller drops."""
    return samples[(start + np.arange(size)) % len(samples)]


def batches(inputs: Tensor, batch_size: int) -> Iterator[tuple[Tensor, int]]:
    """``inputs`` in batches of exactly ``batch_size``, each with its count of real inputs: the
    last batch is padded by ``cycled``."""
    n = inputs.shape[0]
    for start in range(0, n, batch_size):
        yield cycled(inputs, batch_size, start), min(batch_size, n - start)


def predict(run: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int) -> Tensor:
    """``run`` over all of ``inputs``, batch by batch, padding outputs dropped."""
    return torch.cat([run(batch)[:count] for batch, count in batches(inputs, batch_size)])


def compare(reference: Tensor, candidate: Tensor, precision: str) -> dict:
    """The contract's parity figures for ``candidate`` against ``reference`` (both N x classes)."""
    tol = TOLERANCES[precision]
    ref = reference.double()
    out = candidate.double()
    finite = bool(torch.isfinite(out).all())

    ref_c = ref - ref.mean(dim=1, keepdim=True)
    out_c = out - out.mean(dim=1, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(ref_c, out_c, dim=1).min().item()
    rel_l2 = ((out_c - ref_c).norm() / ref_c.norm().clamp_min(1e-30)).item()
    ref_top1 = ref.argmax(dim=1)
    top1 = (out.argmax(dim=1) == ref_top1).double().mean().item()
    # Whether the reference's class is still among the candidate's five best: what a ranking keeps.
    top5 = (out.topk(min(5, out.shape[1]), dim=1).indices == ref_top1[:, None]).any(dim=1).double().mean().item()

    result = {
        "reference": REFERENCE,
        "max_abs": (out - ref).abs().max().item(),
        "rel_l2": rel_l2,
        # The worst sample's cosine: a mean would let one broken sample hide among 63 good ones.
        "cosine": cosine,
        "top1_agreement": top1,
        "top5_agreement": top5,
        "distinct_top1": ref_top1.unique().numel() / ref_top1.numel(),
        "passed": finite
        and cosine >= tol.min_cosine
        and rel_l2 <= tol.max_rel_l2
        and top1 >= tol.min_top1_agreement,
    }
    if not finite:
        result["error"] = "non-finite logits (NaN or Inf)"
    return result


def accuracy(logits: Tensor, labels: Tensor) -> dict:
    """Top-1 and top-5 accuracy of ``logits`` (N x classes) against true ``labels`` (N)."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"top1": (top5[:, 0] == labels).double().mean().item(),
            "top5": (top5 == labels[:, None]).any(dim=1).double().mean().item()}
