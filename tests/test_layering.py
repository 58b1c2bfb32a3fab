"""Imports inside compactnn point one way: down the ordered list of docs/design.md's layout.

Every module under ``src/compactnn/`` is parsed with :mod:`ast`; every import of a compactnn
module -- at module level or inside a function (lazy), ``importlib.import_module("compactnn.x")``
and registry strings such as ``"compactnn.methods.ssr:SSR"`` included -- must point to a module
at the same or a lower level of :data:`LEVELS`. A package (``prox/``, ``solvers/``, ``surgery/``,
``methods/``) is one level, and a module may import anything within its own package.
Module by module (inside packages too), the imports a module runs form no cycle.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "compactnn"

# Lowest first (levels may name modules not written yet); docs/design.md describes the layout in
# this order (graph sits below capture, which finds each layer's consumers with it; metrics below
# budget, which measures params / MACs / latency with it).
LEVELS: list[str] = [
    "errors",
    "_validation",
    "_progress",  # progress bars / per-epoch log lines (tqdm only)
    "distributed",  # torch.distributed: DDP wrapping, rank shards, cross-rank checksums
    "prox",
    "structure",
    "graph",
    "capture",
    "solvers",
    "metrics",
    "budget",
    "criteria",
    "plan",
    "layers",  # the deployable layer classes (LowRank*, Sparse*); built by surgery
    "surgery",
    "zoo",  # the paper-reproduction assets: datasets, reference models, torchvision factories
    "data",  # the public path of zoo.data (re-exports)
    "models",  # the public path of zoo.models (re-exports)
    "torchvision_models",  # the public path of zoo.torchvision_models (--factory targets)
    "resume",  # run directories of stage checkpoints (reads plans back)
    "train",
    "demo",  # the demo's baseline and settings, the reference models' training recipe
    "_preflight",  # compress's up-front checks of the model and the data (uses train, metrics)
    "methods",
    "api",
    "export",  # ONNX, TorchScript, compact checkpoint
    "plots",  # PNGs of a result (report.json) and of the benchmarks
    "cli",
    "__main__",  # python -m compactnn (torchrun -m compactnn)
    "__init__",  # the package facade: `import compactnn`
]

# Known violations, each with the reason it is tolerated: (importing module, imported module).
ALLOWED: set[tuple[str, str]] = set()

# Calls of importlib.import_module with a non-literal name (cannot be checked statically).
DYNAMIC_ALLOWED = {
    "compactnn",  # the facade's lazy attributes (_LAZY, _SUBMODULES): it is the top level
    "compactnn.cli.inputs",  # --factory / --data package.module:function, the user's own code
    "compactnn.zoo.torchvision_models",  # torchvision.models.<resnet | mobilenetv2>, not compactnn
    "compactnn.methods",  # registry values "compactnn.methods.x:Cls", checked as strings below
}

_NAME = re.compile(r"compactnn(\.\w+)+(:\w+)?")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _level_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> tuple[list[tuple[int, str]], list[int]]:
    """(line, imported compactnn module) pairs and the lines of dynamic non-literal imports."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    dynamic: list[int] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("compactnn")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base != "compactnn" and not base.startswith("compactnn."):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    dynamic.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _NAME.fullmatch(node.value)
        ):
            found.append((node.lineno, node.value.split(":")[0]))
    return found, dynamic


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_level() -> None:
    tops = {_level_name(_module_name(p)) for p in _modules()}
    assert tops - set(LEVELS) == set(), "add the new module/package to LEVELS"


def test_the_parser_sees_lazy_and_dynamic_imports() -> None:
    found, _ = _imports(SRC / "__init__.py")
    assert ("compactnn.api" in {m for _, m in found}) and (
        "compactnn.errors" in dict(found).values()
    )
    found, _ = _imports(SRC / "methods" / "layerwise.py")
    assert {"compactnn.capture", "compactnn.plan", "compactnn.surgery"} <= {m for _, m in found}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    me = _module_name(path)
    my_level = LEVELS.index(_level_name(me))
    found, dynamic = _imports(path)
    bad = []
    for line, target in sorted(set(found)):
        assert _is_module(target), f"{me}:{line} imports {target!r}, which does not exist"
        top = _level_name(target)
        if top == _level_name(me) or (me, target) in ALLOWED:
            continue
        if LEVELS.index(top) > my_level:
            bad.append(
                f"{path.relative_to(SRC)}:{line} ({_level_name(me)}) imports {target} ({top})"
            )
    assert not bad, "imports must point down LEVELS:\n" + "\n".join(bad)
    if dynamic:
        assert me in DYNAMIC_ALLOWED, (
            f"{me} lines {dynamic}: importlib.import_module with a computed name cannot be "
            "checked; use a literal module name"
        )


def _type_only_lines(path: Path) -> set[int]:
    """The lines of ``if TYPE_CHECKING:`` blocks: imports for annotations, never executed."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        test = getattr(node, "test", None)
        name = getattr(test, "id", None) or getattr(test, "attr", None)
        if isinstance(node, ast.If) and name == "TYPE_CHECKING":
            lines |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _import_graph() -> dict[str, set[str]]:
    """Module -> the compactnn modules it imports when it runs (module level, lazy imports
    inside functions and registry strings; not the annotation-only ``TYPE_CHECKING`` ones)."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        me = _module_name(path)
        found, _ = _imports(path)
        skip = _type_only_lines(path)
        graph[me] = {target for line, target in found if target != me and line not in skip}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_type_checking_imports_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a module of its own (src has no annotation-only import left to serve as the example)
    pkg = tmp_path / "compactnn"
    (pkg / "methods").mkdir(parents=True)
    sample = pkg / "methods" / "_sample.py"
    sample.write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from compactnn.errors import ConfigError\n"
        "if TYPE_CHECKING:\n"
        "    from compactnn.methods.slr import SLRConfig\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    skip = _type_only_lines(sample)
    found, _ = _imports(sample)
    assert {m for line, m in found if line in skip} == {"compactnn.methods.slr"}
    assert {m for line, m in found if line not in skip} == {"compactnn.errors"}


def test_the_cycle_finder_finds_cycles_inside_a_package() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c", "q"}, "p.c": {"p.a"}, "q": set()}
    assert _find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    graph["p.c"] = set()
    assert _find_cycle(graph) is None


def test_no_import_cycle_between_modules() -> None:
    """Modules, not only packages: inside a package the imports form no cycle either (lazy
    imports inside functions and registry strings included), so every module can be read
    after the ones it imports."""
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
