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
"""

from __future__ import annotations

import importlib
from typing import Any

from compactnn.errors import CompactnnError

__version__ = "0.1.0"
__all__ = ["CompactnnError", "Target", "__version__", "compress", "load"]


def __getattr__(name: str) -> Any:
    if name == "compress":
        return importlib.import_module("compactnn.api").compress
    if name == "load":
        return importlib.import_module("compactnn.export").load
    if name == "Target":
        return importlib.import_module("compactnn.budget").Target
    raise AttributeError(f"module 'compactnn' has no attribute {name!r}")
