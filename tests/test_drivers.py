"""The shared training drivers: the ADMM / AULM driver (hooks, warm start, F-step variants,
the momentum rule of its W-steps) and the proximal-gradient driver (train's step_hook)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from compactnn.errors import ConfigError, SolverError, UnknownNameError
from compactnn.methods._common import admm_w_step
from compactnn.methods.admm_sparse import _overprune_guard
from compactnn.prox import group_norms, group_soft_threshold, soft_threshold
from compactnn.solvers.training import (
    ADMMConfig,
    ADMMEngine,
    ProxGradient,
    ProxGroup,
    prox_step_hook,
    run_admm,
    sgd_w_step,
)
from compactnn.train import TrainConfig, _lr_at, train

DT = torch.float64


def _lsq(seed: int = 0, n: int = 30, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randn(n, generator=g, dtype=DT)


def _exact_w_step(A: torch.Tensor, b: torch.Tensor, w: nn.Parameter, engine: ADMMEngine):
    """w_step(k): argmin ½‖A w − b‖² + ρ/2 ‖w − U‖² in closed form; records the k's."""
    rho = engine.config.rho
    M = A.T @ A + rho * torch.eye(A.shape[1], dtype=DT)
    calls: list[int] = []

    def step(k: int) -> None:
        calls.append(k)
        u = engine.w_targets()["w"].reshape(-1)
        with torch.no_grad():
            w.copy_(torch.linalg.solve(M, A.T @ b + rho * u).reshape(w.shape))

    return step, calls


# ------------------------------------------------------------------------------ ADMM driver
def test_driver_calls_hooks_in_order_and_returns_the_trace() -> None:
    A, b = _lsq()
    w = nn.Parameter(torch.zeros(8, dtype=DT))
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l1", lam=2.0, max_outer=6, eps=1e-12))
    step, calls = _exact_w_step(A, b, w, eng)
    events: list[str] = []

    def w_step(k: int) -> None:
        events.append(f"w{k}")
        step(k)

    def after_f(e: ADMMEngine) -> None:
        assert e is eng and e.state.phase == "dual"
        events.append("f")

    seen: list[dict] = []

    def on_it(e: ADMMEngine, stats: dict) -> None:
        assert stats is e.state.history[-1]
        seen.append(stats)
        events.append("it")

    res = run_admm(eng, w_step, after_f_step=after_f, on_iteration=on_it)
    assert events == [x for k in range(6) for x in (f"w{k}", "f", "it")]
    assert calls == list(range(6)) and res.n_iter == 6 and not res.converged
    assert list(res.trace) == seen and [t["k"] for t in res.trace] == [1, 2, 3, 4, 5, 6]
    assert res.engine is eng and torch.equal(res.masks["w"], eng.state.F["w"] != 0)


def test_driver_stops_on_the_rule_and_a_used_engine_continues() -> None:
    A, b = _lsq()
    w = nn.Parameter(torch.zeros(8, dtype=DT))
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l1", lam=2.0, max_outer=500, eps=1e-6))
    step, _ = _exact_w_step(A, b, w, eng)
    res = run_admm(eng, step)
    assert res.converged and res.n_iter < 500 and eng.converged()
    again = run_admm(eng, step)  # continues from the state: k keeps counting
    assert again.trace[0]["k"] == res.n_iter + 1
    with pytest.raises(ConfigError, match="ADMMEngine"):
        run_admm("engine", step)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="callable"):
        run_admm(eng, None)  # type: ignore[arg-type]


def test_warm_start_copies_f_and_y_and_restarts_the_counters() -> None:
    A, b = _lsq()
    w = nn.Parameter(torch.zeros(8, dtype=DT))
    cfg = ADMMConfig(penalty="l1", lam=2.0, overrelax=True, max_outer=4, eps=1e-12)
    first = ADMMEngine({"w": w}, cfg)
    run_admm(first, _exact_w_step(A, b, w, first)[0])
    second = ADMMEngine({"w": w}, cfg)
    second.warm_start(first)
    st, prev = second.state, first.state
    for name in ("F", "F_hat", "F_prev"):
        assert torch.equal(getattr(st, name)["w"], prev.F["w"])
    for name in ("Y", "Y_hat", "Y_prev"):
        assert torch.equal(getattr(st, name)["w"], prev.Y["w"])
    assert st.F["w"].data_ptr() != prev.F["w"].data_ptr()  # copies, not shared tensors
    assert (st.k, st.k_momentum, st.history, st.phase) == (0, 0, [], "w")
    assert st.c_prev == math.inf
    second.warm_start(first.state)  # from a state too


