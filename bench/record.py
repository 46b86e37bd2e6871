"""A run's rows as records: the Row every backend's measurement fills, its key, and the run file
(``--json``) written and read back, each row checked before any view, compare or --resume reads it.
The views of rows (the console table, Markdown, CSV) are bench.report's."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bench.scenarios import SCENARIOS
from resnet_perf.precision import PRECISIONS
from resnet_perf.util.cli import UsageError

SCHEMA = "resnet-perf/bench/1"


@dataclass
class Row:
    """One model x backend x device x precision x batch size: the contract's result record."""

    model: str
    backend: str
    device: str
    precision: str
    batch_size: int
    image_size: int
    # Requests in flight, each a batch (None: an auto row that never got to choose), and what
    # --streams asked for: N, or "auto" (the runtime's own choice); None in files from before
    # streams, which kept one in flight.
    streams: int | None = 1
    streams_asked: int | str | None = None
    # int8 rows: what quantized the model ("qdq": onnxruntime's QDQ file, "nncf": OpenVINO's NNCF IR,
    # "pt2e": PyTorch's PT2E; None for a backend without int8); files from before it was recorded
    # held only QDQ files, and read as such (rows_from_json).
    quantizer: str | None = None
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    throughput_ips: float | None = None
    latency_ms: dict | None = None
    iters: int = 0
    setup_s: float | None = None
    first_run_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    scenario: str = "offline"
    achieved_qps: float | None = None
    loadgen: dict | None = None
    parity: dict | None = None
    host_io: bool = False  # the timed call included the host-to-device and device-to-host copies
    cv: float | None = None  # coefficient of variation of samples_ms: std / mean
    noisy: bool | None = None  # cv above the run's --noise-threshold: the figures are less trustworthy
    repeats: list[float] | None = None  # with --repeat: the throughput of each repetition
    profile: dict | None = None  # --profile: {"stages": median ms of each} or {"layers": bench.layers' profile}
    # with --sensitivity: on int8 onnxruntime rows, per-layer INT8 cost (and with --parity layers the
    # bisection of a failing row, "from_lines"); on failing fp16 rows, that bisection alone
    sensitivity: dict | None = None
    accuracy: dict | None = None  # with --eval-data: top-1/top-5 on labelled images, and the fp32 model's
    note: str | None = None  # e.g. "interpreter timing": figures that are not performance
    serving: dict | None = None  # triton-server: the server's own split of the time, the client's, direct
    runtime: dict | None = None  # what the runtime chose or reports (openvino: its precision, streams, kernels)
    costs: dict | None = None  # peak memory, energy, clocks and % of the GEMM peak (bench.costs)
    # How the streams were kept in flight, and for auto how many were chosen and by what (with each
    # candidate's trial throughput where the harness searched); None for one call at a time.
    streams_how: dict | None = None

    def __post_init__(self) -> None:
        if self.streams_asked is None:
            self.streams_asked = self.streams

    @property
    def ok(self) -> bool:
        return self.status != "failed" and (self.parity is None or self.parity["passed"])

    @property
    def passed(self) -> bool:
        """Measured, and within its precision's parity tolerance."""
        return self.status == "ok" and bool(self.parity and self.parity["passed"])


# What tells two rows of a table apart: rows of two runs with the same key measured the same thing.
# Streams count as asked: an auto row is compared with an auto row, whatever N each chose.
# int8 rows count their quantizer: one run may hold a runtime's int8 from two quantizers side by side.
KEY = ("model", "backend", "device", "precision", "quantizer", "batch_size", "image_size", "scenario", "streams_asked")


def row_key(row: Row) -> tuple:
    return tuple(getattr(row, name) for name in KEY)


