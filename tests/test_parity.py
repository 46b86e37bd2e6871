"""Parity figures: what passes, what fails, and why centring matters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resnet_perf.parity import TOLERANCES, batches, compare, cycled, predict


@pytest.fixture
def reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 100, generator=gen)
    logits[torch.arange(64), torch.arange(64)] += 8.0  # 64 distinct, clear top-1 classes
    return logits


def test_identical_outputs_pass(reference):
    result = compare(reference, reference.clone(), "fp32")
    assert result["passed"]
    assert result["max_abs"] == 0 and result["rel_l2"] == 0
    assert result["cosine"] == pytest.approx(1.0) and result["top1_agreement"] == 1.0
    assert result["distinct_top1"] == 1.0
    assert result["reference"] == "eager-fp32"


def test_fp32_rounding_noise_passes(reference):
    noisy = reference + 1e-6 * torch.randn(reference.shape)
    assert compare(reference, noisy, "fp32")["passed"]


def test_a_shared_offset_cannot_hide_a_difference(reference):
    """An uncentred cosine of these two is ~0.9999 (a large offset in every logit); centred, the
    candidate's noise shows, and parity fails."""
    offset = 100.0
    wrong = reference + 0.1 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    uncentred = torch.nn.functional.cosine_similarity(reference + offset, wrong + offset, dim=1).min().item()
    assert uncentred > 0.9999
    result = compare(reference + offset, wrong + offset, "fp32")
    assert result["cosine"] < 0.999
    assert not result["passed"]


def test_a_flipped_class_fails_fp32_on_its_own(reference):
    """A near-tie flipped: cosine and rel_l2 stay within fp32 tolerance, only top-1 catches it."""
    tied = reference.clone()
    tied[0, 1] = tied[0, 0] - 1e-4
    flipped = tied.clone()
    flipped[0, 1] = tied[0, 0] + 1e-4
    result = compare(tied, flipped, "fp32")
    assert result["cosine"] >= TOLERANCES["fp32"].min_cosine and result["rel_l2"] <= TOLERANCES["fp32"].max_rel_l2
    assert result["top1_agreement"] == pytest.approx(63 / 64)
    assert not result["passed"]


def test_non_finite_outputs_fail(reference):
    broken = reference.clone()
    broken[3, 7] = math.nan
    result = compare(reference, broken, "fp16")
    assert not result["passed"]
    assert "non-finite" in result["error"]


def test_precisions_have_ordered_tolerances():
    fp32, fp16, bf16 = TOLERANCES["fp32"], TOLERANCES["fp16"], TOLERANCES["bf16"]
    assert fp32.min_cosine > fp16.min_cosine > bf16.min_cosine
    assert fp32.max_rel_l2 < fp16.max_rel_l2 < bf16.max_rel_l2
    assert all(t.why for t in TOLERANCES.values())


def test_fp16_sized_error_passes_fp16_but_not_fp32(reference):
    centred = reference - reference.mean(dim=1, keepdim=True)
    noisy = reference + 0.01 * centred.std() * torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))
    assert compare(reference, noisy, "fp16")["passed"]
    assert not compare(reference, noisy, "fp32")["passed"]


@pytest.mark.parametrize("batch_size", [1, 5, 8, 64, 100])
def test_predict_pads_to_exact_batches_and_drops_padding(batch_size):
    inputs = torch.arange(10, dtype=torch.float32).view(10, 1)
    shapes = []

    def run(batch):
        shapes.append(batch.shape[0])
        return batch * 2

    out = predict(run, inputs, batch_size)
    assert set(shapes) == {batch_size}
    torch.testing.assert_close(out, inputs * 2)


def test_batches_cycle_when_the_batch_is_larger_than_the_inputs():
    inputs = torch.arange(3, dtype=torch.float32)
    (batch, count), = list(batches(inputs, 7))
    assert count == 3
    assert batch.tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("make", [torch.tensor, np.array])
def test_cycled_wraps_around_from_start_on_tensors_and_arrays(make):
    samples = make([[0, 0], [1, 1], [2, 2]])
    got = cycled(samples, 7, start=2)
    assert type(got) is type(samples) and got.shape == (7, 2)
    assert got[:, 0].tolist() == [2, 0, 1, 2, 0, 1, 2]
    assert cycled(samples, 2).tolist() == [[0, 0], [1, 1]]  # shorter than the samples: the first ones
