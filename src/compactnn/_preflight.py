"""Checks of the model and the data that :func:`compactnn.compress` runs before any expensive work.

Each failure is one :class:`~compactnn.errors.ConfigError` naming the argument (``model``,
``data``) and what to do: a model holding NaN/Inf, an empty loader, NaN/Inf inputs, labels
outside the model's output width. The data are checked on their first batch (and completely
when a loader reads a ``TensorDataset``, which costs one pass over tensors already in memory);
:func:`compactnn.metrics.accuracy` and :func:`compactnn.train.train` also refuse non-finite
inputs and empty loaders they meet later.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compactnn.errors import ConfigError
from compactnn.metrics import _eval_no_grad, _run_checked
from compactnn.train import _seeded

__all__ = ["check_model_finite", "check_data", "check_batch_form"]

_SPLITS = ("train", "val", "test", "calib")


def check_model_finite(model: Any, owner: str = "compress") -> None:
    """Refuse a model that is not an ``nn.Module`` or holds NaN / Inf in a parameter or buffer."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"The 'model' argument of {owner} must be a torch.nn.Module. Got "
            f"{type(model).__name__}."
        )
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t.detach())
            if bool(bad.any()):
                raise ConfigError(
                    f"The model passed to {owner} already holds NaN or Inf in '{name}' "
                    f"({int(bad.sum())} of {t.numel()} values), so nothing can be measured or "
                    "pruned on it; load a trained checkpoint with finite weights (re-train with a "
                    "lower learning rate if training diverged)."
                )


