"""Module lookup/replacement, example inputs and the post-surgery model check."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.surgery._check import _eval_restored

__all__ = [
    "get_module",
    "set_module",
    "example_inputs_for",
    "with_user_batch",
    "verify_model",
    "run_model",
    "output_shapes",
    "check_output",
    "check_finite_output",
]


def get_module(model: nn.Module, name: str, action: str = "plan") -> nn.Module:
    """The submodule at dotted path ``name``; PlanError with suggestions if it does not exist."""
    mods = dict(model.named_modules())
    if name in mods and name != "":
        return mods[name]
    close = difflib.get_close_matches(name, [n for n in mods if n], n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise PlanError(
        f"{action}: layer {name!r} does not exist in {type(model).__name__}.{hint} Use a dotted "
        "name from model.named_modules() of the model the action is applied to (after the "
        "plan's earlier actions)."
    )


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def example_inputs_for(
    model: nn.Module, example_inputs: Tensor | Sequence[Tensor] | None, meta: dict[str, Any]
) -> tuple[Tensor, ...] | None:
    """Normalize ``example_inputs`` or build a batch of 2 from ``meta["input_shape"]``."""
    if example_inputs is not None:
        if isinstance(example_inputs, Tensor):
            return (example_inputs,)
        if isinstance(example_inputs, (list, tuple)) and all(
            isinstance(t, Tensor) for t in example_inputs
        ):
            return tuple(example_inputs)
        raise PlanError(
            "example_inputs must be a Tensor or a tuple of Tensors (a batch the model accepts). "
            f"Got {type(example_inputs).__name__}."
        )
    shape = meta.get("input_shape")
    if shape is None:
        return None
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise PlanError(
            f"plan.meta['input_shape'] must be the per-sample input shape, e.g. [3, 32, 32]. "
            f"Got {shape!r}."
        ) from None
    if not dims or min(dims) < 1:
        raise PlanError(f"plan.meta['input_shape'] must be positive dims. Got {shape!r}.")
    p = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *dims), generator=gen)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return (x,)


def with_user_batch(
    model: nn.Module, inputs: tuple[Tensor, ...] | None, user: Tensor | Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """``inputs`` with the user's batch appended along dim 0 (moved to the model's device,
    floating tensors cast to its dtype); the user's batch alone when ``inputs`` is ``None`` or
    the per-sample shapes / dtypes differ."""
    xs = example_inputs_for(model, user, {})
    if xs is None:  # unreachable: a given batch is normalised or refused
        return inputs or ()
    p = next(model.parameters(), None)
    if p is not None:
        xs = tuple(
            x.to(device=p.device, dtype=p.dtype) if x.is_floating_point() else x.to(p.device)
            for x in xs
        )
    if inputs is None or len(inputs) != len(xs):
        return xs
    same = all(
        a.shape[1:] == b.shape[1:] and a.dtype == b.dtype and a.dim() > 0 and b.dim() > 0
        for a, b in zip(inputs, xs, strict=True)
    )
    if not same:
        return xs
    return tuple(torch.cat([a, b.detach()], 0) for a, b in zip(inputs, xs, strict=True))


def run_model(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """Forward in eval mode without grad (and without TF32: the self-check compares to 1e-4),
    restoring every module's training flag."""
    with _eval_restored(model), torch.no_grad():
        return model(*inputs)


def verify_model(model: nn.Module, inputs: tuple[Tensor, ...] | None, context: str) -> Any:
    """Check every Conv2d/Linear/BN is self-consistent and the model runs on ``inputs``.

    Returns:
        The model's output on ``inputs`` (``None`` without inputs).

    Raises:
        PlanError: naming the first inconsistent layer and ``context`` (the action applied).
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            g = m.groups
            if m.in_channels % g or m.out_channels % g:
                raise PlanError(
                    f"{context} left grouped conv {name!r} with in_channels={m.in_channels}, "
                    f"out_channels={m.out_channels} not divisible by groups={g}. Remove the same "
                    "number of channels from every group."
                )
            expect = (m.out_channels, m.in_channels // g, *m.kernel_size)
            if tuple(m.weight.shape) != expect or (
                m.bias is not None and tuple(m.bias.shape) != (m.out_channels,)
            ):
                raise PlanError(
                    f"{context} left conv {name!r} with weight {tuple(m.weight.shape)} but "
                    f"attributes implying {expect}."
                )
        elif isinstance(m, nn.Linear):
            if tuple(m.weight.shape) != (m.out_features, m.in_features):
                raise PlanError(
                    f"{context} left linear {name!r} with weight {tuple(m.weight.shape)} but "
                    f"in/out features ({m.in_features}, {m.out_features})."
                )
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            sizes = {m.num_features}
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    sizes.add(int(t.shape[0]))
            if len(sizes) != 1:
                raise PlanError(
                    f"{context} left BatchNorm {name!r} with inconsistent sizes {sorted(sizes)}."
                )
    if inputs is None:
        return None
    try:
        out = run_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means a broken model
        raise PlanError(
            f"{context} produced a model that no longer runs on the example input ({exc}). The "
            "plan is inadmissible for this graph; check the layer names and indices."
        ) from exc
    return check_finite_output(out, context)


def check_finite_output(out: Any, context: str) -> Any:
    """``out`` unchanged; PlanError when a floating output tensor holds NaN/Inf."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if isinstance(out, dict):
        outs = tuple(out.values())
    for o in outs:
        if isinstance(o, Tensor) and o.is_floating_point() and not bool(torch.isfinite(o).all()):
            raise PlanError(f"{context} produced a model whose output contains NaN/Inf.")
    return out


def output_shapes(out: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors of a model output (a tensor, or nested tuples/lists/dicts)."""
    if isinstance(out, Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in output_shapes(o)]
    return []


def check_output(ref: list[tuple[int, ...]] | None, out: Any, context: str) -> None:
    """Output width guard: PlanError when ``out``'s shapes differ from ``ref`` (``None``: skip)."""
    if ref is None or out is None:
        return
    new = output_shapes(out)
    if new == ref:
        return
    width = ""
    for a, b in zip(ref, new, strict=False):
        if a != b:
            dims = [d for d in range(min(len(a), len(b))) if a[d] != b[d]]
            if dims and len(a) == len(b):
                width = f" (dim {dims[0]}: width {a[dims[0]]} -> {b[dims[0]]})"
            break
    old_s, new_s = (s[0] if len(s) == 1 else s for s in (ref, new))
    raise PlanError(
        f"{context} changes the shape of the model's output from {old_s} to {new_s}"
        f"{width}. Such a plan is refused because the outputs are the model's classes/targets; "
        "pass allow_output_change=True to surgery.apply if this is intended."
    )