def test_warm_start_equals_continuing_plain_admm() -> None:
    """Without over-relaxation F and Y are the whole state of an iteration: a warm-started
    engine reproduces the iterates of the engine it starts from, exactly."""
    A, b = _lsq(1)
    cfg = ADMMConfig(penalty="l1", lam=1.5, max_outer=5, eps=1e-12)
    w1 = nn.Parameter(torch.zeros(8, dtype=DT))
    one = ADMMEngine({"w": w1}, cfg)
    step1, _ = _exact_w_step(A, b, w1, one)
    run_admm(one, step1)
    w2 = nn.Parameter(w1.detach().clone())
    two = ADMMEngine({"w": w2}, cfg)
    res = run_admm(two, _exact_w_step(A, b, w2, two)[0], warm_start=one)
    run_admm(one, step1)  # the first engine continues for as many iterations
    assert res.n_iter == 5
    assert torch.equal(two.state.F["w"], one.state.F["w"])
    assert torch.equal(two.state.Y["w"], one.state.Y["w"])


def test_warm_start_refuses_other_parameters() -> None:
    a = ADMMEngine({"w": nn.Parameter(torch.ones(4, 3))}, ADMMConfig())
    with pytest.raises(ConfigError, match="'w'.*shape"):
        ADMMEngine({"w": nn.Parameter(torch.ones(4, 2))}, ADMMConfig()).warm_start(a)
    with pytest.raises(ConfigError, match="'v'.*missing"):
        ADMMEngine({"v": nn.Parameter(torch.ones(4, 3))}, ADMMConfig()).warm_start(a)
    both = ADMMEngine(
        {"w": nn.Parameter(torch.ones(4, 3)), "v": nn.Parameter(torch.ones(2))}, ADMMConfig()
    )
    with pytest.raises(ConfigError, match=r"\['v'\]"):
        a.warm_start(both)
    with pytest.raises(ConfigError, match="ADMMState"):
        a.warm_start("state")  # type: ignore[arg-type]
    a.f_step()
    with pytest.raises(SolverError, match="between f_step"):
        a.warm_start(a)


def test_set_f_replaces_the_f_step_through_the_api() -> None:
    w = nn.Parameter(torch.randn(5, 3, dtype=DT))
    eng = ADMMEngine({"w": w}, ADMMConfig(rho=2.0, penalty="l21", lam=0.1))
    eng.state.Y_hat["w"] = torch.randn(5, 3, dtype=DT)
    v = eng.prox_input("w")
    assert torch.equal(v, w.detach() + eng.state.Y_hat["w"] / 2.0)
    with pytest.raises(SolverError, match="after f_step"):
        eng.set_f("w", torch.zeros(5, 3, dtype=DT))
    eng.f_step()
    new = torch.zeros(5, 3, dtype=DT)
    new[0] = v[0]
    y_hat = eng.state.Y_hat["w"].clone()
    eng.set_f("w", new)
    with pytest.raises(ConfigError, match="shape"):
        eng.set_f("w", torch.zeros(3, 5, dtype=DT))
    with pytest.raises(ConfigError, match="non-finite"):
        eng.set_f("w", torch.full((5, 3), math.nan, dtype=DT))
    with pytest.raises(UnknownNameError, match="'q'"):
        eng.set_f("q", new)
    eng.dual_step()  # the dual step and the statistics use the replaced F
    assert torch.equal(eng.state.F["w"], new)
    assert torch.allclose(eng.state.Y["w"], y_hat + 2.0 * (w.detach() - new), rtol=0, atol=0)
    assert eng.state.history[-1]["nnz_groups"] == 1


