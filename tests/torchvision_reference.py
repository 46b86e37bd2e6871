"""torchvision's own ResNet code, loaded without importing the torchvision package.

``import torchvision`` loads its compiled ops, which fail against a torch build they were not made
for (the CPU torch CI installs). ``torchvision/models/resnet.py`` itself is plain PyTorch, so it is
loaded under a stand-in parent package whose ``__path__`` is the installed torchvision folder:
its real ``_api``, ``_meta`` and ``_utils`` modules load from there, and only the two imports that
reach the compiled parts (transform presets and API-usage logging) are stubbed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

_PARENT = "_torchvision_reference"


def torchvision_resnet() -> types.ModuleType:
    """The module ``torchvision.models.resnet``; skips the test when torchvision is not installed."""
    if f"{_PARENT}.models.resnet" in sys.modules:
        return sys.modules[f"{_PARENT}.models.resnet"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
    root = Path(next(iter(spec.submodule_search_locations)))

    def package(name: str, path: Path | None) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)] if path else []
        sys.modules[name] = module
        return module

    package(_PARENT, root)
    package(f"{_PARENT}.models", root / "models")
    package(f"{_PARENT}.transforms", None)
    presets = types.ModuleType(f"{_PARENT}.transforms._presets")
    presets.ImageClassification = type("ImageClassification", (), {})
    sys.modules[presets.__name__] = presets
    utils = types.ModuleType(f"{_PARENT}.utils")
    utils._log_api_usage_once = lambda obj: None
    sys.modules[utils.__name__] = utils
    return importlib.import_module(f"{_PARENT}.models.resnet")
