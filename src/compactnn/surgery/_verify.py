"""The float64 self-check of channel surgery: the cut model against the model before the cut
with every removed unit zeroed at its *source*.

A channel cut removes output channels of producers (Conv2d/Linear rows with their bias, the
BatchNorm/GroupNorm/InstanceNorm channels and depthwise-conv channels that follow them) and the
matching input columns of their consumers. Its meaning, and the only thing the cut may change,
is: *those output channels are zero*. The reference is therefore a float64 deep copy of the model
as it was before the cut, with a forward hook on every module whose output channels the cut
removes, zeroing exactly those channels of its output on every call (so each consumer of that
tensor, whatever op reads it -- a second conv, a residual add, a view, a functional conv, a
mean -- sees zeros). Input columns removed by :class:`~compactnn.layers.SelectInputs`
(``KeepInputs`` of a shared input) are zeroed by a forward pre-hook of that layer. Consumers'
input columns are *not* zeroed: if anything else than the zeroed channels reaches a removed
column (a layer called on another tensor too, a constant added after the cut, a sigmoid, a
buffer), the cut model differs from the reference and the cut is refused.

The check runs the user's own forward (deep copies of the model before and after the cut,
converted to float64; the user's model keeps its dtype) on the check batch (the user's samples
given as ``check_inputs``, else the example batch) in eval mode, and requires every output
tensor to agree: ``max |y_cut - y_ref| <= TOLERANCE * max(1, max |y_ref|)``. Anything it cannot
verify is refused: a model that does not run in float64, outputs that are not finite or not
tensors, an output whose structure or shape changes in a way that cannot be matched to the
removed channels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.surgery._check import _eval_restored, _tensors, chan_dim, ops_on_paths, probe

__all__ = ["TOLERANCE", "Source", "Snapshot", "Mismatch", "check64", "explain", "to64"]

#: relative tolerance of the float64 check: max |y_cut - y_ref| <= TOLERANCE * max(1, max |y_ref|)
TOLERANCE = 1e-6

#: one record of a cut: (module before the cut, its name, kind, size before the cut, removed
#: indices in the module's numbering at that time). kind: "out" (output channels removed:
#: zeroed at the source), "in" (input columns removed: renumbering only), "mask_in" (input
#: columns removed by a SelectInputs: zeroed by a pre-hook)
Source = tuple[nn.Module, str, str, int, set[int]]


def to64(x: Any) -> Any:
    """Floating tensors of ``x`` (nested tuples/lists/dicts) as float64 copies."""
    if isinstance(x, Tensor):
        return x.detach().to(torch.float64) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: to64(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to64(v) for v in x)
    return x


def _copy64(
    model: nn.Module, reuse: dict[int, tuple[Tensor, int, nn.Parameter]] | None = None
) -> nn.Module:
    """A deep copy of ``model`` with its floating parameters and buffers in float64 (converted
    while copying: the float32 tensors are never copied first). ``reuse``: float64 parameters
    of an earlier copy, by ``id`` of the original parameter (with the parameter itself and its
    ``_version``); taken over where the parameter is the same object, not modified in place
    since (a cut replaces the parameters it changes), so unchanged layers are not converted
    twice."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or id(p) in memo:
                continue
            old = (reuse or {}).get(id(p))
            if old is not None and old[0] is p and old[1] == p._version:
                memo[id(p)] = old[2]
            else:
                memo[id(p)] = nn.Parameter(p.detach().to(torch.float64), p.requires_grad)
        for b in model.buffers():
            if b.is_floating_point() and id(b) not in memo:
                memo[id(b)] = b.detach().to(torch.float64)
    return copy.deepcopy(model, memo).to(torch.float64)


