""":func:`compress` itself: the up-front checks, the budget search, the method's run (resumable),
the before / after reports and the guard against a silently destroyed model (accuracy drop,
collapsed layers)."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from compactnn import distributed, resume
from compactnn._preflight import check_data, check_model_finite
from compactnn._validation import check_choice, check_float, check_int
from compactnn.api.fingerprint import _fingerprint
from compactnn.api.inputs import _global_rng_preserved, as_compression_data
from compactnn.budget import Target, latency_ratio
from compactnn.budget import measure as measure_size
from compactnn.errors import AccuracyDropError, ConfigError
from compactnn.methods import CompressionData, CompressionResult, get_method
from compactnn.metrics import LatencyModel, LatencyTable, accuracy, report
from compactnn.resume import RunStore
from compactnn.structure import module_device

#: accuracy points on validation a run may lose before :func:`compress` refuses its result
DEFAULT_MAX_DROP = 5.0


def _collapsed(original: nn.Module, new: nn.Module, classifier: str | None) -> dict[str, int]:
    """Conv/Linear layers with more than one unit before and at most one after."""
    old = {
        n: m.weight.shape[0]
        for n, m in original.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n != classifier
    }
    out = {}
    for n, m in new.named_modules():
        if n in old and isinstance(m, (nn.Conv2d, nn.Linear)):
            if old[n] > 1 and m.weight.shape[0] <= 1:
                out[n] = int(m.weight.shape[0])
    return out


def _guard(
    result: CompressionResult,
    model: nn.Module,
    cd: CompressionData,
    *,
    max_drop: float,
    on_drop: str,
    val_before: float | None,
) -> None:
    """No silent destruction: validation drop and collapsed layers raise (or warn)."""
    problems = []
    if val_before is not None and cd.val is not None:
        after = accuracy(result.model, cd.val, topk=(1,))
        result.validation = {
            "before": val_before,
            "after": after["top1"],
            "drop": val_before - after["top1"],
            "n": after["n"],
        }
        if result.validation["drop"] > max_drop:
            problems.append(
                f"validation top-1 fell from {val_before:.2f} % to {after['top1']:.2f} % "
                f"({result.validation['drop']:.2f} points > max_drop={max_drop:g})"
            )
    collapsed = _collapsed(model, result.model, result.history.get("classifier"))
    if collapsed:
        problems.append(
            "layer(s) collapsed to <= 1 unit: "
            + ", ".join(f"'{n}' ({u})" for n, u in collapsed.items())
        )
    if not problems:
        return
    advice = (
        "pass a budget (target={'macs': 0.1}) so the strength is chosen on validation, lower "
        "the method's strength (lam / mu / ratio), or fine-tune longer (finetune_epochs)"
        if result.target is None
        else "relax the target or fine-tune longer (finetune_epochs)"
    )
    msg = (
        f"{result.method}: " + "; ".join(problems) + f". To fix: {advice}; "
        "on_drop='warn' returns such a result with a warning."
    )
    if on_drop == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return
    raise AccuracyDropError(msg, result=result)


def _configured(method: str, seed: int, options: dict[str, Any]) -> Any:
    """The registered ``method`` built with ``options`` (and ``seed``, if it has that option)."""
    cls = get_method(method)
    if "seed" in {f.name for f in dataclasses.fields(cls.Config)}:
        options["seed"] = seed  # one seed for the split, the loaders and the method
    return cls(**options)


def _check_real_samples(model: nn.Module, cd: CompressionData) -> None:
    """Run ``model`` on a first real batch (:func:`~compactnn._preflight.check_data`), which
    the surgery self-check then also uses (``cd.check_batch``, unless one is set)."""
    with _global_rng_preserved():  # reading a first batch may draw a loader seed
        real = check_data(model, cd)
    if cd.check_batch is None:
        cd.check_batch = real  # the surgery self-check also runs on these real samples


def compress(
    model: nn.Module,
    method: str,
    data: Any = None,
    *,
    target: Any = None,
    max_drop: float | None = None,
    on_drop: str = "raise",
    val_fraction: float = 0.1,
    seed: int = 0,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
    measure: bool = True,
    latency_batch_size: int = 100,
    latency_threads: int = 1,
    progress: bool = True,
    resume_dir: Any = None,
    input_key: str | None = None,
    label_key: str | None = None,
    **options: Any,
) -> CompressionResult:
    """Compress a trained model with a registered method, optionally to a budget.

    Args:
        model: a trained ``nn.Module`` (never modified unless ``inplace=True``).
        method: registry name (``compactnn.methods.list_methods()``), e.g. ``"ssr"``, ``"ddlr"``.
        data: dataset name, ``(train_loader, test_loader)``, ``(train, val, test)``, a
            ``DataLoader`` or :class:`~compactnn.methods.CompressionData`.
        target: a budget, :class:`~compactnn.budget.Target` or mapping such as
            ``{"macs": 0.1}`` (fractions of the original kept: params, macs, latency). The
            method's strength (λ, μ, ratio, rank ...) is then chosen by a search on the
            training/validation data; the result records the choice in ``result.chosen``.
        max_drop: accuracy points the model may lose on the validation split (default
            ``DEFAULT_MAX_DROP`` = 5). Exceeding it, or a layer collapsing to <= 1 unit, raises
            :class:`~compactnn.errors.AccuracyDropError` (which carries the result).
        on_drop: ``"raise"`` (default) or ``"warn"``.
        val_fraction: share of the training data held out for validation (seeded by ``seed``)
            when no validation loader is given; 0 disables the split and the drop guard.
        seed: seed of the validation split, of the loaders built for a dataset name and of
            the method (its ``seed`` option, when it has one).
        inplace: let the method train/modify ``model`` itself instead of a deep copy.
        input_shape: per-sample input shape (inferred from the data when omitted).
        measure: measure before/after reports (params, FLOPs, latency, accuracy on ``test``).
        latency_batch_size: batch size of the latency measurement (SSR Table I uses 100).
        latency_threads: torch threads during the latency measurement.
        progress: tqdm progress bars (rank 0 only under torch.distributed).
        resume_dir: a run directory: every stage is checkpointed there atomically (each mu,
            each SSR layer / lambda stage, every training and fine-tuning epoch, the budget
            search's choice) and a rerun with the same arguments continues after the last
            finished stage, ending with the same model as an uninterrupted run. A directory
            written by a run with other options, model, data or world size is refused
            (:mod:`compactnn.resume`).
        input_key / label_key: for dict batches, the keys of the model's input and of the
            labels (see :func:`as_compression_data`).
        **options: the method's hyper-parameters (see ``get_method(method).Config``).

    Returns:
        CompressionResult with the smaller model, its plan, history, both reports, the
        resolved options (``chosen``), the budget record (``target``) and ``validation``.

    Inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``) every
    rank calls ``compress`` with the same arguments; training is data-parallel (DDP, global
    batch = the loader's batch x world size), every other decision is made identically on each
    rank, and every rank returns the same result (:mod:`compactnn.distributed`).

    Raises:
        ConfigError: a bad option or target (before any expensive work).
        AccuracyDropError: the result lost more than ``max_drop`` points on validation or a
            layer collapsed (``on_drop="raise"``).
    """
    algo = _configured(method, seed, options)
    tgt = None if target is None else Target.parse(target)
    max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    check_float(max_drop, "max_drop", "compress", min_value=0.0)
    check_choice(on_drop, "on_drop", "compress", ("raise", "warn"))
    check_int(seed, "seed", "compress", min_value=0)
    check_model_finite(model)
    cd = as_compression_data(
        data,
        input_shape=input_shape,
        seed=seed,
        val_fraction=val_fraction,
        input_key=input_key,
        label_key=label_key,
    )
    shape = cd.require_input_shape(method)
    _check_real_samples(model, cd)
    store = None
    if resume_dir is not None:
        store = RunStore(resume_dir, _fingerprint(model, algo, cd, tgt, seed, val_fraction))
    progress = progress and distributed.is_main()
    with _global_rng_preserved():
        return _compress(
            model, algo, cd, shape, tgt, max_drop, on_drop, inplace, measure,
            latency_batch_size, latency_threads, progress, store,
        )  # fmt: skip


def _latency_check(
    original: nn.Module,
    model: nn.Module,
    shape: Sequence[int],
    *,
    batch_size: int,
    threads: int,
    fitted: Any = None,
) -> dict[str, Any]:
    """The returned model's latency timed interleaved with the original's, and what the
    measured latency model (per-layer timings of this machine, eager NCHW, cached) predicts for
    its widths (None where a layer was replaced rather than cut): with the calibration the
    method fitted (``fitted``: its ``latency_model`` record), the predicted milliseconds scaled
    to the original's median of this run; else calibrated on that median alone."""
    got = latency_ratio(original, model, shape, batch_size=batch_size, threads=threads)
    ms0 = got.original_ms
    out: dict[str, Any] = {"runtime": "eager", "batch_size": batch_size, "threads": threads,
                           "original_ms": ms0, "measured_ms": got.model_ms,
                           "measured_fraction": got.ratio, "measured_fraction_p10": got.quiet,
                           "predicted_ms": None, "predicted_fraction": None}  # fmt: skip
    if module_device(original).type != "cpu":  # the table times layers on the CPU
        return out
    try:
        lm = LatencyModel(original, shape, LatencyTable(batch_size=batch_size, threads=threads))
    except ConfigError:  # no Conv2d / Linear layer to model
        return out
    if isinstance(fitted, dict) and "scale" in fitted and "residual_ms" in fitted:
        lm.residual, lm.scale = float(fitted["residual_ms"]), float(fitted["scale"])
        out["calibration"] = "the method's (the original and two cut models timed whole)"
    else:
        lm.calibrate(ms0)
        out["calibration"] = "the original's median of this run"
    widths = lm.widths_of(model)
    if widths is not None:
        frac = lm.fraction(widths)
        out.update(predicted_ms=frac * ms0, predicted_fraction=frac)
    out["table"] = lm.info()
    return out


def _compress(
    model: nn.Module,
    algo: Any,
    cd: CompressionData,
    shape: tuple[int, ...],
    tgt: Target | None,
    max_drop: float,
    on_drop: str,
    inplace: bool,
    measure: bool,
    latency_batch_size: int,
    latency_threads: int,
    progress: bool,
    store: Any = None,
) -> CompressionResult:
    lat = {"batch_size": latency_batch_size, "threads": latency_threads}
    before = report(model, shape, data=cd.test, **lat) if measure else None
    val_before = accuracy(model, cd.val, topk=(1,))["top1"] if cd.val is not None else None
    work = model if inplace else copy.deepcopy(model)
    record = None
    if tgt is not None:
        saved = store.load("budget search") if store is not None else None
        if saved is not None:  # the search's choice, as the interrupted run made it
            algo, record = type(algo)(**saved[1]["options"]), saved[1]["record"]
        else:
            with resume.suspended():  # the search's trial runs are not checkpointed
                algo, record = algo.calibrate(work, cd, tgt, progress=progress)
            if store is not None:
                store.save("budget search", {}, {"options": algo.options(), "record": record})
        distributed.check_values(algo.options(), "budget search (chosen options)")
    with resume.activate(store):
        result = algo.run(work, cd, progress=progress)
    distributed.check_synced(result.model.state_dict(), f"{result.method}: returned model")
    result.chosen = algo.options()
    if tgt is not None:
        exact = [k for k in tgt.keys if k != "latency"]
        kept = measure_size(result.model, shape, exact).fractions(measure_size(model, shape, exact))
        record = dict(record or {})
        if "latency" in tgt.keys:  # timed interleaved with the original, beside the prediction
            fitted = record.get("latency_model") or result.history.get("engine_info", {}).get(
                "latency_model"
            )
            record["latency_prediction"] = _latency_check(
                model, result.model, shape, **lat, fitted=fitted
            )
            kept["latency"] = record["latency_prediction"]["measured_fraction"]
        kept = {k: kept[k] for k in tgt.keys}
        record.update(kept=kept, met=tgt.met(kept))
        result.target = record
        if not record["met"]:
            warnings.warn(
                f"{result.method}: the returned model keeps {kept} of the original, outside "
                f"the target {tgt.as_dict()} (tolerance {tgt.tolerance:g}).",
                RuntimeWarning,
                stacklevel=3,
            )
    if measure:
        result.report_before = before
        result.report_after = report(result.model, shape, data=cd.test, **lat)
    _guard(result, model, cd, max_drop=max_drop, on_drop=on_drop, val_before=val_before)
    return result
