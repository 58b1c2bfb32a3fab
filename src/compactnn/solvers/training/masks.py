"""Hold a sparse structure fixed: apply masks and keep them during fine-tuning.

After the ADMM / AULM iterations both papers fix the identified sparse structure and fine-tune
the network "w.r.t. non-zero parameters" (Kiaee Alg. 1 line 11; Lin Alg. 1 lines 10-12).
:func:`attach_masks` does this with gradient hooks (masked-out gradients are zero, so SGD,
momentum, Adam and decoupled or coupled weight decay leave zeroed weights at exactly zero), and,
when an optimizer is given, also re-applies the masks after every ``optimizer.step()``.

References:
    Kiaee et al. (2016) Algorithm 1 line 11; Lin et al. (2019) Algorithm 1 lines 10-12.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError, UnknownNameError

__all__ = ["apply_masks", "attach_masks", "MaskedFinetune"]


def _check_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise UnknownNameError(
            f"Masks given for unknown parameter(s) {', '.join(repr(u) for u in unknown)}; "
            f"known parameters: {', '.join(repr(n) for n in list(params)[:8])}"
            f"{', ...' if len(params) > 8 else ''}. Build the masks from the same parameters "
            "(e.g. ADMMEngine.masks())."
        )
    for n, m in masks.items():
        p = params[n]
        if not isinstance(m, Tensor) or tuple(m.shape) != tuple(p.shape):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ConfigError(
                f"The mask of parameter '{n}' must be a tensor of shape {tuple(p.shape)}. "
                f"Got {shape} instead; rebuild the masks from this model."
            )
        out[n] = (m != 0).to(device=p.device)
    return out


@torch.no_grad()
def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, every entry of ``params[name]`` where ``masks[name]`` is False/0.

    Args:
        params: ``{dotted name: parameter}``.
        masks: ``{dotted name: bool (or 0/1) tensor of the parameter's shape}``; True = kept.

    Raises:
        UnknownNameError: a mask for a name that is not in ``params``.
        ConfigError: a mask whose shape differs from its parameter's.
    """
    for n, m in _check_masks(params, masks).items():
        params[n].mul_(m.to(params[n].dtype))


class MaskedFinetune:
    """Keep masked-out weights at exactly zero while training (a context manager / handle).

    Attaching zeroes the masked-out entries, registers a gradient hook per masked parameter
    that multiplies its gradient by the mask, and, if ``optimizer`` is given, an optimizer
    step post-hook that re-applies the masks (robust to any optimizer update rule).

    Args:
        model: the network whose ``named_parameters()`` the masks refer to.
        masks: ``{dotted parameter name: bool mask}`` (True = kept).
        optimizer: optional optimizer whose steps are followed by re-masking.

    Example::

        with MaskedFinetune(model, engine.masks(), optimizer=opt):
            train(...)
    """

    def __init__(
        self,
        model: nn.Module,
        masks: Mapping[str, Tensor],
        *,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.model = model
        self.masks = masks
        self.optimizer = optimizer
        self._handles: list[Any] = []
        self._params: dict[str, Tensor] = {}
        self._masks: dict[str, Tensor] = {}

    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> MaskedFinetune:
        """Zero the masked-out entries and register the hooks (idempotent)."""
        if self._handles:
            return self
        self._params = dict(self.model.named_parameters())
        self._masks = _check_masks(self._params, self.masks)
        apply_masks(self._params, self._masks)
        for n, m in self._masks.items():
            p = self._params[n]
            if not p.requires_grad:
                continue
            mask = m.to(p.dtype)
            self._handles.append(p.register_hook(lambda g, mask=mask: g * mask))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(self._after_step))
        return self

    def _after_step(self, *_: Any) -> None:
        apply_masks(self._params, self._masks)

    def remove(self) -> None:
        """Remove every hook (idempotent); the weights keep their current values."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskedFinetune:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> MaskedFinetune:
    """Attach ``masks`` to ``model`` for fine-tuning; call ``handle.remove()`` to detach.

    Args:
        model: the network; mask names are its dotted parameter names.
        masks: boolean masks, True = kept (e.g. :meth:`ADMMEngine.masks`).
        optimizer: optional optimizer; masks are re-applied after each of its steps.

    Returns:
        The attached :class:`MaskedFinetune` handle.

    Raises:
        UnknownNameError: a mask for a name that is not a parameter of ``model``.
        ConfigError: a mask whose shape differs from its parameter's.
    """
    return MaskedFinetune(model, masks, optimizer=optimizer).attach()
