r"""Proximal-gradient (forward-backward splitting) driver for training with a non-smooth regulariser.

The problem of Zhou et al. (2016) is

.. math::

    \min_W\; \mathcal{L}(W) + \sum_j \lambda_j\, g_j(W_{G_j}),

with the parameters partitioned into groups :math:`G_j`, each with its own regulariser
:math:`g_j` (e.g. the group lasso of the neurons / filters of one layer). Every training step
is a forward (gradient) step on :math:`\mathcal{L}` by the optimizer, then a backward
(proximal) step per parameter group with the step size :math:`\eta` of that optimizer step:

.. math::

    W_{G_j} \leftarrow \operatorname{prox}_{\eta\lambda_j g_j}\big(W_{G_j} - \eta\,\nabla_{G_j}
    \mathcal{L}(W)\big),

e.g. for the group lasso the block soft threshold with threshold :math:`\eta\lambda_j`
(:func:`compactnn.prox.group_soft_threshold`). :class:`ProxGradient` is that backward step as a
``step_hook`` of :func:`compactnn.train.train`, which calls it after every optimizer step with the
step's learning rate. A prox of a sum is not a chain of proxes, so a parameter belongs to at
most one group.

References:
    Zhou, Alvarez, Porikli (2016), "Less Is More: Towards Compact CNNs", sec. 3 (forward-backward
    splitting, group sparsity on neurons) and supplement; Parikh & Boyd (2014), "Proximal
    Algorithms", sec. 4.2 (proximal gradient method).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from compactnn._validation import check_choice, check_float
from compactnn.errors import ConfigError
from compactnn.prox import PROX, penalty
from compactnn.structure import GROUP_KINDS, group_dims

__all__ = ["PROX_PENALTIES", "ProxGroup", "ProxGradient", "prox_step_hook"]

PROX_PENALTIES: tuple[str, ...] = ("l1", "l0", "l21", "l20")
"""Penalties with a built-in prox (keys of :data:`compactnn.prox.PROX`)."""

_OWNER = "ProxGroup"
_ELEMENTWISE = ("l1", "l0")


@dataclass(frozen=True, eq=False)
class ProxGroup:
    """One parameter group of the proximal step and its regulariser :math:`\\lambda g`.

    Attributes:
        params: ``{dotted name: parameter}`` of the group.
        lam: λ >= 0, the weight of the regulariser; the prox threshold is η·λ.
        penalty: ``"l21"`` (group lasso: block soft threshold), ``"l20"`` (block hard
            threshold), ``"l1"`` (soft threshold) or ``"l0"`` (hard threshold); ignored when
            ``prox`` is given.
        structure: the groups of ``"l21"``/``"l20"``, a kind of
            :func:`compactnn.structure.group_dims` (``"filters"`` = neurons / filters, the
            default; ``"channels"``, ``"columns"``, ``"kernels"``, ``"elements"``).
        prox: a custom proximal operator ``prox(v, t)`` returning
            :math:`\\arg\\min_x t\\,g(x) + \\tfrac12\\|x - v\\|^2` with ``t = η·λ`` (e.g. a
            low-rank step); replaces ``penalty``.
        joint: the group's parameters are *one* variable of the prox, e.g. a layer's weight and
            bias for Zhou et al.'s neurons (a neuron = its weights and its bias): each is viewed
            as a matrix ``(n, -1)`` (same ``n``: axis 0 = the neurons / filters), in the
            mapping's order, and the prox runs on their column concatenation ``(n, D)``
            (built-in penalties: groups = rows, i.e. ``structure="filters"``).
    """

    params: Mapping[str, Tensor]
    lam: float
    penalty: str = "l21"
    structure: str = "filters"
    prox: Callable[[Tensor, float], Tensor] | None = None
    joint: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping) or not self.params:
            raise ConfigError(
                f"The 'params' parameter of {_OWNER} must be a non-empty mapping "
                f"{{dotted name: parameter}}. Got {self.params!r} instead."
            )
        for name, p in self.params.items():
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise ConfigError(
                    f"The 'params' parameter of {_OWNER} must hold floating-point tensors; "
                    f"'{name}' is {type(p).__name__}."
                )
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "lam", check_float(self.lam, "lam", _OWNER, min_value=0.0))
        if not isinstance(self.joint, bool):
            raise ConfigError(
                f"The 'joint' parameter of {_OWNER} must be a bool. Got {self.joint!r}."
            )
        if self.joint:
            rows = {int(p.shape[0]) if p.dim() else -1 for p in self.params.values()}
            if len(rows) != 1 or -1 in rows:
                shapes = {n: tuple(p.shape) for n, p in self.params.items()}
                raise ConfigError(
                    f"A joint {_OWNER} needs parameters with the same size of axis 0 (the "
                    f"neurons / filters). Got shapes {shapes}."
                )
            if self.prox is None and self.structure != "filters":
                raise ConfigError(
                    f"A joint {_OWNER} with a built-in penalty groups the rows of the "
                    f"concatenated matrix: structure must be 'filters'. Got {self.structure!r}."
                )
        if self.prox is not None:
            if not callable(self.prox):
                raise ConfigError(
                    f"The 'prox' parameter of {_OWNER} must be callable as prox(v, t). "
                    f"Got {self.prox!r} instead."
                )
            return
        check_choice(self.penalty, "penalty", _OWNER, PROX_PENALTIES)
        check_choice(self.structure, "structure", _OWNER, GROUP_KINDS)


class ProxGradient:
    """The backward (proximal) step of forward-backward splitting, per parameter group.

    Called as ``hook(lr)`` after each optimizer step (see :func:`compactnn.train.train`'s
    ``step_hook``): every parameter ``p`` of group ``j`` becomes
    ``prox_{lr·λ_j g_j}(p)``, in place (parameter identity is kept, so the optimizer stays
    valid).

    Args:
        groups: the parameter groups; a parameter may belong to one group only.

    Raises:
        ConfigError: no group, a non-:class:`ProxGroup`, or a parameter in two groups.

    References:
        Zhou et al. (2016) sec. 3; Parikh & Boyd (2014) sec. 4.2.
    """

    def __init__(self, groups: Sequence[ProxGroup] | ProxGroup) -> None:
        groups = [groups] if isinstance(groups, ProxGroup) else list(groups)
        if not groups or not all(isinstance(g, ProxGroup) for g in groups):
            raise ConfigError(
                "The 'groups' argument of ProxGradient must be a non-empty sequence of ProxGroup."
            )
        seen: dict[int, str] = {}
        for g in groups:
            for name, p in g.params.items():
                if id(p) in seen:
                    raise ConfigError(
                        f"Parameter '{name}' is in two proximal groups (also as "
                        f"'{seen[id(p)]}'); a prox of a sum is not a chain of proxes: put each "
                        "parameter in one group."
                    )
                seen[id(p)] = name
        self.groups = groups
        self._dims = [
            {n: self._group_dims(g, n, p) for n, p in g.params.items()} for g in self.groups
        ]
        self.steps = 0

    @staticmethod
    def _group_dims(g: ProxGroup, name: str, p: Tensor) -> tuple[int, ...]:
        if g.joint:
            return (0,) if g.prox is None and g.penalty not in _ELEMENTWISE else (0, 1)
        if g.prox is not None or g.penalty in _ELEMENTWISE:
            return tuple(range(p.dim()))
        return tuple(int(d) % max(p.dim(), 1) for d in group_dims(g.structure, p))

    @torch.no_grad()
    def __call__(self, lr: float) -> None:
        """Apply ``prox_{lr·λ g}`` to every parameter of every group, in place."""
        eta = check_float(lr, "lr", "ProxGradient", min_value=0.0)
        for g, dims in zip(self.groups, self._dims, strict=True):
            t = eta * g.lam
            if g.joint:
                self._joint_step(g, t)
                continue
            for name, p in g.params.items():
                if g.prox is not None:
                    new = g.prox(p.detach(), t)
                else:
                    new = PROX[g.penalty](p.detach(), t, dims[name])
                if not isinstance(new, Tensor) or new.shape != p.shape:
                    raise ConfigError(
                        f"The prox of parameter '{name}' returned "
                        f"{getattr(new, 'shape', type(new).__name__)}; it must return a tensor "
                        f"of shape {tuple(p.shape)}."
                    )
                p.copy_(new)
        self.steps += 1

    @staticmethod
    def _joint_matrix(g: ProxGroup) -> Tensor:
        n = next(iter(g.params.values())).shape[0]
        return torch.cat([p.detach().reshape(n, -1) for p in g.params.values()], dim=1)

    def _joint_step(self, g: ProxGroup, t: float) -> None:
        v = self._joint_matrix(g)
        if g.prox is not None:
            new = g.prox(v, t)
        else:
            new = PROX[g.penalty](v, t, (0,) if g.penalty not in _ELEMENTWISE else (0, 1))
        if not isinstance(new, Tensor) or new.shape != v.shape:
            raise ConfigError(
                f"The prox of the joint group {list(g.params)} returned "
                f"{getattr(new, 'shape', type(new).__name__)}; it must return a tensor of "
                f"shape {tuple(v.shape)}."
            )
        col = 0
        for p in g.params.values():
            width = p[0].numel() if p.dim() > 1 else 1
            p.copy_(new[:, col : col + width].reshape(p.shape))
            col += width

    def penalty(self) -> float:
        """Σ_j λ_j g_j(W_{G_j}) at the current parameters (built-in penalties only)."""
        total = 0.0
        for g, dims in zip(self.groups, self._dims, strict=True):
            if g.prox is not None:
                raise ConfigError(
                    "ProxGradient.penalty() needs built-in penalties; a group has a custom prox."
                )
            if g.joint:
                v = self._joint_matrix(g)
                gd = (0,) if g.penalty not in _ELEMENTWISE else (0, 1)
                total += float(penalty(g.penalty, v, g.lam, gd))
                continue
            for name, p in g.params.items():
                total += float(penalty(g.penalty, p.detach(), g.lam, dims[name]))
        return total

    def group_counts(self) -> dict[str, dict[str, int]]:
        """``{name: {"nonzero": ..., "total": ...}}``: the groups of every parameter."""
        out: dict[str, dict[str, int]] = {}
        for g, dims_of in zip(self.groups, self._dims, strict=True):
            if g.joint:
                nz = self._joint_matrix(g).ne(0).any(dim=1)
                for name in g.params:
                    out[name] = {"nonzero": int(nz.sum()), "total": int(nz.numel())}
                continue
            for name, p in g.params.items():
                other = tuple(d for d in range(p.dim()) if d not in dims_of[name])
                nz = (p.detach() != 0).any(dim=other) if other else p.detach() != 0
                out[name] = {"nonzero": int(nz.sum()), "total": int(nz.numel())}
        return out


def prox_step_hook(groups: Sequence[ProxGroup] | ProxGroup) -> ProxGradient:
    """The ``step_hook`` of :func:`compactnn.train.train` for proximal-gradient training.

    Example (group lasso on the neurons of ``fc1``, Zhou et al. 2016)::

        hook = prox_step_hook([ProxGroup({"fc1.weight": model.fc1.weight}, lam=1e-3)])
        train(model, loader, config=TrainConfig(momentum=0.0), step_hook=hook)

    Args:
        groups: one :class:`ProxGroup` or a sequence of them.

    Returns:
        A :class:`ProxGradient`.
    """
    return ProxGradient(groups)
