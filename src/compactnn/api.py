"""``compactnn.compress``: a model in, a physically smaller model (plus plan and report) out."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from compactnn.errors import ConfigError
from compactnn.methods import CompressionData, CompressionResult, get_method

__all__ = ["compress", "as_compression_data"]


def as_compression_data(
    data: Any,
    *,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    dataset_kwargs: dict[str, Any] | None = None,
) -> CompressionData:
    """Normalise the ``data`` argument of :func:`compress`.

    Accepted: a dataset name (``"mnist"``), a ``(train_loader, test_loader)`` pair, a single
    training ``DataLoader``, or a :class:`CompressionData`.
    """
    if isinstance(data, CompressionData):
        cd = data
    elif isinstance(data, str):
        from compactnn import data as data_mod

        train, test = data_mod.get_loaders(
            data, batch_size=batch_size, seed=seed, **(dataset_kwargs or {})
        )
        cd = CompressionData(train=train, test=test, name=data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        cd = CompressionData(train=data[0], test=data[1])
    elif isinstance(data, DataLoader):
        cd = CompressionData(train=data)
    elif data is None:
        cd = CompressionData(train=None)
    else:
        raise ConfigError(
            "The 'data' argument of compress must be a dataset name, a (train_loader, "
            f"test_loader) pair, a DataLoader or a CompressionData. Got {type(data).__name__}."
        )
    if input_shape is not None:
        cd.input_shape = tuple(int(s) for s in input_shape)
    if cd.input_shape is None:
        src = cd.train if cd.train is not None else cd.test
        if src is None:
            raise ConfigError("compress needs input_shape= when no data is given.")
        first = next(iter(src))
        x = first[0] if isinstance(first, (tuple, list)) else first
        cd.input_shape = tuple(int(s) for s in x.shape[1:])
    return cd


def compress(
    model: nn.Module,
    method: str,
    data: Any = None,
    *,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
    measure: bool = True,
    latency_batch_size: int = 100,
    latency_threads: int = 1,
    progress: bool = True,
    **options: Any,
) -> CompressionResult:
    """Compress a trained model with a registered method.

    Args:
        model: a trained ``nn.Module`` (never modified unless ``inplace=True``).
        method: registry name (``compactnn.methods.list_methods()``), e.g. ``"ssr"``, ``"ddlr"``.
        data: dataset name, ``(train_loader, test_loader)``, a ``DataLoader`` or
            :class:`~compactnn.methods.CompressionData`.
        inplace: let the method train/modify ``model`` itself instead of a deep copy.
        input_shape: per-sample input shape (inferred from the data when omitted).
        measure: measure before/after reports (params, FLOPs, latency, accuracy on ``test``).
        latency_batch_size: batch size of the latency measurement (SSR Table I uses 100).
        latency_threads: torch threads during the latency measurement.
        progress: tqdm progress bars.
        **options: the method's hyper-parameters (see ``get_method(method).Config``).

    Returns:
        CompressionResult with the smaller model, its plan, history and both reports.
    """
    from compactnn.metrics import report

    cls = get_method(method)
    algo = cls(**options)
    cd = as_compression_data(data, input_shape=input_shape)
    shape = cd.require_input_shape(method)
    work = model if inplace else copy.deepcopy(model)
    before = None
    if measure:
        before = report(
            model,
            shape,
            data=cd.test,
            batch_size=latency_batch_size,
            threads=latency_threads,
        )
    result = algo.run(work, cd, progress=progress)
    if measure:
        result.report_before = before
        result.report_after = report(
            result.model,
            shape,
            data=cd.test,
            batch_size=latency_batch_size,
            threads=latency_threads,
        )
    return result
