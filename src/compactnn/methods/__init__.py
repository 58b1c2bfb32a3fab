"""Registry of compression methods: one name each (see DESIGN.md).

``get_method(name)`` returns the class; ``list_methods()`` the names. The method classes and
their configs are also attributes of this package (``compactnn.methods.SSR``,
``compactnn.methods.ADMMSparse``, ...). Each method module is imported lazily on first use (a
module ``__getattr__``), so ``import compactnn.methods`` is cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from compactnn._validation import raise_unknown
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig

if TYPE_CHECKING:
    from compactnn.methods.admm_sparse import ADMMSparse, ADMMSparseConfig
    from compactnn.methods.criteria_pruning import (
        APoZConfig,
        APoZPruning,
        CriterionConfig,
        L1NormConfig,
        L1NormPruning,
        MagnitudeConfig,
        MagnitudePruning,
        RandomConfig,
        RandomPruning,
        TaylorConfig,
        TaylorPruning,
    )
    from compactnn.methods.layerwise import (
        DDLR,
        DDLRConfig,
        LayerwiseConfig,
        NetTrim,
        NetTrimConfig,
    )
    from compactnn.methods.pgt import PGT, PGTConfig
    from compactnn.methods.slr import SLR, SLRConfig
    from compactnn.methods.ssr import SSR, SSRConfig

# public class -> defining module (imported on first attribute access)
_LAZY: dict[str, str] = {
    "SSR": "compactnn.methods.ssr",
    "SSRConfig": "compactnn.methods.ssr",
    "ADMMSparse": "compactnn.methods.admm_sparse",
    "ADMMSparseConfig": "compactnn.methods.admm_sparse",
    "RandomPruning": "compactnn.methods.criteria_pruning",
    "L1NormPruning": "compactnn.methods.criteria_pruning",
    "APoZPruning": "compactnn.methods.criteria_pruning",
    "MagnitudePruning": "compactnn.methods.criteria_pruning",
    "CriterionConfig": "compactnn.methods.criteria_pruning",
    "RandomConfig": "compactnn.methods.criteria_pruning",
    "L1NormConfig": "compactnn.methods.criteria_pruning",
    "APoZConfig": "compactnn.methods.criteria_pruning",
    "MagnitudeConfig": "compactnn.methods.criteria_pruning",
    "TaylorPruning": "compactnn.methods.criteria_pruning",
    "TaylorConfig": "compactnn.methods.criteria_pruning",
    "DDLR": "compactnn.methods.layerwise",
    "DDLRConfig": "compactnn.methods.layerwise",
    "NetTrim": "compactnn.methods.layerwise",
    "NetTrimConfig": "compactnn.methods.layerwise",
    "LayerwiseConfig": "compactnn.methods.layerwise",
    "PGT": "compactnn.methods.pgt",
    "PGTConfig": "compactnn.methods.pgt",
    "SLR": "compactnn.methods.slr",
    "SLRConfig": "compactnn.methods.slr",
}

__all__ = [
    "CompressionData",
    "CompressionResult",
    "Method",
    "MethodConfig",
    "get_method",
    "list_methods",
    # lazily imported (see _LAZY)
    "SSR",
    "SSRConfig",
    "ADMMSparse",
    "ADMMSparseConfig",
    "RandomPruning",
    "L1NormPruning",
    "APoZPruning",
    "MagnitudePruning",
    "TaylorPruning",
    "CriterionConfig",
    "RandomConfig",
    "L1NormConfig",
    "APoZConfig",
    "MagnitudeConfig",
    "TaylorConfig",
    "DDLR",
    "DDLRConfig",
    "NetTrim",
    "NetTrimConfig",
    "LayerwiseConfig",
    "PGT",
    "PGTConfig",
    "SLR",
    "SLRConfig",
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


# name -> "module:Class" (lazy)
_REGISTRY: dict[str, str] = {
    "ssr": "compactnn.methods.ssr:SSR",
    "admm-sparse": "compactnn.methods.admm_sparse:ADMMSparse",
    "random": "compactnn.methods.criteria_pruning:RandomPruning",
    "l1-norm": "compactnn.methods.criteria_pruning:L1NormPruning",
    "apoz": "compactnn.methods.criteria_pruning:APoZPruning",
    "magnitude": "compactnn.methods.criteria_pruning:MagnitudePruning",
    "taylor": "compactnn.methods.criteria_pruning:TaylorPruning",
    "ddlr": "compactnn.methods.layerwise:DDLR",
    "net-trim": "compactnn.methods.layerwise:NetTrim",
    "pgt": "compactnn.methods.pgt:PGT",
    "slr": "compactnn.methods.slr:SLR",
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