def finite(value):
    """JSON has no NaN or Infinity: a non-finite figure becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def to_json(rows: list[Row], env: dict) -> str:
    document = {"schema": SCHEMA, "env": env, "results": [finite(asdict(r)) for r in rows]}
    return json.dumps(document, indent=2) + "\n"


# The keys every row of a --json file has, those a row that ran adds, and the figures inside them
# that the table, the report and compare read: a file without them is from another version, or was
# edited by hand. A figure may be null: JSON has no NaN, so a non-finite one is written as null.
_FIGURE = (int, float, type(None))
_ROW_KEYS = {"model": str, "backend": str, "device": str, "precision": str, "batch_size": int, "image_size": int,
             "status": str, "scenario": str}
_OK_ROW_KEYS = {"throughput_ips": (int, float), "latency_ms": dict, "samples_ms": list, "parity": dict}
_OK_ROW_FIGURES = {"latency_ms": ("mean", "p50", "p99"),
                   "parity": ("cosine", "rel_l2", "top1_agreement", "distinct_top1")}
STATUSES = ("ok", "failed", "skipped")
# The nested fields the views and compare read, where a row has them (None is always allowed):
# each an object, and within it what is read, by type (a tuple of allowed values for a choice).
_NESTED = {"loadgen": {"result": ("VALID", "INVALID"), "reasons": list}, "accuracy": {"top1": float, "reference_top1": float},
           "profile": {}, "serving": {}, "runtime": {}, "sensitivity": {}, "streams_how": {}}
# The env fields the views read, by the types they may have (None where a run did not record them).
_ENV = {"cpu": (str, type(None)), "gpu": (str, type(None)), "cpu_features": (dict, type(None)),
        "costs": (dict, type(None)), "threads": (int, type(None)), "settings": (dict, type(None))}
# Top-level row fields besides the required ones, where present: what each may hold.
_OPTIONAL = {"cv": (int, float, type(None)), "noisy": (bool, type(None)), "note": (str, type(None)),
             "error": (str, type(None)), "quantizer": (str, type(None))}
# A timed call takes more than nothing and less than 11 days: outside this a file was edited, and
# means over it would overflow or divide by zero.
_SAMPLE_MS = (0.0, 1e9)


def load(path: str | Path, flag: str = "") -> dict:
    """A ``--json`` document read back and checked row by row, or UsageError naming the file (and
    the flag that gave it), the row and what is wrong with it."""
    where = f"{flag} {path}".strip()
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{where}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise UsageError(f"{where}: not a python -m bench result (nested deeper than Python's parser goes)") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise UsageError(f"{where}: not a python -m bench result (schema {SCHEMA!r})")
    if not isinstance(document.get("env"), dict) or not isinstance(document.get("results"), list):
        raise UsageError(f"{where}: a python -m bench result has an 'env' object and a 'results' list")
    for key, kinds in _ENV.items():
        if not isinstance(document["env"].get(key), kinds):
            raise UsageError(f"{where}: env.{key} is {document['env'].get(key)!r:.60}")
    for index, record in enumerate(document["results"]):
        problem = _row_problem(record)
        if problem:
            raise UsageError(f"{where}: row {index}: {problem}")
    seen: dict[tuple, int] = {}
    for index, row in enumerate(rows_from_json(document)):
        first = seen.setdefault(row_key(row), index)
        if first != index:
            raise UsageError(f"{where}: rows {first} and {index} are the same row ({' '.join(map(str, row_key(row)))}); "
                             "a run measures each once")
    return document


def _row_problem(record) -> str | None:
    """What makes ``record`` not a row this version can read, or None."""
    if not isinstance(record, dict):
        return "not an object"
    wanted = dict(_ROW_KEYS, **(_OK_ROW_KEYS if record.get("status") == "ok" else {}))
    for key, kind in wanted.items():
        if key not in record:
            return f"missing key {key!r}"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"{key} is {record[key]!r}"
    if record["status"] not in STATUSES:
        return f"status is {record['status']!r}, not one of {', '.join(STATUSES)}"
    for key, kinds in _OPTIONAL.items():
        if key in record and (not isinstance(record[key], kinds) or (bool not in kinds and isinstance(record[key], bool))):
            return f"{key} is {record[key]!r:.60}"
    if record["precision"] not in PRECISIONS:
        return f"precision is {record['precision']!r}, not one of {', '.join(PRECISIONS)}"
    if record["scenario"] not in ("offline", *SCENARIOS):
        return f"scenario is {record['scenario']!r}, not one of offline, {', '.join(SCENARIOS)}"
    if record["batch_size"] < 1 or record["image_size"] < 1:
        return f"batch_size {record['batch_size']} and image_size {record['image_size']} are not both 1 or more"
    problem = _streams_problem(record) or _nested_problem(record)
    if problem or record["status"] != "ok":
        return problem
    for key, figures in _OK_ROW_FIGURES.items():
        for figure in figures:
            if figure not in record[key]:
                return f"missing key {key}.{figure!r}"
            value = record[key][figure]
            if not isinstance(value, _FIGURE) or isinstance(value, bool) or (
                    key == "latency_ms" and value is not None and not (math.isfinite(value) and value >= 0)):
                return f"{key}.{figure} is {value!r}"
    if not (math.isfinite(record["throughput_ips"]) and record["throughput_ips"] > 0):
        return f"throughput_ips is {record['throughput_ips']!r}, not a positive number"
    if not isinstance(record["parity"].get("passed"), bool):
        return "parity.passed is not true or false"
    costs = record.get("costs")  # absent in files written before rows had costs
    if costs is not None:
        if not isinstance(costs, dict):
            return f"costs is {costs!r}"
        for figure in ("peak_mem_mb", "energy_j_per_img", "pct_of_peak"):
            if not isinstance(costs.get(figure), _FIGURE) or isinstance(costs.get(figure), bool):
                return f"costs.{figure} is {costs.get(figure)!r}"
    low, high = _SAMPLE_MS
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and low < s < high for s in record["samples_ms"]):
        return f"samples_ms holds something other than times in ms (numbers above {low:g} and below {high:g})"
    return None


def _nested_problem(record: dict) -> str | None:
    for key, inner in _NESTED.items():
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{key} is {value!r:.60}, not an object"
        for name, kind in inner.items():
            got = value.get(name)
            ok = got in kind if isinstance(kind, tuple) else _number(got) if kind is float else isinstance(got, kind)
            if not ok:
                return f"{key}.{name} is {got!r:.60}"
    if record.get("loadgen") and not all(isinstance(r, str) for r in record["loadgen"]["reasons"]):
        return "loadgen.reasons holds something other than text"
    layers = (record.get("parity") or {}).get("layers") if isinstance(record.get("parity"), dict) else None
    if layers is not None and not _layers_readable(layers):
        return f"parity.layers is {layers!r:.60}, not a reason or lines of (line, cosine, rel_l2, finite)"
    repeats = record.get("repeats")
    if repeats is not None and not (isinstance(repeats, list) and all(_number(x) and x > 0 for x in repeats)):
        return f"repeats is {repeats!r:.60}, not a list of throughputs"
    return None


def _number(value) -> bool:
    """A finite JSON number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _layers_readable(layers) -> bool:
    """--parity layers' record: why the backend gave none, or its lines, each with its figures (null
    where the backend's tensor held NaN or Inf: JSON has neither, and ``to_json`` writes null)."""
    if isinstance(layers, dict) and isinstance(layers.get("reason"), str):
        return True
    lines = layers.get("lines") if isinstance(layers, dict) else None

    def readable(f) -> bool:
        return (isinstance(f, dict) and isinstance(f.get("line"), str) and isinstance(f.get("finite"), bool)
                and all(_number(f.get(k)) or (not f["finite"] and f.get(k) is None) for k in ("cosine", "rel_l2")))

    return (isinstance(lines, list) and isinstance(layers.get("how"), str) and all(readable(f) for f in lines)
            and layers.get("first_outside") in (None, *(f["line"] for f in lines)))


