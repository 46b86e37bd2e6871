"""Installed package versions, for the records that say what a result or an artifact was made with
(bench's ``env``, export's manifests)."""

from __future__ import annotations

import importlib.metadata


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed, or None."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
