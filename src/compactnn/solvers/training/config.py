"""The ADMM / AULM engine's hyper-parameters: :class:`ADMMConfig`, the penalty and structure
names, and the checks of ``lam`` (one float, a mapping by parameter name or a sequence).

The engine itself is :class:`compactnn.solvers.training.admm.ADMMEngine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from compactnn._validation import check_bool, check_choice, check_float, check_int
from compactnn.errors import ConfigError, UnknownNameError

__all__ = ["PENALTIES", "STRUCTURES", "ADMMConfig"]

PENALTIES: tuple[str, ...] = ("l0", "l1", "l20", "l21")
"""Penalty names: element-wise ``l1``/``l0``, group ``l21``/``l20`` (prox keys of compactnn.prox)."""

STRUCTURES: tuple[str, ...] = ("filters", "channels", "columns", "kernels", "elements")
"""Group structures understood by :func:`compactnn.structure.group_dims`."""

_ELEMENTWISE = ("l0", "l1")
_OWNER = "ADMMConfig"

LamSpec = float | Mapping[str, float] | Sequence[float]


@dataclass(frozen=True)
class ADMMConfig:
    """Hyper-parameters of the ADMM / AULM engine.

    Attributes:
        rho: penalty parameter ρ > 0 of the augmented Lagrangian. Lin et al. set ρ = 1
            (sec. III-D-2); Kiaee et al. only ask for a "sufficiently large" ρ.
        penalty: regulariser g: ``"l21"`` (group lasso, Kiaee eq. (9) / Lin eq. (14)),
            ``"l20"`` (group cardinality, Kiaee eq. (10) / Lin eq. (15)), ``"l1"``
            (element-wise, Lin eq. (16)) or ``"l0"`` (element-wise hard threshold).
        lam: regularisation factor (μ in Kiaee, λ in Lin): one float for every regularised
            parameter, a mapping ``{param name: value}`` covering each of them, or a sequence
            with one value per parameter (in the order of the ``params`` mapping).
        structure: the sparsity groups, see :func:`compactnn.structure.group_dims`:
            ``"filters"`` (Lin), ``"kernels"`` (Kiaee's filter blocks W_ij), ``"channels"``,
            ``"columns"`` or ``"elements"``. ``None`` (default) picks ``"filters"`` for group
            penalties and ``"elements"`` for ``"l1"``/``"l0"``.
        overrelax: Nesterov over-relaxation of F and Y (AULM, Lin eqs. (8)-(9)).
        r: over-relaxation constant in γ_{k+1} = k/(k+r); r >= 3, 3 is standard (Lin).
        restart: (not in the papers; off by default) restart the over-relaxation, i.e. drop
            the momentum and count k from 0 again, whenever the combined residual
            c_k = ‖Y^k − Ŷ^{k−1}‖²/ρ + ρ‖F^k − F̂^{k−1}‖² fails to decrease by the factor
            ``restart_eta`` (Goldstein et al., 2014, "Fast ADMM", Alg. 8). Without it the
            over-relaxed iteration can fail to converge when the W-problem is not strongly
            convex.
        restart_eta: the restart factor η in (0, 1] (Goldstein et al.: 0.999).
        eps: stopping threshold ε on ‖W − F‖_F and ‖F^{k+1} − F^k‖_F (global over the layers).
        stop_rule: ``"both"`` stops when both distances are ≤ ε (Kiaee, Alg. 1 line 10);
            ``"either"`` when one of them is (Lin, Alg. 1 line 9).
        max_outer: maximal number of outer iterations ξ (Kiaee suggests ξ = 10).
        w_epochs: epochs the W-step closure should run per outer iteration (read by
            :func:`compactnn.solvers.training.sgd_w_step`; Kiaee's schedule is in
            :mod:`compactnn.solvers.training.schedule`).
    """

    rho: float = 1.0
    penalty: str = "l21"
    lam: LamSpec = 1e-3
    structure: str | None = None
    overrelax: bool = False
    r: int = 3
    restart: bool = False
    restart_eta: float = 0.999
    eps: float = 1e-3
    stop_rule: str = "both"
    max_outer: int = 10
    w_epochs: int = 1

    def __post_init__(self) -> None:
        check_float(self.rho, "rho", _OWNER, min_value=0.0, min_inclusive=False)
        check_choice(self.penalty, "penalty", _OWNER, PENALTIES)
        if self.structure is None:
            default = "elements" if self.penalty in _ELEMENTWISE else "filters"
            object.__setattr__(self, "structure", default)
        check_choice(self.structure, "structure", _OWNER, STRUCTURES)
        if self.penalty in _ELEMENTWISE and self.structure != "elements":
            group = "l21" if self.penalty == "l1" else "l20"
            raise ConfigError(
                f"The 'penalty' parameter of {_OWNER} is element-wise ({self.penalty!r}) but "
                f"'structure' is {self.structure!r}. Use penalty={group!r} for group sparsity "
                f"on {self.structure} (Kiaee's l1/l0 on filter blocks W_ij is "
                f"penalty='l21'/'l20' with structure='kernels'), or structure='elements'."
            )
        check_bool(self.overrelax, "overrelax", _OWNER)
        check_int(self.r, "r", _OWNER, min_value=3)
        check_bool(self.restart, "restart", _OWNER)
        check_float(
            self.restart_eta,
            "restart_eta",
            _OWNER,
            min_value=0.0,
            max_value=1.0,
            min_inclusive=False,
        )
        check_float(self.eps, "eps", _OWNER, min_value=0.0, min_inclusive=False)
        check_choice(self.stop_rule, "stop_rule", _OWNER, ("both", "either"))
        check_int(self.max_outer, "max_outer", _OWNER, min_value=1)
        check_int(self.w_epochs, "w_epochs", _OWNER, min_value=1)
        object.__setattr__(self, "lam", _freeze_lam(self.lam))


def _check_lam_value(value: Any, where: str) -> float:
    return check_float(value, where, _OWNER, min_value=0.0)


def _freeze_lam(lam: Any) -> LamSpec:
    if isinstance(lam, Mapping):
        out: dict[str, float] = {}
        for key, value in lam.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"The 'lam' parameter of {_OWNER} must map parameter names (str) to "
                    f"floats. Got key {key!r} instead."
                )
            out[key] = _check_lam_value(value, f"lam[{key!r}]")
        return MappingProxyType(out)
    if isinstance(lam, (str, bytes)) or not isinstance(lam, (Sequence, int, float)):
        raise ConfigError(
            f"The 'lam' parameter of {_OWNER} must be a float >= 0, a mapping "
            f"{{param name: float}} or a sequence of floats. Got {lam!r} instead."
        )
    if isinstance(lam, Sequence):
        return tuple(_check_lam_value(v, f"lam[{i}]") for i, v in enumerate(lam))
    return _check_lam_value(lam, "lam")


def _resolve_lam(lam: LamSpec, names: Sequence[str]) -> dict[str, float]:
    if isinstance(lam, Mapping):
        unknown = [k for k in lam if k not in names]
        if unknown:
            raise UnknownNameError(
                f"The 'lam' mapping of {_OWNER} names parameters that are not regularised: "
                f"{', '.join(repr(u) for u in unknown)}. Regularised parameters: "
                f"{', '.join(repr(n) for n in names)}. Fix the keys or add those parameters."
            )
        missing = [n for n in names if n not in lam]
        if missing:
            raise ConfigError(
                f"The 'lam' mapping of {_OWNER} has no value for "
                f"{', '.join(repr(m) for m in missing)}. Give one value per regularised "
                "parameter, or a single float for all of them."
            )
        return {n: float(lam[n]) for n in names}
    if isinstance(lam, Sequence):
        if len(lam) != len(names):
            raise ConfigError(
                f"The 'lam' parameter of {_OWNER} has {len(lam)} values but there are "
                f"{len(names)} regularised parameters ({', '.join(repr(n) for n in names)}). "
                "Give one value per parameter, a mapping, or a single float."
            )
        return {n: float(v) for n, v in zip(names, lam)}
    return {n: float(lam) for n in names}
