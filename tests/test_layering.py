"""The contract's import order, checked in fresh interpreters: kernels import nothing of ours, the
run's environment record needs no export code, and serving does not import the runners it serves."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported(module: str) -> set[str]:
    """The top two levels of every module of ours that importing ``module`` loads."""
    code = (f"import sys, {module}\n"
            "print(' '.join(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules "
            "if m.split('.')[0] in ('kernels', 'resnet_perf', 'export', 'bench')})))")
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.parametrize(("module", "never"), [
    ("kernels", {"resnet_perf", "export", "bench"}),
    ("kernels.aot", {"resnet_perf", "export", "bench"}),  # its command line reaches up, inside main
    ("bench.env", {"export"}),
    ("bench.plot", {"export"}),
    ("bench.serving.local", {"bench.runners"}),
    ("bench.serving.client", {"bench.runners", "export"}),
])
def test_imports_follow_the_layering(module, never):
    loaded = imported(module)
    assert not {m for m in loaded if m in never or m.split(".")[0] in never}, loaded
