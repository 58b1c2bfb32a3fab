"""``compactnn compress``: the run in steps, and the shipping of its result.

:func:`cmd_compress` reads the request (recipe merged with the flags, all checked before any
work), loads the model and the data, compresses, and writes the outputs of ``--out DIR``
(:func:`_ship_result`: ONNX, TorchScript, compact checkpoint, report.json, report.md, plots);
:func:`summary_text` is the summary printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml
from torch import nn

from compactnn import _progress, distributed, export
from compactnn import data as data_mod
from compactnn.api import compress
from compactnn.budget import Target
from compactnn.cli.inputs import (
    DATASET_OPTS,
    _check_out,
    _json_values,
    _load_ckpt,
    _parse_data_opts,
    _parse_factory_kwargs,
    _parse_options,
    _parse_shape,
    _plain,
    _read_recipe,
)
from compactnn.cli.loading import (
    _build_data,
    _fresh_model,
    _load_user_model,
    _resolve_model,
    _samples,
)
from compactnn.errors import ConfigError, InputShapeError
from compactnn.export import speedup_protocol, speedups
from compactnn.methods import get_method
from compactnn.metrics import report
from compactnn.plots import layer_figures, plot_all


def cmd_compress(args: argparse.Namespace) -> int:
    """``compactnn compress``; ``--verbose`` sets COMPACTNN_VERBOSE for this command only.

    Under ``torchrun`` every rank runs it (DDP training, see :mod:`compactnn.distributed`) and
    rank 0 alone prints and writes the outputs."""
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
            dist.barrier()  # rank 0 may still be writing the outputs
            dist.destroy_process_group()


@dataclasses.dataclass
class _Request:
    """What ``compactnn compress`` was asked: the recipe merged with the flags, checked."""

    method: str
    dataset: str | None
    options: dict[str, Any]
    shape: tuple[int, ...] | None
    target: Any
    max_drop: Any
    data_opts: dict[str, Any]
    factory_kwargs: dict[str, Any]


def _compress_command(args: argparse.Namespace) -> int:
    """The steps: the request, the model, the data, the method, then print or write."""
    req = _read_request(args)
    show = not args.quiet and distributed.is_main()

    def stage(name: str, detail: str = "") -> Any:
        return _progress.stage(name, detail, enabled=show)

    with stage("load model", args.factory or args.model or ""):
        model = _compress_model(args, req.factory_kwargs)
    if args.ddp_check:
        os.environ["COMPACTNN_DDP_CHECK"] = "1"
    if (args.input_key or args.label_key) and not req.dataset:
        raise ConfigError("--input-key / --label-key select from dict batches of --data.")
    t0 = time.perf_counter()
    data, fed = req.dataset, None
    if req.dataset:  # built here so that the exported model is checked on the same real samples
        with stage("data", req.dataset):
            data, fed = _build_data(
                req.dataset,
                req.data_opts,
                shape=req.shape,
                val_fraction=args.val_fraction,
                seed=args.seed,
                input_key=args.input_key,
                label_key=args.label_key,
            )
    seconds = {"data": time.perf_counter() - t0}
    t0 = time.perf_counter()
    result, caught = _run_method(args, req, model, data, stage)
    seconds["compress"] = time.perf_counter() - t0
    if not distributed.is_main():
        return 0  # rank 0 prints and writes
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not args.out:
        print(result.summary())
    else:
        _write_outputs(args, req, result, model, data, stage, fed=fed, notes=notes, seconds=seconds)
    return 0


def _read_request(args: argparse.Namespace) -> _Request:
    """The recipe merged with the flags (the flags win), checked; ``args.input_key``,
    ``args.label_key`` and ``args.seed`` are set to the merged values."""
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
    return _Request(method, dataset, options, shape, target, max_drop, data_opts, factory_kwargs)


def _run_method(
    args: argparse.Namespace, req: _Request, model: Any, data: Any, stage: Any
) -> tuple[Any, list[warnings.WarningMessage]]:
    """:func:`compactnn.compress` of ``model`` as requested -> (result, the warnings it gave)."""
    what = f"method {req.method}" + (f", target {req.target}" if req.target is not None else "")
    with (
        warnings.catch_warnings(record=True) as caught,
        stage("compress", what),
        _data_hint(model, req.dataset, req.data_opts, req.shape),
    ):
        warnings.simplefilter("always")
        result = compress(
            model,
            req.method,
            data,
            target=req.target,
            max_drop=req.max_drop,
            on_drop=args.on_drop,
            val_fraction=args.val_fraction,
            seed=args.seed,
            input_shape=req.shape,
            progress=not args.quiet,
            latency_batch_size=args.batch_size,
            latency_threads=args.threads,
            resume_dir=args.resume,
            **req.options,
        )
    return result, caught


def _write_outputs(
    args: argparse.Namespace,
    req: _Request,
    result: Any,
    model: Any,
    data: Any,
    stage: Any,
    *,
    fed: dict[str, Any] | None,
    notes: list[str],
    seconds: dict[str, float],
) -> None:
    """``--out DIR``: recipe.yaml, the shipped model, report.json and report.md (with what
    was fed, the run's warnings and seconds), then the summary."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    replay = {"method": req.method, "data": req.dataset, "options": _plain(result.chosen)}
    extra = {"data_opts": req.data_opts, "input_key": args.input_key, "label_key": args.label_key}
    replay.update(_plain({k: v for k, v in extra.items() if v}))
    (out / "recipe.yaml").write_text(yaml.safe_dump(replay, sort_keys=False))
    rep = {
        "method": req.method,
        "data": req.dataset,
        "data_fed": fed,
        "config": _resolved_config(
            args, req.method, req.dataset, req.data_opts, req.options, req.target
        ),
        "options": req.options,
        "chosen": _plain(result.chosen),
        "target": result.target,
        "validation": result.validation,
        "before": result.report_before.to_dict() if result.report_before else None,
        "after": result.report_after.to_dict() if result.report_after else None,
        "model_spec": {
            "model": args.model,
            "factory": args.factory,
            "factory_kwargs": req.factory_kwargs,
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


def _check_data_spec(spec: str | None, opts: dict[str, Any]) -> None:
    """--data / --data-opt checked before anything is loaded (registry datasets)."""
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


def _data_fix(model: Any, dataset: str, opts: dict[str, Any], shape: Any) -> str | None:
    """``--data-opt`` values that make registry dataset ``dataset`` feed what ``model``'s first
    layer takes (``channels=3,pad_to=32`` for a 3x32x32 model on 1x28x28 MNIST), or None."""
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


def _ship_result(
    args: argparse.Namespace, out: Path, result: Any, original: Any, data: Any, rep: dict[str, Any]
) -> None:
    """Write the artifacts (ONNX, TorchScript, compact checkpoint), report.json and report.md."""
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
            _progress.flush()
            print(f"warning: {w.message}", file=sys.stderr)
            rep["warnings"].append(str(w.message))
    deploy["densified"] = densified
    deploy["check_samples_from"] = source
    rep["deploy"] = deploy
    _one_latency_per_runtime(rep, int(args.batch_size))
    rep["input_shape"] = list(shape)
    rep["seconds"]["export + latency"] = time.perf_counter() - t0
    rep["environment"] = export.environment(seed=getattr(args, "seed", 0))
    rep["figures"] = layer_figures(model, original)
    rep["plots"] = plot_all(rep, out)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    (out / "report.md").write_text(export.render_report(rep))
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


def _one_latency_per_runtime(rep: dict[str, Any], batch_size: int) -> None:
    """One measurement per runtime in report.json: the speed-ups of ``ship`` (original and
    compressed timed in the same runtime on the same real batch), and the before / after
    eager latency of the reports replaced by ``ship``'s eager timings at ``batch_size`` (the
    reports' own timing, made earlier in another state of the machine, is dropped)."""
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
    width = max(12, *(len(rt) for rt in ups))
    for rt, v in ups.items():
        lines.append(
            f"  {rt:<{width}} {v['original_ms']:>10.3f} ms -> {v['compressed_ms']:>10.3f} ms   "
            f"{v['speedup']:.2f}x"
        )
    return "\n".join(lines)
