"""The ``compactnn`` command line.

compactnn inspect lenet-caffe                 # per-layer table + totals of a reference model
compactnn inspect ckpt.safetensors            # ... or of a saved checkpoint
compactnn inspect --factory mymodels:make --factory-kwargs num_classes=10 --input-shape 3,32,32
compactnn inspect out/                        # a result of compactnn compress --out out/
compactnn compress --method ssr --help        # the options of ssr, defaults and meaning
compactnn train lenet-caffe --dataset mnist --epochs 5 --out lenet.safetensors
compactnn demo                                # train (or load cached) LeNet on MNIST, report

A bad input ends in one line ``compactnn: error: ...`` naming the flag, exit status 2 (the
traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactnn.demo import (
    DEMO_CHANGES,
    DEMO_METHOD,
    DEMO_OPTIONS,
    DEMO_TARGET,
    DEMO_TRAIN_THREADS,
    cache_dir,
    demo_baseline,
    train_model,
)
from compactnn.errors import CompactnnError, ConfigError

__all__ = ["main", "build_parser", "cache_dir"]


def _input_shape_for(model_name: str, dataset: str | None) -> tuple[int, ...]:
    from compactnn.models import default_input_shape

    return tuple(default_input_shape(model_name))


def _load_ckpt(path: Any, model: Any = None) -> tuple[Any, dict[str, Any]]:
    """:func:`compactnn.train.load_checkpoint` of a path the user gave, after a look at the
    file's first bytes: a file that is neither safetensors nor a torch.save file is refused
    with one error saying what it holds (not torch's unpickling error)."""
    from compactnn.errors import CheckpointError
    from compactnn.train import load_checkpoint

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(64)
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        is_safetensors = head[8:9] == b"{" and 0 < n < p.stat().st_size
        is_torch = head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"  # zip / legacy pickle
        if not (is_safetensors or is_torch):
            what = "an empty file" if not head else "neither safetensors nor torch.save data"
            try:
                text = head.decode("utf-8")
                if text.isprintable() or "\n" in text:
                    what = f"text: {text.splitlines()[0][:40]!r}..." if text.strip() else what
            except UnicodeDecodeError:
                pass
            raise CheckpointError(
                f"Checkpoint '{p}' is not a model checkpoint ({what}). Give a "
                ".safetensors file or a torch.save file (.pt / .pth) of the model's state dict "
                "(compactnn train --out, compactnn.train.save_checkpoint, or "
                "torch.save(model.state_dict(), 'model.pt'))."
            )
    return load_checkpoint(p, model)


def _resolve_model(spec: str) -> tuple[Any, dict[str, Any], tuple[int, ...]]:
    """A reference model name or a checkpoint path -> (model, meta, input shape)."""
    from compactnn import models

    path = Path(spec)
    if path.suffix in (".safetensors", ".pt", ".pth") or path.is_file():
        model, meta = _load_ckpt(path)
        shape = tuple(meta.get("input_shape") or models.default_input_shape(meta["model"]))
        return model, meta, shape
    model = models.create(spec)
    return model, {"model": spec}, tuple(models.default_input_shape(spec))


def _inspect_target(args: argparse.Namespace) -> tuple[Any, str, tuple[int, ...] | None]:
    """The model ``compactnn inspect`` describes: (model, title, input shape or None)."""

    factory_kwargs = _parse_factory_kwargs(args.factory_kwargs)
    if factory_kwargs and not args.factory:
        raise ConfigError("--factory-kwargs needs --factory module:function.")
    spec = args.model
    if spec and Path(spec).is_dir():  # a result directory: model.safetensors + plan.json
        from compactnn import export

        out = Path(spec)
        rep_path = out / "report.json"
        rep = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
        orig = dict(rep.get("model_spec") or {})
        if args.factory:
            orig = {"factory": args.factory, "factory_kwargs": factory_kwargs}
        if not orig.get("factory") and not orig.get("model"):
            raise ConfigError(
                f"{out} has no report.json naming the original architecture; pass --factory "
                "module:function (and --factory-kwargs) that builds a fresh original model."
            )
        model = export.load(out, model=_fresh_model(orig))
        shape = rep.get("input_shape")
        if not shape and (out / "plan.json").is_file():
            doc = json.loads((out / "plan.json").read_text())
            shape = (doc.get("checkpoint") or {}).get("input_shape")
        return model, f"compressed model in {out}", tuple(shape) if shape else None
    if args.factory:
        if spec:
            raise ConfigError(
                f"Give either a model ({spec!r}) or --factory, not both; load weights into the "
                "--factory model with --checkpoint."
            )
        model = _load_user_model(args.factory, None, factory_kwargs)
        shape = None
        if args.checkpoint:
            model, meta = _load_ckpt(args.checkpoint, model)
            shape = meta.get("input_shape")
        return model, args.factory, tuple(shape) if shape else None
    if not spec:
        raise ConfigError(
            "Give what to inspect: a reference model name (e.g. lenet-caffe), a checkpoint file, "
            "a result directory (compactnn compress --out DIR) or --factory module:function."
        )
    model, meta, shape = _resolve_model(spec)
    if args.checkpoint:
        model, _ = _load_ckpt(args.checkpoint, model)
    return model, str(meta.get("model", spec)), shape


def cmd_inspect(args: argparse.Namespace) -> int:
    from compactnn.metrics import report

    model, title, shape = _inspect_target(args)
    if args.input_shape:
        shape = _parse_shape(args.input_shape)
    if shape is None:
        raise ConfigError(
            f"The input shape of {title} is not recorded; pass --input-shape (e.g. "
            "--input-shape 1,28,28)."
        )
    rep = report(
        model, shape, latency=not args.no_latency, batch_size=args.batch_size, threads=args.threads
    )
    print(rep.format(title=f"{title} input {shape}"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from compactnn.metrics import report
    from compactnn.train import save_checkpoint

    model, hist, _, test_loader = train_model(
        args.model,
        args.dataset,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        optimizer=args.optimizer,
        progress=not args.quiet,
    )
    shape = _input_shape_for(args.model, args.dataset)
    rep = report(model, shape, data=test_loader, batch_size=1)
    print(rep.format(title=f"{args.model} trained on {args.dataset}"))
    if args.out:
        p = save_checkpoint(
            model,
            args.out,
            model=args.model,
            dataset=args.dataset,
            input_shape=list(shape),
            epochs=args.epochs,
            seed=args.seed,
            top1=rep.accuracy["top1"] if rep.accuracy else None,
        )
        print(f"saved {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from compactnn import _progress

    _progress.restart_clock()
    given = os.environ.get("COMPACTNN_PROGRESS_INTERVAL")
    os.environ["COMPACTNN_PROGRESS_INTERVAL"] = given or "30"  # a short log: one line per 30 s
    try:
        return _demo(args)
    finally:
        if given is None:
            os.environ.pop("COMPACTNN_PROGRESS_INTERVAL", None)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from compactnn import _progress, data
    from compactnn.api import as_compression_data, compress
    from compactnn.methods import CompressionData

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, test_loader, _ = demo_baseline(seed=args.seed, retrain=args.retrain)
    if args.no_compress:
        from compactnn.metrics import report

        rep = report(model, (1, 28, 28), data=test_loader, batch_size=100, threads=1, repeats=30)
        print(rep.format(title="lenet-caffe on MNIST (baseline)"))
        return 0
    method, options = DEMO_METHOD, dict(DEMO_OPTIONS[DEMO_METHOD])
    train_loader, _ = data.get_loaders("mnist", batch_size=64, seed=args.seed)
    cd = CompressionData(
        train=train_loader, test=test_loader, input_shape=(1, 28, 28), name="mnist"
    )
    print(
        f"compressing with {method} to target {DEMO_TARGET}, {DEMO_TRAIN_THREADS} torch "
        f"thread(s); changed in issue 34: {DEMO_CHANGES}"
    )
    torch.set_num_threads(DEMO_TRAIN_THREADS)
    # the split compress would carve itself (10 %, seeded), made here so the report states it
    cd = as_compression_data(cd, val_fraction=0.1, seed=args.seed)
    with _progress.Heartbeat(), _progress.stage("compress", f"{method}, target {DEMO_TARGET}"):
        result = compress(
            model,
            method,
            cd,
            target=DEMO_TARGET,
            seed=args.seed,
            latency_batch_size=100,
            latency_threads=1,
            **options,
        )
    out = Path(args.out) if args.out else cache_dir() / "demo-result"
    out.mkdir(parents=True, exist_ok=True)
    ship_args = argparse.Namespace(
        prefer=None, threads=1, sparse_form="dense", batch_size=100, compile=False, seed=args.seed
    )
    from compactnn.api import describe_data

    rep = {
        "method": method,
        "data": "mnist",
        "data_fed": describe_data(
            cd,
            dataset="mnist",
            kind="registry dataset (compactnn.data)",
            normalisation=data.normalisation("mnist"),
            val_fraction=0.1,
            seed=args.seed,
        ),
        "history": _json_values(dict(result.history)),
        "options": options,
        "demo": {"target": DEMO_TARGET, "changes": DEMO_CHANGES},
        "chosen": _plain(result.chosen),
        "target": result.target,
        "validation": result.validation,
        "before": result.report_before.to_dict(),
        "after": result.report_after.to_dict(),
        "model_spec": {"model": "lenet-caffe", "factory": None, "factory_kwargs": {}},
        "warnings": [],
        "seconds": {},
    }
    with _progress.Heartbeat(), _progress.stage("export + latency", str(out)):
        _ship_result(ship_args, out, result, model, cd, rep)
    text = summary_text(result, rep, 100)  # "in RAM" says more than "memory": one of them
    print("\n".join(ln for ln in text.splitlines() if not ln.startswith("memory ")))
    print(f"wrote {out}: model.onnx, model.pt, model.safetensors + plan.json, report.md")
    return 0


def _yaml_value(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{where}: {text!r} is not a valid YAML value ({first}); quote strings and close "
            "brackets, e.g. lam=[0.1,0.2]."
        ) from exc


def _parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars/lists (``lam=[0.1,0.2]``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--opt '{pair}' must look like key=value (e.g. --opt lam=0.5).")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = _yaml_value(v, f"--opt {k.strip()}")
    return out


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (q.strip() for q in parts) if p]


def _parse_factory_kwargs(text: str | None) -> dict[str, Any]:
    """``--factory-kwargs k=v,k2=[1,2]`` -> ``{"k": v, "k2": [1, 2]}`` (YAML-parsed values)."""
    out: dict[str, Any] = {}
    for pair in _split_top_level(text or ""):
        k, sep, v = pair.partition("=")
        if not sep or not k.strip().isidentifier():
            raise ConfigError(
                f"--factory-kwargs: '{pair}' must look like name=value (e.g. --factory-kwargs "
                "num_classes=10,width=[16,32])."
            )
        out[k.strip()] = _yaml_value(v, f"--factory-kwargs {k.strip()}")
    return out


def _import_callable(spec: str, flag: str, returns: str, example: str) -> Any:
    """``package.module:function`` -> the function (the current directory is importable)."""
    import importlib

    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ConfigError(
            f"{flag} '{spec}' must look like package.module:function (a callable that "
            f"{returns}), e.g. {flag} {example}."
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Cannot import {flag} '{spec}' ({exc}); run from the directory that holds "
            f"{mod_name.split('.')[0]} or put it on PYTHONPATH."
        ) from exc
    if not callable(fn):
        raise ConfigError(f"{flag} '{spec}' names a {type(fn).__name__}, not a function.")
    return fn


#: --data-opt keys of a registry dataset (compactnn.data.get_loaders / get_dataset)
DATASET_OPTS = (
    "mean",
    "std",
    "normalize",
    "batch_size",
    "test_batch_size",
    "limit",
    "pad_to",
    "channels",
    "flatten",
    "root",
)


def _parse_data_opts(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--data-opt mean=0.5,std=0.25 --data-opt limit=1000`` -> a dict (YAML values)."""
    out: dict[str, Any] = {}
    for text in pairs or []:
        for pair in _split_top_level(text):
            k, sep, v = pair.partition("=")
            key = k.strip().replace("-", "_")
            if not sep or not key.isidentifier():
                raise ConfigError(
                    f"--data-opt '{pair}' must look like name=value (e.g. --data-opt "
                    "mean=0.1307,std=0.3081 or --data-opt batch_size=64,limit=2000)."
                )
            out[key] = _yaml_value(v, f"--data-opt {key}")
    return out


def _check_data_spec(spec: str | None, opts: dict[str, Any]) -> None:
    """--data / --data-opt checked before anything is loaded (registry datasets)."""
    import difflib

    from compactnn import data as data_mod

    if not spec:
        if opts:
            raise ConfigError("--data-opt needs --data (a dataset name or module:function).")
        return
    if ":" in spec:
        return
    data_mod.dataset_info(spec)  # unknown name: one clear error listing the names
    for key in opts:
        if key not in DATASET_OPTS:
            close = difflib.get_close_matches(key, DATASET_OPTS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"--data-opt {key}: not an option of dataset {spec!r}; the options are "
                f"{', '.join(DATASET_OPTS)}.{hint}"
            )
    if "batch_size" in opts and (not isinstance(opts["batch_size"], int) or opts["batch_size"] < 1):
        raise ConfigError(
            f"--data-opt batch_size must be a positive int. Got {opts['batch_size']!r}."
        )
    ds_opts = {k: v for k, v in opts.items() if k not in ("batch_size", "test_batch_size")}
    data_mod.normalisation(spec, **ds_opts)  # mean / std: one per channel, std > 0


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
    import inspect

    from compactnn import data as data_mod
    from compactnn.api import as_compression_data, describe_data

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


def _load_user_model(
    factory: str, checkpoint: str | None, kwargs: dict[str, Any] | None = None
) -> Any:
    """``package.module:factory`` (+ constructor kwargs, + checkpoint) -> model.

    The current directory is importable (as for ``python -m``), so a ``mymodels.py`` next to
    the command line is found.
    """
    from torch import nn

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


_RECIPE_KEYS = (
    "method", "data", "data_opts", "input_key", "label_key", "options", "target", "max_drop",
)  # fmt: skip


def _read_recipe(path: str) -> dict[str, Any]:
    """A recipe YAML file, checked: a mapping with known keys, ``options`` a mapping."""
    import difflib

    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"--recipe {path}: no such file; give the path of a YAML recipe (compactnn compress "
            "--out DIR writes DIR/recipe.yaml)."
        )
    try:
        recipe = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"--recipe {path}: YAML syntax error{where} ({problem}); fix the file."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--recipe {path}: cannot read the file ({exc}).") from exc
    if not isinstance(recipe, dict):
        raise ConfigError(
            f"--recipe {path} must be a YAML mapping such as 'method: ssr' / 'options: "
            f"{{lam: 0.1}}'. Got a {type(recipe).__name__}."
        )
    for key in recipe:
        if key not in _RECIPE_KEYS:
            close = difflib.get_close_matches(str(key), _RECIPE_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"--recipe {path}: unknown key {key!r}; a recipe has only "
                f"{', '.join(_RECIPE_KEYS)}.{hint}"
            )
    options = recipe.get("options")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(
            f"--recipe {path}: 'options' must be a mapping option -> value (e.g. 'options: "
            f"{{lam: 0.1, finetune_epochs: 2}}'). Got {options!r}."
        )
    return recipe


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape 1,28,28`` -> ``(1, 28, 28)``."""
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(
            f"--input-shape {text!r} must be the per-sample shape as positive ints separated by "
            "commas, e.g. --input-shape 1,28,28."
        )
    return shape


def _check_out(out: str | None) -> None:
    """Refuse ``--out`` naming an existing file (before any work is done)."""
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(
            f"--out {out} is an existing file; --out names a directory (created if missing) "
            "for the model, plan and report. Choose another path."
        )


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """Options as YAML-safe plain values (tuples -> lists); unset (None) options dropped."""

    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v)

    return {k: conv(v) for k, v in options.items() if v is not None}


_DROP = object()


def _json_values(value: Any) -> Any:
    """The JSON-plain part of a method's history (plans, tensors and modules left out)."""
    if isinstance(value, dict):
        out = {str(k): _json_values(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _DROP}
    if isinstance(value, (list, tuple)):
        items = [_json_values(v) for v in value]
        kept = [v for v in items if v is not _DROP]
        return kept if len(kept) == len(items) or kept else _DROP
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor / numpy scalar
        return value.item()
    return _DROP


def cmd_compress(args: argparse.Namespace) -> int:
    """``compactnn compress``; ``--verbose`` sets COMPACTNN_VERBOSE for this command only.

    Under ``torchrun`` every rank runs it (DDP training, see :mod:`compactnn.distributed`) and
    rank 0 alone prints and writes the outputs."""
    from compactnn import _progress, distributed

    before = os.environ.get("COMPACTNN_VERBOSE")
    if args.verbose:
        os.environ["COMPACTNN_VERBOSE"] = "1"
    started = distributed.init_from_env()
    _progress.restart_clock()
    try:
        with _progress.Heartbeat(enabled=not args.quiet and distributed.is_main()):
            return _compress_command(args)
    finally:
        if before is None:
            os.environ.pop("COMPACTNN_VERBOSE", None)
        else:
            os.environ["COMPACTNN_VERBOSE"] = before
        if started:
            import torch.distributed as dist

            dist.barrier()  # rank 0 may still be writing the outputs
            dist.destroy_process_group()


def _compress_command(args: argparse.Namespace) -> int:
    import yaml

    from compactnn import _progress, distributed
    from compactnn.api import compress
    from compactnn.budget import Target
    from compactnn.methods import get_method

    recipe: dict[str, Any] = _read_recipe(args.recipe) if args.recipe else {}
    method = args.method or recipe.get("method")
    dataset = args.data or recipe.get("data")
    if not method:
        raise ConfigError("Choose a method: --method NAME or 'method:' in the recipe.")
    options = dict(recipe.get("options") or {})
    options.update(_parse_options(args.opt))
    shape = _parse_shape(args.input_shape)
    target = args.target if args.target is not None else recipe.get("target")
    max_drop = args.max_drop if args.max_drop is not None else recipe.get("max_drop")
    data_opts = dict(recipe.get("data_opts") or {})
    if not isinstance(recipe.get("data_opts") or {}, dict):
        raise ConfigError(f"--recipe {args.recipe}: 'data_opts' must be a mapping option -> value.")
    data_opts.update(_parse_data_opts(args.data_opt))
    args.input_key = args.input_key or recipe.get("input_key")
    args.label_key = args.label_key or recipe.get("label_key")
    # one seed: --seed, else a recipe's / --opt seed (a replayed recipe.yaml carries it), else 0
    opt_seed = options.pop("seed", None)
    args.seed = args.seed if args.seed is not None else (0 if opt_seed is None else opt_seed)
    if not isinstance(args.seed, int) or isinstance(args.seed, bool) or args.seed < 0:
        raise ConfigError(f"--seed must be an int >= 0. Got {args.seed!r}.")
    cls = get_method(method)
    # everything the user typed is checked before a model, a dataset or a solver is touched
    cls(**options)
    _check_data_spec(dataset, data_opts)
    if target is not None:
        Target.parse(target)
    _check_out(args.out)
    factory_kwargs = _parse_factory_kwargs(args.factory_kwargs)
    if factory_kwargs and not args.factory:
        raise ConfigError("--factory-kwargs needs --factory module:function.")
    show = not args.quiet and distributed.is_main()

    def stage(name: str, detail: str = "") -> Any:
        return _progress.stage(name, detail, enabled=show)

    with stage("load model", args.factory or args.model or ""):
        model = _compress_model(args, factory_kwargs)
    if args.ddp_check:
        os.environ["COMPACTNN_DDP_CHECK"] = "1"
    data, fed = dataset, None
    if (args.input_key or args.label_key) and not dataset:
        raise ConfigError("--input-key / --label-key select from dict batches of --data.")
    t0 = time.perf_counter()
    if dataset:  # built here so that the exported model is checked on the same real samples
        with stage("data", dataset):
            data, fed = _build_data(
                dataset,
                data_opts,
                shape=shape,
                val_fraction=args.val_fraction,
                seed=args.seed,
                input_key=args.input_key,
                label_key=args.label_key,
            )
    seconds = {"data": time.perf_counter() - t0}
    t0 = time.perf_counter()
    what = f"method {method}" + (f", target {target}" if target is not None else "")
    with (
        warnings.catch_warnings(record=True) as caught,
        stage("compress", what),
        _data_hint(model, dataset, data_opts, shape),
    ):
        warnings.simplefilter("always")
        result = compress(
            model,
            method,
            data,
            target=target,
            max_drop=max_drop,
            on_drop=args.on_drop,
            val_fraction=args.val_fraction,
            seed=args.seed,
            input_shape=shape,
            progress=not args.quiet,
            latency_batch_size=args.batch_size,
            latency_threads=args.threads,
            resume_dir=args.resume,
            **options,
        )
    seconds["compress"] = time.perf_counter() - t0
    if not distributed.is_main():
        return 0  # rank 0 prints and writes
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not args.out:
        print(result.summary())
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        replay = {"method": method, "data": dataset, "options": _plain(result.chosen)}
        extra = {"data_opts": data_opts, "input_key": args.input_key, "label_key": args.label_key}
        replay.update(_plain({k: v for k, v in extra.items() if v}))
        (out / "recipe.yaml").write_text(yaml.safe_dump(replay, sort_keys=False))
        rep = {
            "method": method,
            "data": dataset,
            "data_fed": fed,
            "config": _resolved_config(args, method, dataset, data_opts, options, target),
            "options": options,
            "chosen": _plain(result.chosen),
            "target": result.target,
            "validation": result.validation,
            "before": result.report_before.to_dict() if result.report_before else None,
            "after": result.report_after.to_dict() if result.report_after else None,
            "model_spec": {
                "model": args.model,
                "factory": args.factory,
                "factory_kwargs": factory_kwargs,
            },
            "history": _json_values(dict(result.history)),
            "warnings": notes,
            "seconds": seconds,
        }
        with stage("export + latency", str(out)):
            _ship_result(args, out, result, model, data, rep)
        print(summary_text(result, rep, int(args.batch_size)))
        print(
            f"wrote {out}: model.onnx, model.pt, model.safetensors + plan.json (compactnn.load), "
            "report.json, report.md, recipe.yaml (replays this run without search: --recipe)"
        )
    return 0


def _data_fix(model: Any, dataset: str, opts: dict[str, Any], shape: Any) -> str | None:
    """``--data-opt`` values that make registry dataset ``dataset`` feed what ``model``'s first
    layer takes (``channels=3,pad_to=32`` for a 3x32x32 model on 1x28x28 MNIST), or None."""
    from torch import nn

    from compactnn import data as data_mod

    c0, h0, *_ = (*data_mod.dataset_info(dataset).input_shape, 0, 0)
    if not h0:  # not an image dataset
        return None
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    want: tuple[int, int | None] | None = None  # (channels, side or None: any)
    if shape is not None and len(shape) == 3 and shape[1] == shape[2]:
        want = (int(shape[0]), int(shape[1]))
    elif isinstance(first, nn.Conv2d):
        want = (first.in_channels, None)
    elif isinstance(first, nn.Linear):
        for c in dict.fromkeys((int(opts.get("channels") or c0), c0, 3, 1)):
            side = round((first.in_features / c) ** 0.5)
            if c * side * side == first.in_features and side >= h0:
                want = (c, side)
                break
    if want is None:
        return None
    fix = dict(opts)
    if want[0] != c0:
        if c0 != 1:
            return None  # channels only replicates a grey channel
        fix["channels"] = want[0]
    else:
        fix.pop("channels", None)
    if want[1] is not None and want[1] != h0:
        if want[1] < h0:
            return None  # pad_to only pads
        fix["pad_to"] = want[1]
    if fix == opts:
        return None
    return ",".join(f"{k}={v}" for k, v in fix.items())


@contextlib.contextmanager
def _data_hint(model: Any, dataset: str | None, opts: dict[str, Any], shape: Any) -> Any:
    """A model that cannot run on a registry dataset's samples: the error names the
    ``--data-opt`` that makes the dataset fit the model (instead of --input-shape, which does
    not change the data)."""
    from compactnn.errors import InputShapeError

    try:
        yield
    except InputShapeError as exc:
        text = str(exc).split(" Pass the per-sample input shape")[0].rstrip(".")
        if not dataset or text == str(exc):
            raise
        if ":" in dataset:  # the user's function: --input-shape would not change its samples
            raise InputShapeError(
                f"{text}. --data {dataset} returns samples the model cannot take: make it return "
                "samples of the model's input shape (--input-shape describes the samples, it "
                "does not reshape them)."
            ) from exc
        fix = _data_fix(model, dataset, opts, shape)
        if fix is None:
            raise
        raise InputShapeError(
            f"{text}. --data {dataset} gives samples of another shape than the model takes: "
            f"pass --data-opt {fix}"
            + ("" if shape is None else f" (with --input-shape {','.join(map(str, shape))})")
            + "."
        ) from exc


def _compress_model(args: argparse.Namespace, factory_kwargs: dict[str, Any]) -> Any:
    """The model ``compactnn compress`` starts from (reference name, checkpoint, --factory)."""

    if args.factory:
        return _load_user_model(args.factory, args.checkpoint, factory_kwargs)
    if not args.model:
        raise ConfigError("Give a reference model name, a checkpoint, or --factory.")
    model, _, _ = _resolve_model(args.model)
    if args.checkpoint:
        model, _ = _load_ckpt(args.checkpoint, model)
    return model


def _resolved_config(
    args: argparse.Namespace,
    method: str,
    dataset: str | None,
    data_opts: dict[str, Any],
    options: dict[str, Any],
    target: Any,
) -> dict[str, Any]:
    """The command line as resolved (recipe merged, defaults filled) for report.json."""
    keys = (
        "model", "factory", "factory_kwargs", "checkpoint", "recipe", "input_shape",
        "batch_size", "max_drop", "on_drop", "val_fraction", "seed", "sparse_form", "prefer",
        "threads", "compile", "input_key", "label_key", "quiet", "verbose",
    )  # fmt: skip
    doc = {k: getattr(args, k, None) for k in keys}
    doc.update(method=method, data=dataset, data_opts=data_opts, options=options, target=target)
    return _plain(doc)


def _samples(data: Any, shape: tuple[int, ...], n: int = 100) -> tuple[Any, str]:
    """Up to ``n`` real input samples (test, else validation, else training data) or N(0, 1)."""
    import torch

    from compactnn.metrics import real_batch

    for split in ("test", "val", "train"):
        loader = getattr(data, split, None)
        if loader is not None:
            x = real_batch(loader, n)
            if x is not None:
                return x.float(), f"{split} split"
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)), "N(0, 1) (no data)"


def _fresh_model(spec: dict[str, Any]) -> Any:
    if spec.get("factory"):
        return _load_user_model(spec["factory"], None, spec.get("factory_kwargs") or {})
    if spec.get("model"):
        return _resolve_model(spec["model"])[0]
    raise CompactnnError("Name the original architecture: a reference model name or --factory.")


def _ship_result(
    args: argparse.Namespace, out: Path, result: Any, original: Any, data: Any, rep: dict[str, Any]
) -> None:
    """Write the artifacts (ONNX, TorchScript, compact checkpoint), report.json and report.md."""
    from compactnn import export
    from compactnn.metrics import report

    shape = tuple(int(s) for s in (result.report_after.input_shape if result.report_after else ()))
    if not shape:
        shape = tuple(getattr(data, "input_shape", None) or ())
    samples, source = _samples(data, shape)
    model, plan = result.model, result.plan
    densified: list[str] = []
    if args.prefer == "speed":
        model, plan, densified = export.prefer_speed(
            model, plan, original, samples, threads=args.threads
        )
        if densified:  # measure what is now shipped (the summary prints it too)
            test = getattr(data, "test", None)
            result.report_after = report(model, shape, data=test, batch_size=args.batch_size)
            rep["after"] = result.report_after.to_dict()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deploy = export.ship(
            model,
            plan,
            out,
            samples,
            input_shape=shape,
            original=original,
            fresh=_fresh_model(rep["model_spec"]),
            sparse=args.sparse_form,
            threads=args.threads,
            compile=getattr(args, "compile", False),
            batch_sizes=tuple(sorted({1, int(args.batch_size)})),
        )
    for w in caught:  # compactnn's own (torch.compile's internal deprecations left out)
        if f"{os.sep}compactnn{os.sep}" in str(w.filename):
            _progress_flush()
            print(f"warning: {w.message}", file=sys.stderr)
            rep["warnings"].append(str(w.message))
    deploy["densified"] = densified
    deploy["check_samples_from"] = source
    rep["deploy"] = deploy
    _one_latency_per_runtime(rep, int(args.batch_size))
    rep["input_shape"] = list(shape)
    rep["seconds"]["export + latency"] = time.perf_counter() - t0
    rep["environment"] = export.environment(seed=getattr(args, "seed", 0))
    from compactnn.plots import layer_figures, plot_all

    rep["figures"] = layer_figures(model, original)
    rep["plots"] = plot_all(rep, out)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    (out / "report.md").write_text(export.render_report(rep))
    from compactnn import _progress

    _progress.flush()  # the stage's line before its results
    onnx_rec = deploy["artifacts"].get("model.onnx")
    if onnx_rec:
        print(
            f"model.onnx {onnx_rec['bytes']:,} B, max |delta| vs PyTorch "
            f"{onnx_rec['max_abs_diff']:.2e} on {onnx_rec['check_samples']} samples ({source})"
        )
    if deploy["slower_than_dense"]:
        print(
            "note: slower than the dense layer they replace: "
            + ", ".join(deploy["slower_than_dense"])
            + " (--prefer speed keeps them dense)"
        )


def _progress_flush() -> None:
    from compactnn import _progress

    _progress.flush()


def _one_latency_per_runtime(rep: dict[str, Any], batch_size: int) -> None:
    """One measurement per runtime in report.json: the speed-ups of ``ship`` (original and
    compressed timed in the same runtime on the same real batch), and the before / after
    eager latency of the reports replaced by ``ship``'s eager timings at ``batch_size`` (the
    reports' own timing, made earlier in another state of the machine, is dropped)."""
    from compactnn.export import speedup_protocol, speedups

    dep = rep["deploy"]
    rep["speedup"] = speedups(dep)
    rep["speedup_protocol"] = speedup_protocol(dep)
    row = dep["latency"].get(f"batch {batch_size}") or {}
    for side, key in (("before", "eager_original"), ("after", "eager")):
        lat = (rep.get(side) or {}).get("latency")
        if lat and key in row:
            lat.update({k: row[key][k] for k in ("median_ms", "p10_ms", "p90_ms", "repeats")})
            lat.update(batch_size=batch_size, threads=dep["latency_threads"])
            rep[side]["latency_inputs"] = "real"
            rep[side]["latency_source"] = f"deploy.latency['batch {batch_size}'].{key}"


def summary_text(result: Any, rep: dict[str, Any] | None, batch_size: int) -> str:
    """``result.summary()``, its latency line replaced by one speed-up per runtime read off
    report.json (``rep['speedup']``, the numbers of report.md) when the model was shipped."""
    text = result.summary()
    ups = (rep or {}).get("speedup", {}).get(f"batch {batch_size}")
    if not ups:
        return text
    lines = [ln for ln in text.splitlines() if not ln.startswith("latency  ")]
    lines.append(
        f"speed-up at batch {batch_size} ({rep['speedup_protocol']}; original and compressed "
        "timed in the same runtime):"
    )
    for rt, v in ups.items():
        lines.append(
            f"  {rt:<12} {v['original_ms']:>10.3f} ms -> {v['compressed_ms']:>10.3f} ms   "
            f"{v['speedup']:.2f}x"
        )
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from compactnn import export

    out = Path(args.result)
    rep_path = out / "report.json"
    rep = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
    spec = dict(rep.get("model_spec") or {})
    if args.model or args.factory:
        spec = {
            "model": args.model,
            "factory": args.factory,
            "factory_kwargs": _parse_factory_kwargs(args.factory_kwargs),
        }
    model = export.load(out, model=_fresh_model(spec))
    shape = tuple(rep.get("input_shape") or ())
    if not shape:
        doc = json.loads((out / "plan.json").read_text())
        shape = tuple(doc["checkpoint"].get("input_shape") or ())
    data = None
    fed = rep.get("data_fed") or {}
    name = args.data or rep.get("data")
    if name:  # the data of the run (its options and keys) unless --data names another
        same = not args.data or args.data == rep.get("data")
        data, _ = _build_data(
            name,
            dict(fed.get("options") or {}) if same else {},
            shape=shape,
            val_fraction=0.0,
            seed=int(fed.get("seed", 0)) if same else 0,
            input_key=fed.get("input_key") if same else None,
            label_key=fed.get("label_key") if same else None,
        )
    samples, source = _samples(data, shape)
    fn = export.to_onnx if args.format == "onnx" else export.to_torchscript
    path = out / ("model.onnx" if args.format == "onnx" else "model.pt")
    rec = fn(model, path, samples[:2], samples=samples, sparse=args.sparse_form)
    print(
        f"wrote {path} ({rec['bytes']:,} B), max |delta| vs PyTorch {rec['max_abs_diff']:.2e} on "
        f"{rec['check_samples']} samples ({source})"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from compactnn import export

    out = Path(args.result)
    path = out / "report.json"
    if not path.is_file():
        raise CompactnnError(
            f"{path} does not exist; give a directory written by compactnn compress --out DIR."
        )
    from compactnn.plots import plot_all

    rep = json.loads(path.read_text())
    rep["plots"] = plot_all(rep, out)
    (out / "report.md").write_text(export.render_report(rep))
    print(f"wrote {out / 'report.md'} ({', '.join(rep['plots']) or 'no plots'})")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Convert the bundled MNIST pickle to the cached .npz once (fast afterwards)."""
    from compactnn import data

    x, y = data.load_arrays("mnist", "train")
    xt, yt = data.load_arrays("mnist", "test")
    print(f"mnist ready: train {tuple(x.shape)}, test {tuple(xt.shape)}")
    try:
        xf, _ = data.load_arrays("fashion-mnist", "test")
        print(f"fashion-mnist ready: test {tuple(xf.shape)}")
    except CompactnnError as exc:
        print(f"fashion-mnist not available: {exc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compactnn",
        description="Compress a trained PyTorch CNN/MLP into a physically smaller, faster model.",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (anywhere on the command line)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser(
        "inspect",
        help="per-layer table and totals of a model, a checkpoint or a compressed result",
    )
    pi.add_argument(
        "model",
        nargs="?",
        help="reference model name (e.g. lenet-caffe; names: compactnn.models.list_models()), "
        "a checkpoint path, or a result directory of compactnn compress --out DIR",
    )
    pi.add_argument("--factory", help="user model as package.module:function")
    pi.add_argument(
        "--factory-kwargs",
        metavar="K=V,...",
        help="arguments of the --factory function, values read as YAML (e.g. num_classes=10)",
    )
    pi.add_argument("--checkpoint", help="weights to load into the model")
    pi.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28")
    pi.add_argument(
        "--batch-size", type=int, default=1, help="batch size for the latency measurement"
    )
    pi.add_argument(
        "--threads", type=int, default=1, help="torch threads for the latency measurement"
    )
    pi.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    pi.set_defaults(func=cmd_inspect)

    pt = sub.add_parser("train", help="train a reference model on a bundled dataset")
    pt.add_argument("model")
    pt.add_argument("--dataset", default="mnist")
    pt.add_argument("--epochs", type=int, default=5)
    pt.add_argument("--lr", type=float, default=0.01)
    pt.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", help="checkpoint path (.safetensors or .pt)")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(func=cmd_train)

    pd = sub.add_parser(
        "demo",
        help="train (or load cached) LeNet on MNIST, compress it with SSR, print before/after",
    )
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--retrain", action="store_true", help="ignore the cached baseline")
    pd.add_argument("--no-compress", action="store_true", help="only train/report the baseline")
    pd.add_argument(
        "--out", help="directory for the shipped artifacts (default: CACHE/demo-result)"
    )
    pd.set_defaults(func=cmd_demo)

    pc = sub.add_parser("compress", help="compress a model with a registered method")
    pc.add_argument("model", nargs="?", help="reference model name or checkpoint path")
    pc.add_argument(
        "--method",
        help="method name, e.g. ssr, admm-sparse, ddlr, net-trim (--method M --help lists M's "
        "options)",
    )
    pc.add_argument(
        "--data",
        help="dataset name (mnist, fashion-mnist, digits, spiral, cifar10) or "
        "package.module:function returning loaders or datasets: (train, test), (train, val, "
        "test), {'train': ..., 'val': ..., 'test': ...} or one training loader (the current "
        "directory is importable)",
    )
    pc.add_argument(
        "--data-opt",
        action="append",
        metavar="K=V,...",
        help="options of --data, values read as YAML (repeatable). A dataset name takes "
        + ", ".join(DATASET_OPTS)
        + " (mean/std: normalisation, one value or one per channel; limit: a seeded subset "
        "of each split); a function gets them as keyword arguments",
    )
    pc.add_argument(
        "--input-key",
        help="dict batches: the key of the model's input tensor (the model's forward takes "
        "that tensor)",
    )
    pc.add_argument(
        "--label-key",
        help="dict batches: the key of the labels (default: the first of label, labels, "
        "target, targets, y)",
    )
    pc.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the validation split, the loaders and the method (its 'seed' option)",
    )
    pc.add_argument(
        "--factory",
        help="user model as package.module:function (the current directory is importable)",
    )
    pc.add_argument(
        "--factory-kwargs",
        metavar="K=V,...",
        help="arguments of the --factory function, values read as YAML (e.g. "
        "num_classes=10,widths=[16,32])",
    )
    pc.add_argument("--checkpoint", help="weights to load into the model")
    pc.add_argument("--recipe", help="YAML file: {method: ..., data: ..., options: {...}}")
    pc.add_argument(
        "--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)"
    )
    pc.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28")
    pc.add_argument(
        "--batch-size", type=int, default=100, help="batch size of the latency measurement"
    )
    pc.add_argument(
        "--target",
        metavar="KEY=FRACTION",
        help="budget: fraction of the original kept, e.g. macs=0.1 or params=0.2,macs=0.1 "
        "(keys: params, macs, latency); the method's strength is chosen on validation",
    )
    pc.add_argument(
        "--max-drop",
        type=float,
        help="accuracy points the model may lose on the validation split (default 5)",
    )
    pc.add_argument(
        "--on-drop",
        choices=("raise", "warn"),
        default="raise",
        help="what to do when --max-drop is exceeded or a layer collapses",
    )
    pc.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training data held out for validation (seeded; default 0.1)",
    )
    pc.add_argument("--out", help="directory for plan, report.json and recipe.yaml")
    pc.add_argument(
        "--ddp-check",
        action="store_true",
        help="under torchrun: compare checksums of every non-reduced step (F-steps, duals, "
        "pruning decisions, weights) across ranks and stop naming the tensor that differs "
        "(COMPACTNN_DDP_CHECK=1)",
    )
    pc.add_argument(
        "--resume",
        metavar="DIR",
        help="run directory: every stage is checkpointed there; rerunning the same command "
        "continues after the last finished stage (a different run's directory is refused)",
    )
    pc.add_argument(
        "--quiet", action="store_true", help="no progress output (the final summary stays)"
    )
    pc.add_argument(
        "--verbose", action="store_true", help="one log line per training step (and per stage)"
    )
    pc.add_argument(
        "--sparse-form",
        choices=("dense", "gather"),
        default="dense",
        help="how sparse layers are exported to ONNX / TorchScript: dense matrices (fast on "
        "CPU) or gathered non-zeros (small file); latency is measured on that form",
    )
    pc.add_argument(
        "--prefer",
        choices=("size", "speed"),
        default="size",
        help="speed: keep dense every compressed layer measured slower than the dense layer",
    )
    pc.add_argument(
        "--threads", type=int, default=1, help="threads of the latency measurements (fixed)"
    )
    pc.add_argument(
        "--compile",
        action="store_true",
        help="also time the deployed model under torch.compile (inductor; needs a C++ "
        "compiler, skipped with a warning where it cannot work)",
    )
    pc.set_defaults(func=cmd_compress)

    pe = sub.add_parser(
        "export", help="write model.onnx / model.pt of an earlier result directory (--out DIR)"
    )
    pe.add_argument("result", help="result directory (model.safetensors + plan.json)")
    pe.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    pe.add_argument("--model", help="reference model name of the original architecture")
    pe.add_argument("--factory", help="original architecture as package.module:factory")
    pe.add_argument(
        "--factory-kwargs", metavar="K=V,...", help="arguments of the --factory function"
    )
    pe.add_argument("--data", help="dataset whose test samples check parity (default: random)")
    pe.add_argument("--sparse-form", choices=("dense", "gather"), default="dense")
    pe.set_defaults(func=cmd_export)

    pr = sub.add_parser("report", help="render report.md (+ PNG plots) of a result directory")
    pr.add_argument("result", help="result directory with report.json")
    pr.set_defaults(func=cmd_report)

    pp = sub.add_parser("data-prepare", help="convert bundled datasets to the cache (used by make)")
    pp.set_defaults(func=cmd_data_prepare)
    return p


# API terms in messages -> the flags a command-line user types
_CLI_TERMS: tuple[tuple[str, str], ...] = (
    (r"input_shape=\s*(?:to compactnn\.compress\s*)?\(e\.g\. \(([\d, ]+)\)\)", "--input-shape"),
    (r"The '(\w+)' parameter of Target", r"The \1 fraction of --target"),
    (r"The '(input_shape|max_drop|on_drop|val_fraction)' parameter of compress", "--\\1"),
    (r"\b(input_shape|max_drop|val_fraction)=", "--\\1 "),
    (r"The '(\w+)' parameter of get_(?:dataset|loaders)", r"--data-opt \1"),
    (r"The '(input_key|label_key)' parameter of compress", r"--\1"),
    (r"\b(input_key|label_key)=KEY", r"--\1 KEY"),
    (r"\bon_drop='(\w+)'", r"--on-drop \1"),
    (
        r"Pass the per-sample input shape the model expects, e\.g\. \(1, 28, 28\)",
        "Pass the per-sample input shape the model expects with --input-shape (e.g. 1,28,28)",
    ),
    (r"\btarget=\{'(\w+)': ([\d.]+)\}", r"--target \1=\2"),
    (
        r"\bdata=\((?:train_loader|train)[^)]*\)(?: or a dataset name(?: such as '\w+')?)?",
        "--data NAME",
    ),
    (
        r"The '(\w+)((?:\[[^\]]*\])?)' parameter of (?!compress\b)",
        r"The option '\1\2' (--opt \1=...) of ",
    ),
)


def cli_terms(message: str) -> str:
    """Rewrite an API error message in command-line terms (``input_shape=`` -> ``--input-shape``)."""
    import re

    for pattern, repl in _CLI_TERMS:
        if repl == "--input-shape":
            message = re.sub(
                pattern,
                lambda m: "--input-shape (e.g. --input-shape " + m.group(1).replace(" ", "") + ")",
                message,
            )
            continue
        message = re.sub(pattern, repl, message)
    # flags are spelt with dashes
    return re.sub(r"--(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)


def _field_docs(config: type) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``name -> (text, names sharing it)`` from the ``Attributes:`` sections of ``config``
    and its bases (an entry ``a, b: text`` describes ``a`` and ``b`` together)."""
    import inspect
    import re

    docs: dict[str, tuple[str, tuple[str, ...]]] = {}
    for klass in reversed(config.__mro__):
        doc = inspect.cleandoc(klass.__doc__ or "")
        lines = doc.splitlines()
        if "Attributes:" not in lines:
            continue
        entries: list[tuple[list[str], list[str]]] = []
        for line in lines[lines.index("Attributes:") + 1 :]:
            if line and not line.startswith(" "):
                break  # next section
            m = re.match(r"^ {4}([\w, ]+?)\s*(?:\([^)]*\))?:\s*(.*)$", line)
            if m and not line.startswith("     "):
                entries.append(([n.strip() for n in m.group(1).split(",")], [m.group(2)]))
            elif entries and line.strip():
                entries[-1][1].append(line.strip())
        for names, text in entries:
            for n in names:
                docs[n] = (" ".join(t for t in text if t).replace("``", ""), tuple(names))
    return docs


def method_help(name: str, width: int = 100) -> str:
    """The options of method ``name``: default and full meaning, from its config dataclass."""
    import dataclasses
    import textwrap

    from compactnn.methods import get_method

    cls = get_method(name)
    config = cls.Config
    docs = _field_docs(config)
    lines = [
        f"options of method '{name}' ({config.__name__}); pass them as --opt KEY=VALUE (values "
        "read as YAML) or under 'options:' in a --recipe:",
    ]
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        lines.append(f"  {f.name} = {default!r}")
        text, names = docs.get(f.name, (f"(not described; see {config.__name__})", (f.name,)))
        if len(names) > 1:
            others = ", ".join(n for n in names if n != f.name)
            text = f"(described together with {others}) {text}"
        lines += textwrap.wrap(
            text, width=width, initial_indent="      ", subsequent_indent="      "
        )
    return "\n".join(lines)


def _method_in(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(AttributeError, ValueError):  # a log file keeps the lines' order
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        if argv[:1] == ["compress"] and ({"-h", "--help"} & set(argv)) and _method_in(argv):
            text = method_help(_method_in(argv) or "")
            sub = next(
                a.choices["compress"]
                for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)
            )
            print(text)  # the method's own options first, then the command's
            print()
            print("options of 'compactnn compress' (every method):")
            print(sub.format_help())
            return 0
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CompactnnError as exc:
        if debug:
            raise
        print(f"compactnn: error: {cli_terms(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compactnn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(
            f"compactnn: internal error: {type(exc).__name__}: {first} (please report it; "
            "rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
