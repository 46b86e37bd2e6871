"""Every row's costs: peak memory attributed to the row, energy from RAPL and NVML counters (fake
sysfs and fake NVML values, wraps included), clocks and throttling, and achieved FLOP/s against
the GEMM probe, with the FLOP count checked against PyTorch's own counter."""

from __future__ import annotations

import functools
import json
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench.__main__ as cli
import resnet_perf
from bench.costs import clocks, meter, peak
from bench.costs.energy import NvmlEnergy, Rapl
from bench.costs.memory import HostMemory, NvmlMemory
from bench.record import SCHEMA, load, rows_from_json, to_csv
from bench.runners import RUNNERS
from bench.runners.eager import EagerRunner
from resnet_perf.flops import macs_per_image
from resnet_perf.util.cli import UsageError
from tests.test_compare import row as compare_row
from tests.test_compare import samples

HELD_MB = 512


class AllocatingRunner(EagerRunner):
    """Eager, holding HELD_MB more resident memory from setup on: the row must report it."""

    name = "allocating"

    def prepare_impl(self):
        super().prepare_impl()
        self.held = np.ones(HELD_MB * 2**20, dtype=np.uint8)  # written, so resident

    def close_impl(self):
        del self.held
        super().close_impl()


@pytest.mark.slow
@pytest.mark.parametrize("exact", [True, False], ids=["vmhwm", "sampled"])
def test_a_row_reports_the_memory_its_backend_holds(capsys, tmp_path, monkeypatch, exact):
    monkeypatch.setitem(RUNNERS, AllocatingRunner.name, AllocatingRunner)
    monkeypatch.setattr(meter, "HostMemory", functools.partial(HostMemory, reset_peak=exact))
    path = tmp_path / "run.json"
    code = cli.main(["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2", "--iters", "3", "--warmup", "1",
                     "--backend", "eager,allocating", "--json", str(path), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    eager, allocating = (r["costs"] for r in json.loads(path.read_text())["results"])
    assert eager["mem_source"] == allocating["mem_source"]
    assert eager["mem_source"].startswith("host RSS peak (VmHWM" if exact else "host RSS sampled")
    # eager's own peak (its private copy of the model: 11.7M fp32 weights, 45 MB) is in both rows
    assert eager["peak_mem_mb"] > 30
    # held from setup on: in the row's whole peak and in its running one, beside no more than an eager
    # row's own. Not their difference to 10%: the first row also pays for what the process sets up
    # once (thread pools, oneDNN's caches), and how much of that the next row reuses from freed heap
    # varies (CI once saw 459 MB more, not 512)
    for figure in ("peak_mem_mb", "run_peak_mem_mb"):
        assert eager[figure] < HELD_MB / 2
        assert 0.95 * HELD_MB <= allocating[figure] <= HELD_MB + 1.25 * eager[figure]
    assert eager["peak_mem_mb"] == max(eager["setup_peak_mem_mb"], eager["run_peak_mem_mb"])


class LoadingRunner(EagerRunner):
    """Eager, whose runtime holds HELD_MB once loaded and whose build uses HELD_MB while it runs:
    neither is the row's memory."""

    name = "loading"
    runtime: np.ndarray | None = None

    @classmethod
    def load_runtime(cls, device):
        cls.runtime = np.ones(HELD_MB * 2**20, dtype=np.uint8)

    def build_impl(self):
        scratch = np.ones(HELD_MB * 2**20, dtype=np.uint8)
        self.built = int(scratch[::4096].sum())  # an exporter's working set, gone when it is done


@pytest.mark.slow
def test_a_build_and_a_runtime_load_are_not_the_rows_memory(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(RUNNERS, LoadingRunner.name, LoadingRunner)
    path = tmp_path / "run.json"
    try:
        code = cli.main(["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2,1", "--iters", "3",
                         "--warmup", "1", "--backend", "eager,loading", "--json", str(path),
                         "--cache-dir", str(tmp_path / "cache")])
    finally:
        LoadingRunner.runtime = None
    assert code == 0, capsys.readouterr().err
    rows = {(r["backend"], r["batch_size"]): r["costs"] for r in json.loads(path.read_text())["results"]}
    for batch in (2, 1):
        eager, loading = rows["eager", batch], rows["loading", batch]
        # neither the build's HELD_MB nor the runtime's: an eager row's own, which is far below it
        # (how far the first row's one-off set-up costs differ is the allocator's business)
        assert max(loading["peak_mem_mb"], eager["peak_mem_mb"]) < HELD_MB / 2
        # loaded once, before the backend's first row; every row of it says what that cost
        assert loading["runtime_load_mb"] == pytest.approx(HELD_MB, rel=0.10)
        assert eager["runtime_load_mb"] < 0.1 * HELD_MB


@pytest.mark.slow
def test_every_ok_row_has_its_costs_and_the_file_reads_back(capsys, tmp_path):
    path = tmp_path / "run.json"
    assert cli.main(["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "1", "--iters", "2", "--warmup", "0",
                     "--backend", "eager,onnxruntime", "--json", str(path), "--csv", str(tmp_path / "run.csv"),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "peak/run MB" in out and "J/img" in out and "% peak" in out and "energy:" in out
    document = load(path)
    gmac = macs_per_image(resnet_perf.build_model("resnet18", image_size=32), 32) / 1e9
    for r in document["results"]:
        c = r["costs"]
        assert c["gmac_per_image"] == pytest.approx(gmac)
        assert c["achieved_gflops"] == pytest.approx(2 * gmac * r["throughput_ips"])
        assert c["pct_of_peak"] == pytest.approx(100 * c["achieved_gflops"] / c["peak_probe_gflops"])
        assert c["peak_mem_mb"] >= 0 and "host RSS" in c["mem_source"]
        # energy is a figure, or null with the reason env gives for this machine
        assert (c["energy_j_per_img"] is None) == (document["env"]["costs"]["energy"] is None)
        assert c["energy_j_per_img"] is not None or c["energy_reason"] == document["env"]["costs"]["energy_reason"]
    header = (tmp_path / "run.csv").read_text().splitlines()[0].split(",")
    assert {"costs_peak_mem_mb", "costs_energy_j_per_img", "costs_pct_of_peak", "costs_throttled"} <= set(header)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "gmac"), [("resnet18", 64, 0.149), ("resnet50", 224, 4.089)])
def test_the_mac_count_matches_torch_flop_counter(name, size, gmac):
    model = resnet_perf.build_model(name, image_size=size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    macs = macs_per_image(model, size)
    assert 2 * macs == counter.get_total_flops()
    assert macs / 1e9 == pytest.approx(gmac, abs=0.001)  # ResNet-50 at 224 px: the 4.1 GMAC everyone quotes
    assert all(p.device.type == "cpu" for p in model.parameters())  # the count left the model as it was


@pytest.mark.parametrize(("precision", "libraries"), [
    ("fp32", {"torch.matmul fp32", "onnxruntime MatMul fp32"}),
    ("bf16", {"torch.matmul bf16"}),
    ("int8", {"torch._int_mm int8", "onnxruntime MatMulInteger u8s8"}),
])
def test_the_gemm_probe_keeps_the_fastest_library(precision, libraries):
    measured = peak.probe(precision, torch.device("cpu"), seconds=0.05)
    assert set(measured["gemms"]) == libraries
    assert all(rate > 0.1 for rate in measured["gemms"].values())
    fastest = max(measured["gemms"], key=measured["gemms"].get)
    assert measured["gflops"] == measured["gemms"][fastest] and measured["how"].startswith(fastest + " ")


def test_a_gemm_that_fails_leaves_the_others_rate(monkeypatch):
    def broken(n):
        raise RuntimeError("no kernel\nfor this")

    real = next(peak._gemms("fp32", torch.device("cpu")))
    monkeypatch.setattr(peak, "_gemms", lambda precision, device: iter([("broken", broken), real]))
    measured = peak.probe("fp32", torch.device("cpu"), seconds=0.05)
    assert measured["gemms"]["broken"] == "did not run: RuntimeError: no kernel for this"
    assert measured["how"].startswith(real[0]) and measured["gflops"] > 0.1
    monkeypatch.setattr(peak, "_gemms", lambda precision, device: iter([("broken", broken)]))
    assert peak.probe("fp32", torch.device("cpu"))["gflops"] is None


def test_costs_complete_with_the_rows_throughput():
    costs = meter.complete({"mean_power_w": 50.0}, 100.0, 4.0, {"gflops": 1000.0, "how": "x"})
    assert costs["energy_j_per_img"] == pytest.approx(0.5)
    assert costs["achieved_gflops"] == pytest.approx(800.0) and costs["pct_of_peak"] == pytest.approx(80.0)
    none = meter.complete({"mean_power_w": None}, 100.0, 4.0, {"gflops": None, "how": "no int8 GEMM here"})
    assert none["energy_j_per_img"] is None and none["pct_of_peak"] is None


def rapl_root(tmp_path, *packages: tuple[int, int]):
    """A fake /sys/class/powercap: one intel-rapl:N zone per (energy_uj, max_energy_range_uj), each
    with a core subzone whose counter must not be added to its package's."""
    for n, (energy, wrap) in enumerate(packages):
        for zone, value in ((f"intel-rapl:{n}", energy), (f"intel-rapl:{n}:0", 10**9)):
            folder = tmp_path / zone
            folder.mkdir(parents=True)
            (folder / "energy_uj").write_text(f"{value}\n")
            (folder / "max_energy_range_uj").write_text(f"{wrap}\n")
    return tmp_path


def set_energy(root, package: int, value: int) -> None:
    (root / f"intel-rapl:{package}" / "energy_uj").write_text(f"{value}\n")


def test_rapl_sums_packages_and_undoes_a_wrap(tmp_path):
    root = rapl_root(tmp_path, (1_000_000, 2**32 - 1), (262_143_000_000, 262_143_328_850))
    rapl = Rapl(root)
    assert rapl.reason is None and "2 package(s)" in rapl.source
    start = rapl.read()
    set_energy(root, 0, 4_000_000)  # +3 J
    set_energy(root, 1, 1_000_000)  # wrapped: 328_850 + 1 to the top, then 1 J
    assert rapl.joules(start, rapl.read()) == pytest.approx(3 + 1.328851)


def test_rapl_says_why_there_is_no_figure(tmp_path, monkeypatch):
    assert "no RAPL package zone" in Rapl(tmp_path / "absent").reason
    root = rapl_root(tmp_path, (1, 10))
    original = type(root).read_text

    def read_text(path, *args, **kwargs):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(type(root), "read_text", read_text)
    assert Rapl(root).reason.endswith("energy_uj is readable by root only")


class FakeNvml:
    """NVML's calls as pynvml spells them, answering set values: the readers' arithmetic, not NVML."""

    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj=(0,), clocks_mhz=(1980,), reasons=0, used=(0,)):
        self.energy, self.clocks, self.reasons, self.used = list(energy_mj), list(clocks_mhz), reasons, list(used)

    @staticmethod
    def _next(values):
        return values.pop(0) if len(values) > 1 else values[0]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._next(self.energy)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        assert kind == self.NVML_CLOCK_SM
        return self._next(self.clocks)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.reasons

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Memory", (), {"used": self._next(self.used)})


def test_the_nvml_readers_call_what_pynvml_defines():
    pynvml = pytest.importorskip("pynvml")
    for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetClockInfo", "nvmlDeviceGetMemoryInfo",
                 "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetHandleByIndex",
                 "NVML_CLOCK_SM", "NVMLError", "nvmlInit", "nvmlShutdown"):
        assert hasattr(pynvml, name), name
    for bit, name in ((pynvml.nvmlClocksEventReasonSwPowerCap, "software power cap"),
                      (pynvml.nvmlClocksEventReasonHwSlowdown, "hardware slowdown"),
                      (pynvml.nvmlClocksEventReasonSwThermalSlowdown, "software thermal slowdown"),
                      (pynvml.nvmlClocksEventReasonHwThermalSlowdown, "hardware thermal slowdown"),
                      (pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown, "power brake")):
        assert clocks.SLOWDOWNS[bit] == name


def test_nvml_energy_memory_and_clocks_from_fake_values():
    nvml = FakeNvml(energy_mj=(5_000, 5_000, 17_500), clocks_mhz=(1980, 1755), reasons=0x4,
                    used=(1 << 30, (1 << 30) + (300 << 20), (1 << 30) + (100 << 20)))
    energy = NvmlEnergy(nvml, None)
    assert energy.reason is None and energy.joules(energy.read(), energy.read()) == pytest.approx(12.5)
    memory = NvmlMemory(nvml, None)
    memory.start()
    memory.sample()
    assert memory.peaks_mb() == pytest.approx((0, 300))
    clock = clocks.NvmlClocks(nvml, None)
    summary = clocks.summary([clock.sample(), clock.sample()])
    assert summary["clock_min_mhz"] == 1755 and summary["throttled"]
    assert summary["throttle_reasons"][0] == "software power cap"


def test_nvml_energy_unsupported_is_a_reason():
    class Old(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, handle):
            raise self.NVMLError("Not Supported")

    assert "not available on this GPU" in NvmlEnergy(Old(), None).reason


def cpufreq_root(tmp_path, khz: int):
    for n in (0, 1):
        folder = tmp_path / f"cpu{n}" / "cpufreq"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scaling_cur_freq").write_text(f"{khz}\n")
    return tmp_path


def test_a_row_meters_energy_clocks_and_cpu_over_its_windows_only(tmp_path):
    power, freq = rapl_root(tmp_path / "powercap", (0, 2**32 - 1)), cpufreq_root(tmp_path / "cpu", 3_000_000)
    gauges = meter.Gauges(torch.device("cpu"), rapl=Rapl(power), cpufreq=clocks.CpuFreq(freq, cpus=[0, 1]))
    with meter.RowMeter(gauges) as row:
        set_energy(power, 0, 50_000_000)  # setup's energy: outside any window
        sum(i * i for i in range(2_000_000))  # setup's CPU: outside it too
        with row.window():
            set_energy(power, 0, 60_000_000)  # 10 J in the window
            time.sleep(0.15)
            cpufreq_root(freq, 2_400_000)  # the clock falls 20% inside the window
            time.sleep(0.15)
        costs = row.costs()
    assert costs["energy_j"] == pytest.approx(10.0) and costs["mean_power_w"] == pytest.approx(10 / costs["window_s"])
    assert costs["clock_min_mhz"] == 2400 and costs["throttled"]
    assert "fell 20%" in costs["throttle_reasons"][0]
    # The window slept: its cores were all but idle, whatever setup burnt before it.
    assert 0 <= costs["cpu_cores_busy"] < 0.2 and costs["cpu_cores_usable"] >= 1
    assert not any(t.name == "row-meter" for t in threading.enumerate())


def test_the_first_window_ends_setups_memory_and_fresh_forgets_earlier_windows():
    class Levels:
        """A memory meter whose level the test sets; its peak since start and since mark."""

        sampled_peak, source = False, "test"

        def __init__(self):
            self.level, self.marked = 0, None

        def start(self):
            self.setup = self.run = 0

        def mark(self):
            self.marked = self.setup

        def sample(self):
            pass

        def grow(self, mb):
            self.level = mb
            if self.marked is None:
                self.setup = max(self.setup, mb)
            else:
                self.run = max(self.run, mb)

        def peaks_mb(self):
            return float(self.setup), float(self.run)

    memory = Levels()
    gauges = meter.Gauges(torch.device("cpu"), host=memory)
    with meter.RowMeter(gauges) as row:
        memory.grow(300)  # building and loading: setup
        with row.window():
            memory.grow(120)
        with row.window(fresh=True):
            time.sleep(0.01)
        costs = row.costs()
    assert (costs["setup_peak_mem_mb"], costs["run_peak_mem_mb"], costs["peak_mem_mb"]) == (300.0, 120.0, 300.0)
    assert 0.01 <= costs["window_s"] < 0.5  # the last, fresh window alone


def test_a_clock_that_held_is_not_throttled():
    assert clocks.summary([(3000.0, 0), (2950.0, 0)])["throttled"] is False
    assert clocks.summary([])["throttled"] is None


def test_cpufreq_absent_is_a_reason(tmp_path):
    assert "no readable cpufreq" in clocks.CpuFreq(tmp_path, cpus=[0]).reason


def costed(backend: str, latencies: list[float], peak_mb: float, j_per_img: float | None = None) -> dict:
    record = compare_row(backend, latencies)
    return {**record, "costs": {"peak_mem_mb": peak_mb, "energy_j_per_img": j_per_img, "pct_of_peak": None}}


def write_run(path, rows):
    path.write_text(json.dumps({"schema": SCHEMA, "env": {}, "results": rows}))
    return str(path)


@pytest.mark.parametrize(("new_mb", "flags", "status"), [
    (600.0, [], 1),  # +20%
    (520.0, [], 0),  # +4%, within the default 10%
    (600.0, ["--mem-threshold", "0.3"], 0),
])
def test_compare_flags_a_memory_regression(capsys, tmp_path, new_mb, flags, status):
    base = write_run(tmp_path / "base.json", [costed("eager", samples(10.0, 0.03), 500.0)])
    new = write_run(tmp_path / "new.json", [costed("eager", samples(10.0, 0.03, seed=5), new_mb)])
    assert cli.main(["compare", base, new, *flags]) == status
    out = capsys.readouterr().out
    assert ("peak MB regression" in out) is (status == 1)


def test_compare_flags_an_energy_regression_and_ignores_memory_below_its_floor(capsys, tmp_path):
    base = write_run(tmp_path / "base.json", [costed("eager", samples(10.0, 0.03), 2.0, 0.50)])
    new = write_run(tmp_path / "new.json", [costed("eager", samples(10.0, 0.03, seed=5), 3.0, 0.60)])
    assert cli.main(["compare", base, new]) == 1
    out = capsys.readouterr().out
    assert "J/img regression" in out and "peak MB regression" not in out


def test_files_without_costs_still_compare_and_bad_costs_are_refused(tmp_path):
    old = write_run(tmp_path / "old.json", [compare_row("eager", samples(10.0, 0.03))])
    assert rows_from_json(load(old))[0].costs is None
    assert "costs_peak_mem_mb" in to_csv(rows_from_json(load(old)))
    bad = write_run(tmp_path / "bad.json", [{**compare_row("eager", samples(10.0, 0.03)), "costs": 5}])
    with pytest.raises(UsageError, match="row 0: costs is 5"):
        load(bad)
