"""Every TensorRT name our code uses exists in TensorRT 11, read from NVIDIA's own Python bindings.

No TensorRT runtime runs on our machines (its libraries download only from NVIDIA, and the GPU
machine has none). The `tensorrt-cu13-bindings` wheel is the real pybind11 module of TensorRT 11.4,
without the libraries it links against; loaded over stand-in libraries whose every function aborts,
its module init still registers every class, enum member and method name, and nothing in TensorRT
ever runs. So this checks names, and only names: that each `trt.X`, and each method we call on the
objects TensorRT returns, is defined by 11.x, and that the 10.x-only names (the FP16 and INT8
builder flags) sit behind the version check. Whether the calls do what we want is for a machine with TensorRT (tests/test_tensorrt.py).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent.parent / "export" / "tensorrt.py"

# The objects export/tensorrt.py gets back from TensorRT, by the names it keeps them under, and the
# TensorRT class of each: attribute uses on these names are checked on that class.
OBJECTS = {
    "builder": "Builder",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "cache": "ITimingCache",
    "e": "ParserError",
    "self._runtime": "Runtime",
    "self.engine": "ICudaEngine",
    "self.context": "IExecutionContext",
    "inspector": "EngineInspector",
    "network": "INetworkDefinition",
    "layer": "ILayer",
    "tensor": "ITensor",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
}
# Names TensorRT 11 removed, used only where the version check says 10.x.
TENSORRT_10_ONLY = {"BuilderFlag.FP16", "BuilderFlag.INT8"}
# The symbols the bindings import from libnvinfer, libnvonnxparser and libnvinfer_plugin.
SYMBOLS = ["createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
           "createNvOnnxParserRefitter_INTERNAL", "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry",
           "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins"]
LIBRARIES = ["libnvinfer.so.11", "libnvonnxparser.so.11", "libnvinfer_plugin.so.11"]


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def tensorrt_uses(tree: ast.AST) -> dict[str, list[ast.Attribute]]:
    """Every attribute our code takes from TensorRT, as "Class.member" (or a module-level "Name"),
    with the AST nodes where it is used."""
    uses: dict[str, list[ast.Attribute]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = dotted(node.value)
        if base == "trt":
            name = node.attr
        elif base is not None and base.startswith("trt."):
            name = f"{base[4:]}.{node.attr}"
        elif base in OBJECTS:
            name = f"{OBJECTS[base]}.{node.attr}"
        else:
            continue
        uses.setdefault(name, []).append(node)
    return uses


def guarded_by_version_check(tree: ast.AST, target: ast.AST) -> bool:
    """Whether ``target`` sits in the body of an ``if`` that tests the strongly typed (11.x) predicate."""
    return any(
        isinstance(node, ast.If) and "typed" in ast.unparse(node.test)
        and any(child is target for statement in node.body for child in ast.walk(statement))
        for node in ast.walk(tree)
    )


def defined_in_bindings(names: list[str], tmp_path: Path) -> dict[str, bool]:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None:
        pytest.skip("tensorrt-cu13-bindings is not installed (pip install --no-deps tensorrt-cu13-bindings==11.4.0.106)")
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in TensorRT libraries")
    stub = tmp_path / "stub.c"
    stub.write_text("#include <stdlib.h>\n" + "".join(f"void {s}(void) {{ abort(); }}\n" for s in SYMBOLS))
    for library in LIBRARIES:
        subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{library}", "-o", str(tmp_path / library),
                        str(stub)], check=True)
    # The stand-ins are loaded first, by soname, so the bindings' own dependencies resolve to them.
    probe = textwrap.dedent(f"""
        import ctypes, json, sys
        for library in {LIBRARIES!r}:
            ctypes.CDLL({str(tmp_path)!r} + "/" + library, mode=ctypes.RTLD_GLOBAL)
        import tensorrt_bindings as trt
        found = {{}}
        for name in json.loads(sys.argv[1]):
            obj = trt
            for part in name.split("."):
                obj = getattr(obj, part, None)
            found[name] = obj is not None
        print(json.dumps({{"version": trt.__version__, "found": found}}))
    """)
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(names)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["version"].startswith("11."), result["version"]
    return result["found"]


def test_every_tensorrt_name_we_use_exists_in_tensorrt_11(tmp_path):
    tree = ast.parse(SOURCE.read_text())
    uses = tensorrt_uses(tree)
    # The object table above must describe the code as it is: a renamed variable would otherwise
    # drop its calls from the check without anyone noticing.
    for variable, cls in OBJECTS.items():
        assert any(name.startswith(f"{cls}.") for name in uses), f"{variable} ({cls}) is no longer used in {SOURCE.name}"
    assert len(uses) > 30  # the build and the runtime paths, not a fragment

    found = defined_in_bindings(sorted(uses), tmp_path)
    missing = sorted(name for name, ok in found.items() if not ok and name not in TENSORRT_10_ONLY)
    assert missing == [], f"not defined by TensorRT 11: {missing}"
    for name in TENSORRT_10_ONLY:
        assert not found.get(name, False), f"{name} exists in TensorRT 11: drop it from the 10.x-only list"
        for node in uses.get(name, []):
            assert guarded_by_version_check(tree, node), f"{name} (line {node.lineno}) is used outside the 10.x branch"


def test_the_checker_catches_a_name_tensorrt_does_not_define(tmp_path):
    """The check can fail: a misspelt method and a removed 10.x name are both reported missing."""
    found = defined_in_bindings(["IExecutionContext.execute_async_v3", "IExecutionContext.execute_async_v4",
                                 "BuilderFlag.FP16", "BuilderFlag.TF32"], tmp_path)
    assert found == {"IExecutionContext.execute_async_v3": True, "IExecutionContext.execute_async_v4": False,
                     "BuilderFlag.FP16": False, "BuilderFlag.TF32": True}


def test_uses_are_read_from_the_source():
    uses = tensorrt_uses(ast.parse(SOURCE.read_text()))
    assert {"Builder", "BuilderFlag.FP16", "IExecutionContext.execute_async_v3", "IBuilderConfig.set_timing_cache",
            "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "__version__"} <= set(uses)
