r"""SLR's own ADMM backend: Algorithm 1 of Ma et al. (2019) on one layer.

:class:`SLRAdmmOptions` are its options. The steps of an iteration (A-step, B-step, M-step,
multiplier, correction; see :mod:`compactnn.solvers.layerwise.slr`) are the methods of
:class:`_SLRAdmm`, which holds the iterates; :func:`_iterate` runs them to the stopping rule.
:class:`_Quadratic` is the M-step in closed form (identity response) and the preconditioner of
the ReLU M-step; :func:`budget_scale` is the λ scale of a per-layer budget (``share``);
:func:`_warm_state` reads a warm start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from compactnn._validation import check_bool, check_choice, check_float, check_int
from compactnn.errors import ConfigError
from compactnn.prox import group_soft_threshold, svt_values
from compactnn.solvers.layerwise.problem import LayerSolveResult

CORRECTIONS: tuple[str, ...] = ("paper", "gbs", "none")


@dataclass(frozen=True)
class SLRAdmmOptions:
    """Options of SLR's own ADMM backend (Algorithm 1).

    Attributes:
        max_iter: ADMM iterations at most.
        tol: relative primal and dual residual tolerance of the stopping rule.
        m_steps: gradient steps of the M-step (eq. 8) per iteration, ReLU response.
        m_lr: step of those steps; ``None``: preconditioned steps (the gradient multiplied by
            :math:`(2X^TX/N + tI)^{-1}`, step 1) -- a departure from the paper's plain SGD with
            lr ``1e-3``, which depends on the data scale; a float: plain steps with that lr.
        m_momentum: heavy-ball momentum of the M-step (paper 0.9).
        correction: ``"paper"`` (eq. 13), ``"gbs"`` or ``"none"`` (see the module docstring).
        tau: τ of eq. (13) (paper 1/2).
        alpha: α of eq. (13) (paper 3/4).
        dtype: ``"float32"`` (fast) or ``"float64"``.
        history: record the residuals and objective of every iteration in ``extras``.
        min_iter: with a solver ``share`` (a per-layer budget), iterations before the residual
            stopping rule may end the run (the λ scale needs a few iterations to settle).
    """

    max_iter: int = 150
    tol: float = 5e-4
    m_steps: int = 2
    m_lr: float | None = None
    m_momentum: float = 0.5
    correction: str = "paper"
    tau: float = 0.5
    alpha: float = 0.75
    dtype: str = "float32"
    history: bool = False
    min_iter: int = 10

    def __post_init__(self) -> None:
        o = "SLRAdmmOptions"
        check_int(self.max_iter, "max_iter", o, min_value=1)
        check_float(self.tol, "tol", o, min_value=0.0, min_inclusive=False)
        check_int(self.m_steps, "m_steps", o, min_value=1)
        if self.m_lr is not None:
            check_float(self.m_lr, "m_lr", o, min_value=0.0, min_inclusive=False)
        check_float(self.m_momentum, "m_momentum", o, min_value=0.0, max_value=1.0,
                    max_inclusive=False)  # fmt: skip
        check_choice(self.correction, "correction", o, CORRECTIONS)
        check_float(self.tau, "tau", o, min_value=0.0, max_value=1.0)
        check_float(self.alpha, "alpha", o, min_value=0.0, max_value=1.0, min_inclusive=False)
        check_choice(self.dtype, "dtype", o, ("float32", "float64"))
        check_bool(self.history, "history", o)
        check_int(self.min_iter, "min_iter", o, min_value=0)


def budget_scale(
    columns: Tensor | None, singular: Tensor | None, n: int, d: int, budget: float
) -> float:
    r"""The smallest ``c >= 0`` at which thresholding leaves at most ``budget`` weights.

    ``columns`` are the column norms divided by the unit column threshold (a column survives
    eq. 10 iff its value ``> c``, costing ``n`` weights), ``singular`` the singular values divided
    by the unit SVT threshold (one survives eq. 12 iff ``> c``, costing ``n + d``); ``None``:
    that component is absent. The size is a decreasing step function of ``c``; the answer is
    the breakpoint that drops the first element not fitting (greedy from the largest), or 0 when
    everything fits.
    """
    vals, cost = [], []
    for v, w in ((columns, n), (singular, n + d)):
        if v is not None and v.numel():
            vals.append(v.reshape(-1).to(torch.float64))
            cost.append(torch.full((v.numel(),), float(w), dtype=torch.float64))
    if not vals:
        return 1.0
    v = torch.cat(vals)
    w = torch.cat(cost)
    order = torch.argsort(v, descending=True)
    v, w = v[order], w[order]
    fits = torch.cumsum(w, 0) <= budget + 1e-9
    k = int(fits.sum())  # the k largest fit (sizes are cumulative from the top)
    return 0.0 if k >= v.numel() else float(v[k])


class _Quadratic:
    r"""The M-step of eq. (8) for the identity response, in closed form.

    :math:`\arg\min_M \tfrac1N\|T - XM^T\|_F^2 - \langle\Lambda, M\rangle + \tfrac t2
    \|S - M\|_F^2 = \big(\tfrac2N T^TX + \Lambda + tS\big)H^{-1}` with
    :math:`H = \tfrac2N X^TX + tI` (:meth:`hsolve` also preconditions the ReLU M-step).
    ``T = Y - 1b^T``. ``H^{-1}`` is applied through the eigendecomposition
    :math:`H = Q\,\mathrm{diag}(h)\,Q^T` (two ``n x d x d`` products), or, when the rows are
    fewer than the columns (``N < d``), through the Woodbury identity
    :math:`RH^{-1} = \tfrac1t\big(R - (RX^T)K^{-1}X\big)`, :math:`K = \tfrac{Nt}2 I + XX^T`
    (``n x d x N`` products) for ``N < d`` on layers with ``d >= 512``.
    """

    def __init__(self, X: Tensor, T: Tensor, t: float, dtype: torch.dtype) -> None:
        N, d = X.shape
        X = X.to(torch.float64)
        self.t = float(t)
        self.XtT = ((2.0 / N) * (T.to(torch.float64).T @ X)).to(dtype)  # n x d
        # 2ndN < 2nd^2 multiply-adds per hsolve; small layers keep the eigendecomposition
        # (cheap there). Through Woodbury a column no calibration row activates stays exactly 0.
        self.woodbury = N < d and d >= 512
        if self.woodbury:
            K = (0.5 * N * t) * torch.eye(N, dtype=torch.float64) + X @ X.T
            self.KinvX = torch.linalg.solve(K, X).to(dtype)  # N x d
            self.Xd = X.to(dtype)
        else:
            ev, Q = torch.linalg.eigh((2.0 / N) * (X.T @ X))
            self.hinv = (1.0 / (ev.clamp_min(0) + t)).to(dtype)
            self.Q = Q.to(dtype)

    def hsolve(self, R: Tensor) -> Tensor:
        """``R H^{-1}`` for ``R`` (n x d)."""
        if self.woodbury:
            return (R - (R @ self.Xd.T) @ self.KinvX) / self.t
        return ((R @ self.Q) * self.hinv) @ self.Q.T

    def solve(self, Lam: Tensor, S: Tensor) -> Tensor:
        """The minimiser ``M`` of eq. (8) given ``Λ`` and ``S = Â + B̂``."""
        return self.hsolve(self.XtT + Lam + self.t * S)


def _warm_state(warm: Any, s: dict[str, Any], layer: str | None) -> dict[str, Tensor] | None:
    """The ADMM iterates ``(A, B, M, Λ)`` to start from: a previous :class:`LayerSolveResult`
    of SLR's ADMM on the same layer (its ``extras["state"]``) or such a dict; ``None``: cold.
    ``Λ`` is in the units of the gradient of ``f1`` (independent of ``t`` and ``λ``), so a state
    from another ``λ`` is a valid start (continuation)."""
    if warm is None:
        return None
    if isinstance(warm, LayerSolveResult):
        warm = warm.extras.get("state")
    if not isinstance(warm, Mapping) or not {"A", "B", "M", "Lam"} <= set(warm):
        raise ConfigError(
            f"SLR{f' (layer {layer!r})' if layer else ''}: warm_start must be a result of SLR's "
            "admm backend (or its extras['state'] dict with A, B, M, Lam). Got "
            f"{type(warm).__name__} instead."
        )
    shape = (s["Yt"].shape[1], s["X"].shape[1])
    for k in ("A", "B", "M", "Lam"):
        if tuple(warm[k].shape) != shape:
            raise ConfigError(
                f"SLR{f' (layer {layer!r})' if layer else ''}: the warm start's {k} has shape "
                f"{tuple(warm[k].shape)}, the layer's weight is {shape}: a warm start must come "
                "from the same layer."
            )
    return {k: warm[k] for k in ("A", "B", "M", "Lam")}


class _SLRAdmm:
    """The iterates ``(A, B, M, Λ)`` of one SLR ADMM solve, its constants and the steps of an
    iteration (Algorithm 1; the module docstring of :mod:`compactnn.solvers.layerwise.slr`)."""

    def __init__(self, s: dict[str, Any], o: SLRAdmmOptions) -> None:
        self.o = o
        dt = torch.float32 if o.dtype == "float32" else torch.float64
        X64, Yt64, b64 = s["X"], s["Yt"], s["b"]
        self.N, self.d = N, d = X64.shape
        self.n = n = Yt64.shape[1]
        self.relu = s["relu"]
        self.lam1, self.lam2, self.t = lam1, lam2, t = s["lam1"], s["lam2"], s["t"]
        self.quad = _Quadratic(X64, Yt64 - b64, t, dt)
        self.X = X64.to(dt)
        self.Yt = Yt64.to(dt)
        self.b = b64.to(dt)
        self.lam_sizes = (math.isinf(lam1), math.isinf(lam2))
        self.lam1_0, self.lam2_0 = lam1, lam2
        self.share = share = s.get("share")
        self.budget = None if share is None else share * n * d  # stored weights allowed (eq. 15)
        self.warm = warm = s.get("warm")
        if warm is not None:  # a previous solve of this layer (e.g. at a nearby lambda)
            self.A, self.B, self.M, self.Lam = (
                warm[k].to(dt).clone() for k in ("A", "B", "M", "Lam")
            )
        else:
            # initial point: the least-squares fit of the linear response (Alg. 1 line 1)
            self.M = self.quad.hsolve(self.quad.XtT)
            self.A = torch.zeros(n, d, dtype=dt)
            self.B = torch.zeros(n, d, dtype=dt)
            self.Lam = torch.zeros(n, d, dtype=dt)
        self.vel = torch.zeros(n, d, dtype=dt)
        self.rank_hint: int | None = None

    def grad_f1(self, M: Tensor) -> Tensor:
        Z = self.X @ M.T + self.b
        if self.relu:
            R = (Z.clamp_min(0) - self.Yt) * (Z > 0)
        else:
            R = Z - self.Yt
        return (2.0 / self.N) * (R.T @ self.X)

    def a_step(self) -> Tensor:
        """1. The A-step (eqs. 9-10), column groups; with a budget, first the λ scale that makes
        this iteration's prox steps fit."""
        t = self.t
        C = self.M - self.B - self.Lam / t
        if self.budget is not None:
            cn = None if self.lam_sizes[0] else C.norm(dim=0) * (t / self.lam1_0)
            sig = (None if self.lam_sizes[1]
                   else torch.linalg.svdvals(self.M - self.A - self.Lam / t) * (t / self.lam2_0))  # fmt: skip
            c = budget_scale(cn, sig, self.n, self.d, self.budget)
            self.lam1, self.lam2 = c * self.lam1_0, c * self.lam2_0
        if self.lam_sizes[0]:
            return torch.zeros_like(C)
        return group_soft_threshold(C, self.lam1 / t, (1,))

    def b_step(self, A_hat: Tensor) -> tuple[Tensor, Tensor]:
        """2. The B-step (eqs. 11-12): ``B̂`` and its singular values counted as rank."""
        D = self.M - A_hat - self.Lam / self.t
        if self.lam_sizes[1]:
            return torch.zeros_like(D), D.new_zeros(0)
        B_hat, sv = svt_values(D, self.lam2 / self.t, rank_hint=self.rank_hint)
        sv = sv[sv > float(sv[0]) * 1e-6] if sv.numel() else sv  # as deployed_rank counts
        self.rank_hint = max(int(sv.numel()), 1)
        return B_hat, sv

    def m_step(self, S: Tensor) -> Tensor:
        """3. The M-step (eq. 8) given ``S = Â + B̂``: exact for the identity response, momentum
        gradient steps for the ReLU one."""
        if not self.relu:
            return self.quad.solve(self.Lam, S)
        o, t = self.o, self.t
        M_hat = self.M.clone()
        for _ in range(o.m_steps):
            g = self.grad_f1(M_hat) - self.Lam + t * (M_hat - S)
            step = self.quad.hsolve(g) if o.m_lr is None else o.m_lr * g
            self.vel = o.m_momentum * self.vel - step
            M_hat = M_hat + self.vel
        return M_hat

    def residuals(self, S: Tensor, M_hat: Tensor, Lam_hat: Tensor) -> tuple[float, float]:
        """The relative primal and dual residuals of the stopping rule."""
        t = self.t
        rp = float((S - M_hat).norm()) / max(float(M_hat.norm()), float(S.norm()), 1e-30)
        rd = t * float((M_hat - self.M).norm()) / max(float(Lam_hat.norm()), t * float(M_hat.norm()),
                                                      1e-30)  # fmt: skip
        return rp, rd

    def correct(self, A_hat: Tensor, B_hat: Tensor, M_hat: Tensor, Lam_hat: Tensor) -> None:
        """5. The correction (eq. 13, ``"gbs"`` or none) of ``(B, M, Λ)``; ``A = Â``."""
        o = self.o
        B, M, Lam = self.B, self.M, self.Lam
        dB, dM, dL = B - B_hat, M - M_hat, Lam - Lam_hat
        if o.correction == "paper":
            self.B = B - o.alpha * (dB + (o.tau - 1.0) * dM)
            self.M = M - o.alpha * (o.tau * dB + dM)
            self.Lam = Lam - o.alpha * dL
        elif o.correction == "gbs":
            self.B = B - o.alpha * (dB + dM)
            self.M = M - o.alpha * dM
            self.Lam = Lam - o.alpha * dL
        else:
            self.B, self.M, self.Lam = B_hat, M_hat, Lam_hat
        self.A = A_hat

    def deployed_size(self, A_hat: Tensor, sv: Tensor) -> float:
        """The stored weights of the iterate ``(Â, B̂)`` (eq. 15), at most the dense weight's."""
        n, d = self.n, self.d
        kept = int((A_hat.abs().amax(0) > 0).sum())
        return min(float(n * kept + int(sv.numel()) * (n + d)), float(n * d))


