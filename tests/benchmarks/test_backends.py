"""pytest-benchmark cases: eager vs compile vs onnxruntime on resnet18 at 64 px, batch 8.

Run with ``pytest tests/benchmarks --benchmark-only -n 0`` (the default test run skips them; under
xdist, which the default run uses, pytest-benchmark does not time). They time
each runner's ``run`` with pytest-benchmark's own loop, which is also an independent check of the
harness's figures (compare with ``python -m bench --model resnet18 --image-size 64``).
"""

from __future__ import annotations

import pytest
import torch

import resnet_perf
from bench.runners import RunConfig
from bench.runners.compile import CompileRunner
from bench.runners.eager import EagerRunner
from bench.runners.onnxruntime import OnnxRuntimeRunner

IMAGE_SIZE, BATCH = 64, 8


@pytest.fixture(scope="module")
def model():
    return resnet_perf.build_model("resnet18", image_size=IMAGE_SIZE)


@pytest.mark.parametrize("runner_cls", [EagerRunner, CompileRunner, OnnxRuntimeRunner], ids=lambda c: c.name)
def test_resnet18_fp32(benchmark, model, runner_cls, tmp_path):
    config = RunConfig("resnet18-bench", torch.device("cpu"), "fp32", BATCH, IMAGE_SIZE,
                       torch.get_num_threads(), tmp_path)
    with runner_cls(model, config) as runner:
        x = runner.to_input(resnet_perf.parity_inputs(BATCH, IMAGE_SIZE))
        benchmark.pedantic(runner.run, args=(x,), warmup_rounds=3, rounds=20)
    benchmark.extra_info["images_per_batch"] = BATCH
