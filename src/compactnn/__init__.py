"""compactnn: turn a trained PyTorch CNN/MLP into a physically smaller, faster model.

Public entry points (imported lazily so that ``import compactnn`` does no heavy work):

- :func:`compactnn.compress` -- compress a model with a registered method, optionally to a
  budget (:class:`compactnn.Target`, e.g. ``target={"macs": 0.1}``).
- :func:`compactnn.load` -- restore a compact checkpoint (``compactnn compress --out DIR``)
  onto the user's own architecture: ``compactnn.load(DIR, model=TheirArchitecture())``.
- :mod:`compactnn.models` -- reference architectures of the papers (``create``, ``list_models``).
- :mod:`compactnn.data` -- offline datasets (MNIST, Fashion-MNIST, digits, spiral, CIFAR-10).
- :mod:`compactnn.metrics` -- params, FLOPs, memory, latency, accuracy, per-layer tables.
- :mod:`compactnn.prox`, :mod:`compactnn.structure`, :mod:`compactnn.capture`,
  :mod:`compactnn.plan`, :mod:`compactnn.surgery` -- the shared core the methods are built from.
- :func:`compactnn.list_methods` -- the registered method names (``compactnn.methods``).

Every public subpackage and module is an attribute of the package, imported on first access
(PEP 562): ``import compactnn; compactnn.methods.list_methods()`` works, and ``import
compactnn`` itself imports none of them (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from compactnn.errors import CompactnnError

__version__ = "0.1.0"

# public name -> (module, attribute) imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "compress": ("compactnn.api", "compress"),
    "load": ("compactnn.export", "load"),
    "Target": ("compactnn.budget", "Target"),
    "list_methods": ("compactnn.methods", "list_methods"),
}
# public subpackages / modules, each an attribute imported on first access
_SUBMODULES: tuple[str, ...] = (
    "api",
    "budget",
    "capture",
    "cli",
    "criteria",
    "data",
    "demo",
    "distributed",
    "errors",
    "export",
    "graph",
    "layers",
    "methods",
    "metrics",
    "models",
    "plan",
    "plots",
    "prox",
    "resume",
    "solvers",
    "structure",
    "surgery",
    "torchvision_models",
    "train",
    "zoo",
)

# (the submodules are not in __all__: ``from compactnn import *`` would import every one)
__all__ = ["CompactnnError", "Target", "__version__", "compress", "list_methods", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        # import_module also binds the submodule as this package's attribute
        return importlib.import_module(f"compactnn.{name}")
    raise AttributeError(f"module 'compactnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
