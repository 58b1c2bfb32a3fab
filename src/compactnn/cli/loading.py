"""The model and the data a command works on.

A reference model name or a checkpoint (:func:`_resolve_model`), the user's
``--factory package.module:function`` (:func:`_load_user_model`), the original architecture
of a result (:func:`_fresh_model`), ``--data`` as CompressionData (:func:`_build_data`) and
the real samples the exported model is checked on (:func:`_samples`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn import data as data_mod
from compactnn import models
from compactnn.api import as_compression_data, describe_data
from compactnn.cli.inputs import _import_callable, _load_ckpt, _plain
from compactnn.errors import CompactnnError, ConfigError
from compactnn.metrics import real_batch


def _input_shape_for(model_name: str, dataset: str | None) -> tuple[int, ...]:
    return tuple(models.default_input_shape(model_name))


def _resolve_model(spec: str) -> tuple[Any, dict[str, Any], tuple[int, ...]]:
    """A reference model name or a checkpoint path -> (model, meta, input shape)."""
    path = Path(spec)
    if path.suffix in (".safetensors", ".pt", ".pth") or path.is_file():
        model, meta = _load_ckpt(path)
        shape = tuple(meta.get("input_shape") or models.default_input_shape(meta["model"]))
        return model, meta, shape
    model = models.create(spec)
    return model, {"model": spec}, tuple(models.default_input_shape(spec))


def _load_user_model(
    factory: str, checkpoint: str | None, kwargs: dict[str, Any] | None = None
) -> Any:
    """``package.module:factory`` (+ constructor kwargs, + checkpoint) -> model.

    The current directory is importable (as for ``python -m``), so a ``mymodels.py`` next to
    the command line is found.
    """
    fn = _import_callable(factory, "--factory", "returns the nn.Module", "mymodels:make_net")
    try:
        model = fn(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(
            f"--factory '{factory}' could not be called with --factory-kwargs {kwargs or {}} "
            f"({exc}); pass its constructor arguments as --factory-kwargs name=value,..."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--factory '{factory}' returned a {type(model).__name__}, not a torch.nn.Module."
        )
    if checkpoint:
        model, _ = _load_ckpt(checkpoint, model)
    return model


def _fresh_model(spec: dict[str, Any]) -> Any:
    if spec.get("factory"):
        return _load_user_model(spec["factory"], None, spec.get("factory_kwargs") or {})
    if spec.get("model"):
        return _resolve_model(spec["model"])[0]
    raise CompactnnError("Name the original architecture: a reference model name or --factory.")


def _build_data(
    spec: str,
    opts: dict[str, Any],
    *,
    shape: tuple[int, ...] | None,
    val_fraction: float,
    seed: int,
    input_key: str | None = None,
    label_key: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """``--data`` (a registry name or module:function) -> (CompressionData, what was fed).

    A function is called with the ``--data-opt`` values as keyword arguments (``batch_size``
    only if it takes one; compactnn also uses it for the loaders it builds around returned
    datasets) and returns loaders or datasets: ``(train, test)``, ``(train, val, test)``, a
    dict with keys among train / val / test / calib, one training loader, or a
    CompressionData. Without a val split, ``--val-fraction`` of train is held out.
    """
    batch_size = int(opts.get("batch_size", 128))
    common = {
        "input_shape": shape,
        "val_fraction": val_fraction,
        "seed": seed,
        "batch_size": batch_size,
        "input_key": input_key,
        "label_key": label_key,
    }
    if ":" not in spec:
        ds_opts = {k: v for k, v in opts.items() if k != "batch_size"}
        cd = as_compression_data(spec, dataset_kwargs=ds_opts, **common)
        norm: Any = data_mod.normalisation(
            spec, **{k: v for k, v in ds_opts.items() if k != "test_batch_size"}
        )
        kind = "registry dataset (compactnn.data)"
    else:
        fn = _import_callable(spec, "--data", "returns loaders or datasets", "mydata:loaders")
        kwargs = dict(opts)
        params = inspect.signature(fn).parameters.values()
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if "batch_size" in kwargs and not takes_any:
            if "batch_size" not in inspect.signature(fn).parameters:
                kwargs.pop("batch_size")
        try:
            got = fn(**kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"--data '{spec}' could not be called with --data-opt {kwargs} ({exc}); pass "
                "its arguments as --data-opt name=value,..."
            ) from exc
        if isinstance(got, str) or got is None:
            raise ConfigError(
                f"--data '{spec}' returned {got!r}; it must return loaders or datasets: "
                "(train, test), (train, val, test), {'train': ..., 'test': ...} or one "
                "training loader."
            )
        cd = as_compression_data(got, **common)
        cd.name = spec
        norm = f"as returned by {spec} (compactnn does not change it)"
        kind = "user function"
    fed = describe_data(
        cd,
        dataset=spec,
        kind=kind,
        options=_plain(opts),
        normalisation=norm,
        val_fraction=val_fraction,
        input_key=input_key,
        label_key=label_key,
        seed=seed,
    )
    return cd, fed


def _samples(data: Any, shape: tuple[int, ...], n: int = 100) -> tuple[Any, str]:
    """Up to ``n`` real input samples (test, else validation, else training data) or N(0, 1)."""
    for split in ("test", "val", "train"):
        loader = getattr(data, split, None)
        if loader is not None:
            x = real_batch(loader, n)
            if x is not None:
                return x.float(), f"{split} split"
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)), "N(0, 1) (no data)"