def _tensor_dataset(loader: Any) -> tuple[torch.Tensor, ...] | None:
    """The tensors behind a ``DataLoader`` over a ``TensorDataset`` (or a ``Subset`` of one)."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    if not isinstance(loader, DataLoader):
        return None
    ds, idx = loader.dataset, None
    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorDataset):
        ds, idx = ds.dataset, torch.as_tensor(list(ds.indices), dtype=torch.long)
    if not isinstance(ds, TensorDataset):
        return None
    return tuple(t if idx is None else t[idx] for t in ds.tensors)


def _first_batch(loader: Any) -> Any:
    """The first batch of ``loader`` without disturbing its shuffling (``None`` when empty);
    ``...`` for a one-shot iterator, which is left unread."""

    if iter(loader) is loader:  # a generator / iterator: reading it would consume it
        return ...
    return next(iter(_seeded(loader, 0)), None)


def _split_xy(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)):
        return (batch[0] if batch else None), (batch[1] if len(batch) > 1 else None)
    return batch, None


def check_batch_form(batch: Any, split: str) -> None:
    """Refuse batches compactnn cannot read: dicts (or dict inputs), or no tensor at all."""
    from collections.abc import Mapping

    def keys(d: Mapping) -> str:
        return ", ".join(repr(k) for k in list(d)[:6])

    fix = (
        "compactnn reads batches as (inputs, labels) with inputs a tensor (or a tuple of tensors) "
        "that the model takes positionally, and traces and self-checks its surgery on such "
        "tensors. For dict batches pass input_key= (and label_key=) to compress; otherwise give "
        "the DataLoader a collate_fn that returns (inputs, labels), and wrap a model whose "
        "forward takes a dict in a module whose forward takes the tensor."
    )
    if isinstance(batch, Mapping):
        raise ConfigError(
            f"The {split} loader passed in 'data' yields dict batches (keys {keys(batch)}); {fix}"
        )
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(x, Mapping):
        raise ConfigError(
            f"The inputs of the {split} loader passed in 'data' are dicts (keys {keys(x)}); {fix}"
        )
    parts = x if isinstance(x, (tuple, list)) else (x,)
    if not parts or not all(isinstance(t, torch.Tensor) for t in parts):
        kinds = sorted({type(t).__name__ for t in parts})
        raise ConfigError(
            f"The inputs of the {split} loader passed in 'data' are {kinds}, not tensors; {fix}"
        )


def _check_finite(x: Any, split: str, where: str) -> None:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ConfigError(
                f"The {split} data passed in 'data' hold NaN or Inf inputs ({int(bad.sum())} "
                f"values in {where}); clean or impute them before compressing (accuracy and "
                "training on them would be meaningless)."
            )


def _check_labels(y: Any, width: int, split: str, where: str) -> None:
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        return
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= width:
        raise ConfigError(
            f"The {split} data passed in 'data' have labels in [{lo}, {hi}] ({where}) but the "
            f"model has {width} outputs, so labels must lie in [0, {width - 1}]; pass a model "
            "built for this dataset's number of classes, or remap the labels."
        )


#: samples of the first training batch kept for the surgery self-check (CompressionData.check_batch):
#: its cost grows with them (benchmarks/results/surgery_self_check.md)
CHECK_SAMPLES = 2


def check_data(model: nn.Module, data: Any) -> torch.Tensor | None:
    """Check every loader of a :class:`~compactnn.methods.CompressionData` before compressing.

    Returns:
        The first :data:`CHECK_SAMPLES` inputs of the first batch of the training data (else
        the calibration, else the validation data; never the test data), read by these checks
        anyway: the batch of the user's data the surgery self-check runs on. ``None`` when no
        such loader yields a tensor batch.

    Raises:
        ConfigError: an empty loader, NaN / Inf inputs, integer labels outside
            ``[0, outputs)`` (the model's output width, measured on the first batch), or a
            model whose outputs are not finite on finite inputs.
    """

    width: int | None = None
    real: dict[str, torch.Tensor] = {}
    for split in _SPLITS:
        loader = getattr(data, split, None)
        if loader is None:
            continue
        batch = _first_batch(loader)
        if batch is ...:
            continue
        if batch is None:
            raise ConfigError(
                f"The {split} loader passed in 'data' is empty (it yields no batch); pass a "
                "loader with at least one batch"
                + (
                    " (for a fine-tuning or training method the training loader must hold data)."
                    if split == "train"
                    else "."
                )
            )
        check_batch_form(batch, split)
        x, y = _split_xy(batch)
        _check_finite(x, split, "the first batch")
        if not isinstance(x, torch.Tensor):
            continue  # a tuple of input tensors (multi-input model): the method reads them
        real[split] = x[:CHECK_SAMPLES].detach().clone()
        if width is None:
            with _eval_no_grad(model):
                p = next(model.parameters(), None)
                dev = p.device if p is not None else torch.device("cpu")
                out = _run_checked(model, x[:64].to(dev))
            if not isinstance(out, torch.Tensor):
                what = (
                    f"a dict (keys {', '.join(repr(k) for k in list(out)[:6])})"
                    if isinstance(out, dict)
                    else f"a {type(out).__name__}"
                )
                raise ConfigError(
                    f"The model returns {what} on the first {split} batch, but compactnn measures "
                    "accuracy and fine-tunes on the model's output as class scores (one tensor of "
                    "shape [batch, classes]). Wrap the model in a module whose forward returns the "
                    "logits (e.g. lambda x: model(x)['logits']); surgery.apply itself accepts "
                    "dict and tuple outputs."
                )
            if isinstance(out, torch.Tensor):
                if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    raise ConfigError(
                        f"The model's outputs are NaN or Inf on the first {split} batch although "
                        "its weights and inputs are finite (an overflow); check the input scaling "
                        "and the model's numerics before compressing."
                    )
                if out.ndim == 2:
                    width = int(out.shape[1])
        if width is not None:
            _check_labels(y, width, split, "the first batch")
        full = _tensor_dataset(loader)
        if full:
            _check_finite(full[0], split, "its TensorDataset")
            if width is not None and len(full) > 1:
                _check_labels(full[1], width, split, "its TensorDataset")
    return next((real[s] for s in ("train", "calib", "val") if s in real), None)
