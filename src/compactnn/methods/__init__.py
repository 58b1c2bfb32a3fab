"""Registry of compression methods: one name each (see DESIGN.md).

``get_method(name)`` returns the class; ``list_methods()`` the names. Each method module is
imported lazily on first use, so ``import compactnn.methods`` is cheap.
"""

from __future__ import annotations

import importlib
import importlib.util

from compactnn._validation import raise_unknown
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig

__all__ = [
    "CompressionData",
    "CompressionResult",
    "Method",
    "MethodConfig",
    "get_method",
    "list_methods",
]

# name -> "module:Class" (lazy)
_REGISTRY: dict[str, str] = {
    "ssr": "compactnn.methods.ssr:SSR",
    "admm-sparse": "compactnn.methods.admm_sparse:ADMMSparse",
    "random": "compactnn.methods.criteria_pruning:RandomPruning",
    "l1-norm": "compactnn.methods.criteria_pruning:L1NormPruning",
    "apoz": "compactnn.methods.criteria_pruning:APoZPruning",
    "magnitude": "compactnn.methods.criteria_pruning:MagnitudePruning",
    "ddlr": "compactnn.methods.layerwise:DDLR",
    "net-trim": "compactnn.methods.layerwise:NetTrim",
}


def _available() -> dict[str, str]:
    out = {}
    for name, target in _REGISTRY.items():
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
