"""resnet_perf.util.cli.one_line: every runtime error as one line, the way both commands report it."""

from __future__ import annotations

import pytest
import torch

from resnet_perf.util.cli import one_line


def test_a_message_is_one_line_named_by_its_type():
    assert one_line(ValueError("bad\n  value")) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError"
    assert len(one_line(RuntimeError("x" * 1000))) == 300


def test_first_line_drops_what_follows_it():
    """A server's answer or a refused pickle carries its traceback after the first line."""
    error = RuntimeError("[StatusCode.UNAVAILABLE] failed to connect\nTraceback (most recent call last):\n  ...")
    assert one_line(error, first_line=True) == "RuntimeError: [StatusCode.UNAVAILABLE] failed to connect"
    assert one_line(RuntimeError("\n"), first_line=True) == "RuntimeError"


@pytest.mark.parametrize("first_line", [False, True])
def test_exhausted_memory_reads_out_of_memory(first_line):
    assert one_line(MemoryError(), first_line=first_line) == "out of memory"
    assert one_line(torch.cuda.OutOfMemoryError("CUDA out of memory.\nTried ..."), first_line=first_line) == "out of memory"
    assert one_line(RuntimeError("DefaultCPUAllocator: can't allocate"), first_line=first_line) == "out of memory"
