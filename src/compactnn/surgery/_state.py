"""The :class:`~compactnn.plan.SetState` action: load a model's complete state, strictly."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError
from compactnn.plan import SetState
from compactnn.surgery._util import get_module

__all__ = ["apply_set_state"]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _where(key: str) -> str:
    layer = key.rpartition(".")[0]
    return f"layer {layer!r}" if layer else "the model itself"


def apply_set_state(model: nn.Module, a: SetState) -> None:
    """Copy ``a.state`` into the model's parameters and buffers (every one, same shapes).

    All keys and shapes are checked before anything is copied.

    Raises:
        PlanError: a skipped layer that does not exist, or the first key (in the model's
            ``state_dict`` order) that the plan lacks or whose shape differs, or the first key
            of the plan that the model lacks -- the plan was made for another architecture.
    """
    for layer in a.skip:
        get_module(model, layer, "SetState")
    skip = a.skip
    current = {
        k: v
        for k, v in model.state_dict(keep_vars=True).items()
        if isinstance(v, Tensor) and not any(k == p or k.startswith(p + ".") for p in skip)
    }
    hint = (
        "The plan was made for another architecture (or another configuration of it); apply it "
        "to a fresh instance of the model that was compressed."
    )
    for k, v in current.items():
        if k not in a.state:
            raise PlanError(
                f"SetState: the model has {k!r} (shape {_shape(v)}, {_where(k)}) but the plan "
                f"has no such tensor. {hint}"
            )
        if _shape(a.state[k]) != _shape(v):
            raise PlanError(
                f"SetState: {k!r} ({_where(k)}) has shape {_shape(v)} in the model after the "
                f"plan's structural actions but {_shape(a.state[k])} in the plan. {hint}"
            )
    for k, t in a.state.items():
        if k not in current:
            raise PlanError(
                f"SetState: the plan has {k!r} (shape {_shape(t)}, {_where(k)}) but the model has "
                f"no such parameter or buffer. {hint}"
            )
    with torch.no_grad():
        for k, v in current.items():
            v.copy_(a.state[k])
