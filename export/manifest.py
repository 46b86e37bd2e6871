"""Manifests: what an exported artifact is, what it was built for, and proof that it is unchanged.

Every artifact ``python -m export`` writes (an ONNX file, a TensorRT plan) gets ``<artifact>.json``
beside it. Whatever loads the artifact later reads the manifest first: a sha256 that no longer
matches the file, or an engine built for another TensorRT version or GPU, is refused with both sides
named, before any bytes of the artifact reach a runtime.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import torch

from resnet_perf.atomic import write_text
from resnet_perf.versions import installed_version

SCHEMA = "resnet-perf/manifest/1"


class ManifestError(ValueError):
    """An artifact without a readable manifest, changed since export, or built for another target."""


def manifest_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions(tensorrt: str | None = None) -> dict:
    """The versions an artifact was made with; ``tensorrt`` for engines, which are tied to it."""
    return {"torch": torch.__version__, "onnx": installed_version("onnx"),
            "onnxruntime": installed_version("onnxruntime-gpu", "onnxruntime"), "tensorrt": tensorrt}


def write_manifest(artifact: str | os.PathLike, fields: dict) -> dict:
    """Write ``<artifact>.json``, atomically: ``fields`` plus the schema, the artifact's file name,
    its sha256 and the time of writing. Returns the document written."""
    artifact = Path(artifact)
    document = {
        "schema": SCHEMA,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    write_text(manifest_path(artifact), json.dumps(document, indent=2) + "\n")
    return document


def load_manifest(artifact: str | os.PathLike) -> dict:
    """The manifest of ``artifact`` after checking that the file is the one it describes."""
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not artifact.is_file():
        raise ManifestError(f"{artifact}: no such file")
    if not path.is_file():
        raise ManifestError(f"{artifact} has no manifest ({path.name} beside it): export it with python -m export")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise ManifestError(f"{path}: schema {found!r}, expected {SCHEMA!r}")
    actual = sha256_file(artifact)
    if document.get("sha256") != actual:
        raise ManifestError(
            f"{artifact} does not match its manifest: sha256 {actual[:16]}... on disk, "
            f"{str(document.get('sha256'))[:16]}... in {path.name} (the file changed after export)"
        )
    return document


def check_engine_target(manifest: dict, *, tensorrt_version: str, gpu: dict) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU: a plan is only
    valid for the TensorRT release that built it, and its kernels were chosen for one GPU model.
    ``gpu`` is this machine's ``{"name", "compute_capability"}``."""
    built = manifest.get("versions", {}).get("tensorrt")
    if built != tensorrt_version:
        raise ManifestError(
            f"{manifest.get('artifact')} was built with TensorRT {built}, this is TensorRT {tensorrt_version}: "
            "rebuild it with python -m export --format tensorrt"
        )
    target = manifest.get("gpu") or {}
    if (target.get("name"), target.get("compute_capability")) != (gpu["name"], gpu["compute_capability"]):
        raise ManifestError(
            f"{manifest.get('artifact')} was built for {target.get('name')} (compute capability "
            f"{target.get('compute_capability')}), this GPU is {gpu['name']} (compute capability "
            f"{gpu['compute_capability']}): rebuild it on this GPU"
        )
