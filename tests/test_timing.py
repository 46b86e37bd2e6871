"""The timing loop: what it calls, what it keeps, and statistics computed from the samples."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench.timing import measure, summarize

CPU = torch.device("cpu")


def test_counts_first_run_warmup_and_iterations():
    calls = []
    timing = measure(lambda: calls.append(1), CPU, warmup=3, iters=7)
    assert len(calls) == 1 + 3 + 7
    assert len(timing.samples_ms) == 7
    assert timing.first_run_ms >= 0


def test_min_time_runs_until_the_time_is_filled():
    timing = measure(lambda: time.sleep(0.002), CPU, warmup=0, iters=1, min_time=0.05)
    assert sum(timing.samples_ms) >= 50
    assert len(timing.samples_ms) >= 10


def test_samples_measure_the_call():
    timing = measure(lambda: time.sleep(0.01), CPU, warmup=0, iters=3)
    assert all(9.5 <= s < 1000 for s in timing.samples_ms)


def test_summary_comes_from_the_samples():
    samples = [10.0, 20.0, 30.0, 40.0]
    stats = summarize(samples, batch_size=8)
    assert stats["throughput_ips"] == pytest.approx(8 * 4 / 0.1)
    lat = stats["latency_ms"]
    assert lat["mean"] == 25.0 and lat["min"] == 10.0 and lat["max"] == 40.0
    assert lat["p50"] == pytest.approx(np.percentile(samples, 50))
    assert lat["p99"] == pytest.approx(np.percentile(samples, 99))
    assert lat["std"] == pytest.approx(np.std(samples, ddof=1))


def test_single_sample_has_zero_spread():
    assert summarize([5.0], batch_size=1)["latency_ms"]["std"] == 0.0
