"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary file lives in the destination folder because os.replace is atomic only within
    one file system. A symlink is followed: the file it points to is replaced, the link kept. Anything
    at the path that is not a regular file (a device, a FIFO) is refused, never replaced.
    """
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise FileExistsError(errno.EEXIST, "not a regular file, so not replaced", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates the file private (0600); the result should have the mode any new file gets.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary folder inside ``parent`` (so that publishing from it is a rename on one
    file system), removed on exit with whatever was not published from it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, parent: str | os.PathLike) -> list[Path]:
    """Move every entry of ``stage`` into ``parent``. A file replaces its namesake in one rename
    (through a symlink: the file it points to, the link kept). A folder that does not exist yet
    arrives whole; one that does keeps whatever the stage does not hold (a model repository's other
    versions, its README), its files replaced and its subfolders swapped whole, each swap moving
    the old one aside first, so readers see the old subfolder or the new one. Entries go in name
    order, so an artifact lands before its ``.json`` manifest."""
    parent = Path(parent)
    published = []
    for entry in sorted(stage.iterdir()):
        target = parent / entry.name
        if entry.is_dir() and target.is_dir():
            for inner in sorted(entry.iterdir()):
                if inner.is_dir():
                    _swap_folder(inner, target / inner.name)
                else:
                    _replace_file(inner, target / inner.name)
        elif entry.is_dir():
            os.replace(entry, target)
        else:
            _replace_file(entry, target)
        published.append(target)
    return published


def _swap_folder(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _replace_file(new: Path, target: Path) -> None:
    real = Path(os.path.realpath(target))
    if real.exists() and not real.is_file():
        raise FileExistsError(errno.EEXIST, "not a regular file, so not replaced", str(real))
    try:
        os.replace(new, real)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # A symlink to another file system, where a rename cannot reach: the file is written
        # beside the one it points to and renamed there.
        with atomic_path(real) as tmp:
            shutil.copyfile(new, tmp)
