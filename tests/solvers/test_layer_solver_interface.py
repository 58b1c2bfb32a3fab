"""The layer-solver interface: registry, declared capabilities, backend dispatch, a new solver.

Known answers: with ``X`` having orthonormal columns and a linear layer without bias,
``||XU - XU0||_F = ||U - U0||_F``, so eq. (4) becomes ``min f(U) s.t. ||U - U0||_F <= eps``,
whose solution is the prox of ``f`` at ``U0`` with the threshold ``tau`` that puts the solution
on the sphere: ``sum min(|x_i|, tau)^2 = eps^2`` over the singular values (nuclear norm: SVT)
or the entries (l1: soft thresholding) of ``U0``.
"""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from compactnn.errors import ConfigError, UnknownNameError
from compactnn.prox import soft_threshold, svt
from compactnn.solvers.layerwise import (
    CONSTRAINTS,
    LAYER_SOLVERS,
    Backend,
    Capabilities,
    CvxpyOptions,
    DDLRSolver,
    LayerProblem,
    LayerSolver,
    LayerSolveResult,
    NetTrimSolver,
    SolveCall,
    choose_rank,
    factorize,
    get_layer_solver,
    list_layer_solvers,
    solve_ddlr,
    solve_layers,
)

D64 = torch.float64
TAU = 0.5


def _orthonormal(N: int, d: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(N, d, generator=g, dtype=D64))
    return Q


def _lowrank_u0(d: int, n: int) -> Tensor:
    """U0 (d x n) with singular values (3, 2, 0.2, 0.1): SVT at 0.5 leaves rank 2."""
    A = _orthonormal(d, 4, 1)
    B = _orthonormal(n, 4, 2)
    return (A * torch.tensor([3.0, 2.0, 0.2, 0.1], dtype=D64)) @ B.T


def _sparse_u0(d: int, n: int) -> Tensor:
    """U0 with 5 entries of magnitude >= 1 and the rest <= 0.2: soft threshold at 0.5."""
    g = torch.Generator().manual_seed(3)
    U0 = 0.2 * (2 * torch.rand(d, n, generator=g, dtype=D64) - 1)
    for k, (i, j) in enumerate([(0, 0), (1, 2), (3, 1), (4, 3), (5, 0)]):
        U0[i, j] = (1.0 + 0.5 * k) * (-1) ** k
    return U0


def _nuclear_known() -> tuple[Tensor, Tensor, float]:
    d, n = 6, 5
    U0 = _lowrank_u0(d, n)
    s = torch.linalg.svdvals(U0)
    return U0, svt(U0, TAU), float(torch.clamp(s, max=TAU).square().sum().sqrt())


def _l1_known() -> tuple[Tensor, Tensor, float]:
    U0 = _sparse_u0(6, 5)
    return U0, soft_threshold(U0, TAU), float(torch.clamp(U0.abs(), max=TAU).norm())


def _num_rank(U: Tensor) -> int:
    s = torch.linalg.svdvals(U)
    return int((s > 1e-3 * s[0]).sum())


def _deployed_rank(U: Tensor) -> int:
    return choose_rank(U)  # the elbow rule DDLR deploys with


def _deployed_support(U: Tensor) -> Tensor:
    return U != 0  # Net-Trim deploys the non-zeros of U (after its zero_tol clean-up)


# objective -> (known problem, what is deployed). A new objective needs its entry here.
KNOWN = {
    "nuclear": (_nuclear_known, _deployed_rank),
    "l1": (_l1_known, _deployed_support),
    # SLR (penalised): orthonormal X, B only (lam1 = inf) => U* = SVT(U0, lam2 N / 2); SLR
    # deploys every non-zero singular value
    "f1+l21+nuclear": (_nuclear_known, _num_rank),
}

CASES = [(name, b) for name, caps in list_layer_solvers().items() for b in caps.backends]


