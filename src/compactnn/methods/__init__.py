"""Registry of compression methods: one name each (see docs/design.md).

``get_method(name)`` returns the class; ``list_methods()`` the names. The method classes and
their configs are also attributes of this package (``compactnn.methods.SSR``,
``compactnn.methods.ADMMSparse``, ...). Each method module is imported lazily on first use (a
module ``__getattr__``), so ``import compactnn.methods`` is cheap.

:data:`_REGISTRY` is the one place a method is named: a new method is one line there (its
registry name, ``"module:Class"`` and its config class); the lazy attributes and ``__all__``
are derived from it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from compactnn._validation import raise_unknown
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig

# registry name -> ("module:MethodClass", its config class, defined in the same module)
_REGISTRY: dict[str, tuple[str, str]] = {
    "ssr": ("compactnn.methods.ssr:SSR", "SSRConfig"),
    "admm-sparse": ("compactnn.methods.admm_sparse:ADMMSparse", "ADMMSparseConfig"),
    "random": ("compactnn.methods.criteria_pruning:RandomPruning", "RandomConfig"),
    "l1-norm": ("compactnn.methods.criteria_pruning:L1NormPruning", "L1NormConfig"),
    "apoz": ("compactnn.methods.criteria_pruning:APoZPruning", "APoZConfig"),
    "magnitude": ("compactnn.methods.criteria_pruning:MagnitudePruning", "MagnitudeConfig"),
    "taylor": ("compactnn.methods.criteria_pruning:TaylorPruning", "TaylorConfig"),
    "ddlr": ("compactnn.methods.layerwise:DDLR", "DDLRConfig"),
    "net-trim": ("compactnn.methods.layerwise:NetTrim", "NetTrimConfig"),
    "pgt": ("compactnn.methods.pgt:PGT", "PGTConfig"),
    "slr": ("compactnn.methods.slr:SLR", "SLRConfig"),
}

# configs shared by several registered methods: "module:Class"
_SHARED_CONFIGS = (
    "compactnn.methods.criteria_pruning:CriterionConfig",
    "compactnn.methods.layerwise:LayerwiseConfig",
)


def _lazy() -> dict[str, str]:
    """Public class -> defining module, for the classes and configs of :data:`_REGISTRY`."""
    out: dict[str, str] = {}
    for target, config in _REGISTRY.values():
        module, cls = target.split(":")
        out[cls] = out[config] = module
    for target in _SHARED_CONFIGS:
        module, cls = target.split(":")
        out[cls] = module
    return out


# public class -> defining module (imported on first attribute access)
_LAZY: dict[str, str] = _lazy()

__all__ = [
    "CompressionData",
    "CompressionResult",
    "Method",
    "MethodConfig",
    "get_method",
    "list_methods",
    *_LAZY,  # lazily imported
]


def __getattr__(name: str) -> Any:
    """Import a method class (or config) on first access: ``compactnn.methods.SSR``."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compactnn.methods' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _available() -> dict[str, str]:
    out = {}
    for name, (target, _) in _REGISTRY.items():
        mod = target.split(":")[0]
        if importlib.util.find_spec(mod) is not None:
            out[name] = target
    return out


def list_methods() -> list[str]:
    """Names of the registered (installed) methods."""
    return sorted(_available())


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``.

    Raises:
        UnknownNameError: for an unknown name (lists the known ones).
    """
    avail = _available()
    if name not in avail:
        raise raise_unknown("method", name, avail)
    mod, cls = avail[name].split(":")
    return getattr(importlib.import_module(mod), cls)
