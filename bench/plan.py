"""What a ``python -m bench`` run will do, decided before it starts: the rows, how each is timed
and checked, and where the results go. ``bench.__main__.resolve`` builds it from the flags and
finds every bad input while building it; nothing after that reads a flag.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.record import Row
from bench.scenarios import ScenarioSettings
from export.quantize import CalibrationFlags


@dataclass(frozen=True)
class RowSpec:
    """One row of the table, before it runs."""

    model: str
    precision: str
    batch_size: int
    backend: str
    streams: int | str = 1  # requests in flight, or "auto"
    quantizer: str | None = None  # int8: what quantizes the model the backend runs


@dataclass(frozen=True)
class Loop:
    """How the offline scenario's fixed-batch loop times a row."""

    warmup: int = 3
    iters: int = 20
    min_time: float | None = None  # time calls until this many seconds (at least ``iters``)
    repeat: int = 1  # measure the row this many times over and report the spread
    noise_threshold: float = 0.05  # a row whose samples' std/mean exceeds this is flagged noisy
    host_io: bool = False  # time the host-device copies too (CUDA)
    profile: str | None = None  # also time each stage of the model ("stages") or each layer ("layers")
    profile_calls: int = 10  # the calls a layer profile runs, apart from the timed ones
    profile_dir: Path | None = None  # where a layer profile's raw traces are kept


@dataclass(frozen=True)
class Outputs:
    json: Path | None = None
    csv: Path | None = None
    plot: Path | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, decided up front: no field changes once ``resolve`` returns it, and
    the run reads it only (its mappings and the model included)."""

    models: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    device: torch.device
    image_size: int
    seed: int
    threads: int
    cache_dir: Path
    env: dict  # the contract's ``env`` object, collected once
    options: Mapping[str, Any] = field(default_factory=dict)  # backend -> its own options
    artifacts: Mapping[str, Path] = field(default_factory=dict)  # "onnx" (--onnx), "tensorrt" (--engine)
    not_run: Mapping[str, str] = field(default_factory=dict)  # backend -> why, for `--backend all`
    loop: Loop = Loop()
    streams: tuple[int | str, ...] = (1,)  # requests in flight per row: counts, or "auto"
    # int8 rows: the quantizers each backend runs, a row each (Runner.quantizers; None for a backend
    # without int8, whose int8 row is skipped)
    quantizers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # "offline" (the fixed-batch loop) or a LoadGen scenario; its log_dir is the root under which
    # each row keeps its LoadGen logs in a folder of its own.
    scenario: ScenarioSettings = ScenarioSettings("offline")
    find_max_qps: bool = False
    # The model of every row when the run fixes it up front: --weights, or the synthetic model an
    # artifact was exported from (its weights checked against the artifact's manifest).
    model: nn.Module | None = None
    calibration: CalibrationFlags | None = None  # int8 rows: how they are calibrated
    calibration_inputs: Tensor | None = None  # --calib-data's inputs (None: synthetic)
    keep_fp: tuple[str, ...] = ()  # fp16 rows: the layers kept in fp32 (--keep-fp)
    evaluation: tuple[Tensor, Tensor] | None = None  # --eval-data: images and their labels
    # rank the layers by their INT8 cost (onnxruntime int8 rows); with parity_layers, bisect failing
    # int8 and fp16 rows to the layers to keep in fp32
    sensitivity: bool = False
    parity_layers: bool = False  # --parity layers: every line's output compared with the fp32 model's
    outputs: Outputs = Outputs()
    resumed: Mapping[tuple, Row] = field(default_factory=dict)  # --resume: rows already measured, by key

    @property
    def rows(self) -> list[RowSpec]:
        """Every row, model by model, then precision, batch size, backend, its int8 quantizers and
        streams, as the table shows them."""
        return [RowSpec(model, precision, batch, backend, streams, quantizer)
                for model, precision, batch, backend in itertools.product(self.models, self.precisions,
                                                                          self.batch_sizes, self.backends)
                for quantizer in (self.quantizers.get(backend, (None,)) if precision == "int8" else (None,))
                for streams in self.streams]
