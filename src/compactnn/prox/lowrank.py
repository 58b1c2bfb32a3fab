"""Low-rank proximal operators: SVT (nuclear norm), rank-r projection, LRTC tensor step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from compactnn._validation import check_choice, check_int
from compactnn.errors import ConfigError
from compactnn.prox._common import check_tensor, check_threshold

__all__ = ["svt", "svt_values", "SVT_METHODS", "project_rank", "unfold", "fold", "lrtc_step"]

SVT_METHODS: tuple[str, ...] = ("auto", "full", "gram", "lowrank")
"""Strategies of :func:`svt_values`."""


def svt(m: Tensor, tau: float) -> Tensor:
    r"""Singular value thresholding: proximal operator of the nuclear norm.

    .. math::
        \mathcal D_\tau(M) = \arg\min_X \tau\|X\|_* + \tfrac12\|X - M\|_F^2
        = U\,\operatorname{diag}((\sigma_i - \tau)_+)\,V^\top .

    Args:
        m: matrix ``(m, n)`` or a batch ``(..., m, n)`` (each matrix is thresholded).
        tau: τ >= 0 (λ2/t in Ma et al.). ``tau == 0`` returns an exact copy.

    Returns:
        A new tensor of ``m``'s shape.

    Raises:
        ConfigError: ``m`` has fewer than 2 dims, ``tau`` negative or not finite.

    References:
        Ma et al. (2019) eqs. (11)-(12); Zhou et al. (2016) supplement eq. (6).
    """
    check_tensor(m, "m", "svt", min_dim=2)
    tau = float(check_threshold(tau, "tau", "svt", allow_tensor=False))
    if tau == 0.0:
        return m.clone()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    s = torch.clamp(s - tau, min=0)
    return (u * s.unsqueeze(-2)) @ vh


def svt_values(
    m: Tensor, tau: float, mode: str = "auto", rank_hint: int | None = None
) -> tuple[Tensor, Tensor]:
    r"""Singular value thresholding of one matrix that also returns the kept singular values.

    Same operator as :func:`svt`, :math:`\mathcal D_\tau(M) = \arg\min_X \tau\|X\|_* +
    \tfrac12\|X - M\|_F^2`, for solvers that iterate it (ADMM Z-steps) and need the spectrum
    (objective, rank of the iterate) and a cheaper strategy on large matrices.

    Args:
        m: matrix ``(m, n)``.
        tau: τ >= 0.
        mode: ``"full"`` (LAPACK SVD), ``"gram"`` (eigendecomposition of the smaller Gram
            matrix; fast for large matrices), ``"lowrank"`` (``torch.svd_lowrank`` sized by
            ``rank_hint``, verified: falls back to an exact method if the smallest computed
            singular value is still above ``tau``) or ``"auto"`` (randomised when ``rank_hint``
            is small, Gram for ``min(m, n) >= 400``, full SVD otherwise).
        rank_hint: rank of the previous iterate (for the randomised path).

    Returns:
        ``(X, s)``: the thresholded matrix and its positive singular values ``s`` (descending).

    Raises:
        ConfigError: ``m`` is not a floating matrix, ``tau`` negative or not finite, or an
            unknown ``mode``.

    References:
        Ma et al. (2019) eqs. (11)-(12); Papadimitriou & Jain (2021) eq. (4) (nuclear norm).
    """
    check_tensor(m, "m", "svt_values", min_dim=2)
    tau = float(check_threshold(tau, "tau", "svt_values", allow_tensor=False))
    check_choice(mode, "mode", "svt_values", SVT_METHODS)
    if m.dim() != 2:
        raise ConfigError(
            f"The 'm' argument of svt_values must be a matrix (2 dims). Got shape "
            f"{tuple(m.shape)} instead; use svt for batches."
        )
    rows, cols = m.shape
    p = min(rows, cols)
    if mode in ("auto", "lowrank") and rank_hint is not None:
        q = rank_hint + max(10, rank_hint // 10)
        if q <= (p // 4 if mode == "auto" else p - 1):
            Uq, S, Vq = torch.svd_lowrank(m, q=q, niter=4)
            if float(S[-1]) < tau:
                keep = S > tau
                s = S[keep] - tau
                return (Uq[:, keep] * s) @ Vq[:, keep].T, s
    if mode == "gram" or (mode in ("auto", "lowrank") and p >= 400):
        if rows <= cols:
            lam, E = torch.linalg.eigh(m @ m.T)
        else:
            lam, E = torch.linalg.eigh(m.T @ m)
        sig = lam.clamp_min(0).sqrt()
        keep = sig > tau
        sk = sig[keep]
        Ek = E[:, keep]
        shrink = (sk - tau) / sk
        X = (Ek * shrink) @ (Ek.T @ m) if rows <= cols else (m @ Ek) @ (Ek * shrink).T
        return X, torch.flip(sk - tau, dims=(0,))
    Uf, S, Vh = torch.linalg.svd(m, full_matrices=False)
    keep = S > tau
    s = S[keep] - tau
    return (Uf[:, keep] * s) @ Vh[keep], s


def project_rank(m: Tensor, r: int) -> Tensor:
    r"""Best rank-``r`` approximation (Eckart-Young): projection onto ``{X : rank X <= r}``.

    .. math::
        \arg\min_{\operatorname{rank} X \le r} \|X - M\|_F = U_r \Sigma_r V_r^\top .

    Args:
        m: matrix ``(m, n)`` or batch ``(..., m, n)``.
        r: target rank ``r >= 0``; ``r >= min(m, n)`` returns an exact copy.

    Returns:
        A new tensor of ``m``'s shape.

    Raises:
        ConfigError: ``m`` has fewer than 2 dims or ``r`` is negative.

    References:
        Ma et al. (2019) problem (2) (rank(B) <= L); Papadimitriou & Jain (2021), DDLR.
    """
    check_tensor(m, "m", "project_rank", min_dim=2)
    r = check_int(r, "r", "project_rank", min_value=0)
    if r >= min(m.shape[-2], m.shape[-1]):
        return m.clone()
    if r == 0:
        return torch.zeros_like(m)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u[..., :, :r] * s[..., None, :r]) @ vh[..., :r, :]


def unfold(t: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding (matricization): ``(t.shape[mode], prod(other dims))``.

    The remaining axes keep their order (row-major); :func:`fold` is its exact inverse.

    Raises:
        ConfigError: ``mode`` out of range.
    """
    check_tensor(t, "t", "unfold", min_dim=1)
    mode = check_int(mode, "mode", "unfold", min_value=0, max_value=t.dim() - 1)
    return torch.movedim(t, mode, 0).reshape(t.shape[mode], -1)


