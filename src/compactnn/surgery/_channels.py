"""Exact physical channel removal with couplings (Torch-Pruning dependency graph).

Torch-Pruning's :class:`DependencyGraph` finds the coupling *group* of a cut (BN, consumers'
inputs, residual partners, concat offsets, flatten -> linear spatial blocks, depthwise convs).
The group is then checked as a whole and executed by the exact functions of this module rather
than by Torch-Pruning's handlers, because its grouped-conv input handler is not exact (it keeps
``keep[:len(keep) // groups]``, e.g. a 15-channel input for a ``groups=2`` conv). Every cut that
reaches a grouped conv must remove the same number of channels from each of its groups;
otherwise the plan is refused with a :class:`~compactnn.errors.PlanError` before anything is
modified.

The group comes from :mod:`compactnn.surgery._depgraph`; the checks of a cut and the cut of one
module are in :mod:`compactnn.surgery._cut`. This module maps the removed channels through the
real forward pass (the probe), executes the cut and checks the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.layers import SelectInputs
from compactnn.plan import KeepInputs, KeepOutputs
from compactnn.surgery._check import (
    Probe,
    compare,
    constructs,
    is_consumer,
    is_lrn,
    probe,
    probe_is_reference,
    reference_output,
)
from compactnn.surgery._cut import (
    _BN,
    _check_cuts,
    _check_indices,
    _cut_module,
    _Cuts,
    _is_depthwise,
    _passes_channels,
    _per_channel,
    _seeds,
    _size,
)
from compactnn.surgery._depgraph import _EXCLUDE, _collect, _group, _resolve
from compactnn.surgery._lrn import cut_lrn
from compactnn.surgery._util import run_model, set_module
from compactnn.surgery._verify import Source, failing_module

__all__ = ["keep_channels", "SelectInputs", "TOLERANCE", "sources_of"]

#: relative tolerance of the per-action check (in the model's dtype; the float64 check of
#: ._verify has its own): max |y_pruned - y_ref| <= TOLERANCE * (1 + max |y_ref|)
TOLERANCE = 1e-4


def _describe(res: Probe | None, consumers: list[nn.Module]) -> str:
    """' through chunk/split, view/reshape' -- the ops between the cut and ``consumers`` (all
    the modules the probe reached when empty)."""
    if res is None:
        return ""
    try:
        found = constructs(res, consumers or list(res.nodes))
    except Exception:  # noqa: BLE001 - only used to word a message
        found = []
    return f" through {', '.join(found)}" if found else ""


_CHUNK = (
    "torch.chunk/torch.split cut the channels at fixed positions, so a cut that removes a "
    "different number of channels from each part moves a boundary (channels would change part); "
    "remove the same number of channels from every chunk (every split part keeping its size "
    "rule), or "
)


def _todo(via: str) -> str:
    """What the user can do, for a refusal whose removed channels pass ``via``."""
    return (_CHUNK + _EXCLUDE) if "chunk" in via or "split" in via else _EXCLUDE


def _map_checked(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    cuts: _Cuts,
    names: dict[nn.Module, str],
    head: str,
) -> tuple[_Cuts, dict[nn.Module, set[int]], Probe]:
    """Replace the dependency graph's index mapping downstream of the cut by the measured one.

    Returns the corrected cuts and the consumers' removed input channels (the neutralisation of
    the self-check). Refuses cuts whose removed channels reach part of a channel (reshape) or
    spread to other channels (channel-mixing ops), naming the construct.
    """
    seeds = _seeds(cuts)
    for m in list(seeds):  # a proposal out of range is the dependency graph's mapping error
        n = _size(m, "out")
        seeds[m] = {i for i in seeds[m] if 0 <= i < n}
        if not seeds[m]:
            del seeds[m]
    res = probe(model, inputs, seeds, track_graph=True)
    if res.error is not None:
        raise PlanError(f"{head}: the model does not run on the example input ({res.error}).")
    if res.spread:
        name, kind, a, b = res.spread[0]
        hint = _EXCLUDE
        mod = dict(model.named_modules()).get(name)
        if isinstance(mod, nn.GroupNorm):
            per = mod.num_channels // mod.num_groups
            hint = f"remove whole groups of {per} channels, or {_EXCLUDE}"
        via = _describe(res, [])
        kind += f" {name!r}" if name != "?" else f" (a functional op{via})"
        raise PlanError(
            f"{head}: the removed channels pass through {kind}, which mixes channels "
            f"({a} removed channel(s) in, {b} affected channel(s) out); removing them would change "
            f"the kept channels. To prune here, {hint}."
        )
    for m, part in res.partial.items():
        if part and m not in seeds:
            n = names.get(m, "?")
            via = _describe(res, [m])
            per = res.per_channel.get(m, 0)
            size = f" ({per} values each)" if per > 1 else ""
            raise PlanError(
                f"{head}: the removed channels reach only part of input channel(s) "
                f"{sorted(part)[:8]} of {type(m).__name__} {n!r}{via}; an exact cut here removes "
                f"whole channels of {n!r}{size}, more than asked, so it is refused. Remove whole "
                f"channels of {n!r} at once, or {_EXCLUDE}."
            )
    for m, full in res.full.items():
        if full and is_consumer(m) and m not in seeds and len(full) >= res.sizes.get(m, 0):
            n = names.get(m, "?")
            raise PlanError(
                f"{head}: the removed channels reach every input channel of {type(m).__name__} "
                f"{n!r}{_describe(res, [m])}: an op before it mixes all channels (e.g. an "
                f"attention gate that averages over channels), so removing any would change "
                f"its input; {_EXCLUDE}."
            )
    fixed: _Cuts = {}
    for m, c in cuts.items():
        new = {"out": set(c["out"]), "in": set(), "chan": set()}
        if _per_channel(m):
            if _passes_channels(m):  # its outputs follow its groups; never cut them separately
                new["out"] = set()
            new["chan"] = set(res.full.get(m, set()))
            if isinstance(m, nn.Conv2d) and _is_depthwise(m) and m in seeds:
                new["chan"] |= seeds[m]
            if not new["chan"]:
                new["chan"] = set(c["chan"]) if m not in res.sizes else set()
        elif is_consumer(m):
            new["in"] = set(res.full.get(m, set())) if m in res.sizes else set(c["in"])
        if new["out"] or new["in"] or new["chan"]:
            fixed[m] = new
    for m, full in res.full.items():
        if not full or m in fixed or m in seeds:
            continue
        if is_consumer(m):
            fixed[m] = {"out": set(), "in": set(full), "chan": set()}
        elif _per_channel(m):
            fixed[m] = {"out": set(), "in": set(), "chan": set(full)}
        elif is_lrn(m):
            continue
        elif any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        ):
            raise PlanError(
                f"{head}: the removed channels reach {type(m).__name__} {names.get(m, '?')!r}, "
                f"which surgery cannot resize; {_EXCLUDE}."
            )
    zero_in = {m: set(c["in"]) for m, c in fixed.items() if is_consumer(m) and c["in"]}
    for m, full in res.full.items():
        if is_lrn(m) and full:  # removed channels become zero holes of the LRN
            fixed[m] = {"out": set(), "in": set(), "chan": set(full)}
            zero_in[m] = set(full)
            res.sizes.setdefault(m, 0)
    return fixed, zero_in, res


def sources_of(cuts: _Cuts, names: dict[nn.Module, str]) -> list[Source]:
    """The removed units of ``cuts`` (before they are cut), for the float64 self-check: output
    channels of producers, norms and depthwise convs ("out": zeroed at their source in the
    reference) and consumers' input columns ("in": renumbering only, never zeroed)."""
    out: list[Source] = []
    for m, c in cuts.items():
        name = names.get(m, "")
        if is_lrn(m):  # zero holes: its inputs are zero wherever its removed channels come from
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if c["chan"]:  # depthwise: input channel g is group g, outputs g*k..g*k+k-1
                k = m.out_channels // m.groups
                gone = {g * k + j for g in c["chan"] for j in range(k)}
                out.append((m, name, "out", _size(m, "out"), gone))
                out.append((m, name, "in", _size(m, "in"), set(c["chan"])))
            if c["out"]:
                out.append((m, name, "out", _size(m, "out"), set(c["out"])))
            if c["in"]:
                out.append((m, name, "in", _size(m, "in"), set(c["in"])))
        elif isinstance(m, (_BN, nn.GroupNorm)):
            n = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
            removed = c["chan"] | c["out"] | c["in"]
            if removed:
                out.append((m, name, "out", n, set(removed)))
    return out