# --- registry and declarations ----------------------------------------------------------------


def test_registry_lists_ddlr_and_net_trim_with_capabilities() -> None:
    caps = list_layer_solvers()
    assert list(caps)[:2] == ["ddlr", "net-trim"]
    assert caps["ddlr"] == Capabilities(
        objective="nuclear",
        constraints=("fit_ball", "relu_inactive"),
        backends=("admm", "cvxpy"),
        warm_start=True,
        factor_output=True,
    )
    assert caps["net-trim"] == Capabilities(
        objective="l1",
        constraints=("fit_ball", "relu_inactive"),
        backends=("admm", "cvxpy"),
        warm_start=True,
        factor_output=False,
    )
    assert isinstance(get_layer_solver("ddlr"), DDLRSolver)
    assert get_layer_solver("net-trim", zero_tol=1e-4) == NetTrimSolver(zero_tol=1e-4)
    with pytest.raises(UnknownNameError, match="Known layer solvers: ddlr, net-trim"):
        get_layer_solver("slr-typo")
    with pytest.raises(ConfigError, match="no parameter 'rank'.*eps_frac"):
        get_layer_solver("ddlr", rank=3)


@pytest.mark.parametrize("name", list(LAYER_SOLVERS))
def test_declarations_are_consistent_and_picklable(name: str) -> None:
    cls = LAYER_SOLVERS[name]
    assert cls.name == name and cls.owner
    assert tuple(cls.backend_table) == cls.capabilities.backends
    assert all(row.name == b for b, row in cls.backend_table.items())
    assert set(cls.capabilities.constraints) <= set(CONSTRAINTS)
    solver = get_layer_solver(name)
    assert pickle.loads(pickle.dumps(solver)) == solver
    first = cls.params()[0]  # eps_frac for the eps-constrained solvers, lam1 for SLR
    assert getattr(solver.with_params(**{first: 0.3}), first) == 0.3
    with pytest.raises(ConfigError, match="no parameter"):
        solver.with_params(lam=1.0)


# --- every solver x every declared backend: known answer, deployed structure agrees ----------


def _solve_known(name: str, backend: str) -> tuple[LayerSolveResult, Tensor, Tensor]:
    if backend == "cvxpy":
        pytest.importorskip("cvxpy")
    solver = get_layer_solver(name)
    make, _ = KNOWN[solver.capabilities.objective]
    U0, U_star, eps = make()
    if "eps_frac" not in solver.params():  # penalised (SLR): the known answer is SVT(U0, TAU)
        from compactnn.solvers.layerwise import SLRAdmmOptions, SLRCvxpyOptions

        X = _orthonormal(20, U0.shape[0], 0)
        slr = solver.with_params(lam1=math.inf, lam2=2 * TAU / 20, t=0.1, scale="absolute")
        opts = (
            SLRCvxpyOptions()
            if backend == "cvxpy"
            else SLRAdmmOptions(dtype="float64", tol=1e-10, max_iter=5000)
        )
        prob = LayerProblem(X, X @ U0, None, linear=True)
        return slr.solve(prob, backend=backend, options=opts, layer="fc"), U0, U_star
    X = _orthonormal(20, U0.shape[0], 0)
    frac = eps / float(torch.linalg.vector_norm(X))
    options = CvxpyOptions(eps=1e-9) if backend == "cvxpy" else None
    res = solver.with_params(eps_frac=frac).solve(
        LayerProblem(X, X @ U0, None, linear=True), backend=backend, options=options, layer="fc"
    )
    return res, U0, U_star


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_every_backend_finds_the_known_answer(name: str, backend: str) -> None:
    res, _, U_star = _solve_known(name, backend)
    assert res.backend == backend and res.ok
    assert res.constraint_violation <= 1e-3
    assert torch.allclose(res.U, U_star, atol=1e-4), float((res.U - U_star).abs().max())
    _, deployed = KNOWN[get_layer_solver(name).capabilities.objective]
    assert torch.equal(torch.as_tensor(deployed(res.U)), torch.as_tensor(deployed(U_star)))


