"""Manifests: what an exported artifact is, what it was built for, and proof that it is unchanged.

Every artifact ``python -m export`` writes (an ONNX file, a TensorRT plan) gets ``<artifact>.json``
beside it. Whatever loads the artifact later reads the manifest first: a sha256 that no longer
matches the file, or an engine built for another TensorRT version or GPU, is refused with both sides
named, before any bytes of the artifact reach a runtime. What a runner caches under --cache-dir is
held to the same check (``cached``), and rebuilt when it fails it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from resnet_perf.util.atomic import write_text
from resnet_perf.util.versions import installed_version

SCHEMA = "resnet-perf/manifest/1"
# What python -m bench reads from the manifest of an --onnx or --engine (one with weights_digest).
EXPORT_FIELDS = ("format", "model", "weights", "precision", "image_size", "batch")


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
    its sha256 and the time of writing. Returns the document written. ``fields["companions"]``
    names the files beside the artifact it is not whole without (an OpenVINO IR's ``.bin``): each
    is recorded with its sha256, and checked as the artifact is."""
    artifact = Path(artifact)
    document = {
        "schema": SCHEMA,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    if "companions" in fields:
        document["companions"] = {name: sha256_file(artifact.with_name(name)) for name in fields["companions"]}
    write_text(manifest_path(artifact), json.dumps(document, indent=2) + "\n")
    return document


def load_manifest(artifact: str | os.PathLike) -> dict:
    """The manifest of ``artifact`` after checking that the file is the one it describes."""
    if not Path(artifact).name:
        raise ManifestError(f"{str(artifact)!r}: give a file")
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if artifact.is_dir():
        raise ManifestError(f"{artifact}: is a directory; give the artifact file in it")
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
    _check_fields(document, path)
    actual = sha256_file(artifact)
    if document.get("sha256") != actual:
        raise ManifestError(
            f"{artifact} does not match its manifest: sha256 {actual[:16]}... on disk, "
            f"{str(document.get('sha256'))[:16]}... in {path.name} (the file changed after export)"
        )
    for name, digest in document.get("companions", {}).items():
        companion = artifact.with_name(name)
        if not companion.is_file():
            raise ManifestError(f"{artifact} comes with {name}, which is not beside it")
        if sha256_file(companion) != digest:
            raise ManifestError(f"{companion} does not match {path.name}: the file changed after export")
    return document


def _check_fields(document: dict, path: Path) -> None:
    """Refuse a manifest whose fields are not what readers take them for: they use a batch range,
    an image size or a model name as they find it, so a string there would fail far from the file
    with a traceback, and a range "from 8 to 2" would be believed."""
    if "weights_digest" in document:
        missing = [key for key in EXPORT_FIELDS if key not in document]
        if missing:
            raise ManifestError(f"{path}: no {', '.join(missing)} (python -m export writes them)")
    for key in ("format", "model", "precision", "weights_digest"):
        if key in document and not isinstance(document[key], str):
            raise ManifestError(f"{path}: {key} is {document[key]!r}, not a string")
    if "image_size" in document and not (_is_int(document["image_size"]) and document["image_size"] > 0):
        raise ManifestError(f"{path}: image_size is {document['image_size']!r}, not a positive integer")
    if "weights" in document:
        _check_weights(document["weights"], path)
    companions = document.get("companions", {})
    if not (isinstance(companions, dict) and all(isinstance(n, str) and n and Path(n).name == n
                                                 and isinstance(d, str) for n, d in companions.items())):
        raise ManifestError(f"{path}: companions is {companions!r}, not file names beside it with their sha256")
    if "batch" in document:
        _check_batch(document["batch"], path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no batch size


def _check_weights(weights, path: Path) -> None:
    source = weights.get("source") if isinstance(weights, dict) else None
    if source not in ("file", "synthetic"):
        raise ManifestError(f"{path}: weights {weights!r} name no source (file or synthetic)")
    if source == "file" and not isinstance(weights.get("path"), str):
        raise ManifestError(f"{path}: weights.path is {weights.get('path')!r}, not a string")
    if source == "synthetic" and not _is_int(weights.get("seed")):
        raise ManifestError(f"{path}: weights.seed is {weights.get('seed')!r}, not an integer")


def _check_batch(batch, path: Path) -> None:
    if not isinstance(batch, dict):
        raise ManifestError(f"{path}: batch is {batch!r}, not an object with min, opt and max")
    missing = [key for key in ("min", "opt", "max") if key not in batch]
    unknown = [key for key in batch if key not in ("min", "opt", "max")]
    if missing or unknown:
        raise ManifestError(f"{path}: batch has keys {', '.join(batch) or 'none'}, expected min, opt and max")
    for key, value in batch.items():
        if not _is_int(value):
            raise ManifestError(f"{path}: batch.{key} is {value!r}, not an integer")
    low, opt, high = batch["min"], batch["opt"], batch["max"]
    if low < 1:
        raise ManifestError(f"{path}: batch min {low} is below 1")
    if low > high:
        raise ManifestError(f"{path}: batch min {low} exceeds max {high}")
    if not low <= opt <= high:
        raise ManifestError(f"{path}: batch opt {opt} lies outside min {low} to max {high}")


def cached(artifact: str | os.PathLike, fields: dict, build: Callable[[Path], dict | None]) -> dict:
    """The manifest of a cached ``artifact``, which is trusted no more than a file the user gives:
    it is used when its manifest checks out (as load_manifest checks) and records ``fields``, what
    this run would build. Otherwise ``build(artifact)`` writes it (returning more manifest fields,
    or None) and its manifest follows; a damaged entry (no manifest, as caches of earlier versions
    have, a changed file, other fields) is rebuilt after a one-line notice naming it."""
    artifact = Path(artifact)
    if artifact.exists():
        if not manifest_path(artifact).is_file():
            reason = f"{artifact}: no manifest ({manifest_path(artifact).name}) beside it"
        else:
            try:
                manifest = load_manifest(artifact)
            except ManifestError as exc:
                reason = str(exc)
            else:
                differ = [f"{key} {manifest.get(key)!r}" for key, value in fields.items() if manifest.get(key) != value]
                if not differ:
                    return manifest
                reason = f"{artifact}: its manifest records {', '.join(differ)}, not what this run builds"
        rebuilding(reason)
    extra = build(artifact) or {}
    return write_manifest(artifact, {**fields, **extra})


def rebuilding(reason: str) -> None:
    """Say on stderr, in one line, that a cache entry is rebuilt and why (``reason`` names it)."""
    print(f"{_program()}: cache {reason}: rebuilding it", file=sys.stderr)


def _program() -> str:
    """What the user ran ("python -m bench"), which starts every message of ours on stderr."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return f"python -m {spec.name.removesuffix('.__main__')}" if spec else Path(sys.argv[0]).name


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