def _streams_problem(record: dict) -> str | None:
    """Files from before streams have neither key (one in flight); a row that has them has a count
    of 1 or more (None only where auto never chose) and asked for a count or "auto"."""
    streams, asked = record.get("streams", 1), record.get("streams_asked", record.get("streams", 1))
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not (count(streams) or (streams is None and asked == "auto" and record["status"] != "ok")):
        return f"streams is {streams!r}"
    if not (count(asked) or asked == "auto"):
        return f"streams_asked is {asked!r}"
    return None


def rows_from_json(document: dict) -> list[Row]:
    """The rows of a document ``load`` read, as Rows again (fields this version does not know are dropped)."""
    names = {f.name for f in fields(Row)}
    rows = []
    for record in document["results"]:
        known = {k: v for k, v in record.items() if k in names}
        if record["precision"] == "int8":
            known.setdefault("quantizer", "qdq")  # files from before rows named their quantizer ran QDQ files only
        rows.append(Row(**known))
    return rows


_CSV_LATENCY = ("mean", "p50", "p90", "p95", "p99", "p99.9", "min", "max", "std")
_CSV_PARITY = ("max_abs", "rel_l2", "cosine", "top1_agreement", "top5_agreement", "distinct_top1", "passed")
_CSV_COSTS = ("peak_mem_mb", "setup_peak_mem_mb", "run_peak_mem_mb", "mem_source", "host_peak_mem_mb", "runtime_load_mb", "energy_j_per_img", "mean_power_w", "energy_reason",
              "achieved_gflops", "pct_of_peak", "peak_probe_gflops", "clock_min_mhz", "clock_mean_mhz", "throttled",
              "cpu_cores_busy", "cpu_cores_usable")


def to_csv(rows: list[Row]) -> str:
    """One line per row; nested figures flattened (latency_p50_ms, parity_cosine), samples left out."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    scalar = ["model", "backend", "device", "precision", "batch_size", "streams", "streams_asked", "image_size",
              "status", "error", "throughput_ips", "iters", "setup_s", "first_run_ms", "scenario", "achieved_qps", "host_io", "cv", "noisy", "note"]
    writer.writerow([*scalar, *(f"latency_{k}_ms" for k in _CSV_LATENCY), *(f"parity_{k}" for k in _CSV_PARITY),
                     *(f"costs_{k}" for k in _CSV_COSTS), "loadgen_result", "loadgen_reasons", "loadgen_target_qps",
                     "quantizer"])  # last, as it came last: files read by column position keep their columns
    for row in rows:
        record = finite(asdict(row))
        latency = record["latency_ms"] or {}
        parity = record["parity"] or {}
        costs = record.get("costs") or {}
        writer.writerow([
            *(record[k] for k in scalar),
            *(latency.get(k) for k in _CSV_LATENCY),
            *(parity.get(k) for k in _CSV_PARITY),
            *(costs.get(k) for k in _CSV_COSTS),
            *((lg["result"], "; ".join(lg["reasons"]), lg["target_qps"]) if (lg := record["loadgen"]) else (None,) * 3),
            record["quantizer"],
        ])
    return buffer.getvalue()
