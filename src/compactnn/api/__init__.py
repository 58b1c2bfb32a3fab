"""``compactnn.compress``: a model in, a physically smaller model (plus plan and report) out.

:mod:`~compactnn.api.compression` holds :func:`compress` (checks, budget search, the run, the
guard), :mod:`~compactnn.api.inputs` the normalisation of its ``data`` argument
(:func:`as_compression_data`, :func:`split_loader`, :func:`describe_data`) and
:mod:`~compactnn.api.fingerprint` what identifies a resumable run; every name is importable from
:mod:`compactnn.api`.
"""

from __future__ import annotations

from compactnn.api.compression import DEFAULT_MAX_DROP, compress
from compactnn.api.inputs import DATA_SPLITS as DATA_SPLITS
from compactnn.api.inputs import LABEL_KEYS as LABEL_KEYS
from compactnn.api.inputs import as_compression_data, describe_data, split_loader

__all__ = [
    "compress",
    "as_compression_data",
    "describe_data",
    "split_loader",
    "DEFAULT_MAX_DROP",
]
