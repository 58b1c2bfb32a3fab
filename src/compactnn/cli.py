"""The ``compactnn`` command line.

compactnn inspect lenet-caffe                 # per-layer table + totals of a reference model
compactnn inspect ckpt.safetensors            # ... or of a saved checkpoint
compactnn train lenet-caffe --dataset mnist --epochs 5 --out lenet.safetensors
compactnn demo                                # train (or load cached) LeNet on MNIST, report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactnn.errors import CompactnnError

__all__ = ["main", "build_parser", "cache_dir"]


def cache_dir() -> Path:
    """``$COMPACTNN_CACHE`` or ``~/.cache/compactnn``."""
    return Path(os.environ.get("COMPACTNN_CACHE", Path.home() / ".cache" / "compactnn"))


def _input_shape_for(model_name: str, dataset: str | None) -> tuple[int, ...]:
    from compactnn.models import default_input_shape

    return tuple(default_input_shape(model_name))


def _resolve_model(spec: str) -> tuple[Any, dict[str, Any], tuple[int, ...]]:
    """A reference model name or a checkpoint path -> (model, meta, input shape)."""
    from compactnn import models
    from compactnn.train import load_checkpoint

    path = Path(spec)
    if path.suffix in (".safetensors", ".pt", ".pth") or path.is_file():
        model, meta = load_checkpoint(path)
        shape = tuple(meta.get("input_shape") or models.default_input_shape(meta["model"]))
        return model, meta, shape
    model = models.create(spec)
    return model, {"model": spec}, tuple(models.default_input_shape(spec))


def cmd_inspect(args: argparse.Namespace) -> int:
    from compactnn.metrics import report

    model, meta, shape = _resolve_model(args.model)
    if args.input_shape:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    rep = report(
        model, shape, latency=not args.no_latency, batch_size=args.batch_size, threads=args.threads
    )
    print(rep.format(title=f"{meta.get('model', args.model)} input {shape}"))
    return 0


def _train_model(
    model_name: str,
    dataset: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: str = "sgd",
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    **data_kwargs: Any,
) -> tuple[Any, Any, Any, Any]:
    from compactnn import data, models
    from compactnn.train import TrainConfig, train

    info = data.dataset_info(dataset)
    in_shape = models.default_input_shape(model_name)
    model = models.create(
        model_name,
        in_channels=in_shape[0] if len(in_shape) == 3 else None,
        num_classes=info.num_classes,
        seed=seed,
    )
    train_loader, test_loader = data.get_loaders(
        dataset, batch_size=batch_size, seed=seed, **data_kwargs
    )
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        seed=seed,
        optimizer=optimizer,
        weight_decay=5e-4 if optimizer == "sgd" else 0.0,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    hist = train(model, train_loader, config=cfg, progress=progress, desc=f"train {model_name}")
    return model, hist, train_loader, test_loader


def cmd_train(args: argparse.Namespace) -> int:
    from compactnn.metrics import report
    from compactnn.train import save_checkpoint

    model, hist, _, test_loader = _train_model(
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


def demo_baseline(*, seed: int = 0, progress: bool = True, retrain: bool = False) -> Any:
    """Train LeNet (Caffe 20-50-500-10) on MNIST once and cache it; return (model, test loader)."""
    from compactnn import data, models
    from compactnn.train import load_checkpoint, save_checkpoint

    ckpt = cache_dir() / "checkpoints" / f"lenet-caffe-mnist-seed{seed}.safetensors"
    if ckpt.is_file() and not retrain:
        model, _ = load_checkpoint(ckpt, models.create("lenet-caffe"))
        _, test_loader = data.get_loaders("mnist", batch_size=64, seed=seed)
        print(f"loaded cached baseline {ckpt}")
        return model, test_loader, ckpt
    model, _, _, test_loader = _train_model(
        "lenet-caffe",
        "mnist",
        epochs=DEMO_EPOCHS,
        lr=0.01,
        batch_size=64,
        seed=seed,
        progress=progress,
    )
    save_checkpoint(
        model,
        ckpt,
        model="lenet-caffe",
        dataset="mnist",
        input_shape=[1, 28, 28],
        seed=seed,
        epochs=DEMO_EPOCHS,
    )
    print(f"trained baseline, cached at {ckpt}")
    return model, test_loader, ckpt


DEMO_EPOCHS = 8


# SSR-L2,1 settings of the demo and of benchmarks/bench_ssr_lenet.py's "<= 11K params" row (CPU
# scale of SSR Table I). lambda per layer chosen from the points in
# benchmarks/results/ssr_lenet_points.jsonl (1 training thread); 30 fine-tuning epochs as in the
# paper (sec. IV-A), at lr 0.01 with a cosine schedule, distilling from the unpruned LeNet.
DEMO_SSR: dict[str, Any] = {
    "penalty": "l21",
    "lam": [0.14, 0.043, 0.05],
    # K-step: 100 SGD steps at lr 0.01 instead of the paper's epochs at 1e-3 (CPU budget)
    "lr": 0.01,
    "max_outer": 10,
    "w_steps": 100,
    "train_all": True,
    "finetune_epochs": 30,
    "finetune_lr": 0.01,
    "finetune_distill": 0.5,
}
# Which filters cross the threshold depends on float summation order, hence on the torch thread
# count: the demo compresses on one thread so that it prunes exactly as the benchmark row does.
DEMO_TRAIN_THREADS = 1


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from compactnn import data
    from compactnn.api import compress
    from compactnn.methods import CompressionData

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, test_loader, _ = demo_baseline(seed=args.seed, retrain=args.retrain)
    if args.no_compress:
        from compactnn.metrics import report

        rep = report(model, (1, 28, 28), data=test_loader, batch_size=100, threads=1, repeats=30)
        print(rep.format(title="lenet-caffe on MNIST (baseline)"))
        return 0
    train_loader, _ = data.get_loaders("mnist", batch_size=64, seed=args.seed)
    cd = CompressionData(
        train=train_loader, test=test_loader, input_shape=(1, 28, 28), name="mnist"
    )
    print(
        "compressing with SSR-L2,1 (AULM, layer by layer), then "
        f"{DEMO_SSR['finetune_epochs']} epochs of fine-tuning, on {DEMO_TRAIN_THREADS} torch "
        "thread(s) (as benchmarks/bench_ssr_lenet.py) ..."
    )
    torch.set_num_threads(DEMO_TRAIN_THREADS)
    result = compress(model, "ssr", cd, latency_batch_size=100, latency_threads=1, **DEMO_SSR)
    print(result.report_after.format(title="lenet-caffe after SSR-L2,1 (physically pruned)"))
    print()
    print("latency: median of 50 runs, batch 100, 1 thread (SSR Table I protocol)")
    print(result.summary())
    return 0


def _parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars/lists (``lam=[0.1,0.2]``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CompactnnError(f"Option '{pair}' must look like key=value (e.g. lam=0.5).")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def _load_user_model(factory: str, checkpoint: str | None) -> Any:
    """``package.module:factory`` (+ checkpoint) -> model."""
    import importlib

    from compactnn.train import load_checkpoint

    if ":" not in factory:
        raise CompactnnError(
            f"--factory '{factory}' must look like package.module:function (a callable that "
            "returns the nn.Module)."
        )
    mod_name, fn_name = factory.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise CompactnnError(f"Cannot import --factory '{factory}': {exc}") from exc
    model = fn()
    if checkpoint:
        model, _ = load_checkpoint(checkpoint, model)
    return model


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


def cmd_compress(args: argparse.Namespace) -> int:
    import yaml

    from compactnn.api import compress
    from compactnn.train import load_checkpoint

    recipe: dict[str, Any] = {}
    if args.recipe:
        with open(args.recipe, encoding="utf-8") as fh:
            recipe = yaml.safe_load(fh) or {}
        if not isinstance(recipe, dict):
            raise CompactnnError(f"Recipe '{args.recipe}' must be a YAML mapping.")
    method = args.method or recipe.get("method")
    dataset = args.data or recipe.get("data")
    if not method:
        raise CompactnnError("Choose a method: --method NAME or 'method:' in the recipe.")
    options = dict(recipe.get("options") or {})
    options.update(_parse_options(args.opt))
    if args.factory:
        model = _load_user_model(args.factory, args.checkpoint)
    else:
        if not args.model:
            raise CompactnnError("Give a reference model name, a checkpoint, or --factory.")
        model, _, _ = _resolve_model(args.model)
        if args.checkpoint:
            model, _ = load_checkpoint(args.checkpoint, model)
    shape = tuple(int(s) for s in args.input_shape.split(",")) if args.input_shape else None
    target = args.target if args.target is not None else recipe.get("target")
    max_drop = args.max_drop if args.max_drop is not None else recipe.get("max_drop")
    if args.verbose:
        os.environ["COMPACTNN_VERBOSE"] = "1"
    data = dataset
    if dataset:  # built here so that the exported model is checked on the same real samples
        from compactnn.api import as_compression_data

        data = as_compression_data(dataset, input_shape=shape, val_fraction=args.val_fraction)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compress(
            model,
            method,
            data,
            target=target,
            max_drop=max_drop,
            on_drop=args.on_drop,
            val_fraction=args.val_fraction,
            input_shape=shape,
            progress=not args.quiet,
            latency_batch_size=args.batch_size,
            **options,
        )
    seconds = {"compress": time.perf_counter() - t0}
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(result.summary())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        replay = {"method": method, "data": dataset, "options": _plain(result.chosen)}
        (out / "recipe.yaml").write_text(yaml.safe_dump(replay, sort_keys=False))
        rep = {
            "method": method,
            "data": dataset,
            "options": options,
            "chosen": _plain(result.chosen),
            "target": result.target,
            "validation": result.validation,
            "before": result.report_before.to_dict() if result.report_before else None,
            "after": result.report_after.to_dict() if result.report_after else None,
            "model_spec": {"model": args.model, "factory": args.factory},
            "warnings": notes,
            "seconds": seconds,
        }
        _ship_result(args, out, result, model, data, rep)
        print(
            f"wrote {out}: model.onnx, model.pt, model.safetensors + plan.json (compactnn.load), "
            "report.json, report.md, recipe.yaml (replays this run without search: --recipe)"
        )
    return 0


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
        return _load_user_model(spec["factory"], None)
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
        if densified:  # measure what is now shipped
            test = getattr(data, "test", None)
            rep["after"] = report(model, shape, data=test, batch_size=args.batch_size).to_dict()
    t0 = time.perf_counter()
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
    )
    deploy["densified"] = densified
    deploy["check_samples_from"] = source
    rep["deploy"] = deploy
    rep["input_shape"] = list(shape)
    rep["seconds"]["export + latency"] = time.perf_counter() - t0
    rep["environment"] = export.environment(seed=0)
    rep["plots"] = export.plot_layers(rep, out)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    (out / "report.md").write_text(export.render_report(rep))
    fast = deploy["latency"]
    print(
        "deployed: "
        + "; ".join(
            f"{bs}: "
            + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row.items() if k != "fastest")
            + f" (fastest: {row['fastest']})"
            for bs, row in fast.items()
        )
    )
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


def cmd_export(args: argparse.Namespace) -> int:
    from compactnn import export

    out = Path(args.result)
    rep_path = out / "report.json"
    rep = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
    spec = dict(rep.get("model_spec") or {})
    if args.model or args.factory:
        spec = {"model": args.model, "factory": args.factory}
    model = export.load(out, model=_fresh_model(spec))
    shape = tuple(rep.get("input_shape") or ())
    if not shape:
        doc = json.loads((out / "plan.json").read_text())
        shape = tuple(doc["checkpoint"].get("input_shape") or ())
    data = None
    name = args.data or rep.get("data")
    if name:
        from compactnn.api import as_compression_data

        data = as_compression_data(name, input_shape=shape, val_fraction=0.0)
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
    rep = json.loads(path.read_text())
    rep["plots"] = export.plot_layers(rep, out)
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
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("inspect", help="per-layer table and totals of a model or checkpoint")
    pi.add_argument(
        "model", help="reference model name (see `compactnn inspect --list`) or checkpoint path"
    )
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
    pd.set_defaults(func=cmd_demo)

    pc = sub.add_parser("compress", help="compress a model with a registered method")
    pc.add_argument("model", nargs="?", help="reference model name or checkpoint path")
    pc.add_argument("--method", help="method name, e.g. ssr, admm-sparse, ddlr, net-trim")
    pc.add_argument("--data", help="dataset name (mnist, fashion-mnist, digits, spiral, cifar10)")
    pc.add_argument("--factory", help="user model as package.module:factory")
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
        "--quiet", action="store_true", help="no progress output (the final summary stays)"
    )
    pc.add_argument("--verbose", action="store_true", help="one log line per training step")
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
    pc.set_defaults(func=cmd_compress)

    pe = sub.add_parser(
        "export", help="write model.onnx / model.pt of an earlier result directory (--out DIR)"
    )
    pe.add_argument("result", help="result directory (model.safetensors + plan.json)")
    pe.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    pe.add_argument("--model", help="reference model name of the original architecture")
    pe.add_argument("--factory", help="original architecture as package.module:factory")
    pe.add_argument("--data", help="dataset whose test samples check parity (default: random)")
    pe.add_argument("--sparse-form", choices=("dense", "gather"), default="dense")
    pe.set_defaults(func=cmd_export)

    pr = sub.add_parser("report", help="render report.md (+ PNG plots) of a result directory")
    pr.add_argument("result", help="result directory with report.json")
    pr.set_defaults(func=cmd_report)

    pp = sub.add_parser("data-prepare", help="convert bundled datasets to the cache (used by make)")
    pp.set_defaults(func=cmd_data_prepare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CompactnnError as exc:
        print(f"compactnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