@dataclass(frozen=True)
class _Request:
    """One channel action, resolved and checked, with what its cut runs on.

    Attributes:
        model: the model cut in place.
        action: ``"KeepOutputs"`` or ``"KeepInputs"`` (for messages).
        layer: the layer the action names; ``path``, ``mod``: the Conv2d/Linear it denotes.
        keep, removed: the kept and the removed indices of its outputs / inputs.
        inputs: the batch of the probe and the self-check; ``trace``: the batch the dependency
            graph is built on.
        verify: check the cut (see :func:`keep_channels`).
        record: receives the neutralisation of the cut (for the plan-level check on the user's
            data), or ``None``.
        names: module -> dotted name in ``model``.
    """

    model: nn.Module
    action: str
    layer: str
    path: str
    mod: nn.Module
    keep: Sequence[int]
    removed: list[int]
    inputs: tuple[Tensor, ...]
    trace: tuple[Tensor, ...]
    verify: bool
    record: list[Source] | None
    names: dict[nn.Module, str]

    @property
    def head(self) -> str:
        return f"{self.action}(layer={self.layer!r})"

    def collect(self, side: str) -> _Cuts:
        """The dependency graph's coupling group of removing ``removed`` on ``side`` of the
        layer, as per-module cuts."""
        group = _group(
            self.model, self.trace, self.mod, side, self.removed, self.action, self.layer
        )
        return _collect(group, self.names, self.action, self.layer)

    def mapped(self, cuts: _Cuts) -> tuple[_Cuts, dict[nn.Module, set[int]], Probe]:
        """:func:`_map_checked` of ``cuts`` on this request's model and batch."""
        return _map_checked(self.model, self.inputs, cuts, self.names, self.head)


