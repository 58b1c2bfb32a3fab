"""Per-layer parallel execution: every backend returns the serial results exactly."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from compactnn.errors import CompactnnError, ConfigError
from compactnn.solvers.layerwise import LayerProblem, solve_ddlr, solve_layers


def _problems() -> dict[str, LayerProblem]:
    out = {}
    for i, (N, d, n) in enumerate([(40, 12, 8), (40, 8, 6), (40, 10, 5)]):
        g = torch.Generator().manual_seed(i)
        X = torch.relu(torch.randn(N, d, generator=g, dtype=torch.float64))
        W = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        b = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
        out[f"net.fc{i}"] = LayerProblem(X, X @ W.T + b, b, linear=(i == 2))
    return out


SOLVER = functools.partial(solve_ddlr, eps_frac=0.1)


def test_joblib_matches_serial() -> None:
    probs = _problems()
    ser = solve_layers(probs, SOLVER, backend="serial", progress=False)
    par = solve_layers(probs, SOLVER, n_jobs=2, backend="joblib", progress=False)
    assert list(par) == list(probs)
    for name in probs:
        assert ser[name].status == "optimal"
        assert torch.equal(ser[name].U, par[name].U)
    assert ser["net.fc2"].extras["linear"] is True


def test_errors_name_the_layer() -> None:
    probs = _problems()
    bad = probs["net.fc1"]
    probs["net.fc1"] = LayerProblem(bad.X, bad.Y[:-1], bad.bias)
    with pytest.raises(CompactnnError, match="net.fc1"):
        solve_layers(probs, "ddlr", backend="serial", progress=False)
    with pytest.raises(ConfigError, match="'solver'"):
        solve_layers(probs, "svd", progress=False)
    with pytest.raises(ConfigError, match="dask_client"):
        solve_layers(_problems(), "ddlr", backend="dask", progress=False)


def test_dask_matches_serial(dask_cluster) -> None:  # type: ignore[no-untyped-def]
    distributed = pytest.importorskip("distributed")
    probs = _problems()
    ser = solve_layers(probs, SOLVER, backend="serial", progress=False)
    with distributed.Client(dask_cluster, timeout=30) as client:
        par = solve_layers(probs, SOLVER, backend="dask", dask_client=client, progress=False)
    assert list(par) == list(probs)
    for name in probs:
        assert torch.equal(ser[name].U, par[name].U)
