"""Conformance bank of the proximal operators (compactnn.prox).

Every operator must be the argmin of f(x) + 1/2 ||x - v||^2 (or the Euclidean projection onto
its set): checked against random perturbations, brute force on small problems, and the closed
forms of the papers written out independently below.
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from compactnn.errors import ConfigError, UnknownNameError
from compactnn.prox import (
    PROX,
    fold,
    group_hard_threshold,
    group_norms,
    group_soft_threshold,
    hard_threshold,
    lrtc_step,
    penalty,
    project_rank,
    soft_threshold,
    svt,
    topk_groups,
    unfold,
)

DT = torch.float64
SHAPE = (3, 4, 2, 2)
GROUP_DIMS = [(0,), (1,), (0, 1), (1, 2, 3), (0, 1, 2, 3), (), (-1,), (2, 0)]
TOL = 1e-12


def _obj(name: str, x: torch.Tensor, v: torch.Tensor, lam, gd) -> float:
    return float(penalty(name, x, lam, gd) + 0.5 * (x - v).pow(2).sum())


def _groups(shape, gd):
    """Boolean element masks of every group (independent of the library)."""
    nd = len(shape)
    gd = tuple(d % nd for d in gd)
    for idx in itertools.product(*[range(shape[d]) for d in gd]):
        m = torch.zeros(shape, dtype=torch.bool)
        sl = [slice(None)] * nd
        for d, i in zip(gd, idx):
            sl[d] = i
        m[tuple(sl)] = True
        yield m


def _perturbations(v: torch.Tensor, gen: torch.Generator, n: int = 60):
    """Dense at several scales and sparse (a few entries / whole groups switched)."""
    for i in range(n):
        scale = 10.0 ** (-(i % 4))
        d = torch.randn(v.shape, generator=gen, dtype=DT) * scale
        if i % 3 == 1:
            d = d * (torch.rand(v.shape, generator=gen, dtype=DT) < 0.2)
        yield d


# --------------------------------------------------------------------------- optimality
@pytest.mark.parametrize("name", ["l1", "l21", "l0", "l20"])
@pytest.mark.parametrize("gd", GROUP_DIMS)
@pytest.mark.parametrize("lam", [0.05, 0.4, 1.5])
def test_prox_is_argmin_against_perturbations(name, gd, lam) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((name, gd, lam)).encode()))
    for _ in range(3):
        v = torch.randn(SHAPE, generator=gen, dtype=DT)
        x = PROX[name](v, lam, gd)
        f0 = _obj(name, x, v, lam, gd)
        for d in _perturbations(v, gen):
            assert f0 <= _obj(name, x + d, v, lam, gd) + TOL
        # switch groups (or elements) on/off: x_g in {0, v_g} is where the l0 minima live
        egd = tuple(range(v.dim())) if name in ("l1", "l0") else gd
        for m in list(_groups(SHAPE, egd))[:24]:
            on = torch.where(m, v, x)
            off = torch.where(m, torch.zeros_like(x), x)
            assert f0 <= _obj(name, on, v, lam, gd) + TOL
            assert f0 <= _obj(name, off, v, lam, gd) + TOL


@pytest.mark.parametrize("gd", [(0,), (1,), (2, 0), (0, 1)])
def test_group_hard_threshold_brute_force(gd) -> None:
    """l2,0: exact global minimum over all 2^G supports (optimal x_g = v_g on the support)."""
    gen = torch.Generator().manual_seed(7)
    shape = (2, 3, 2, 2)
    groups = list(_groups(shape, gd))
    assert len(groups) <= 8
    for lam in (0.1, 1.0, 3.0):
        v = torch.randn(shape, generator=gen, dtype=DT)
        x = group_hard_threshold(v, lam, gd)
        best = math.inf
        for bits in itertools.product([False, True], repeat=len(groups)):
            sup = torch.zeros(shape, dtype=torch.bool)
            for b, m in zip(bits, groups):
                sup |= m & b
            best = min(best, _obj("l20", torch.where(sup, v, 0.0), v, lam, gd))
        assert _obj("l20", x, v, lam, gd) == pytest.approx(best, abs=TOL)


def test_per_group_lambda_equals_groupwise_scalar() -> None:
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(SHAPE, generator=gen, dtype=DT)
    lam = torch.rand(4, 3, generator=gen, dtype=DT) * 3  # group_dims (1, 0): shape (4, 3)
    for fn in (group_soft_threshold, group_hard_threshold):
        out = fn(v, lam, (1, 0))
        for i, j in itertools.product(range(3), range(4)):
            ref = fn(v[i : i + 1, j : j + 1], float(lam[j, i]), (0, 1))
            assert torch.allclose(out[i : i + 1, j : j + 1], ref, rtol=0, atol=1e-15)
            assert torch.equal(out[i, j] == 0, ref[0, 0] == 0)  # same groups zeroed
    # a broadcastable lam (one value per output channel, for all input channels)
    lam_row = torch.tensor([0.5, 2.0, 9.0], dtype=DT).reshape(3, 1)
    out = group_soft_threshold(v, lam_row, (0, 1))
    for i in range(3):
        assert torch.equal(out[i], group_soft_threshold(v[i], float(lam_row[i]), (0,)))
    # element-wise soft threshold with a per-element tensor
    lam_el = torch.rand(SHAPE, generator=gen, dtype=DT)
    x = soft_threshold(v, lam_el)
    assert torch.equal(x, torch.sign(v) * torch.clamp(v.abs() - lam_el, min=0))


# --------------------------------------------------------------------------- closed forms
def test_closed_forms_of_the_papers() -> None:
    gen = torch.Generator().manual_seed(11)
    rho, mu = 2.0, 0.9
    V = torch.randn(SHAPE, generator=gen, dtype=DT)  # V_ij = W_ij + Gamma_ij / rho (Kiaee)
    a, b = mu / rho, math.sqrt(2 * mu / rho)
    kiaee9 = torch.zeros_like(V)
    kiaee10 = torch.zeros_like(V)
    for i in range(SHAPE[0]):
        for j in range(SHAPE[1]):
            nrm = torch.linalg.norm(V[i, j])  # Frobenius norm of the k x k filter V_ij
            if nrm > a:
                kiaee9[i, j] = (1 - a / nrm) * V[i, j]
            if nrm > b:
                kiaee10[i, j] = V[i, j]
    assert torch.allclose(group_soft_threshold(V, mu / rho, (0, 1)), kiaee9, rtol=0, atol=1e-15)
    assert torch.equal(group_hard_threshold(V, mu / rho, (0, 1)), kiaee10)

    lam = 1.3  # Lin et al.: T2 rows (filters), threshold lam / rho
    T2 = torch.randn(5, 6, generator=gen, dtype=DT)
    lin14 = torch.stack([r * max(float(r.norm()) - lam / rho, 0.0) / float(r.norm()) for r in T2])
    lin15 = torch.stack(
        [torch.zeros_like(r) if lam >= rho / 2 * float(r.norm()) ** 2 else r for r in T2]
    )
    sgn = torch.where(T2 >= 0, 1.0, -1.0).to(DT)  # Lin's sign(0) = 1; irrelevant at 0
    lin16 = sgn * torch.clamp(T2.abs() - lam / rho, min=0)
    assert torch.allclose(group_soft_threshold(T2, lam / rho, (0,)), lin14, rtol=0, atol=1e-15)
    # Lin eq. (15) with the paper's lam/rho: keep iff lam/rho < ||T||^2 / 2
    assert torch.equal(group_hard_threshold(T2, lam / rho, (0,)), lin15)
    assert torch.equal(soft_threshold(T2, lam / rho), lin16)

    lam1, t = 0.7, 1.5  # Ma et al. eq. (10): columns of C, threshold lam1 / t
    C = torch.randn(6, 5, generator=gen, dtype=DT)
    ma10 = torch.zeros_like(C)
    for i in range(C.shape[1]):
        c = C[:, i]
        if c.norm() > lam1 / t:
            ma10[:, i] = (c.norm() - lam1 / t) / c.norm() * c
    assert torch.allclose(group_soft_threshold(C, lam1 / t, (1,)), ma10, rtol=0, atol=1e-15)

    # Kiaee eq. (10) element-wise: keep |v| > sqrt(2 lam)
    e = torch.randn(40, generator=gen, dtype=DT)
    ref = torch.tensor([x if abs(x) > math.sqrt(2 * 0.3) else 0.0 for x in e.tolist()], dtype=DT)
    assert torch.equal(hard_threshold(e, 0.3), ref)


def test_hard_threshold_tie_returns_zero() -> None:
    v = torch.tensor([2.0, -2.0, 2.5], dtype=DT)
    assert torch.equal(hard_threshold(v, 2.0), torch.tensor([0.0, 0.0, 2.5], dtype=DT))
    g = torch.tensor([[3.0, 4.0], [0.5, 0.5]], dtype=DT)  # row norm 5 = sqrt(2 * 12.5)
    assert torch.equal(group_hard_threshold(g, 12.5, (0,)), torch.zeros_like(g))


# --------------------------------------------------------------------------- generic laws
@pytest.mark.parametrize("gd", GROUP_DIMS)
def test_shrinkage_identity_and_annihilation(gd) -> None:
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(SHAPE, generator=gen, dtype=DT)
    for name in ("l1", "l0", "l21", "l20"):
        assert PROX[name](v, 0.0, gd).norm() <= v.norm()
        assert PROX[name](v, 0.3, gd).norm() <= v.norm()
        assert torch.equal(PROX[name](v, 0.0, gd), v)
        assert torch.equal(PROX[name](v, 1e6, gd), torch.zeros_like(v))
    for k in range(0, 5):
        assert topk_groups(v, k, gd).norm() <= v.norm()
    m = v.reshape(6, 8)
    assert torch.equal(svt(m, 0.0), m)
    assert torch.equal(svt(m, 1e6), torch.zeros_like(m))
    assert svt(m, 0.5).norm() <= m.norm()
    assert project_rank(m, 2).norm() <= m.norm() + TOL


def test_prox_table_uniform_signature() -> None:
    v = torch.randn(SHAPE, dtype=DT)
    assert set(PROX) == {"l1", "l0", "l21", "l20"}
    assert torch.equal(PROX["l1"](v, 0.2, (0,)), soft_threshold(v, 0.2))
    assert torch.equal(PROX["l0"](v, 0.2, (1,)), hard_threshold(v, 0.2))
    assert torch.equal(PROX["l21"](v, 0.2, (0,)), group_soft_threshold(v, 0.2, (0,)))
    assert torch.equal(PROX["l20"](v, 0.2, (0,)), group_hard_threshold(v, 0.2, (0,)))
    # element groups: group ops coincide with the element-wise ones
    alld = tuple(range(v.dim()))
    assert torch.allclose(group_soft_threshold(v, 0.2, alld), soft_threshold(v, 0.2), atol=1e-15)
    assert torch.equal(group_hard_threshold(v, 0.2, alld), hard_threshold(v, 0.2))


def test_group_norms_shape_order_and_values() -> None:
    v = torch.randn(SHAPE, dtype=DT)
    assert group_norms(v, (0,)).shape == (3,)
    assert group_norms(v, (2, 0)).shape == (2, 3)
    assert group_norms(v, ()).shape == ()
    n = group_norms(v, (1, 0))
    for i, j in itertools.product(range(3), range(4)):
        assert n[j, i] == pytest.approx(float(torch.sqrt((v[i, j] ** 2).sum())), rel=1e-14)
    assert torch.equal(group_norms(v, (-1,)), group_norms(v, (3,)))
    assert torch.equal(group_norms(v, (0, 1, 2, 3)), v.abs())


def test_penalty_values() -> None:
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=DT)
    assert float(penalty("l1", x, 2.0)) == 16.0
    assert float(penalty("l0", x, 2.0)) == 6.0
    assert float(penalty("l21", x, 2.0, (0,))) == 12.0
    assert float(penalty("l20", x, 2.0, (0,))) == 4.0
    assert float(penalty("l20", x, 1.0, (1,))) == 2.0
    d = torch.diag(torch.tensor([3.0, 1.0], dtype=DT))
    assert float(penalty("nuclear", d, 0.5)) == pytest.approx(2.0)
    with pytest.raises(UnknownNameError, match="l3"):
        penalty("l3", x, 1.0)
    with pytest.raises(ConfigError, match="group_dims"):
        penalty("l21", x, 1.0)


# --------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("gd", [(0,), (1,), (2, 0), (1, 2, 3)])
def test_topk_is_projection(gd) -> None:
    gen = torch.Generator().manual_seed(13)
    v = torch.randn(SHAPE, generator=gen, dtype=DT)
    groups = list(_groups(SHAPE, gd))
    for k in range(0, len(groups) + 1):
        x = topk_groups(v, k, gd)
        nz = sum(bool((x[m] != 0).any()) for m in groups)
        assert nz == min(k, len(groups))
        assert torch.equal(topk_groups(x, k, gd), x)  # idempotent
        dist = float((x - v).pow(2).sum())
        energies = sorted(float((v[m] ** 2).sum()) for m in groups)
        best = sum(energies[: max(len(groups) - k, 0)])  # drop the smallest groups
        if len(groups) <= 8:  # brute force over all supports of size k
            best = min(
                float(sum((v[m] ** 2).sum() for i, m in enumerate(groups) if i not in keep))
                for keep in itertools.combinations(range(len(groups)), min(k, len(groups)))
            )
        assert dist == pytest.approx(best, abs=TOL)
        # random feasible points (restricted to the constraint set) are never closer
        for _ in range(10):
            keep = torch.randperm(len(groups), generator=gen)[:k].tolist()
            sup = torch.zeros(SHAPE, dtype=torch.bool)
            for i in keep:
                sup |= groups[i]
            y = torch.where(sup, v + 0.1 * torch.randn(SHAPE, generator=gen, dtype=DT), 0.0)
            assert dist <= float((y - v).pow(2).sum()) + TOL


def test_topk_ties_lowest_index() -> None:
    v = torch.ones(5, 2, dtype=DT)
    x = topk_groups(v, 2, (0,))
    assert torch.equal(x.ne(0).any(dim=1), torch.tensor([True, True, False, False, False]))
    v[3] = 2.0
    x = topk_groups(v, 2, (0,))
    assert torch.equal(x.ne(0).any(dim=1), torch.tensor([True, False, False, True, False]))


# --------------------------------------------------------------------------- low rank
def _svt_reference(m: torch.Tensor, tau: float) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ torch.diag(torch.clamp(s - tau, min=0)) @ vh


@pytest.mark.parametrize("shape", [(6, 4), (4, 7), (5, 5)])
@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_svt_optimality(shape, tau) -> None:
    gen = torch.Generator().manual_seed(17)
    m = torch.randn(shape, generator=gen, dtype=DT)
    x = svt(m, tau)
    assert torch.allclose(x, _svt_reference(m, tau), atol=1e-12)
    # subgradient condition: M - X = tau (U1 V1^T + W), U1^T W = 0, W V1 = 0, ||W||_2 <= 1
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = int((s > tau).sum())
    u1, v1 = u[:, :r], vh[:r].T
    g = (m - x) / tau
    w = g - u1 @ v1.T
    assert torch.allclose(u1.T @ w, torch.zeros(r, shape[1], dtype=DT), atol=1e-10)
    assert torch.allclose(w @ v1, torch.zeros(shape[0], r, dtype=DT), atol=1e-10)
    assert float(torch.linalg.matrix_norm(w, ord=2)) <= 1 + 1e-10
    f0 = _obj("nuclear", x, m, tau, None)
    for d in _perturbations(m, gen, 40):
        assert f0 <= _obj("nuclear", x + d, m, tau, None) + 1e-10


def test_svt_batched_matches_loop() -> None:
    m = torch.randn(3, 2, 5, 4, dtype=DT)
    out = svt(m, 0.7)
    for i, j in itertools.product(range(3), range(2)):
        assert torch.allclose(out[i, j], _svt_reference(m[i, j], 0.7), atol=1e-12)


@pytest.mark.parametrize("r", [0, 1, 2, 3, 5])
def test_project_rank(r) -> None:
    gen = torch.Generator().manual_seed(19)
    m = torch.randn(6, 5, generator=gen, dtype=DT)
    x = project_rank(m, r)
    assert int(torch.linalg.matrix_rank(x)) == min(r, 5)
    assert torch.allclose(project_rank(x, r), x, atol=1e-12)  # idempotent
    s = torch.linalg.svdvals(m)
    dist = float((x - m).pow(2).sum())
    assert dist == pytest.approx(float((s[r:] ** 2).sum()), abs=1e-10)  # Eckart-Young
    if 0 < r < 5:  # rank-r points near x are never closer to m
        u, sx, vh = torch.linalg.svd(x)
        a, b = u[:, :r] * sx[:r], vh[:r]
        for _ in range(30):
            y = (a + 0.05 * torch.randn(a.shape, generator=gen, dtype=DT)) @ (
                b + 0.05 * torch.randn(b.shape, generator=gen, dtype=DT)
            )
            assert dist <= float((y - m).pow(2).sum()) + 1e-10
    assert torch.equal(project_rank(m, 5), m)


def _tucker(shape, ranks, gen) -> torch.Tensor:
    core = torch.randn(ranks, generator=gen, dtype=DT)
    t = core
    for mode, (n, r) in enumerate(zip(shape, ranks)):
        f = torch.randn(n, r, generator=gen, dtype=DT)
        t = torch.movedim(torch.tensordot(f, t, dims=([1], [mode])), 0, mode)
    return t


def _nuc_sum(t: torch.Tensor) -> float:
    return sum(float(torch.linalg.matrix_norm(unfold(t, i), ord="nuc")) for i in range(t.dim()))


def test_unfold_fold_round_trip() -> None:
    t = torch.randn(3, 4, 5, 2, dtype=DT)
    for mode in range(4):
        m = unfold(t, mode)
        assert m.shape == (t.shape[mode], t.numel() // t.shape[mode])
        assert torch.equal(fold(m, mode, t.shape), t)
        assert torch.equal(m[1], torch.movedim(t, mode, 0)[1].reshape(-1))
    with pytest.raises(ConfigError):
        fold(torch.randn(4, 4), 0, (3, 4))


def test_lrtc_step() -> None:
    gen = torch.Generator().manual_seed(23)
    t = _tucker((5, 6, 4), (2, 2, 2), gen)
    for i in range(3):
        assert int(torch.linalg.matrix_rank(unfold(t, i))) == 2
    assert torch.equal(lrtc_step(t, 0.0), t)
    assert torch.equal(lrtc_step(t, 0.0, n_iter=5), t)
    for tau in (0.1, 1.0, 5.0):
        # each term is t x_i P_i with range(P_i) in col(t_(i)): multilinear ranks cannot grow
        out = lrtc_step(t, tau)
        assert _nuc_sum(out) < _nuc_sum(t)
        for i in range(3):
            assert int(torch.linalg.matrix_rank(unfold(out, i))) <= 2
    v = torch.randn(4, 5, 3, generator=gen, dtype=DT)
    for tau in (0.2, 1.0, 3.0):
        out = lrtc_step(v, tau)
        assert _nuc_sum(out) < _nuc_sum(v)
        # the paper's average (1/n) sum_i fold_i(D_tau(v_(i))), written out
        ref = sum(fold(_svt_reference(unfold(v, i), tau), i, v.shape) for i in range(3)) / 3
        assert torch.allclose(out, ref, atol=1e-12)
    # weights: a single active mode is that mode's SVT; weights scale the per-mode threshold
    one = lrtc_step(v, 0.5, weights=(0.0, 2.0, 0.0))
    assert torch.allclose(one, fold(_svt_reference(unfold(v, 1), 1.0), 1, v.shape), atol=1e-12)
    # Algorithm 1 loop: iterate w <- mean_i fold_i D_tau((w_(i) + v_(i)) / 2) to a fixed point
    w = lrtc_step(v, 0.5, n_iter=300, tol=1e-13)
    again = sum(fold(_svt_reference(unfold((w + v) / 2, i), 0.5), i, v.shape) for i in range(3)) / 3
    assert torch.allclose(w, again, atol=1e-9)
    with pytest.raises(ConfigError, match="weights"):
        lrtc_step(v, 0.5, weights=(1.0, 1.0))
    with pytest.raises(ConfigError, match="weights"):
        lrtc_step(v, 0.5, weights=(0.0, 0.0, 0.0))


def test_lrtc_step_batch_equals_a_loop_over_the_items() -> None:
    """batch_dims: every tensor of the batch gets its own Algorithm 1 step (PGT's neurons)."""
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(4, 3, 5, 2, 2, generator=gen, dtype=DT)  # (batch 4 x 3) of (5, 2, 2)
    for tau, n_iter in ((0.3, 1), (0.8, 4), (50.0, 2)):
        got = lrtc_step(v, tau, n_iter=n_iter, batch_dims=2)
        for i in range(4):
            for j in range(3):
                ref = lrtc_step(v[i, j], tau, n_iter=n_iter)
                assert torch.allclose(got[i, j], ref, atol=1e-12)
    assert not lrtc_step(v, 50.0, batch_dims=2).any()  # all unfoldings under the threshold
    w = torch.stack([v[0, 0], v[0, 0] * 1e3])  # tol: stops when every item has converged
    assert torch.allclose(
        lrtc_step(w, 0.5, n_iter=200, tol=1e-12, batch_dims=1)[0],
        lrtc_step(v[0, 0], 0.5, n_iter=200, tol=1e-12),
        atol=1e-9,
    )
    with pytest.raises(ConfigError, match="'batch_dims'"):
        lrtc_step(v, 0.5, batch_dims=5)


# --------------------------------------------------------------------------- errors
def test_bad_arguments_raise_config_error() -> None:
    v = torch.randn(SHAPE, dtype=DT)
    with pytest.raises(ConfigError, match="'lam'"):
        soft_threshold(v, -0.1)
    with pytest.raises(ConfigError, match="'lam'"):
        hard_threshold(v, float("nan"))
    with pytest.raises(ConfigError, match="'lam'"):
        group_soft_threshold(v, torch.tensor([0.1, -1.0, 0.2]), (0,))
    with pytest.raises(ConfigError, match="broadcast"):
        group_soft_threshold(v, torch.ones(5), (0,))
    with pytest.raises(ConfigError, match="group_dims"):
        group_norms(v, (4,))
    with pytest.raises(ConfigError, match="group_dims"):
        group_hard_threshold(v, 0.1, (0, 0))
    with pytest.raises(ConfigError, match="'k'"):
        topk_groups(v, -1, (0,))
    with pytest.raises(ConfigError, match="'r'"):
        project_rank(v[0, 0], -2)
    with pytest.raises(ConfigError, match="'tau'"):
        svt(v[0, 0], -1.0)
    with pytest.raises(ConfigError, match="'tau'"):
        lrtc_step(v, -1.0)
    with pytest.raises(ConfigError, match="'m'"):
        svt(torch.randn(4, dtype=DT), 1.0)
    with pytest.raises(ConfigError, match="'v'"):
        soft_threshold([1.0, 2.0], 0.1)  # type: ignore[arg-type]
