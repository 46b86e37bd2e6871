"""What the CPU offers that decides how fast each precision runs, read from the CPU itself.

Our machines change from day to day (an AVX2-only AMD Zen3, Xeons with AVX-512 VNNI, Xeons with
AMX), and so does what is fast: with AMX, bf16 and int8 convolutions run several times faster than
fp32; without VNNI, int8 products saturate (see export.quantize). A figure is read against this.
"""

from __future__ import annotations

import functools
import os
import platform

# The instruction-set features that decide CPU inference speed, in the order a reader weighs them.
SPEED_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (Linux); empty where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def speed_features(flags: frozenset[str] | None = None) -> dict[str, bool] | None:
    """Each of SPEED_FEATURES and whether this CPU has it; None off x86 or where no flags could be read."""
    flags = cpu_flags() if flags is None else flags
    if not flags or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return {feature: feature in flags for feature in SPEED_FEATURES}


def describe(features: dict[str, bool] | None) -> str:
    """One line for a table's header: what the CPU has, and what it lacks."""
    if features is None:
        return "ISA features unknown (no /proc/cpuinfo flags, or not x86)"
    present = [f for f, has in features.items() if has]
    if not present:
        return f"ISA: none of {', '.join(SPEED_FEATURES)}"
    absent = [f for f, has in features.items() if not has]
    return f"ISA: {' '.join(present)}" + (f"; lacks {', '.join(absent)}" if absent else "")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), which may be fewer than the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def native_bf16(features: dict[str, bool] | None = None) -> bool:
    """Whether the CPU computes bf16 itself (AVX-512 bf16 or AMX) rather than through fp32."""
    features = speed_features() if features is None else features
    return bool(features) and (features["avx512_bf16"] or features["amx_bf16"])
