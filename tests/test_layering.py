"""The contract's import order. Read from the source, every import statement of every module,
including those inside functions that run only when called: no import against the layering
(kernels imports nothing of ours; resnet_perf only kernels; export only those two; inside bench,
timing, parity and reporting never a runner) and no circle between modules. Checked in fresh
interpreters too, for what importing a module loads: the run's environment record needs no
export code, and serving does not import the runners it serves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def imported(module: str) -> set[str]:
    """The top two levels of every module of ours that importing ``module`` loads."""
    code = (f"import sys, {module}\n"
            "print(' '.join(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules "
            "if m.split('.')[0] in ('kernels', 'resnet_perf', 'export', 'bench')})))")
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.parametrize(("module", "never"), [
    ("kernels", {"resnet_perf", "export", "bench"}),
    ("kernels.aot", {"resnet_perf", "export", "bench"}),
    ("bench.env", {"export"}),
    ("bench.plot", {"export"}),
    ("bench.serving.local", {"bench.runners"}),
    ("bench.serving.client", {"bench.runners", "export"}),
])
def test_imports_follow_the_layering(module, never):
    loaded = imported(module)
    assert not {m for m in loaded if m in never or m.split(".")[0] in never}, loaded


ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "resnet_perf", "export", "bench")
# What each package may import of ours (itself always).
MAY_IMPORT = {"kernels": set(), "resnet_perf": {"kernels"}, "export": {"kernels", "resnet_perf"},
              "bench": {"kernels", "resnet_perf", "export"}}
# bench's modules that time, check parity or report: the CLI hands runners to them (they may name
# the interface, bench.runners.base, as the type of what they are handed).
NO_RUNNERS = ("bench.timing", "bench.record", "bench.report", "bench.plot", "bench.compare", "bench.streams",
              "bench.layers", "bench.costs", "bench.env", "bench.scenarios", "bench.serving.local",
              "bench.serving.client")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module of ours that ``source`` (the text of ``module``) imports anywhere in it, at the
    top or inside a function, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of ours and the modules of ours it imports (a name imported from a module counts
    as that module)."""
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    return {module: {owner(name) for name in imports_of(path.read_text(), module, path.name == "__init__.py")}
            - {None, module} for module, path in known.items()}


def against_layering(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] not in MAY_IMPORT[top] | {top}:
                problems.append(f"{module} imports {target}")
            elif module.startswith(NO_RUNNERS) and target.startswith("bench.runners") and target != "bench.runners.base":
                problems.append(f"{module} imports a runner ({target})")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_anywhere_goes_against_the_layering():
    assert against_layering(import_graph()) == []


def test_no_module_imports_itself_through_others():
    assert circles(import_graph()) == []


def test_the_checks_see_imports_inside_functions_and_circles():
    """The checks can fail: an import inside a function is read, a relative one resolved, an arrow
    against the order named, and a circle of three found."""
    source = "def main():\n    from resnet_perf.util.cli import UsageError\n    from . import fused_conv2d\n"
    assert imports_of(source, "kernels.aot", False) == {"resnet_perf.util.cli", "resnet_perf.util.cli.UsageError",
                                                        "kernels", "kernels.fused_conv2d"}
    graph = {"kernels.aot": {"resnet_perf.util.cli"}, "bench.report": {"bench.runners.eager"}}
    assert against_layering(graph) == ["kernels.aot imports resnet_perf.util.cli",
                                       "bench.report imports a runner (bench.runners.eager)"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