def _execute(
    req: _Request, cuts: _Cuts, zero_in: dict[nn.Module, set[int]], res: Probe | None
) -> Any:
    """Cut ``cuts`` in place; with ``req.verify`` check the result against the model before the
    cut with the consumers' removed input channels zeroed (``zero_in``) and return the cut
    model's output on ``req.inputs`` (``None`` without ``verify``). ``req.record`` receives the
    neutralisation of the cut (for the plan-level check on the user's data)."""
    model, inputs, names, action, layer = req.model, req.inputs, req.names, req.action, req.layer
    verify, record, head = req.verify, req.record, req.head
    seeds = _seeds(cuts)
    try:
        _check_cuts(cuts, names, action, layer)
    except PlanError as exc:
        via = _describe(res, [m for m in cuts if m not in seeds])
        if via and "out of range" in str(exc):  # lead with the construct, not the symptom
            raise PlanError(
                f"{head}: the removed channels pass{via}, which regroups them: the layers coupled "
                f"after it cannot be given matching channels ({exc}). This cut is refused; "
                f"{_todo(via)}."
            ) from None
        if via:
            raise PlanError(f"{exc} (The cut reaches it{via}.)") from None
        raise
    ref = None
    if verify:  # the probe pass already ran the neutralised model: reuse its output
        same = res is not None and probe_is_reference(res, zero_in)
        ref = res.output if same else reference_output(model, inputs, zero_in)  # type: ignore[union-attr]
    if record is not None:
        record += sources_of(cuts, names)
    for m, c in cuts.items():
        if is_lrn(m):
            set_module(model, names[m], cut_lrn(m, c["chan"], res.sizes[m] if res else 0))
        else:
            _cut_module(m, c)
    if not verify:
        return None
    try:
        out = run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the cut broke the graph
        via = _describe(res, [])
        what = f"the removed channels pass{via}, and" if via else "the"
        where = failing_module(model, inputs)
        at = f" in {where}" if where else ""
        raise PlanError(
            f"{head}: after the cut the model no longer runs ({type(exc).__name__}{at}: {exc}); "
            f"{what} forward pass hard-codes a channel count or layout (split sizes, chunk "
            "boundaries, a view/reshape, a channel shuffle, a per-channel buffer) or calls a cut "
            "layer on a tensor the cut does not reach (weight sharing with another input, a "
            f"functional op with the layer's weight) that the cut changes; {_todo(via)}."
        ) from exc
    worst = compare(ref, out)
    if worst is not None and worst > TOLERANCE:
        where = sorted(names.get(m, "?") for m in cuts)
        via = _describe(res, []) or " through an op surgery cannot map"
        raise PlanError(
            f"{head}: surgery self-check failed: the pruned model differs from the model with the "
            f"removed channels neutralised by {worst:.3g} (relative; tolerance {TOLERANCE:g}). "
            f"The cut touches {where} and the removed channels pass{via}, which surgery cannot "
            f"cut exactly here; {_todo(via)}."
        )
    return out