@pytest.mark.parametrize("name", list(LAYER_SOLVERS))
def test_backends_agree_on_what_is_deployed(name: str) -> None:
    caps = list_layer_solvers()[name]
    _, deployed = KNOWN[caps.objective]
    runs = {b: _solve_known(name, b)[0] for b in caps.backends}
    first = next(iter(runs.values()))
    for b, res in runs.items():
        got, ref = deployed(res.U), deployed(first.U)
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(ref)), (b, got, ref)
        assert res.objective == pytest.approx(first.objective, rel=1e-4)
    if caps.factor_output:  # the deployed factors reproduce the same low-rank weight
        r = deployed(first.U)
        assert {_num_rank(res.U) for res in runs.values()} == {r}
        prods = [(lambda f: f[1] @ f[0])(factorize(res.U, r)) for res in runs.values()]
        assert all(torch.allclose(p, prods[0], atol=1e-4) for p in prods)


def test_relu_problem_backends_agree_on_rank_and_support() -> None:
    """A ReLU layer (masked ball + inactive constraint): same rank / same support."""
    pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(7)
    X = torch.relu(torch.randn(48, 12, generator=g, dtype=D64))
    W = torch.randn(8, 12, generator=g, dtype=D64) / math.sqrt(12)
    b = 0.1 * torch.randn(8, generator=g, dtype=D64)
    prob = LayerProblem(X, X @ W.T + b, b)
    ddlr = get_layer_solver("ddlr", eps_frac=0.2)
    ra, rc = (ddlr.solve(prob, backend=k) for k in ("admm", "cvxpy"))
    assert _num_rank(ra.U) == _num_rank(rc.U) and choose_rank(ra.U) == choose_rank(rc.U)
    # the deployed support (U != 0 after zero_tol) agrees once SCS is solved tightly; with the
    # default SCS eps=1e-6 a few entries ~2e-6 * max|U| survive the default zero_tol=1e-6
    nt = get_layer_solver("net-trim", eps_frac=0.2)
    sa = nt.solve(prob, backend="admm")
    sc = nt.solve(prob, backend="cvxpy", options=CvxpyOptions(eps=1e-9))
    assert torch.equal(sa.U != 0, sc.U != 0)


# --- refusals from the declarations -----------------------------------------------------------


def test_undeclared_backend_and_bad_options_are_refused() -> None:
    X = _orthonormal(10, 4, 0)
    prob = LayerProblem(X, X @ torch.ones(4, 3, dtype=D64), None, linear=True)
    for name, owner in (("ddlr", "DDLR"), ("net-trim", "Net-Trim")):
        with pytest.raises(ConfigError) as ei:
            get_layer_solver(name).solve(prob, backend="scipy")
        msg = str(ei.value)
        assert owner in msg and f"'{name}'" in msg and "'scipy'" in msg
        assert "'admm', 'cvxpy'" in msg
        with pytest.raises(ConfigError, match="CvxpyOptions for backend='cvxpy'"):
            get_layer_solver(name).solve(prob, backend="cvxpy", options=object())
    with pytest.raises(ConfigError, match="'backend' parameter of DDLR.*'admm', 'cvxpy'"):
        solve_ddlr(prob.X, prob.Y, None, backend="scipy")  # the thin wrapper refuses the same
    with pytest.raises(ConfigError, match="must be a LayerProblem"):
        get_layer_solver("ddlr").solve((prob.X, prob.Y))  # type: ignore[arg-type]


# --- a new solver is one class ----------------------------------------------------------------


def _ridge_lstsq(X: Tensor, T: Tensor, lam: float) -> Tensor:
    d = X.shape[1]
    return torch.linalg.solve(X.T @ X + lam * torch.eye(d, dtype=X.dtype), X.T @ T)