@dataclass
class Snapshot:
    """A float64 copy of the model at the start of a run of channel actions, and the removed
    units of the run mapped to its numbering.

    Attributes:
        model: the float64 copy (never the user's model).
        mods: module of the live model -> the same module of the copy (taken before any cut).
        names: name -> module of the copy (for modules the live model has replaced since).
        cols: (copy module, "out"/"in") -> the copy's indices still present in the live model.
        zero_out / zero_in: copy module -> indices zeroed at its output / input.
        layers: names of the layers the run's actions named (for messages).
        mapped: every record could be mapped to the copy.
        params: ``id`` of each live parameter -> (the parameter, its ``_version``, its float64
            copy), reused by the copy of the cut model for the layers the cut left alone.
    """

    model: nn.Module
    mods: dict[nn.Module, nn.Module]
    names: dict[str, nn.Module]
    cols: dict[tuple[nn.Module, str], list[int]] = field(default_factory=dict)
    zero_out: dict[nn.Module, set[int]] = field(default_factory=dict)
    zero_in: dict[nn.Module, set[int]] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    mapped: bool = True
    params: dict[int, tuple[Tensor, int, nn.Parameter]] = field(default_factory=dict)

    @classmethod
    def of(cls, live: nn.Module) -> Snapshot:
        """A float64 snapshot of ``live`` (deep copy; ``live`` is not modified).

        Raises:
            PlanError: no float64 copy can be made (e.g. a device without float64): the cut
                could not be verified, so it is refused.
        """
        try:
            snap = _copy64(live)
        except Exception as exc:  # noqa: BLE001 - any failure: nothing can be verified
            raise PlanError(
                f"The surgery self-check cannot make a float64 copy of {type(live).__name__} "
                f"({type(exc).__name__}: {exc}), so no channel cut of it can be verified. Move "
                "the model to a device with float64 (e.g. the CPU) for the surgery, or apply the "
                "plan with verify=False at your own risk."
            ) from exc
        mods = dict(zip(live.modules(), snap.modules(), strict=True))
        params = {
            id(p): (p, p._version, q)
            for p, q in zip(live.parameters(), snap.parameters(), strict=True)
            if p.is_floating_point()
        }
        return cls(snap, mods, dict(snap.named_modules()), params=params)

    def add(self, records: Iterable[Source]) -> None:
        """Map the records of one cut to the copy's numbering."""
        for m, name, kind, size, removed in records:
            orig = self.mods.get(m) or self.names.get(name)
            side = "out" if kind == "out" else "in"
            if orig is None:
                self.mapped = False
                continue
            cur = self.cols.setdefault((orig, side), list(range(size)))
            if len(cur) != size or any(not 0 <= r < size for r in removed):
                self.mapped = False
                continue
            if kind == "out":
                self.zero_out.setdefault(orig, set()).update(cur[r] for r in removed)
            elif kind == "mask_in":
                self.zero_in.setdefault(orig, set()).update(cur[r] for r in removed)
            self.cols[(orig, side)] = [c for k, c in enumerate(cur) if k not in removed]


def _fill(t: Tensor, dim: int, idx: set[int], value: float) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() < 2 or not idx:
        return t
    d = dim % t.dim()
    if max(idx) >= t.shape[d]:
        raise PlanError(
            f"internal: a removed channel {max(idx)} is out of range for a tensor of shape "
            f"{tuple(t.shape)} (dim {d})"
        )
    i = torch.as_tensor(sorted(idx), dtype=torch.long, device=t.device)
    return t.index_fill(d, i, value)