def _iterate(
    s: dict[str, Any], o: SLRAdmmOptions, layer: str | None
) -> tuple[dict[str, Any], Tensor, Tensor, str, int, dict[str, Any]]:
    """Algorithm 1 to the stopping rule: ``(s, Â, B̂, status, iterations, extras)`` (``s``
    with the final ``λ`` under a budget) for :meth:`SLRSolver._result`."""
    r = _SLRAdmm(s, o)
    budget = r.budget
    best: tuple[Tensor, Tensor, float, float, int] | None = None  # last iterate within budget
    size = float("nan")
    hist: list[dict[str, float]] = []
    status, it = "max_iter", 0
    rp = rd = float("nan")
    A_hat, B_hat = r.A, r.B
    for it in range(1, o.max_iter + 1):
        A_hat = r.a_step()
        B_hat, sv = r.b_step(A_hat)
        S = A_hat + B_hat
        M_hat = r.m_step(S)
        Lam_hat = r.Lam + r.t * (S - M_hat)  # 4. multiplier (Alg. 1 line 6)
        rp, rd = r.residuals(S, M_hat, Lam_hat)
        if o.history:
            hist.append({"primal": rp, "dual": rd, "rank": float(sv.numel()),
                         "kept": float(int((A_hat.abs().amax(0) > 0).sum()))})  # fmt: skip
        r.correct(A_hat, B_hat, M_hat, Lam_hat)
        if budget is not None:  # the deployed size of this iterate (eq. 15)
            size = r.deployed_size(A_hat, sv)
            if size <= budget:
                best = (A_hat, B_hat, r.lam1, r.lam2, it)
        if not (math.isfinite(rp) and math.isfinite(rd)):
            raise ConfigError(
                f"SLR{f' (layer {layer!r})' if layer else ''}: the ADMM iterates diverged "
                f"(residuals {rp}, {rd}) at iteration {it}. Lower m_lr or raise t."
            )
        within = budget is None or (it >= o.min_iter and size <= budget)
        if rp < o.tol and rd < o.tol and within:
            status = "optimal"
            break
    lam1, lam2 = r.lam1, r.lam2
    if budget is not None:
        if size > budget and best is not None:  # the last iterate that met the budget
            A_hat, B_hat, lam1, lam2, _ = best
        elif size > budget:
            status = "over_budget"
        s = {**s, "lam1": lam1, "lam2": lam2}
    extras: dict[str, Any] = {"primal_residual": rp, "dual_residual": rd,
                              "correction": o.correction, "warm_started": r.warm is not None,
                              "state": {"A": A_hat, "B": r.B, "M": r.M, "Lam": r.Lam}}  # fmt: skip
    if budget is not None:
        lam1_0, lam2_0 = r.lam1_0, r.lam2_0
        extras.update(share=r.share, lam_scale=lam1 / lam1_0 if 0 < lam1_0 < math.inf else lam2 / lam2_0,
                      budget_iteration=None if best is None else best[4])  # fmt: skip
    if o.history:
        extras["history"] = hist
    return s, A_hat, B_hat, status, it, extras
