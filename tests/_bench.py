"""Load a benchmark script of ``benchmarks/`` as a module (they are scripts, not a package).

The one place that puts ``benchmarks/`` on ``sys.path`` for the tests: a script run as
``python benchmarks/x.py`` has its own directory there, so the scripts import their shared
module (``import _lib``) and each other (``import bench_peers``) by name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load_bench(name: str) -> ModuleType:
    """``benchmarks/<name>.py``, imported once and cached in ``sys.modules``."""
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
