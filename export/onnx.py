"""Export a model to ONNX through torch.onnx's dynamo exporter, checked by onnx's own checker."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from export.atomic import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int,
    image_size: int,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` as a static-shape ONNX graph (batch_size x 3 x image_size x image_size) to
    ``path``, atomically, after onnx.checker and shape inference accept it. ``model`` is not changed."""
    import onnx  # lazy: importing the package must not need the exporter's dependencies

    if precision not in DTYPES:
        raise ValueError(f"ONNX export supports {', '.join(DTYPES)}, not {precision!r}")
    dtype = DTYPES[precision]
    module = copy.deepcopy(model).eval().to(dtype)
    example = torch.zeros(batch_size, 3, image_size, image_size, dtype=dtype)

    path = Path(path)
    with atomic_path(path) as tmp:
        with torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                # One self-contained file: ResNets are far below protobuf's 2 GB limit, and a
                # cached artifact that drags a side file along is easy to break by copying.
                external_data=False,
            )
        program.save(str(tmp), external_data=False)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress to stdout, logs a warning per missing torchvision op and
    passes on deprecation warnings from torch internals; a benchmark's output is its table, so all
    three are held back. Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
