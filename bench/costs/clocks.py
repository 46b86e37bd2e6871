"""Clocks sampled during a row's timed window, and whether they held.

A figure measured while the clock fell (a GPU at its power or thermal limit, a CPU whose governor
lowered it) is a figure of that state, not of the machine: env's clocks at the start of the run
cannot show it, samples during the window can. A row is flagged throttled when its lowest sample
is more than 10% below its highest, or (GPU) NVML reported a power or thermal slowdown.
"""

from __future__ import annotations

import os
from pathlib import Path

# NVML's clock-event reasons that mean the GPU was held back (not idle, not an application cap).
SLOWDOWNS = {
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "power brake",
}
FALL = 0.10  # a clock this far below the window's highest sample flags the row


class CpuFreq:
    """The mean current frequency of the CPUs this process may run on, from cpufreq, or the reason
    there is none (VMs rarely expose cpufreq)."""

    source = "cpufreq scaling_cur_freq, mean of the usable CPUs"

    def __init__(self, root: str | Path = "/sys/devices/system/cpu", cpus: list[int] | None = None):
        cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        self.files = [Path(root) / f"cpu{n}" / "cpufreq" / "scaling_cur_freq" for n in cpus]
        self.reason: str | None = None
        try:
            self.sample()
        except (OSError, ValueError):
            self.reason = f"no readable cpufreq under {root} (not exposed on this machine)"

    def sample(self) -> tuple[float, int]:
        """The clock in MHz, and no slowdown reasons (a CPU reports none)."""
        khz = [int(f.read_text()) for f in self.files]
        return sum(khz) / len(khz) / 1e3, 0


class NvmlClocks:
    """One GPU's SM clock and its clock-event (throttle) reasons."""

    source = "NVML SM clock and clock-event reasons"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        # Renamed in NVML 12.2 (clocks "throttle" became clock "event" reasons); older bindings
        # have only the first name.
        self.reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons",
                               getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        self.reason: str | None = None
        try:
            self.sample()
        except nvml.NVMLError as exc:
            self.reason = f"NVML clocks are not readable on this GPU ({exc})"

    def sample(self) -> tuple[float, int]:
        return (float(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM)),
                self.reasons(self.handle))


def summary(samples: list[tuple[float, int]]) -> dict:
    """min/mean clock of a window's samples, and whether (and why) it counts as throttled."""
    if not samples:
        return {"clock_min_mhz": None, "clock_mean_mhz": None, "throttled": None, "throttle_reasons": []}
    clocks = [mhz for mhz, _ in samples]
    bits = 0
    for _, reasons in samples:
        bits |= reasons
    why = [name for bit, name in SLOWDOWNS.items() if bits & bit]
    low, high = min(clocks), max(clocks)
    if low < (1 - FALL) * high:
        why.append(f"clock fell {1 - low / high:.0%} below the window's highest ({high:.0f} MHz)")
    return {"clock_min_mhz": low, "clock_mean_mhz": sum(clocks) / len(clocks), "throttled": bool(why),
            "throttle_reasons": why}
