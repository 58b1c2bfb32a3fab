"""The sub-commands other than compress: inspect, train, demo, export, report, data-prepare.

:data:`COMMANDS` maps each sub-command's name to its function (``compress`` included), which
:func:`compactnn.cli.main` calls with the parsed arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from compactnn import _progress, export
from compactnn import data as data_mod
from compactnn.api import as_compression_data, compress, describe_data
from compactnn.cli.compress import _ship_result, cmd_compress, summary_text
from compactnn.cli.inputs import (
    _json_values,
    _load_ckpt,
    _parse_factory_kwargs,
    _parse_shape,
    _plain,
)
from compactnn.cli.loading import (
    _build_data,
    _fresh_model,
    _input_shape_for,
    _load_user_model,
    _resolve_model,
    _samples,
)
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
from compactnn.methods import CompressionData
from compactnn.metrics import report
from compactnn.plots import plot_all
from compactnn.train import save_checkpoint


def _inspect_target(args: argparse.Namespace) -> tuple[Any, str, tuple[int, ...] | None]:
    """The model ``compactnn inspect`` describes: (model, title, input shape or None)."""
    factory_kwargs = _parse_factory_kwargs(args.factory_kwargs)
    if factory_kwargs and not args.factory:
        raise ConfigError("--factory-kwargs needs --factory module:function.")
    spec = args.model
    if spec and Path(spec).is_dir():  # a result directory: model.safetensors + plan.json
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
    _progress.restart_clock()
    given = os.environ.get("COMPACTNN_PROGRESS_INTERVAL")
    os.environ["COMPACTNN_PROGRESS_INTERVAL"] = given or "30"  # a short log: one line per 30 s
    try:
        return _demo(args)
    finally:
        if given is None:
            os.environ.pop("COMPACTNN_PROGRESS_INTERVAL", None)


def _demo(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, test_loader, _ = demo_baseline(seed=args.seed, retrain=args.retrain)
    if args.no_compress:
        rep = report(model, (1, 28, 28), data=test_loader, batch_size=100, threads=1, repeats=30)
        print(rep.format(title="lenet-caffe on MNIST (baseline)"))
        return 0
    method, options = DEMO_METHOD, dict(DEMO_OPTIONS[DEMO_METHOD])
    train_loader, _ = data_mod.get_loaders("mnist", batch_size=64, seed=args.seed)
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
    rep = {
        "method": method,
        "data": "mnist",
        "data_fed": describe_data(
            cd,
            dataset="mnist",
            kind="registry dataset (compactnn.data)",
            normalisation=data_mod.normalisation("mnist"),
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


def cmd_export(args: argparse.Namespace) -> int:
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
    out = Path(args.result)
    path = out / "report.json"
    if not path.is_file():
        raise CompactnnError(
            f"{path} does not exist; give a directory written by compactnn compress --out DIR."
        )
    rep = json.loads(path.read_text())
    rep["plots"] = plot_all(rep, out)
    (out / "report.md").write_text(export.render_report(rep))
    print(f"wrote {out / 'report.md'} ({', '.join(rep['plots']) or 'no plots'})")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Convert the bundled MNIST pickle to the cached .npz once (fast afterwards)."""
    x, y = data_mod.load_arrays("mnist", "train")
    xt, yt = data_mod.load_arrays("mnist", "test")
    print(f"mnist ready: train {tuple(x.shape)}, test {tuple(xt.shape)}")
    try:
        xf, _ = data_mod.load_arrays("fashion-mnist", "test")
        print(f"fashion-mnist ready: test {tuple(xf.shape)}")
    except CompactnnError as exc:
        print(f"fashion-mnist not available: {exc}")
    return 0


#: sub-command -> its function, called by :func:`compactnn.cli.main` with the parsed arguments
COMMANDS = {
    "inspect": cmd_inspect,
    "train": cmd_train,
    "demo": cmd_demo,
    "compress": cmd_compress,
    "export": cmd_export,
    "report": cmd_report,
    "data-prepare": cmd_data_prepare,
}
