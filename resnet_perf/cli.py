"""What ``python -m bench`` and ``python -m export`` share on the command line: argument types,
the one-line usage error, device and path checks, and one-line messages for runtime errors.

Bad input is reported as one line on stderr with exit status 2, never a traceback; so every check
here raises UsageError with a message naming the flag, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage plus the message; the contract wants one line
        raise UsageError(message)


def default_cache_dir() -> Path:
    """Where exported files, engines and calibrations are kept between runs: $RESNET_PERF_CACHE, or
    ~/.cache/resnet-perf."""
    return Path(os.environ.get("RESNET_PERF_CACHE", Path.home() / ".cache" / "resnet-perf"))


def list_of(kind):
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(item) for item in items]

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def rng_seed(text: str) -> int:
    value = non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not below 2**32")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number")
    return value


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r}: choose cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text!r}: choose cpu, cuda, cuda:N or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is visible to PyTorch here (torch {torch.__version__})")
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_writable(flag: str, path: str | None) -> None:
    """``path`` can be written as a file: not a folder, its folder creatable and writable."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create its folder ({exc.strerror})") from None
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {target.parent} is not writable")


def check_directory(flag: str, path: str) -> None:
    """``path`` is, or can be made, a writable folder."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def one_line(exc: BaseException, *, first_line: bool = False) -> str:
    """A runtime error as one line for a table cell or stderr; exhausted memory as "out of memory".
    ``first_line`` keeps only the message's first line, for errors that carry a traceback or log
    after it (a server's answer, torch.load's on a bad file), where the rest would crowd out what happened."""
    text = str(exc).strip()
    text = " ".join((text.splitlines()[0] if first_line and text else text).split())
    # CPU allocators and onnxruntime report exhaustion as plain errors with these words.
    allocator = ("out of memory", "failed to allocate memory", "defaultcpuallocator")
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or any(a in text.lower() for a in allocator):
        return "out of memory"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
