"""The package facade: every public subpackage / module is an attribute of ``compactnn``,
imported on first access (PEP 562), and ``import compactnn`` itself stays light.

Issue 34: ``import compactnn; compactnn.methods.list_methods()`` raised AttributeError (the lazy
loader knew only compress, load and Target).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import compactnn

SRC = Path(__file__).resolve().parents[1] / "src" / "compactnn"
HEAVY = ("torch", "numpy", "onnx", "onnxruntime", "cvxpy", "dask", "matplotlib", "scipy")


def _public_modules() -> set[str]:
    """Every public module / subpackage directly under src/compactnn (no leading underscore)."""
    names = {p.stem for p in SRC.glob("*.py") if not p.stem.startswith("_")}
    names |= {p.parent.name for p in SRC.glob("*/__init__.py") if not p.parent.name.startswith("_")}
    return names


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (this process has imported everything already); it
    prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_public_module_is_declared_lazy() -> None:
    assert set(compactnn._SUBMODULES) == _public_modules()
    assert set(compactnn._SUBMODULES) <= set(dir(compactnn))
    assert {"compress", "load", "Target", "list_methods"} <= set(dir(compactnn))


def test_import_is_light_and_every_attribute_loads_on_access() -> None:
    """One fresh interpreter (a torch import costs seconds): after ``import compactnn`` no heavy
    module and no compactnn submodule but errors is loaded; then every public name resolves."""
    code = f"""
import json, sys, types
import compactnn
heavy = [m for m in {HEAVY!r} if m in sys.modules]
subs = sorted(m for m in sys.modules if m.startswith("compactnn."))
names = compactnn.methods.list_methods()
top = compactnn.list_methods()
after = [m for m in ("onnx", "onnxruntime", "cvxpy") if m in sys.modules]
mods = {{n: getattr(compactnn, n).__name__ for n in {sorted(_public_modules())!r}
        if isinstance(getattr(compactnn, n), types.ModuleType)}}
lazy = [m for m in ("onnx", "onnxruntime", "cvxpy") if m in sys.modules]
print(json.dumps(dict(heavy=heavy, subs=subs, names=names, top=top, after=after, mods=mods,
                      lazy=lazy)))
"""
    got = _fresh(code)
    assert got["heavy"] == [], f"import compactnn imported {got['heavy']}"
    assert got["subs"] == ["compactnn.errors"]
    assert got["names"] == got["top"] and "slr" in got["names"] and "ssr" in got["names"]
    assert got["after"] == []  # the method registry does not pull onnx / cvxpy either
    assert got["mods"] == {n: f"compactnn.{n}" for n in _public_modules()}
    # every module imported (export and cli included): onnx / onnxruntime / cvxpy only on use
    assert got["lazy"] == []


def test_unknown_attribute_is_a_clear_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        compactnn.no_such_thing  # noqa: B018
    assert not hasattr(compactnn, "_engine_of_nothing")


def test_list_methods_is_the_registry() -> None:
    from compactnn.methods import list_methods

    assert compactnn.list_methods() == list_methods()
    assert compactnn.methods is sys.modules["compactnn.methods"]