def reference(snap: Snapshot, inputs: tuple[Any, ...]) -> Any:
    """The copy's output on ``inputs`` (float64) with the removed units zeroed at their source."""
    handles = []

    def post(m: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return _fill(out, chan_dim(m), snap.zero_out[m], 0.0)

    def pre(m: nn.Module, args: tuple[Any, ...]) -> Any:
        if not args:
            return None
        return (_fill(args[0], chan_dim(m), snap.zero_in[m], 0.0), *args[1:])

    for m, idx in snap.zero_out.items():
        if idx:
            handles.append(m.register_forward_hook(post))
    for m, idx in snap.zero_in.items():
        if idx:
            handles.append(m.register_forward_pre_hook(pre))
    try:
        with _eval_restored(snap.model), torch.no_grad():
            return snap.model(*inputs)
    finally:
        for h in handles:
            h.remove()


@dataclass
class Mismatch:
    """Why the check failed: ``worst`` relative difference (``None``: not comparable) and a
    sentence saying what could not be verified."""

    worst: float | None
    why: str


def _removed_positions(snap: Snapshot, inputs: tuple[Any, ...], k: int, dim: int) -> list[int]:
    """Positions along ``dim`` of output tensor ``k`` that only removed channels reach (NaN
    probe of the copy: the removed output channels are NaN, consumers zero them)."""
    seeds = {m: set(i) for m, i in snap.zero_out.items() if i}
    res = probe(snap.model, inputs, seeds)
    if res.error is not None:
        return []
    outs = _tensors(res.output)
    if k >= len(outs):
        return []
    t = torch.isnan(outs[k]).movedim(dim, 0).reshape(outs[k].shape[dim], -1)
    full, part = t.all(dim=1), t.any(dim=1)
    if bool((part & ~full).any()):
        return []
    return [int(i) for i in torch.nonzero(full).flatten()]


def compare64(snap: Snapshot, inputs: tuple[Any, ...], ref: Any, new: Any) -> Mismatch | None:
    """``None`` when every output tensor of ``new`` equals ``ref`` within the tolerance;
    otherwise what differs (or what could not be compared)."""
    a_all, b_all = _tensors(ref), _tensors(new)
    if len(a_all) != len(b_all):
        return Mismatch(
            None,
            f"the model's output holds {len(b_all)} tensor(s) after the cut, {len(a_all)} before",
        )
    if not a_all:
        return Mismatch(None, "the model's output holds no tensor to compare")
    worst = 0.0
    for k, (a, b) in enumerate(zip(a_all, b_all, strict=True)):
        if a.dtype.is_floating_point != b.dtype.is_floating_point:
            return Mismatch(None, f"output tensor {k} changed its dtype ({a.dtype} -> {b.dtype})")
        if not a.is_floating_point():
            if a.shape != b.shape or not torch.equal(a, b):
                return Mismatch(None, f"the non-floating output tensor {k} changed")
            continue
        if a.shape != b.shape:
            dims = [d for d in range(a.dim()) if a.dim() == b.dim() and a.shape[d] != b.shape[d]]
            if len(dims) != 1:
                return Mismatch(
                    None,
                    f"output tensor {k} changed shape {tuple(a.shape)} -> {tuple(b.shape)} in a "
                    "way that cannot be matched to the removed channels",
                )
            d = dims[0]
            gone = _removed_positions(snap, inputs, k, d)
            if len(gone) != a.shape[d] - b.shape[d]:
                return Mismatch(
                    None,
                    f"output tensor {k} lost {a.shape[d] - b.shape[d]} position(s) of dim {d}, "
                    f"but the removed channels reach {len(gone)} whole position(s) of it",
                )
            keep = torch.as_tensor(
                [i for i in range(a.shape[d]) if i not in set(gone)], device=a.device
            )
            a = torch.index_select(a, d, keep)
        a, b = a.detach().double(), b.detach().double()
        if not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
            return Mismatch(
                None, f"output tensor {k} is not finite (NaN/Inf) in float64 on the check batch"
            )
        if a.numel() == 0:
            continue
        scale = max(1.0, float(a.abs().max()))
        d = float((a - b).abs().max()) / scale
        worst = max(worst, d if math.isfinite(d) else math.inf)
    if worst > TOLERANCE:
        return Mismatch(worst, "")
    return None


def check64(snap: Snapshot, live: nn.Module, inputs: tuple[Any, ...]) -> Mismatch | None:
    """The float64 check of ``live`` (cut) against ``snap`` with the removed units zeroed.

    Raises:
        PlanError: the model does not run in float64 (the check cannot be done).
    """
    xs = to64(inputs)
    try:
        ref = reference(snap, xs)
    except PlanError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot run in float64
        raise PlanError(
            f"The surgery self-check cannot verify the cut of {sorted(set(snap.layers))}: the "
            f"model does not run in float64 ({type(exc).__name__}: {exc}); the check runs a "
            "float64 copy of the model (its forward must not hard-code float32 tensors). Make "
            "the forward dtype-agnostic (e.g. torch.zeros(..., dtype=x.dtype)), or apply the plan "
            "with verify=False at your own risk."
        ) from exc
    cut = _copy64(live, snap.params)  # layers the cut left alone share the float64 weights
    try:
        with _eval_restored(cut), torch.no_grad():
            new = cut(*xs)
    except Exception as exc:  # noqa: BLE001 - any failure: the cut broke the forward
        return Mismatch(
            None, f"the cut model does not run in float64 ({type(exc).__name__}: {exc})"
        )
    return compare64(snap, xs, ref, new)


def zero_reaching(
    snap: Snapshot, inputs: tuple[Any, ...], consumers: dict[nn.Module, set[int]]
) -> list[tuple[nn.Module, list[int]]]:
    """Consumers (modules of the copy) whose removed input columns are *not* all zero in the
    reference (something else than the zeroed channels reaches them), with those columns."""
    bad: dict[nn.Module, set[int]] = {}
    handles = []

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            return
        d = chan_dim(m) % x.dim()
        for c in consumers[m]:
            if c < x.shape[d] and bool(x.select(d, c).ne(0).any()):
                bad.setdefault(m, set()).add(c)

    for m in consumers:
        handles.append(m.register_forward_pre_hook(pre))
    try:
        reference(snap, to64(inputs))
    except Exception:  # noqa: BLE001 - only used to word a message
        return []
    finally:
        for h in handles:
            h.remove()
    return [(m, sorted(c)) for m, c in bad.items()]


def deterministic(snap: Snapshot, inputs: tuple[Any, ...]) -> bool:
    """Whether two reference passes agree exactly (a forward that draws random numbers or keeps
    state between calls cannot be verified)."""
    try:
        xs = to64(inputs)
        with torch.random.fork_rng(devices=[]):
            a = _tensors(reference(snap, xs))
            b = _tensors(reference(snap, xs))
    except Exception:  # noqa: BLE001 - only used to word a message
        return True
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)
    )


