"""ADMM / AULM engine for training-based structured sparsity.

The engine solves, inside an ordinary training loop, the split problem shared by Kiaee et al.
(2016) and Lin et al. (2019, AULM):

.. math::

    \\min_{W, F}\\; \\mathcal{L}(W) + \\sum_l \\lambda_l\\, g(F_l)
    \\quad\\text{s.t.}\\quad W_l = F_l,

with the augmented Lagrangian
:math:`\\mathcal{L}(W) + \\sum_l \\lambda_l g(F_l) + \\langle Y_l, W_l - F_l\\rangle
+ \\tfrac{\\rho}{2}\\|W_l - F_l\\|_F^2`, minimised by alternating

1. **W-step** (performance promoting, a user closure doing SGD):
   :math:`\\min_W \\mathcal{L}(W) + \\tfrac{\\rho}{2}\\sum_l \\|W_l - \\hat F_l + \\hat Y_l/\\rho\\|_F^2`
   (the second term is :meth:`ADMMEngine.penalty_loss`);
2. **F-step** (sparsity promoting, closed form):
   :math:`F_l = \\operatorname{prox}_{(\\lambda_l/\\rho) g}(W_l + \\hat Y_l/\\rho)`;
3. **dual step**: :math:`Y_l \\leftarrow \\hat Y_l + \\rho (W_l - F_l)`;
4. optional **over-relaxation** (AULM, Nesterov):
   :math:`\\hat Y^{k+1} = Y^{k+1} + \\gamma_{k+1}(Y^{k+1} - Y^k)`,
   :math:`\\hat F^{k+1} = F^{k+1} + \\gamma_{k+1}(F^{k+1} - F^k)`, :math:`\\gamma_{k+1} = k/(k+r)`.

Without over-relaxation :math:`\\hat F = F` and :math:`\\hat Y = Y` (plain ADMM, Kiaee).

The hyper-parameters (:class:`ADMMConfig`, ``PENALTIES``, ``STRUCTURES``) live in
:mod:`compactnn.solvers.training.config` and are re-exported here.

References:
    Kiaee, Gagné, Abbasi (2016), "Alternating Direction Method of Multipliers for Sparse
    Convolutional Neural Networks", sec. 3, eqs. (2)-(10), Algorithm 1.
    Lin et al. (2019), "Toward Compact ConvNets via Structure-Sparsity Regularized Filter
    Pruning", sec. III-D, eqs. (3)-(18), Algorithm 1 (AULM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import CompactnnError, ConfigError, SolverError, UnknownNameError
from compactnn.prox import PROX as _PROX
from compactnn.prox import penalty as _penalty
from compactnn.solvers.training.config import PENALTIES, STRUCTURES, ADMMConfig, _resolve_lam
from compactnn.structure import group_dims as _structure_group_dims

__all__ = [
    "PENALTIES",
    "STRUCTURES",
    "ADMMConfig",
    "ADMMState",
    "ADMMEngine",
]


@dataclass
class ADMMState:
    """The engine's state (tensors are detached copies; parameters are never stored here).

    Attributes:
        F: sparse auxiliary variables F_l (Kiaee's F, Lin's F).
        Y: dual variables Y_l (Kiaee's Γ, Lin's Y).
        F_hat: over-relaxed F̂ used in the W-step (equals F without over-relaxation).
        Y_hat: over-relaxed Ŷ used in the W- and F-steps (equals Y without over-relaxation).
        F_prev: F of the previous iteration (for ‖F^{k+1} − F^k‖).
        Y_prev: Y of the previous iteration.
        k: completed outer iterations.
        k_momentum: iterations since the last restart (the k of γ = k/(k+r)).
        c_prev: last combined residual (restart rule), ``inf`` before the first iteration.
        history: one dict per completed iteration, see :meth:`ADMMEngine.dual_step`.
        phase: ``"w"`` (next: W-step then :meth:`ADMMEngine.f_step`) or ``"dual"``
            (next: :meth:`ADMMEngine.dual_step`).
    """

    F: dict[str, Tensor]
    Y: dict[str, Tensor]
    F_hat: dict[str, Tensor]
    Y_hat: dict[str, Tensor]
    F_prev: dict[str, Tensor]
    Y_prev: dict[str, Tensor]
    k: int = 0
    k_momentum: int = 0
    c_prev: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "w"


def _ops() -> tuple[Mapping[str, Callable[..., Tensor]], Callable[..., Tensor]]:
    return _PROX, _penalty


def _group_dims(kind: str, name: str, weight: Tensor) -> tuple[int, ...]:
    try:
        dims = _structure_group_dims(kind, weight)
    except CompactnnError as exc:
        raise type(exc)(f"Parameter '{name}' (shape {tuple(weight.shape)}): {exc}") from exc
    return tuple(int(d) % max(weight.dim(), 1) for d in dims)


def _group_mask(x: Tensor, gdims: tuple[int, ...]) -> Tensor:
    """Boolean tensor over the groups: True where the group has a non-zero entry."""
    nz = x != 0
    other = tuple(d for d in range(x.dim()) if d not in gdims)
    return nz.any(dim=other, keepdim=True) if other else nz


class ADMMEngine:
    """Stateful ADMM / AULM engine over a set of regularised parameters.

    Typical use, inside a training loop::

        engine = ADMMEngine({"conv1.weight": model.conv1.weight}, ADMMConfig(lam=1e-2))
        for _ in range(config.max_outer):
            def w_step():
                for x, y in loader:
                    opt.zero_grad()
                    (loss_fn(model(x), y) + engine.penalty_loss()).backward()
                    opt.step()
            engine.step_outer(w_step)
            if engine.converged():
                break
        masks = engine.masks()

    The engine never writes to the parameters: only the closure (the W-step) does.

    Args:
        params: ``{dotted name: parameter}`` of the regularised weights (W_l / K^l).
        config: the hyper-parameters.

    Raises:
        ConfigError: empty or non-floating parameters, a ``lam`` of the wrong length.
        UnknownNameError: ``lam`` mapping keys that are not in ``params``.

    References:
        Kiaee et al. (2016) sec. 3, Algorithm 1; Lin et al. (2019) sec. III-D, Algorithm 1.
    """

    def __init__(self, params: Mapping[str, nn.Parameter | Tensor], config: ADMMConfig) -> None:
        if not isinstance(config, ADMMConfig):
            raise ConfigError(
                f"ADMMEngine expects an ADMMConfig as 'config'. Got {type(config).__name__}."
            )
        if not isinstance(params, Mapping) or len(params) == 0:
            raise ConfigError(
                "The 'params' argument of ADMMEngine must be a non-empty mapping "
                "{dotted name: parameter} of the weights to regularise."
            )
        for name, p in params.items():
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise ConfigError(
                    f"Parameter '{name}' passed to ADMMEngine must be a floating-point tensor. "
                    f"Got {type(p).__name__}."
                )
        self.config = config
        self.params: dict[str, Tensor] = dict(params)
        names = list(self.params)
        self.lam: dict[str, float] = _resolve_lam(config.lam, names)
        structure = str(config.structure)  # resolved from None in ADMMConfig.__post_init__
        self.group_dims: dict[str, tuple[int, ...]] = {
            n: _group_dims(structure, n, p) for n, p in self.params.items()
        }
        self.state: ADMMState = self.init_state()

    # ------------------------------------------------------------------ state
    def init_state(self) -> ADMMState:
        """Initial state of both papers: F = F̂ = W, Y = Ŷ = 0 (Kiaee Alg. 1 l. 3, Lin l. 1)."""
        with torch.no_grad():
            w = {n: p.detach().clone() for n, p in self.params.items()}
            z = {n: torch.zeros_like(v) for n, v in w.items()}
        return ADMMState(
            F=w,
            Y=z,
            F_hat=dict(w),
            Y_hat=dict(z),
            F_prev=dict(w),
            Y_prev=dict(z),
        )

    def _gamma(self) -> float:
        if not self.config.overrelax:
            return 0.0
        k = self.state.k_momentum
        return k / (k + self.config.r)

    @torch.no_grad()
    def warm_start(self, previous: ADMMEngine | ADMMState) -> None:
        """Start from the F and Y of a previous run instead of F = W, Y = 0.

        F = F̂ = F_prev ← previous F, Y = Ŷ = Y_prev ← previous Y (copies); the iteration
        count, the over-relaxation momentum, the restart memory and the history start afresh.
        Kiaee et al. warm-start each μ of the path from the previous μ (Alg. 1 line 5).

        Args:
            previous: an engine (or its state) over the same parameter names and shapes.

        Raises:
            ConfigError: different parameter names or shapes.
            SolverError: this engine is between :meth:`f_step` and :meth:`dual_step`.
        """
        if self.state.phase != "w":
            raise SolverError(
                "ADMMEngine.warm_start() was called between f_step() and dual_step(); "
                "warm-start before the first W-step."
            )
        st = previous.state if isinstance(previous, ADMMEngine) else previous
        if not isinstance(st, ADMMState):
            raise ConfigError(
                "The 'previous' argument of ADMMEngine.warm_start must be an ADMMEngine or an "
                f"ADMMState. Got {type(previous).__name__} instead."
            )
        for n, p in self.params.items():
            for what, src in (("F", st.F), ("Y", st.Y)):
                t = src.get(n)
                if t is None or tuple(t.shape) != tuple(p.shape):
                    got = "missing" if t is None else f"shape {tuple(t.shape)}"
                    raise ConfigError(
                        f"Cannot warm-start parameter '{n}' (shape {tuple(p.shape)}): the "
                        f"previous {what} is {got}. Warm-start only from an engine over the "
                        "same parameters."
                    )
        if set(st.F) != set(self.params):
            extra = sorted(set(st.F) - set(self.params))
            raise ConfigError(
                f"Cannot warm-start: the previous state has parameter(s) {extra} that this "
                "engine does not regularise. Use an engine over the same parameters."
            )
        f = {n: st.F[n].detach().clone() for n in self.params}
        y = {n: st.Y[n].detach().clone() for n in self.params}
        self.state = ADMMState(
            F=f, Y=y, F_hat=dict(f), Y_hat=dict(y), F_prev=dict(f), Y_prev=dict(y)
        )

    @torch.no_grad()
    def prox_input(self, name: str) -> Tensor:
        """V_l = W_l + Ŷ_l/ρ, the point whose prox the F-step takes (a new tensor).

        Lets an :meth:`f_step` variant (e.g. Kiaee's over-pruning guard) re-threshold V_l and
        store the result with :meth:`set_f`.
        """
        return self.params[self._known(name)].detach() + self.state.Y_hat[name] / self.config.rho

    @torch.no_grad()
    def set_f(self, name: str, value: Tensor) -> None:
        """Replace F_l after :meth:`f_step` and before :meth:`dual_step`.

        For F-step variants that select groups differently from the prox (Kiaee sec. 4.1's
        over-pruning guard). F_prev keeps the value before :meth:`f_step`; F̂ is formed from
        the new F in :meth:`dual_step`.

        Raises:
            UnknownNameError: ``name`` is not a regularised parameter.
            ConfigError: ``value`` has the wrong shape or non-finite entries.
            SolverError: not called between :meth:`f_step` and :meth:`dual_step`.
        """
        if self.state.phase != "dual":
            raise SolverError(
                "ADMMEngine.set_f() must be called after f_step() and before dual_step()."
            )
        p = self.params[self._known(name)]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(p.shape):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(
                f"The new F of parameter '{name}' must be a tensor of shape {tuple(p.shape)}. "
                f"Got {shape} instead."
            )
        if not bool(torch.isfinite(value).all()):
            raise ConfigError(f"The new F of parameter '{name}' has non-finite entries.")
        self.state.F[name] = value.detach().to(dtype=p.dtype, device=p.device)

    def _known(self, name: str) -> str:
        if name not in self.params:
            raise UnknownNameError(
                f"'{name}' is not a regularised parameter of this ADMMEngine; known: "
                f"{', '.join(repr(n) for n in self.params)}."
            )
        return name

    # ------------------------------------------------------------------ steps
    def w_targets(self) -> dict[str, Tensor]:
        """U_l = F̂_l − Ŷ_l/ρ, the targets of the W-step (Kiaee eq. (7), Lin's T_1 eq. (10)).

        Useful when the W-step has a closed form (e.g. a least-squares loss).
        """
        rho = self.config.rho
        return {n: self.state.F_hat[n] - self.state.Y_hat[n] / rho for n in self.params}

    def penalty_loss(self) -> Tensor:
        """Augmented term to add to the task loss in the W-step (differentiable in W).

        .. math:: \\frac{\\rho}{2}\\sum_l \\|W_l - \\hat F_l + \\hat Y_l/\\rho\\|_F^2

        References:
            Kiaee et al. (2016) eq. (7); Lin et al. (2019) eqs. (10)-(11).
        """
        rho = self.config.rho
        terms = [
            (p - (self.state.F_hat[n] - self.state.Y_hat[n] / rho)).pow(2).sum()
            for n, p in self.params.items()
        ]
        return 0.5 * rho * sum(terms[1:], terms[0])

    @torch.no_grad()
    def f_step(self) -> None:
        """Sparsity-promoting step: F_l = prox_{(λ_l/ρ) g}(W_l + Ŷ_l/ρ).

        The over-relaxed F̂ (Lin eq. (9)) is formed in :meth:`dual_step`, after the restart
        test; nothing reads F̂ in between.

        .. math:: F_l = \\arg\\min_F \\lambda_l g(F) + \\frac{\\rho}{2}\\|F - W_l - \\hat Y_l/\\rho\\|_F^2

        References:
            Kiaee et al. (2016) eqs. (8)-(10); Lin et al. (2019) eqs. (12)-(16), (9).
        """
        prox_table, _ = _ops()
        prox = prox_table[self.config.penalty]
        rho = self.config.rho
        st = self.state
        for n, p in self.params.items():
            v = p.detach() + st.Y_hat[n] / rho
            f_new = prox(v, self.lam[n] / rho, self.group_dims[n])
            if not bool(torch.isfinite(f_new).all()):
                raise SolverError(
                    f"ADMM F-step produced non-finite values for parameter '{n}'; lower the "
                    "learning rate of the W-step or increase rho."
                )
            st.F_prev[n] = st.F[n]
            st.F[n] = f_new
        st.phase = "dual"

    @torch.no_grad()
    def dual_step(self) -> None:
        """Dual ascent Y_l = Ŷ_l + ρ (W_l − F_l), then F̂, Ŷ (AULM); records one history entry.

        History entry keys: ``k`` (1-based iteration), ``primal_residual`` ‖W − F‖_F,
        ``f_change`` ‖F^{k+1} − F^k‖_F, ``dual_residual`` ρ‖F^{k+1} − F^k‖_F, ``penalty``
        Σ_l λ_l g(F_l), ``nnz_groups`` / ``total_groups`` (summed over layers),
        ``nnz_groups_per_layer``, ``gamma``, ``restarted``. Norms are global over all regularised layers.

        Raises:
            SolverError: when called without a preceding :meth:`f_step`.

        References:
            Kiaee et al. (2016) eq. (6); Lin et al. (2019) eqs. (7)-(8).
        """
        st = self.state
        if st.phase != "dual":
            raise SolverError(
                "ADMMEngine.dual_step() was called without a preceding f_step(); call "
                "f_step() after the W-step and before dual_step()."
            )
        cfg = self.config
        rho = cfg.rho
        gamma = self._gamma()
        y_new = {n: st.Y_hat[n] + rho * (p.detach() - st.F[n]) for n, p in self.params.items()}
        restarted = False
        if cfg.overrelax and cfg.restart:
            c = sum(
                float((y_new[n] - st.Y_hat[n]).pow(2).sum()) / rho
                + rho * float((st.F[n] - st.F_hat[n]).pow(2).sum())
                for n in self.params
            )
            if c < cfg.restart_eta * st.c_prev or st.k_momentum == 0:
                st.c_prev = c
            else:
                restarted = True
                st.c_prev = st.c_prev / cfg.restart_eta
                gamma = 0.0
        for n in self.params:
            st.Y_prev[n] = st.Y[n]
            st.Y[n] = y_new[n]
            if gamma:
                st.Y_hat[n] = y_new[n] + gamma * (y_new[n] - st.Y_prev[n])
                st.F_hat[n] = st.F[n] + gamma * (st.F[n] - st.F_prev[n])
            else:
                st.Y_hat[n] = y_new[n]
                st.F_hat[n] = st.F[n]
        st.k += 1
        st.k_momentum = 0 if restarted else st.k_momentum + 1
        st.phase = "w"
        stats = self._stats(gamma)
        stats["restarted"] = restarted
        st.history.append(stats)

    def _stats(self, gamma: float) -> dict[str, Any]:
        _, penalty = _ops()
        st = self.state
        primal = 0.0
        change = 0.0
        pen = 0.0
        per_layer: dict[str, int] = {}
        total = 0
        for n, p in self.params.items():
            w = p.detach()
            primal += float((w - st.F[n]).pow(2).sum())
            change += float((st.F[n] - st.F_prev[n]).pow(2).sum())
            pen += float(penalty(self.config.penalty, st.F[n], self.lam[n], self.group_dims[n]))
            g = _group_mask(st.F[n], self.group_dims[n])
            per_layer[n] = int(g.sum())
            total += g.numel()
        f_change = math.sqrt(change)
        return {
            "k": st.k,
            "primal_residual": math.sqrt(primal),
            "f_change": f_change,
            "dual_residual": self.config.rho * f_change,
            "penalty": pen,
            "nnz_groups": sum(per_layer.values()),
            "total_groups": total,
            "nnz_groups_per_layer": per_layer,
            "gamma": gamma,
        }

    def converged(self) -> bool:
        """Stopping rule on the last completed iteration.

        ``"both"``: ‖W − F‖_F ≤ ε and ‖F^{k+1} − F^k‖_F ≤ ε (Kiaee Alg. 1 line 10);
        ``"either"``: one of them ≤ ε (Lin Alg. 1 line 9). False before the first iteration.
        """
        if not self.state.history:
            return False
        last = self.state.history[-1]
        eps = self.config.eps
        ok_primal = last["primal_residual"] <= eps
        ok_change = last["f_change"] <= eps
        if self.config.stop_rule == "both":
            return ok_primal and ok_change
        return ok_primal or ok_change

    def masks(self) -> dict[str, Tensor]:
        """Boolean element masks (True = kept) of the non-zero groups of F.

        A whole group is kept as soon as F has a non-zero entry in it, so an element of a kept
        group that happens to be zero is not masked.
        """
        out: dict[str, Tensor] = {}
        for n, f in self.state.F.items():
            out[n] = _group_mask(f, self.group_dims[n]).expand_as(f).clone()
        return out

    def step_outer(
        self,
        w_step: Callable[[], None],
        *,
        after_f_step: Callable[[ADMMEngine], None] | None = None,
    ) -> dict[str, Any]:
        """One outer iteration: ``w_step()`` (W-step), :meth:`f_step`, ``after_f_step(self)``,
        :meth:`dual_step`.

        Args:
            w_step: closure minimising the task loss + :meth:`penalty_loss` in the parameters.
            after_f_step: optional F-step variant run between :meth:`f_step` and
                :meth:`dual_step`; it may read :meth:`prox_input` and replace F with
                :meth:`set_f` (e.g. Kiaee's over-pruning guard).

        Returns:
            The history entry of this iteration (see :meth:`dual_step`).
        """
        if self.state.phase != "w":
            raise SolverError(
                "ADMMEngine.step_outer() was called between f_step() and dual_step(); "
                "finish the iteration with dual_step() first."
            )
        w_step()
        self.f_step()
        if after_f_step is not None:
            after_f_step(self)
        self.dual_step()
        return self.state.history[-1]
