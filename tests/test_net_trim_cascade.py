"""Cascade Net-Trim (Aghasi et al., sec. 2.2; issue 15): layers in forward order on the
compressed network's input, epsilon inflated from the original weights' residual, and the
inactive bound (X̂U + b) o M' <= (X̂W0^T + b) o M' that keeps the original weights feasible."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import surgery
from compactnn.capture import collect
from compactnn.errors import InputShapeError
from compactnn.solvers.layerwise import ADMMOptions, CvxpyOptions, LayerProblem, NetTrimSolver
from compactnn.solvers.layerwise.problem import constraint_violation

D64 = torch.float64


def _layer(seed: int, N: int = 40, d: int = 16, n: int = 8):
    """Original layer (W0, b) on its original input X, and a perturbed input Xh (the input a
    compressed earlier layer gives): Y = X W0^T + b is the target, V = Xh W0^T + b the ceiling."""
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(N, d, generator=g, dtype=D64))
    Xh = torch.relu(X + 0.15 * torch.randn(N, d, generator=g, dtype=D64))
    W0 = torch.randn(n, d, generator=g, dtype=D64) / math.sqrt(d)
    b = 0.1 * torch.randn(n, generator=g, dtype=D64)
    return Xh, X @ W0.T + b, Xh @ W0.T + b, W0, b


def test_original_weights_are_feasible_for_the_cascade_problem_only() -> None:
    Xh, Y, V, W0, b = _layer(0)
    mask = Y > 0
    res = float(torch.linalg.vector_norm(torch.where(mask, V - Y, torch.zeros_like(V))))
    eps = 1.05 * res
    viol = constraint_violation(Xh @ W0.T, Y, b, eps, False, V)
    assert viol == (0.0, 0.0, 0.0)
    # with the parallel scheme's bound 0 the original weights break the inactive constraint
    plain = constraint_violation(Xh @ W0.T, Y, b, eps, False)
    assert plain[2] > 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_cascade_problem_admm_and_cvxpy_deploy_the_same_support(seed: int) -> None:
    Xh, Y, V, W0, b = _layer(seed)
    mask = Y > 0
    res = float(torch.linalg.vector_norm(torch.where(mask, V - Y, torch.zeros_like(V))))
    frac = 1.1 * res / float(torch.linalg.vector_norm(Xh))
    prob = LayerProblem(Xh, Y, b, False, ceiling=V)
    solver = NetTrimSolver(eps_frac=frac)
    a = solver.solve(prob, backend="admm", options=ADMMOptions(rel_tol=1e-7, max_iter=50000))
    c = solver.solve(prob, backend="cvxpy", options=CvxpyOptions(eps=1e-9))
    for r in (a, c):
        assert r.status == "optimal" and r.constraint_violation <= 1e-3
        # the returned U satisfies the cascade constraints (measured here, not by the solver)
        tot, eq, ineq = constraint_violation(Xh @ r.U, Y, b, r.extras["eps"], False, V)
        assert eq <= 1e-3 and ineq <= 1e-3
        # sparser than the original weights (which are feasible): l1 no larger
        assert float(r.U.abs().sum()) <= float(W0.abs().sum()) + 1e-6
    assert torch.equal(a.U != 0, c.U != 0)
    assert a.objective == pytest.approx(c.objective, rel=1e-3)


def test_a_problem_sent_to_a_dask_worker_keeps_its_ceiling() -> None:
    from compactnn.solvers.layerwise.parallel import _on_cpu

    Xh, Y, V, _, b = _layer(0)
    sent = _on_cpu(LayerProblem(Xh, Y, b, False, ceiling=V))
    assert sent.ceiling is not None and torch.equal(sent.ceiling, V)
    assert _on_cpu(LayerProblem(Xh, Y, b, False)).ceiling is None


def test_ceiling_of_the_wrong_shape_is_refused() -> None:
    Xh, Y, V, _, b = _layer(0)
    with pytest.raises(InputShapeError, match="ceiling"):
        NetTrimSolver(eps_frac=0.1).solve(LayerProblem(Xh, Y, b, False, ceiling=V[:, :3]))


def _mlp_and_data() -> tuple[nn.Sequential, DataLoader]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10)
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(20):
        perm = torch.randperm(1200, generator=g)
        for i in range(0, 1200, 100):
            idx = perm[i : i + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    loader = DataLoader(TensorDataset(x[1200:1500], y[1200:1500]), batch_size=100)
    return model, loader


def test_cascade_net_trim_end_to_end() -> None:
    model, data = _mlp_and_data()
    kw = dict(progress=False, measure=False, on_drop="warn", eps_frac=0.05, max_rows=None)
    par = compactnn.compress(model, "net-trim", (data, data, data), **kw)
    cas = compactnn.compress(model, "net-trim", (data, data, data), cascade=1.1, **kw)
    hc = cas.history["layers"]
    # the first layer sees the original input in both schemes: the same problem and answer
    assert "cascade" not in hc["0"]
    assert torch.equal(cas.model[0].to_dense().weight, par.model[0].to_dense().weight)
    # the second: epsilon = 1.1 x the original weights' masked residual on the new input
    rec = hc["2"]["cascade"]
    partial = copy.deepcopy(model)  # layer 0 compressed, layer 2 original: what it was solved on
    partial[0] = cas.model[0]
    io = collect(partial, ["2"], [x for x, _ in data], max_rows=None, asymmetric_from=model)
    X, Y = io["2"].X.to(D64), io["2"].Y.to(D64)
    V = X @ model[2].weight.detach().to(D64).T + model[2].bias.detach().to(D64)
    res = float(torch.linalg.vector_norm(torch.where(Y > 0, V - Y, torch.zeros_like(V))))
    assert rec["original_residual"] == pytest.approx(res, rel=1e-6)
    assert rec["eps_frac"] == pytest.approx(1.1 * res / float(torch.linalg.vector_norm(X)))
    assert hc["2"]["eps"] == pytest.approx(1.1 * res, rel=1e-6)
    # the deployed layer satisfies the cascade constraints it was solved under
    assert hc["2"]["deployed_violation"] <= 1e-3
    assert 0 < hc["2"]["nnz"] < 32 * 24
    # a self-contained plan: replays exactly
    x = next(iter(data))[0]
    assert torch.equal(surgery.apply(cas.plan, model)(x), cas.model(x))
