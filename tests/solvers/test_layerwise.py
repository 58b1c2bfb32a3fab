"""Layer-wise convex solvers (DDLR / Net-Trim): optimality, feasibility, backends agree, errors."""

from __future__ import annotations

import math

import pytest
import torch

from compactnn.errors import ConfigError, InfeasibleError, InputShapeError, SolverError
from compactnn.solvers.layerwise import (
    ADMMOptions,
    CvxpyOptions,
    choose_rank,
    constraint_violation,
    eps_path,
    factorize,
    soft_threshold,
    solve_ddlr,
    solve_net_trim,
    svt,
)

D64 = torch.float64


def relu_layer(seed: int, N: int = 48, d: int = 16, n: int = 10):
    """Random ReLU layer: X = ReLU(Gaussian), W0 ~ N(0, 1/d), b ~ 0.1 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(N, d, generator=g, dtype=D64))
    W = torch.randn(n, d, generator=g, dtype=D64) / math.sqrt(d)
    b = 0.1 * torch.randn(n, generator=g, dtype=D64)
    return X, X @ W.T + b, b, W


SOLVERS = {"ddlr": solve_ddlr, "net-trim": solve_net_trim}
NORMS = {
    "ddlr": lambda U: float(torch.linalg.svdvals(U).sum()),
    "net-trim": lambda U: float(U.abs().sum()),
}


@pytest.mark.parametrize("method", ["ddlr", "net-trim"])
@pytest.mark.parametrize(
    ("seed", "frac", "linear"), [(0, 0.05, False), (1, 0.2, False), (2, 0.1, True)]
)
def test_admm_matches_scs(method: str, seed: int, frac: float, linear: bool) -> None:
    X, Y, b, _ = relu_layer(seed)
    solve = SOLVERS[method]
    ra = solve(X, Y, b, eps_frac=frac, linear=linear)
    rc = solve(X, Y, b, eps_frac=frac, linear=linear, backend="cvxpy")
    assert ra.status == "optimal" and rc.status == "optimal"
    assert ra.constraint_violation <= 1e-3 and rc.constraint_violation <= 1e-3
    assert ra.objective <= 1.01 * rc.objective
    # both are (near-)optimal for the same convex problem: objectives agree closely
    assert abs(ra.objective - rc.objective) <= 1e-3 * rc.objective
    # the reported numbers are measured on the returned U
    assert ra.objective == pytest.approx(NORMS[method](ra.U), rel=1e-9)
    v, _, _ = constraint_violation(X @ ra.U, Y, b, ra.extras["eps"], linear)
    assert v == pytest.approx(ra.constraint_violation, abs=1e-12)


@pytest.mark.parametrize("method", ["ddlr", "net-trim"])
def test_original_weight_is_feasible_and_bounds_objective(method: str) -> None:
    X, Y, b, W = relu_layer(3)
    eps = 0.1 * float(torch.linalg.vector_norm(X))
    assert constraint_violation(X @ W.T, Y, b, eps, False) == (0.0, 0.0, 0.0)
    assert constraint_violation(X @ W.T, Y, b, eps, True) == (0.0, 0.0, 0.0)
    res = SOLVERS[method](X, Y, b, eps_frac=0.1, warm_start=W.T.clone())
    assert res.status == "optimal"
    assert res.objective < NORMS[method](W.T)  # W0^T is feasible, so the optimum is no worse


def test_relu_output_gives_same_problem_as_preactivation() -> None:
    X, Y, b, _ = relu_layer(4)
    r1 = solve_ddlr(X, Y, b, eps_frac=0.1)
    r2 = solve_ddlr(X, torch.relu(Y), b, eps_frac=0.1)
    assert torch.equal(r1.U, r2.U)


def test_ddlr_is_low_rank_and_rank_decreases_with_eps() -> None:
    X, Y, b, _ = relu_layer(5, N=64, d=20, n=12)
    path = eps_path(X, Y, b, [0.02, 0.1, 0.3])
    assert [r.extras["eps_frac"] for r in path] == [0.02, 0.1, 0.3]
    assert all(r.status == "optimal" for r in path)
    objs = [r.objective for r in path]
    assert objs[0] > objs[1] > objs[2]
    ranks = [
        int((r.extras["singular_values"] > 1e-6 * r.extras["singular_values"][0]).sum())
        for r in path
    ]
    assert ranks[0] >= ranks[1] >= ranks[2] and ranks[2] < 12


def test_net_trim_is_sparse_with_exact_nnz() -> None:
    X, Y, b, W = relu_layer(6)
    res = solve_net_trim(X, Y, b, eps_frac=0.2)
    assert res.status == "optimal"
    assert res.extras["nnz"] == int((res.U != 0).sum()) < W.numel()


def test_float32_option_close_to_float64() -> None:
    X, Y, b, _ = relu_layer(7)
    r64 = solve_ddlr(X, Y, b, eps_frac=0.1)
    r32 = solve_ddlr(X, Y, b, eps_frac=0.1, options=ADMMOptions(dtype="float32", rel_tol=1e-3))
    assert r32.status == "optimal" and r32.constraint_violation <= 1e-3
    assert r32.objective == pytest.approx(r64.objective, rel=5e-3)


# --- infeasibility -------------------------------------------------------------------------


def test_unmatchable_target_raises_infeasible_both_backends() -> None:
    X, _, b, _ = relu_layer(8)
    Y = torch.randn(X.shape[0], b.numel(), dtype=D64) * 10  # not produced by X: cannot be matched
    for backend in ("admm", "cvxpy"):
        with pytest.raises(InfeasibleError, match="Increase eps_frac"):
            solve_ddlr(X, Y, b, eps_frac=1e-3, backend=backend)


def _inconsistent_inequality():
    X, Y, _, _ = relu_layer(9)
    X[0] = 0.0  # sample 0 sees only the bias ...
    b = torch.full((Y.shape[1],), 0.5, dtype=D64)  # ... which is positive ...
    Y = Y.clone()
    Y[0] = -1.0  # ... but its outputs must stay <= 0: no U can do that
    return X, Y, b


@pytest.mark.parametrize("method", ["ddlr", "net-trim"])
def test_admm_never_reports_success_on_infeasible(method: str) -> None:
    X, Y, b = _inconsistent_inequality()
    opts = ADMMOptions(max_iter=1500, raise_on_infeasible=False)
    res = SOLVERS[method](X, Y, b, eps_frac=0.1, options=opts)
    assert res.status in ("infeasible", "max_iter")
    assert not res.ok
    assert res.constraint_violation > 1e-3
    assert res.extras["ineq_violation"] > 1e-3


def test_cvxpy_certifies_inconsistent_inequality() -> None:
    X, Y, b = _inconsistent_inequality()
    with pytest.raises(InfeasibleError):
        solve_ddlr(X, Y, b, eps_frac=0.1, backend="cvxpy")
    res = solve_ddlr(
        X, Y, b, eps_frac=0.1, backend="cvxpy", options=CvxpyOptions(raise_on_infeasible=False)
    )
    assert res.status == "infeasible" and not res.ok


# --- rank selection and factors ----------------------------------------------------------------


def test_choose_rank_and_factorize_exact() -> None:
    A = torch.linalg.qr(torch.randn(30, 30, dtype=D64)).Q
    B = torch.linalg.qr(torch.randn(20, 20, dtype=D64)).Q
    for r in (1, 3, 7):
        U = A[:, :r] @ B[:, :r].T * 2.0  # exact rank r, equal singular values
        assert choose_rank(U) == r
        first, second = factorize(U, r)
        assert first.shape == (r, 30) and second.shape == (20, r)
        assert torch.allclose(second @ first, U.T, atol=1e-12)
    s = torch.tensor([10.0, 8.0, 6.0, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=D64)
    U = A[:, :8] @ torch.diag(s) @ B[:, :8].T
    assert choose_rank(U) == 3  # elbow after the three large values
    assert choose_rank(U, rank=5) == 5
    e = float((s[:2] ** 2).sum() / (s**2).sum())
    assert choose_rank(U, energy=e) == 2
    assert choose_rank(U, energy=e + 1e-6) == 3
    assert choose_rank(torch.zeros(4, 3, dtype=D64)) == 1
    first, second = factorize(U, 3)
    err = torch.linalg.matrix_norm(second @ first - U.T, 2)
    assert float(err) == pytest.approx(0.5, rel=1e-10)  # Eckart-Young: sigma_{r+1}


def test_choose_rank_errors() -> None:
    U = torch.randn(5, 4, dtype=D64)
    with pytest.raises(ConfigError, match="'rank'"):
        choose_rank(U, rank=5)
    with pytest.raises(ConfigError, match="'energy'"):
        choose_rank(U, energy=1.5)
    with pytest.raises(ConfigError):
        choose_rank(U, rank=2, energy=0.9)
    with pytest.raises(ConfigError, match="'r'"):
        factorize(U, 0)


@pytest.mark.parametrize("mode", ["full", "gram", "lowrank"])
def test_svt_modes_agree_with_closed_form(mode: str) -> None:
    W = torch.randn(40, 25, dtype=D64)
    if mode == "lowrank":  # the randomised path is exact only up to the spectral gap: use one
        W = 10 * torch.randn(40, 3, dtype=D64) @ torch.randn(3, 25, dtype=D64) + 1e-6 * W
    Uf, S, Vh = torch.linalg.svd(W, full_matrices=False)
    tau = float(S[2] + S[3]) / 2  # keeps exactly 3 singular values
    Z, s = svt(W, tau, mode=mode, rank_hint=3)
    ref = (Uf[:, :3] * (S[:3] - tau)) @ Vh[:3]
    assert torch.allclose(Z, ref, atol=1e-8)
    assert torch.allclose(s, S[:3] - tau, atol=1e-8)
    v = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], dtype=D64)
    assert torch.equal(soft_threshold(v, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0], dtype=D64))


# --- input errors -----------------------------------------------------------------------------


def test_input_errors_name_the_problem() -> None:
    X, Y, b, _ = relu_layer(10)
    with pytest.raises(SolverError, match="'X' is empty"):
        solve_ddlr(X[:0], Y[:0], b)
    with pytest.raises(InputShapeError, match="rows"):
        solve_ddlr(X, Y[:-1], b)
    with pytest.raises(InputShapeError, match="bias"):
        solve_ddlr(X, Y, b[:-1])
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(SolverError, match="'X' contains 1 NaN/Inf") as ei:
        solve_ddlr(Xn, Y, b, layer="features.fc1")
    assert "features.fc1" in str(ei.value)
    Yn = Y.clone()
    Yn[1, 1] = float("inf")
    with pytest.raises(SolverError, match="'Y' contains"):
        solve_net_trim(X, Yn, b)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(InfeasibleError, match="eps_frac"):
            solve_ddlr(X, Y, b, eps_frac=bad)
    with pytest.raises(ConfigError, match="'options'"):
        solve_ddlr(X, Y, b, backend="cvxpy", options=ADMMOptions())
    with pytest.raises(ConfigError, match="'backend'"):
        solve_ddlr(X, Y, b, backend="scipy")
    with pytest.raises(ConfigError, match="'alpha'"):
        ADMMOptions(alpha=2.5)
    with pytest.raises(ConfigError, match="'dtype'"):
        ADMMOptions(dtype="float16")
    with pytest.raises(ConfigError, match="'warm_start'"):
        solve_ddlr(X, Y, b, warm_start=torch.zeros(3, 3))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ddlr", "net-trim"])
def test_admm_matches_scs_medium(method: str) -> None:
    X, Y, b, _ = relu_layer(11, N=128, d=60, n=40)
    ra = SOLVERS[method](X, Y, b, eps_frac=0.1)
    rc = SOLVERS[method](X, Y, b, eps_frac=0.1, backend="cvxpy")
    assert ra.status == "optimal" and rc.ok
    assert ra.constraint_violation <= 1e-3 and rc.constraint_violation <= 1e-3
    assert ra.objective <= 1.01 * rc.objective