def _op_name(node: Any) -> str:
    name = type(node).__name__.rstrip("0123456789")
    name = name[: -len("Backward")] if name.endswith("Backward") else name
    return {"Where": "", "IndexFill": "", "AccumulateGrad": "", "ToCopy": ""}.get(name, name)


def _ops_on_paths(res: Any, starts: list[Any]) -> list[str]:
    """Autograd op names (``Add``, ``Sigmoid``, ``Mean``, ...) on the paths from the probe's
    seeds (the removed channels) to the ``starts`` nodes, in the order met."""
    return ops_on_paths(res, starts, _op_name)


def explain(snap: Snapshot, inputs: tuple[Any, ...], record: list[Source]) -> str:
    """Where a failed check of one cut (``record``, its sources; ``snap`` taken right before
    it) goes wrong, as a clause for the error message ('' when nothing more can be said)."""
    xs = to64(inputs)
    if not deterministic(snap, xs):
        return (
            "; the model's forward is not deterministic in eval mode (two passes of the same "
            "batch differ), so no cut of it can be verified"
        )
    names = {m: n for n, m in snap.model.named_modules()}
    consumers: dict[nn.Module, set[int]] = {}
    for m, _, kind, _, removed in record:
        c = snap.mods.get(m)
        if kind == "in" and c is not None:
            consumers.setdefault(c, set()).update(removed)
    seeds = {m: set(i) for m, i in snap.zero_out.items() if i}
    try:
        res = probe(snap.model, xs, seeds, track_graph=True) if seeds else None
    except Exception:  # noqa: BLE001 - only used to word a message
        res = None
    bad = zero_reaching(snap, xs, consumers)
    if bad:
        parts = []
        for m, cols in bad:
            ops = _ops_on_paths(res, [res.nodes.get(m)]) if res is not None else []
            via = f" (on the way: {', '.join(ops)})" if ops else ""
            parts.append(f"{type(m).__name__} {names.get(m, '?')!r} input channel(s) {cols}{via}")
        return (
            "; with the removed channels zeroed at their source, "
            + "; ".join(parts)
            + " still receive(s) non-zero values, which the cut drops: another path feeds those "
            "columns (a layer called on another tensor too, i.e. weight sharing) or an op "
            "between the removed channels and the layer does not keep zeros zero (an added "
            "constant or bias, a sigmoid, a buffer)"
        )
    ops = _ops_on_paths(res, list(res.nodes.values())) if res is not None else []
    if ops:
        return (
            f"; the removed channels pass through {', '.join(ops)}, and something reads them "
            "in a way the cut does not follow (a mean / normalisation / fixed index over "
            "channels, a functional op with a module's weight, a value taken out of the graph "
            "with .item())"
        )
    return ""


def failing_module(model: nn.Module, inputs: tuple[Any, ...]) -> str:
    """``"Conv2d 'shared'"``: the innermost module whose forward raised on ``inputs`` ('' when
    the forward runs, or fails outside every module)."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    failed: list[nn.Module] = []

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        stack.append(m)

    def post(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if stack and stack[-1] is m:
            stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules() if m is not model]
    handles += [m.register_forward_hook(post) for m in model.modules() if m is not model]
    try:
        with _eval_restored(model), torch.no_grad():
            model(*inputs)
    except Exception:  # noqa: BLE001 - the failure is what is looked for
        failed = list(stack)
    finally:
        for h in handles:
            h.remove()
    if not failed:
        return ""
    m = failed[-1]
    return f"{type(m).__name__} {names.get(m, '?')!r}"