def keep_channels(
    model: nn.Module,
    action: KeepOutputs | KeepInputs,
    inputs: tuple[Tensor, ...],
    *,
    verify: bool = True,
    trace: tuple[Tensor, ...] | None = None,
    record: list[Source] | None = None,
) -> Any:
    """Apply a channel action to ``model`` in place: keep the output channels ``action.keep``
    of ``action.layer`` (:class:`~compactnn.plan.KeepOutputs`; all coupled layers follow) or its
    input channels / features (:class:`~compactnn.plan.KeepInputs`, :func:`_keep_inputs`).

    With ``verify`` the cut is checked against the model with the removed channels neutralised
    (see :mod:`compactnn.surgery._check`); a mismatch is a :class:`PlanError`. ``trace``: the
    batch the dependency graph is built on (default ``inputs``; the probe and the self-check
    always run on ``inputs``). ``record`` receives the neutralisation of the cut.

    Returns:
        The cut model's output on ``inputs`` when ``verify`` (else ``None``; ``None`` too when
        the action removes nothing).
    """
    kind, side = type(action).__name__, "out" if isinstance(action, KeepOutputs) else "in"
    path, mod = _resolve(model, action.layer, kind, side)
    what = "outputs" if side == "out" else "inputs"
    removed = _check_indices(action.keep, _size(mod, side), kind, action.layer, what)
    if not removed:
        return None
    names = {m: n for n, m in model.named_modules()}
    req = _Request(model, kind, action.layer, path, mod, action.keep, removed, inputs,
                   trace or inputs, verify, record, names)  # fmt: skip
    return _keep_outputs(req) if side == "out" else _keep_inputs(req)


def _keep_outputs(req: _Request) -> Any:
    """Keep the output channels of ``req``'s layer; all coupled layers follow."""
    mod = req.mod
    cuts = req.collect("out")
    key = "chan" if isinstance(mod, nn.Conv2d) and _is_depthwise(mod) else "out"
    # the dependency graph may tie the root to other channels through a reshape; the root
    # removes exactly what was asked, the probe and the self-check judge the rest
    cuts.setdefault(mod, {"out": set(), "in": set(), "chan": set()})[key] = set(req.removed)
    return _execute(req, *req.mapped(cuts))


def _keep_inputs(req: _Request) -> Any:
    """Keep the input channels/features of ``req``'s layer.

    If the removed inputs are produced by layers that feed only that layer (measured: the probe
    finds no other consumer of the producers' removed channels, and the layer sees exactly these
    inputs), the producers' outputs (and their BN) are removed too. Otherwise the layer is
    wrapped in :class:`SelectInputs`.
    """
    model, mod, removed, inputs = req.model, req.mod, req.removed, req.inputs
    if isinstance(mod, nn.Conv2d) and _is_depthwise(mod):
        return _execute(req, *req.mapped(req.collect("out")))
    cuts = req.collect("in")
    root = cuts.get(mod, {"in": set(), "out": set(), "chan": set()})
    if not root["out"] and root["in"] == set(removed) and _seeds(cuts):
        try:
            fixed, zero_in, res = req.mapped(cuts)
        except PlanError:
            fixed, zero_in, res = {}, {}, None
        produced = sum(len(c["out"]) for m, c in fixed.items() if isinstance(m, nn.Linear))
        produced += sum(len(c["out"]) for m, c in fixed.items() if isinstance(m, nn.Conv2d))
        if zero_in == {mod: set(removed)} and produced == len(removed):  # private producers
            return _execute(req, fixed, zero_in, res)
    own = {mod: {"out": set(), "in": set(removed), "chan": set()}}
    _check_cuts(own, {mod: req.path}, req.action, req.layer)
    ref = reference_output(model, inputs, {mod: set(removed)}) if req.verify else None
    if req.record is not None:
        req.record.append((mod, req.path, "mask_in", _size(mod, "in"), set(removed)))
    _cut_module(mod, own[mod])
    set_module(model, req.path, SelectInputs(sorted(req.keep), mod))
    if not req.verify:
        return None
    out = run_model(model, inputs)
    worst = compare(ref, out)
    if worst is not None and worst > TOLERANCE:
        raise PlanError(
            f"{req.head}: surgery self-check failed: selecting the kept inputs differs from the "
            f"model with the removed inputs zeroed by {worst:.3g} (tolerance {TOLERANCE:g})."
        )
    return out
