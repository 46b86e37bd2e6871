"""What ``python -m bench`` and ``python -m export`` share on the command line: argument types,
the one-line usage error, device and path checks, and one-line messages for runtime errors.

Bad input is reported as one line on stderr with exit status 2, never a traceback; so every check
here raises UsageError with a message naming the flag, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import re
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage plus the message; the contract wants one line
        raise UsageError(message)


def script(prog: str, main: Callable[[], int | None]) -> int:
    """A script's main run as the commands run theirs: a UsageError is one line on stderr, exit 2;
    a stop signal unwinds it (its temporary folders removed), one line, exit 128 + the signal."""
    with stop_on_signals():
        try:
            return main() or 0
        except UsageError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            stopped = Stopped.of(exc)
            print(f"{prog}: interrupted by {stopped}", file=sys.stderr)
            return stopped.exit_status


def default_cache_dir() -> Path:
    """Where exported files, engines and calibrations are kept between runs: $RESNET_PERF_CACHE, or
    ~/.cache/resnet-perf."""
    return Path(os.environ.get("RESNET_PERF_CACHE", Path.home() / ".cache" / "resnet-perf"))


def list_of(kind):
    """A comma-separated list. A value given twice counts once, for every list flag alike: a
    repeated batch size or model would only measure the same row twice."""
    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
        return list(dict.fromkeys(kind(item) for item in items))

    return parse


def _integer(text: str, least: int, what: str) -> int:
    """``text`` as an integer of ``least`` or more, else an argparse error saying it is not ``what``."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, "an integer of 0 or more")


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


def check_choices(flag: str, given, choices) -> None:
    """Each of ``given`` (one name or a list) among ``choices``; UsageError naming the first that is not."""
    for name in [given] if isinstance(given, str) else given:
        if name not in choices:
            raise UsageError(f"{flag} {name!r}: choose from {', '.join(choices)}")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of 0 or more")
    return value


def check_thread_variables() -> None:
    """The thread-count variables OpenMP and MKL read: an invalid one (0, "abc") is not an error
    to them but a silent fallback, here one thread, which every figure would then carry."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name)
        if value is not None and not (value.strip().isdigit() and int(value) >= 1):
            raise UsageError(f"{name}={value!r}: not a thread count (a positive integer); unset it or give one")


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


# What a path can be besides a regular file or a folder, for messages.
_FILE_KINDS = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a FIFO",
               stat.S_ISSOCK: "a socket"}


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    return next((kind for test, kind in _FILE_KINDS.items() if test(mode)), "not a regular file")


def output_file(flag: str, path: str | None) -> Path | None:
    """Where ``flag``'s file is written: ``path`` with its symlinks followed, so that the file a link
    points to is the one replaced, checked to be writable. Results are written atomically, by
    renaming a new file over the path: a device, FIFO or socket there is refused, since the rename
    would replace the node, and writing into it instead would hand a reader one whole document per
    row (and block the run on a FIFO nobody reads)."""
    if path is None:
        return None
    target = replaceable_file(flag, path)
    where = path if target == Path(path).absolute() else f"{path} (-> {target})"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {where}: cannot create its folder ({exc.strerror})") from None
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"{flag} {where}: folder {target.parent} is not writable")
    return target


def replaceable_file(flag: str, path: str | os.PathLike) -> Path:
    """``path`` with its symlinks followed, refused unless it is a regular file or nothing yet (what
    ``output_file`` checks, creating nothing)."""
    text = os.fspath(path)
    if not text.strip():
        raise UsageError(f"{flag} {text!r}: give a file path")
    if text.endswith(os.sep):
        raise UsageError(f"{flag} {text}: names a folder; give a file path")
    target = Path(os.path.realpath(text))
    where = text if target == Path(text).absolute() else f"{text} (-> {target})"
    if target.is_dir():
        raise UsageError(f"{flag} {where}: is a directory, expected a file path")
    if target.exists() and not target.is_file():
        raise UsageError(f"{flag} {where}: is {_kind(target)}; results are written by renaming a new file "
                         "over the path, which would replace it: give a regular file's path")
    return target


@contextlib.contextmanager
def held(flag: str, path: Path | None) -> Iterator[None]:
    """Within the block, this process alone writes ``path``: a second command given the same file
    is refused (UsageError), where both would otherwise run to the end and the file keep only the
    last writer's rows. The lock (flock) is on a hidden file beside it, ``.NAME.lock``, removed
    while still locked at the end; a lock taken on a file that was removed meanwhile is taken again."""
    if path is None:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"{flag} {path}: another command (pid {holder}) is writing it; wait for it to end or "
                             "give another path") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we locked it: lock the file now there
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def check_directory(flag: str, path: str) -> Path:
    """``path`` is, or can be made, a writable folder; returned with its symlinks followed, so that a
    link to a folder not made yet makes that folder."""
    if not path.strip():
        raise UsageError(f"{flag} {path!r}: give a folder")
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_dir():
        kind = "a file" if target.is_file() else _kind(target)
        raise UsageError(f"{flag} {path}: is {kind}, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(target, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")
    return target


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP: the command stops as Ctrl-C stops it, and exits with
    128 + the signal's number, as a shell reports a process the signal killed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @classmethod
    def of(cls, exc: KeyboardInterrupt) -> Stopped:
        """``exc`` as a Stopped: a KeyboardInterrupt raised by code rather than by a signal handler
        of ours (a library's own SIGINT handling) is taken for Ctrl-C."""
        return exc if isinstance(exc, Stopped) else cls(signal.SIGINT)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the stop signals raise Stopped, so that a scheduler's SIGTERM or a closed
    terminal's SIGHUP unwind the work (runners closed, servers stopped) like Ctrl-C does."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Terminal colour codes: some libraries (torch.load) put them in their messages.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException, *, first_line: bool = False) -> str:
    """A runtime error as one line for a table cell or stderr; exhausted memory as "out of memory".
    ``first_line`` keeps only the message's first line, for errors that carry a traceback or log
    after it (a server's answer, torch.load's on a bad file), where the rest would crowd out what happened."""
    text = _ANSI.sub("", str(exc)).strip()
    text = " ".join((text.splitlines()[0] if first_line and text else text).split())
    # CPU allocators and onnxruntime report exhaustion as plain errors with these words.
    allocator = ("out of memory", "failed to allocate memory", "defaultcpuallocator")
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or any(a in text.lower() for a in allocator):
        return "out of memory"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