def test_overprune_guard_is_an_after_f_step_hook() -> None:
    """Kiaee sec. 4.1: > 50 % of the blocks zeroed -> keep the blocks above the mean norm."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 4, 3, 3) * torch.linspace(0.2, 2.0, 6).view(-1, 1, 1, 1))
    v = nn.Parameter(torch.randn(5, 4) * 10)  # a layer the threshold leaves alone
    norms = group_norms(w.detach(), (0,))
    lam = float(norms.sort().values[4]) ** 2 / 2  # l20: zeroes the 5 smallest filters
    eng = ADMMEngine(
        {"w": w, "v": v}, ADMMConfig(penalty="l20", structure="filters", lam={"w": lam, "v": 1e-6})
    )
    fired: dict[str, bool] = {}
    eng.step_outer(lambda: None, after_f_step=_overprune_guard(fired))
    assert fired == {"w": True, "v": False}
    keep = norms > norms.mean()
    assert 0 < int(keep.sum()) < 5
    f = eng.state.F["w"]
    assert torch.equal(f[keep], w.detach()[keep]) and bool((f[~keep] == 0).all())
    assert torch.equal(eng.state.F["v"], v.detach())


# ------------------------------------------------------------------------------ momentum rule
def _one_batch_problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    eng = ADMMEngine({"weight": model.weight}, ADMMConfig(rho=1.0, penalty="l21", lam=0.05))
    return model, [(x, y)], eng


def _grad(model: nn.Module, batch, eng: ADMMEngine) -> torch.Tensor:
    model.zero_grad()
    x, y = batch
    (nn.functional.cross_entropy(model(x), y) + eng.penalty_loss()).backward()
    g = model.weight.grad.detach().clone()
    model.zero_grad()
    return g


@pytest.mark.parametrize("builder", ["methods", "sgd_w_step"])
def test_every_w_step_starts_with_zero_momentum(builder: str) -> None:
    """The driver's rule: each outer iteration's W-step builds a fresh optimizer, so its first
    SGD update is the plain (zero-momentum) one, whatever the previous W-step accumulated."""
    lr, m = 0.1, 0.9
    model, loader, eng = _one_batch_problem()
    if builder == "methods":  # one compactnn.train.train call per W-step (Nesterov SGD)
        w_step = admm_w_step(
            model, loader, eng, epochs=1, lr=lr, momentum=m, weight_decay=0.0, seed=lambda k: k
        )
        first_update = 1.0 + m  # Nesterov's first step: g + m * buf with buf = g
    else:  # the solver-level W-step (heavy-ball SGD)
        w_step = sgd_w_step(model, loader, nn.functional.cross_entropy, eng, lr=lr, momentum=m)
        first_update = 1.0
    for k in range(3):
        before = model.weight.detach().clone()
        g = _grad(model, loader[0], eng)
        w_step(k)
        expected = before - lr * first_update * g
        torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-6, atol=1e-7)
        eng.f_step()
        eng.dual_step()


# ------------------------------------------------------------------------------ prox-grad
def _cls_data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    y = (x[:, 0] - 0.8 * x[:, 1] > 0).long() + (x[:, 0] + x[:, 1] > 1.0).long()
    return x, y


def test_train_step_hook_gets_the_lr_of_every_step() -> None:
    x, y = _cls_data()
    model = nn.Linear(6, 3).double()
    seen: list[float] = []
    cfg = TrainConfig(epochs=3, lr=0.2, schedule="cosine", momentum=0.0, weight_decay=0.0)
    loader = [(x[:48], y[:48]), (x[48:], y[48:])]
    train(model, loader, config=cfg, progress=False, step_hook=seen.append)
    assert seen == [_lr_at(cfg, s, 6) for s in range(6)]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_step_is_the_prox_of_the_sgd_step(momentum: float) -> None:
    x, y = _cls_data()
    torch.manual_seed(1)
    base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    plain, proxed = copy.deepcopy(base), copy.deepcopy(base)
    cfg = TrainConfig(epochs=1, lr=0.3, schedule="constant", momentum=momentum)
    train(plain, [(x, y)], config=cfg, progress=False)
    lam1, lam2 = 1.8, 0.05
    hook = prox_step_hook(
        [
            ProxGroup({"0.weight": proxed[0].weight}, lam=lam1),  # neurons (rows)
            ProxGroup({"2.weight": proxed[2].weight}, lam=lam2, penalty="l1"),
        ]
    )
    train(proxed, [(x, y)], config=cfg, progress=False, step_hook=hook)
    with torch.no_grad():
        want0 = group_soft_threshold(plain[0].weight, 0.3 * lam1, (0,))
        want2 = soft_threshold(plain[2].weight, 0.3 * lam2)
    assert torch.equal(proxed[0].weight, want0) and torch.equal(proxed[2].weight, want2)
    assert torch.equal(proxed[0].bias, plain[0].bias)  # not in a group: plain SGD
    assert 0 < hook.group_counts()["0.weight"]["nonzero"] < 5  # some neurons were zeroed
    assert hook.steps == 1


def test_lambda_zero_is_plain_sgd() -> None:
    x, y = _cls_data()
    torch.manual_seed(2)
    base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    plain, proxed = copy.deepcopy(base), copy.deepcopy(base)
    cfg = TrainConfig(epochs=4, lr=0.1, schedule="cosine")
    loader = [(x[:48], y[:48]), (x[48:], y[48:])]
    train(plain, loader, config=cfg, progress=False)
    groups = [ProxGroup({"0.weight": proxed[0].weight, "2.weight": proxed[2].weight}, lam=0.0)]
    train(proxed, loader, config=cfg, progress=False, step_hook=ProxGradient(groups))
    for a, b in zip(plain.parameters(), proxed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_prox_grad_reaches_the_group_lasso_solution_orthogonal_design() -> None:
    """min ½‖A w − b‖² + λ Σ_g ‖w_g‖ with AᵀA = I has the closed form w* = GST(Aᵀb, λ)."""
    g = torch.Generator().manual_seed(3)
    A, _ = torch.linalg.qr(torch.randn(40, 12, generator=g, dtype=DT))
    b = torch.randn(40, generator=g, dtype=DT)
    target = (A.T @ b).reshape(4, 3)
    lam = float(target.norm(dim=1).sort().values[1:3].mean())  # zeroes 2 of the 4 groups
    w = nn.Parameter(torch.zeros(4, 3, dtype=DT))
    opt = torch.optim.SGD([w], lr=0.5)
    hook = ProxGradient(ProxGroup({"w": w}, lam=lam))
    for _ in range(200):
        opt.zero_grad()
        (0.5 * (A @ w.reshape(-1) - b).pow(2).sum()).backward()
        opt.step()
        hook(0.5)
    want = group_soft_threshold(target, lam, (0,))
    assert int((want.norm(dim=1) > 0).sum()) == 2  # both zero and non-zero groups
    torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-10)
    objective = 0.5 * float((A @ w.detach().reshape(-1) - b).pow(2).sum()) + hook.penalty()
    assert objective == pytest.approx(
        0.5 * float((A @ want.reshape(-1) - b).pow(2).sum()) + lam * float(want.norm(dim=1).sum())
    )


def test_prox_grad_through_train_meets_the_group_lasso_kkt_conditions() -> None:
    """Multinomial logistic regression + group lasso on the input features (columns), trained
    by :func:`train` with the hook: at the end the KKT conditions of the convex problem hold."""
    x, y = _cls_data(n=120)
    model = nn.Linear(6, 3).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    lam = 0.05
    hook = prox_step_hook(ProxGroup({"weight": model.weight}, lam=lam, structure="channels"))
    cfg = TrainConfig(
        epochs=3000, lr=1.0, schedule="constant", momentum=0.0, weight_decay=0.0, seed=0
    )
    train(model, [(x, y)], config=cfg, progress=False, step_hook=hook)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grad, wt = model.weight.grad, model.weight.detach()
    norms = wt.norm(dim=0)
    kept = norms > 0
    assert bool(kept[:2].all()) and 0 < int(kept.sum()) < 6  # informative features kept
    kkt = grad[:, kept] + lam * wt[:, kept] / norms[kept]
    assert float(kkt.abs().max()) < 1e-6
    assert bool((grad[:, ~kept].norm(dim=0) <= lam + 1e-9).all())
    assert float(model.bias.grad.abs().max()) < 1e-6


def test_prox_groups_are_validated() -> None:
    p = nn.Parameter(torch.ones(3, 2))
    with pytest.raises(ConfigError, match="two proximal groups"):
        ProxGradient([ProxGroup({"a": p}, lam=0.1), ProxGroup({"b": p}, lam=0.2)])
    with pytest.raises(ConfigError, match="'penalty' parameter of ProxGroup"):
        ProxGroup({"a": p}, lam=0.1, penalty="l3")
    with pytest.raises(ConfigError, match="'lam' parameter of ProxGroup"):
        ProxGroup({"a": p}, lam=-1.0)
    with pytest.raises(ConfigError, match="'structure' parameter of ProxGroup"):
        ProxGroup({"a": p}, lam=0.1, structure="rows")
    with pytest.raises(ConfigError, match="non-empty"):
        ProxGroup({}, lam=0.1)
    with pytest.raises(ConfigError, match="ProxGroup"):
        ProxGradient([])
    seen: list[float] = []

    def shrink(v: torch.Tensor, t: float) -> torch.Tensor:
        seen.append(t)
        return v * 0.5

    ProxGradient(ProxGroup({"a": p}, lam=0.3, prox=shrink))(0.2)
    assert seen == [pytest.approx(0.06)] and torch.equal(p.detach(), torch.full((3, 2), 0.5))
    with pytest.raises(ConfigError, match="shape"):
        ProxGradient(ProxGroup({"a": p}, lam=0.3, prox=lambda v, t: v.T))(0.2)