@dataclass(frozen=True)
class RidgeSolver(LayerSolver):
    """Toy: ``min ||XU + 1b^T - Y||_F^2 + lam ||U||_F^2`` (closed form), one backend."""

    lam: float = 0.1

    name: ClassVar[str] = "ridge"
    owner: ClassVar[str] = "Ridge"
    capabilities: ClassVar[Capabilities] = Capabilities(
        objective="ridge",
        constraints=(),
        backends=("lstsq",),
        warm_start=False,
        factor_output=False,
    )
    backend_table: ClassVar[dict[str, Backend]] = {"lstsq": Backend("lstsq", None, _ridge_lstsq)}

    def _solve(self, problem: LayerProblem, call: SolveCall) -> LayerSolveResult:
        t0 = time.perf_counter()
        X, Y = problem.X.to(D64), problem.Y.to(D64)
        b = torch.zeros(Y.shape[1], dtype=D64) if problem.bias is None else problem.bias.to(D64)
        U = call.backend.run(X, Y - b, self.lam)
        obj = float((X @ U + b - Y).square().sum() + self.lam * U.square().sum())
        return LayerSolveResult(
            U=U,
            status="optimal",
            objective=obj,
            constraint_violation=0.0,
            iterations=1,
            seconds=time.perf_counter() - t0,
            backend=call.backend.name,
            extras={"layer": call.layer},
        )


def test_a_new_solver_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LAYER_SOLVERS, "ridge", RidgeSolver)
    assert list_layer_solvers()["ridge"].objective == "ridge"
    g = torch.Generator().manual_seed(5)
    probs = {}
    for i in range(2):
        X = torch.randn(30, 5, generator=g, dtype=D64)
        b = torch.randn(3, generator=g, dtype=D64)
        probs[f"net.fc{i}"] = LayerProblem(X, torch.randn(30, 3, generator=g, dtype=D64), b)
    for solver in ("ridge", get_layer_solver("ridge", lam=0.5)):
        out = solve_layers(probs, solver, backend="serial", progress=False)
        lam = 0.1 if solver == "ridge" else 0.5
        assert list(out) == list(probs)
        for name, p in probs.items():
            want = _ridge_lstsq(p.X, p.Y - p.bias, lam)
            assert torch.allclose(out[name].U, want, atol=1e-12)
            assert out[name].backend == "lstsq" and out[name].extras["layer"] == name
    ridge = get_layer_solver("ridge")
    p = probs["net.fc0"]
    with pytest.raises(ConfigError, match="'backend' parameter of Ridge must be one of 'lstsq'"):
        ridge.solve(p, backend="admm")
    with pytest.raises(ConfigError, match="'options' parameter of Ridge must be None"):
        ridge.solve(p, options=CvxpyOptions())
    with pytest.raises(ConfigError, match="does not declare warm starts"):
        ridge.solve(p, warm_start=torch.zeros(5, 3, dtype=D64))


def test_method_solver_is_the_registry_solver_and_picklable() -> None:
    """DDLR / Net-Trim look their solver up by ``solver_name``; the per-layer callable pickles."""
    from compactnn.methods.layerwise import DDLR, NetTrim

    X = _orthonormal(20, 6, 0)
    prob = LayerProblem(X, X @ _sparse_u0(6, 5), None, linear=True)
    for method, kw in ((DDLR, {}), (NetTrim, {"zero_tol": 1e-3})):
        m = method(**kw)
        fn = pickle.loads(pickle.dumps(m._solver({"fc": 0.05})))
        assert type(fn.keywords["solver"]) is LAYER_SOLVERS[m.solver_name]
        res = fn(prob.X, prob.Y, None, linear=True, layer="fc")
        ref = get_layer_solver(m.solver_name, eps_frac=0.05, **kw).solve(prob, layer="fc")
        assert torch.equal(res.U, ref.U)