def fold(m: Tensor, mode: int, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`unfold`: rebuild the tensor of ``shape`` from its mode-``mode`` unfolding.

    Raises:
        ConfigError: ``mode`` out of range or ``m`` not of shape
            ``(shape[mode], prod(other dims))``.
    """
    shape = tuple(int(s) for s in shape)
    mode = check_int(mode, "mode", "fold", min_value=0, max_value=max(len(shape) - 1, 0))
    other = [s for i, s in enumerate(shape) if i != mode]
    expected = (shape[mode], math.prod(other))
    if not isinstance(m, Tensor) or tuple(m.shape) != expected:
        got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ConfigError(
            f"The 'm' argument of fold must have shape {expected} to fold into {shape} along "
            f"mode {mode}. Got {got} instead."
        )
    return torch.movedim(m.reshape([shape[mode], *other]), 0, mode)


def lrtc_step(
    t: Tensor,
    tau: float,
    weights: Sequence[float] | None = None,
    *,
    n_iter: int = 1,
    tol: float = 0.0,
    batch_dims: int = 0,
) -> Tensor:
    r"""Backward (low-rank) step of Zhou et al. for a tensor, by LRTC averaging of mode SVTs.

    With ``v = t`` the forward-step result and ``w^0 = v`` (Algorithm 1, line 1), each
    iteration computes, for every mode ``i`` of the order-``n`` tensor,
    :math:`M_i = \operatorname{fold}_i \mathcal D_{\tau w_i}\big(\tfrac12(w_{(i)} + v_{(i)})\big)`
    (line 4) and averages :math:`w \leftarrow \sum_i \alpha_i M_i`, with
    :math:`\alpha_i = w_i / \sum_j w_j` (line 6; uniform weights give the paper's
    :math:`\tfrac1n\sum_i`). ``tau`` is the paper's τλ. The first iteration is the single
    step :math:`\sum_i \alpha_i\,\operatorname{fold}_i \mathcal D_{\tau w_i}(v_{(i)})`, the
    default (``n_iter=1``); more iterations follow the paper's "while not converged" loop.

    Args:
        t: the tensor ``v`` (e.g. a neuron/filter bank), at least 1-D.
        tau: τ >= 0, the SVT threshold (scaled per mode by ``weights``).
        weights: one weight >= 0 per mode (positive sum); ``None`` = all ones. A zero weight
            drops that mode from the average.
        n_iter: maximal number of iterations of Algorithm 1's loop (>= 1).
        tol: stop early when ``‖w^{k+1} - w^k‖_F <= tol ‖w^k‖_F`` (0 = run ``n_iter``); with
            a batch, when this holds for every tensor of the batch.
        batch_dims: the leading ``batch_dims`` axes index independent tensors (e.g. axis 0 =
            the neurons of a layer, each an order-3 tensor): every one gets its own step, as
            by a loop over them, with batched SVDs. ``weights`` then has one value per mode of
            the per-item tensor.

    Returns:
        A new tensor of ``t``'s shape.

    Raises:
        ConfigError: negative ``tau``/``tol``/``batch_dims``, wrong number or negative
            ``weights``.

    References:
        Zhou et al. (2016) supplement sec. 2, eq. (6) and Algorithm 1; Liu et al. (LRTC).
    """
    check_tensor(t, "t", "lrtc_step", min_dim=1)
    tau = float(check_threshold(tau, "tau", "lrtc_step", allow_tensor=False))
    n_iter = check_int(n_iter, "n_iter", "lrtc_step", min_value=1)
    tol = float(check_threshold(tol, "tol", "lrtc_step", allow_tensor=False))
    nb = check_int(batch_dims, "batch_dims", "lrtc_step", min_value=0, max_value=t.dim() - 1)
    n = t.dim() - nb
    if weights is None:
        w = [1.0] * n
    else:
        w = [float(check_threshold(x, "weights", "lrtc_step", allow_tensor=False)) for x in weights]
        if len(w) != n:
            raise ConfigError(
                f"The 'weights' parameter of lrtc_step must have one value per mode of the "
                f"tensor ({n} for shape {tuple(t.shape)}). Got {len(w)} values instead."
            )
    total = sum(w)
    if total <= 0:
        raise ConfigError(
            f"The 'weights' parameter of lrtc_step must have a positive sum. Got {list(w)} instead."
        )
    if tau == 0.0:  # every mode's SVT is the identity, hence so is their average
        return t.clone()
    shape = tuple(t.shape)
    batch, item = shape[:nb], shape[nb:]
    flat = t.reshape(-1, *item)  # (B, *item): one batch axis
    cur = flat
    for _ in range(n_iter):
        avg = flat if cur is flat else (cur + flat) / 2
        new = torch.zeros_like(flat)
        for i, wi in enumerate(w):
            if wi == 0:
                continue
            # batched mode-i unfolding (B, item[i], prod(other)), SVT per item, folded back
            mat = torch.movedim(avg, i + 1, 1).reshape(avg.shape[0], item[i], -1)
            other = [s for j, s in enumerate(item) if j != i]
            mi = torch.movedim(svt(mat, tau * wi).reshape(avg.shape[0], item[i], *other), 1, i + 1)
            new = new + (wi / total) * mi
        done = tol > 0 and bool(
            (
                torch.linalg.vector_norm((new - cur).reshape(new.shape[0], -1), dim=1)
                <= tol * torch.linalg.vector_norm(cur.reshape(cur.shape[0], -1), dim=1)
            ).all()
        )
        cur = new
        if done:
            break
    return cur.reshape(*batch, *item)
