"""Exact physical surgery: apply a :class:`~compactnn.plan.CompressionPlan` to a model.

:func:`apply` deep-copies the model (unless ``inplace=True``), applies the plan's actions in
order and returns the physically smaller model. Channel actions remove channels with all their
couplings (BN, residual adds, concat, flatten -> linear, grouped/depthwise convs) using
Torch-Pruning's dependency graph to find the coupling group and compactnn's own exact cut
functions to execute it; group-inconsistent cuts of grouped convs are refused. After every
channel action each Conv2d/Linear/BN is checked for consistency (``in_channels % groups == 0``,
``out_channels % groups == 0``, BN sizes) and the model must run on the example input; any
failure is a :class:`~compactnn.errors.PlanError` naming the layer.

Trust: the index mapping of every cut is measured (a NaN probe through the real forward pass,
:mod:`compactnn.surgery._check`), channel-mixing constructs are refused naming the construct,
GroupNorm loses whole groups only, LocalResponseNorm keeps zero holes, and every cut is
verified (``verify=True``, :mod:`compactnn.surgery._verify`): a float64 copy of the model
before the cut, with the removed output channels zeroed at their source (forward hooks on the
producers, their norms and depthwise convs), must equal a float64 copy of the cut model on the
check batch (the user's ``check_inputs``, else the example batch) to ``1e-6 max(1, max |y|)``;
anything that cannot be verified is refused, naming the layer or op.

Equivalence: removing channels that are *dead* in the original (weights, bias and following BN
affine parameters zero) leaves the output unchanged; the conformance suite checks
``max |delta| <= 1e-5`` over a zoo of graphs.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.plan import (
    CompressionPlan,
    FoldBatchNorm,
    GapHead,
    KeepInputs,
    KeepOutputs,
    KernelSparse,
    LowRank,
    SetState,
    SetWeights,
    SparseLowRank,
)
from compactnn.surgery import _channels
from compactnn.surgery._channels import SelectInputs, keep_channels
from compactnn.surgery._coupling import coupling
from compactnn.surgery._fold import apply_fold, fold_batchnorm, foldable_before_relu
from compactnn.surgery._replace import (
    apply_gap_head,
    apply_kernel_sparse,
    apply_lowrank,
    apply_set_weights,
    apply_sparse_lowrank,
    sparse_lowrank_layer,
)
from compactnn.surgery._state import apply_set_state
from compactnn.surgery._util import (
    check_finite_output,
    check_output,
    example_inputs_for,
    output_shapes,
    run_model,
    verify_model,
    with_user_batch,
)
from compactnn.surgery._verify import TOLERANCE as VERIFY_TOLERANCE
from compactnn.surgery._verify import Snapshot, Source, check64, explain

__all__ = [
    "apply", "validate", "coupling", "fold_batchnorm", "foldable_before_relu", "verify_model",
    "SelectInputs", "SELF_CHECK_CALLS", "sparse_lowrank_layer",
]  # fmt: skip


def apply(
    plan: CompressionPlan,
    model: nn.Module,
    *,
    inplace: bool = False,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    allow_output_change: bool = False,
    verify: bool = True,
    check_inputs: Tensor | Sequence[Tensor] | None = None,
) -> nn.Module:
    """Apply ``plan`` to ``model`` and return the compressed model.

    Args:
        plan: the actions to apply, in order (indices/shapes refer to the model as it is when
            the action is reached).
        model: the model; untouched (same parameters, same module objects) unless ``inplace``.
        inplace: modify ``model`` itself. A refused plan may then leave it partly modified
            (every action is checked before it changes anything, but earlier actions stay).
        example_inputs: a batch the model accepts; needed by channel actions and
            :class:`~compactnn.plan.GapHead`. Defaults to a random batch of 2 of shape
            ``plan.meta["input_shape"]``.
        allow_output_change: accept a plan that changes the shape of the model's output (e.g.
            removes classifier outputs). By default such a plan is refused; checked on the
            example inputs (none: not checked).
        verify: self-check every channel action (on by default), twice. Per action, in the
            model's dtype: the cut model against the NaN probe's pass, which zeroes the
            consumers' removed input columns, within ``1e-4 (1 + max |y|)`` (names the construct
            of a wrong index mapping). Per run of consecutive channel actions, in float64: deep
            copies of the model before the run and after it (the user's model keeps its dtype),
            the removed units zeroed *at their source* in the first (forward hooks zeroing the
            output channels the cut removes from producers, their BatchNorm/GroupNorm and
            depthwise convs, on every call; SelectInputs' removed columns by a pre-hook), run
            through the model's own forward on the check batch; every output tensor must agree
            to ``max |delta| <= 1e-6 max(1, max |y_ref|)``. A failing run is replayed with the
            check after every action, so the PlanError names the action, the layers it cuts and
            the layer that receives non-zero values in a removed column (weight sharing with
            another input, a constant, a sigmoid after the cut) with the ops on the way. Refused
            as unverifiable: a model that does not run in float64, outputs that are not finite,
            not tensors, or change shape other than by whole removed positions. ``False`` skips
            both checks (the index mapping is always measured).
        check_inputs: a batch of the user's data (compress passes the first samples of the
            training data): the float64 check runs on it instead of the example batch. Samples
            of another per-sample shape than the example batch also replace it for the probe and
            the dependency graph. Ignored with ``verify=False``.

    Returns:
        The compressed model (``model`` itself when ``inplace``).

    Raises:
        PlanError: an inadmissible action (unknown layer, index out of range, duplicates,
            removing every channel, factor shapes that do not match, group-inconsistent cut of a
            grouped conv, or a graph the surgery cannot cut), naming the layer; a plan that
            changes the output shape without ``allow_output_change=True``.
    """
    if not isinstance(plan, CompressionPlan):
        raise PlanError(
            f"surgery.apply expects a compactnn.plan.CompressionPlan. Got {type(plan).__name__}."
        )
    if not isinstance(model, nn.Module):
        raise PlanError(f"surgery.apply expects an nn.Module. Got {type(model).__name__}.")
    return _apply(plan, model, inplace, example_inputs, allow_output_change, verify, check_inputs)


def _apply(
    plan: CompressionPlan,
    model: nn.Module,
    inplace: bool,
    example_inputs: Tensor | Sequence[Tensor] | None,
    allow_output_change: bool,
    verify: bool,
    check_inputs: Tensor | Sequence[Tensor] | None,
    per_action: bool = False,
) -> nn.Module:
    """:func:`apply`; ``per_action``: run the float64 self-check after every channel action
    (instead of once per run of consecutive channel actions), so a failure names the action."""
    user = (
        None if not verify or check_inputs is None else with_user_batch(model, None, check_inputs)
    )
    per_action = per_action or inplace  # no untouched original to replay a failed run on
    out = model if inplace else copy.deepcopy(model)
    inputs = example_inputs_for(out, example_inputs, plan.meta)
    trace = inputs  # the dependency graph is traced on the example batch alone
    if user is not None and (inputs is None or not _same_samples(inputs, user)):
        inputs = trace = user  # samples of another per-sample shape replace the example batch
    check = user if user is not None else inputs  # the batch of the float64 self-check
    ref = None  # output shapes of the original, the reference of the output width guard
    if plan.actions and inputs is not None and not allow_output_change:
        ref = output_shapes(_run_original(out, inputs))
    run: Snapshot | None = None  # the model before the current run of channel actions
    last = None  # the model's output after the last action, when a channel action ran it
    for i, a in enumerate(plan.actions):
        last = None
        context = f"Action #{i} {type(a).__name__}(layer={a.layer!r})"
        if isinstance(a, (KeepOutputs, KeepInputs)):
            if inputs is None:
                raise PlanError(
                    f"{context} needs example inputs to trace the graph; pass "
                    "example_inputs=... or set plan.meta['input_shape'] (per-sample shape)."
                )
            if verify and run is None:
                run = Snapshot.of(out)
            record: list[Source] | None = [] if run is not None else None
            got = keep_channels(out, a, inputs, verify=verify, trace=trace, record=record)
            if run is not None and record is not None:
                run.add(record)
                run.layers.append(a.layer)
            if got is None:  # not verified (or nothing removed): run the model here
                got = verify_model(out, inputs, context)
            else:  # the self-check ran it already; layer consistency only
                verify_model(out, None, context)
            check_output(ref, got, context)
            last = got
            if per_action and run is not None:
                _check_run(plan, model, out, run, check, context, record or [], None)
                run = None
            continue
        if run is not None:  # the run of channel actions ends: check it before this action
            _check_run(plan, model, out, run, check, None, [], (example_inputs, allow_output_change, check_inputs))  # fmt: skip
            run = None
        if isinstance(a, LowRank):
            apply_lowrank(out, a)
        elif isinstance(a, SparseLowRank):
            apply_sparse_lowrank(out, a)
        elif isinstance(a, SetWeights):
            apply_set_weights(out, a)
        elif isinstance(a, KernelSparse):
            apply_kernel_sparse(out, a)
        elif isinstance(a, GapHead):
            apply_gap_head(out, a, inputs)
        elif isinstance(a, FoldBatchNorm):
            apply_fold(out, a)
        elif isinstance(a, SetState):
            apply_set_state(out, a)
        else:  # pragma: no cover - CompressionPlan validates action types
            raise PlanError(f"{context}: unknown action type.")
    if run is not None:
        _check_run(plan, model, out, run, check, None, [], (example_inputs, allow_output_change, check_inputs))  # fmt: skip
    if plan.actions:  # the last channel action's forward is the plan's (model unchanged since)
        got = verify_model(out, inputs, "The plan") if last is None else last
        check_output(ref, check_finite_output(got, "The plan"), "The plan")
    return out


def _run_original(model: nn.Module, inputs: tuple[Tensor, ...]) -> object:
    """The model's output before any action; PlanError when it does not run on the inputs."""
    try:
        return run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure: the inputs do not fit the model
        shapes = [tuple(x.shape) for x in inputs]
        raise PlanError(
            f"The model does not run on the example inputs of shape {shapes} before any action "
            f"({type(exc).__name__}: {exc}). Surgery traces and self-checks the model on tensor "
            "inputs: set plan.meta['input_shape'] to the per-sample shape the model takes, pass "
            "example_inputs=(a batch of tensors), or wrap a model whose forward takes a dict in "
            "a module whose forward takes the tensor."
        ) from exc


def _same_samples(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return len(a) == len(b) and all(
        x.dim() > 0 and x.shape[1:] == y.shape[1:] and x.dtype == y.dtype
        for x, y in zip(a, b, strict=True)
    )


def _check_run(
    plan: CompressionPlan,
    model: nn.Module,
    out: nn.Module,
    run: Snapshot,
    check: tuple[Tensor, ...] | None,
    context: str | None,
    record: list[Source],
    replay: tuple | None,
) -> None:
    """The float64 self-check of a run of channel actions: ``out`` (cut) against ``run`` (the
    model before the run) with every removed unit zeroed at its source (:mod:`._verify`).

    ``context``: the run is one action (per-action mode): a failure is a PlanError naming it,
    the layers it cuts and, where it can be measured, the layer / op that makes the cut inexact.
    Otherwise the plan is replayed with a check after every action (``replay``: the example
    inputs, allow_output_change and check_inputs of the call), whose error names the action."""
    if check is None:  # pragma: no cover - a channel action without inputs is refused earlier
        return
    bad = check64(run, out, check) if run.mapped else None
    if run.mapped and bad is None:
        return
    if context is None and replay is not None:
        example_inputs, allow_output_change, check_inputs = replay
        _apply(plan, model, False, example_inputs, allow_output_change, True, check_inputs, True)
    layers = sorted(set(run.layers))
    n = int(check[0].shape[0]) if check and check[0].dim() else 1
    if not run.mapped:
        what = "could not map the removed channels back to the model before the cut"
    elif bad is not None and bad.worst is None:
        what = f"could not be verified: {bad.why}"
    else:
        what = (
            f"failed: the pruned model differs from the model before the cut with the removed "
            f"channels zeroed at their source by {bad.worst:.3g} (max |delta| / max(1, max |y|), "
            f"float64, {n} sample(s); tolerance {VERIFY_TOLERANCE:g})"
        )
    if context is None:
        raise PlanError(
            f"The plan's channel actions on {layers}: surgery self-check {what}. Exclude these "
            "layers from pruning, or apply the plan with verify=False to inspect it."
        )
    touched = sorted({name for _, name, _, _, _ in record if name})
    why = explain(run, check, record) if bad is None or bad.worst is not None else ""
    raise PlanError(
        f"{context}: surgery self-check {what}. The cut touches {touched}{why}; this cut is "
        "refused. Exclude this layer from pruning (or cut a layer before/after the construct), "
        "or apply the plan with verify=False to inspect it."
    )


def validate(
    plan: CompressionPlan,
    model: nn.Module,
    *,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    allow_output_change: bool = False,
) -> None:
    """Check that ``plan`` applies cleanly to ``model`` (a dry run on a copy; see :func:`apply`).

    Raises:
        PlanError: naming the first inadmissible action's layer and what to do.
    """
    apply(
        plan,
        model,
        inplace=False,
        example_inputs=example_inputs,
        allow_output_change=allow_output_change,
    )


#: The functions the surgery self-check spends its time in, as ``(namespace, name)`` pairs, for
#: profiling it apart from the cut: a profiler replaces ``getattr(namespace, name)`` by a timed
#: wrapper for a while and restores it (``benchmarks/bench_surgery_check.py``). Per channel
#: action: the comparison of the cut model's output with the neutralised reference and the
#: reference forward where the probe's own pass cannot serve as it; per run of channel actions:
#: the float64 check of the run and its float64 copy of the model before the run.
SELF_CHECK_CALLS: tuple[tuple[Any, str], ...] = (
    (_channels, "reference_output"),
    (_channels, "compare"),
    (sys.modules[__name__], "_check_run"),
    (Snapshot, "of"),
)
