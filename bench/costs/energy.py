"""Energy counters read around a row's timed window: Linux RAPL on the CPU, NVML on NVIDIA GPUs.

RAPL (powercap's ``intel-rapl:N`` zones; AMD's Zen packages appear under the same name) counts the
whole package in microjoules: every core and its other processes too, so a figure is the machine's
cost of the window, not this process's alone. Each counter wraps at its ``max_energy_range_uj``;
a window shorter than one wrap (minutes at full power) is read correctly across it. Since Linux
5.10 ``energy_uj`` is readable by root only, and most VMs expose no powercap at all: then there is
no figure, and the reason says why.

NVML's total-energy counter (millijoules since the driver loaded, Volta and later) is per GPU.
"""

from __future__ import annotations

from pathlib import Path


class Rapl:
    """The package zones of ``root`` (``/sys/class/powercap``), or the reason there are none usable."""

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        self.root = Path(root)
        self.zones: list[tuple[Path, int]] = []  # (energy_uj, its wrap) of each package
        self.reason: str | None = None
        try:
            # Top-level zones only (intel-rapl:0, not its subzones intel-rapl:0:0): the package
            # already holds its cores' and uncore's energy.
            packages = sorted(p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1)
        except OSError as exc:
            packages, self.reason = [], f"{self.root}: {exc.strerror}"
        if not packages:
            self.reason = self.reason or f"no RAPL package zone under {self.root} (not exposed on this machine)"
            return
        try:
            for zone in packages:
                counter = zone / "energy_uj"
                counter.read_text()
                self.zones.append((counter, int((zone / "max_energy_range_uj").read_text())))
        except PermissionError:
            self.zones, self.reason = [], f"{packages[0] / 'energy_uj'} is readable by root only"
        except (OSError, ValueError) as exc:
            self.zones, self.reason = [], f"{packages[0]}: unreadable ({exc})"

    @property
    def source(self) -> str:
        return f"RAPL package energy ({len(self.zones)} package(s), whole machine)"

    def read(self) -> list[int]:
        return [int(counter.read_text()) for counter, _ in self.zones]

    def joules(self, start: list[int], end: list[int]) -> float:
        """The energy between two reads, each counter's wrap undone."""
        total = 0
        for (_, wrap), a, b in zip(self.zones, start, end):
            total += b - a if b >= a else b + wrap + 1 - a
        return total / 1e6


class NvmlEnergy:
    """One GPU's total-energy counter, or the reason it cannot be read."""

    source = "NVML total energy (this GPU)"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        self.reason: str | None = None
        try:
            self.read()
        except nvml.NVMLError as exc:
            self.reason = f"NVML total energy is not available on this GPU ({exc})"

    def read(self) -> int:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def joules(self, start: int, end: int) -> float:
        return (end - start) / 1e3
