"""Layer-wise methods end to end on a Dask cluster (issue 18, item 3).

One LocalCluster of 2 single-threaded worker processes on 127.0.0.1 (dashboard off) serves the
module; every run goes through ``compactnn.compress(..., parallel="dask", scheduler=ADDRESS)``
and must deploy exactly what the serial run deploys (same ranks / supports / sizes, same
weights: the solves are deterministic and run with one torch thread on both paths).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import surgery
from compactnn.errors import ConfigError, SolverError
from compactnn.solvers.layerwise import LayerProblem, solve_layers

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster(dask_cluster):  # type: ignore[no-untyped-def]
    """The run's shared cluster (tests/conftest.py): a task whose worker dies fails at once (no
    retries on fresh workers), see test_worker_errors_name_the_layer."""
    return dask_cluster


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 2, 6, 6, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _run(method: str, **kw: object):
    data = _loader()
    kw.setdefault("on_drop", "warn")
    return compactnn.compress(_cnn(), method, (data, data), progress=False, measure=False, **kw)


def _same_deployment(ser, par, keys: tuple[str, ...]) -> None:
    assert list(par.history["layers"]) == list(ser.history["layers"])
    for name, st in ser.history["layers"].items():
        for k in keys:
            assert par.history["layers"][name][k] == st[k], (name, k)
    a, b = ser.model.state_dict(), par.model.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    x = next(iter(_loader()))[0]
    torch.testing.assert_close(par.model(x), ser.model(x), rtol=0, atol=1e-5)
    # the Dask run's plan replays its own model on a fresh instance
    torch.testing.assert_close(surgery.apply(par.plan, _cnn())(x), par.model(x), rtol=0, atol=0)


def test_ddlr_on_dask_equals_serial(cluster) -> None:
    kw = {"eps_frac": 0.2, "conv": True}
    ser = _run("ddlr", **kw)
    par = _run("ddlr", parallel="dask", scheduler=cluster.scheduler_address, **kw)
    _same_deployment(ser, par, ("rank", "form", "stored_weights", "iterations", "status"))
    assert {st["form"] for st in par.history["layers"].values()} & {"lowrank", "dense"}


def test_net_trim_on_dask_equals_serial_one_layer_in_flight(cluster) -> None:
    kw = {"eps_frac": 0.3, "conv": True}
    ser = _run("net-trim", **kw)
    par = _run(
        "net-trim", parallel="dask", scheduler=cluster.scheduler_address, max_in_flight=1, **kw
    )
    _same_deployment(ser, par, ("nnz", "stored_weights", "iterations", "status"))
    assert all(st["nnz"] < st["original_weights"] for st in par.history["layers"].values())


def test_slr_symmetric_on_dask_equals_serial(cluster) -> None:
    kw = {"asymmetric": False, "form": "gather", "skip_first": False, "lam1": 0.05}
    ser = _run("slr", **kw)
    par = _run("slr", parallel="dask", scheduler=cluster.scheduler_address, **kw)
    _same_deployment(ser, par, ("kept_columns", "rank", "form", "stored_weights"))


def test_slr_asymmetric_is_refused_on_dask() -> None:
    with pytest.raises(ConfigError, match="asymmetric=True solves the layers one after another"):
        compactnn.methods.get_method("slr")(parallel="dask")
    with pytest.raises(ConfigError, match="parallel='dask'"):
        compactnn.methods.get_method("ddlr")(scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="cascade=1.1 solves the layers one after another"):
        compactnn.methods.get_method("net-trim")(cascade=1.1, parallel="joblib")


def test_local_cluster_started_by_the_method() -> None:
    """parallel='dask' without scheduler: a 2-worker loopback LocalCluster, closed after."""
    ser = _run("ddlr", eps_frac=0.2)
    par = _run("ddlr", eps_frac=0.2, parallel="dask", n_jobs=2)
    _same_deployment(ser, par, ("rank", "form", "stored_weights"))


def test_cli_scheduler_option(cluster, tmp_path) -> None:
    from tests.test_cli import tiny_factory

    from compactnn.cli import main

    args = ["compress", "--factory", "tests.test_cli:tiny_factory", "--method", "ddlr",
            "--data", "digits", "--on-drop", "warn", "--batch-size", "16",
            "--opt", "eps_frac=0.2", "--opt", "calib_batches=2", "--quiet"]  # fmt: skip
    dask_args = ["--opt", "parallel=dask", "--opt", f"scheduler={cluster.scheduler_address}"]
    assert main([*args, *dask_args, "--out", str(tmp_path / "dask")]) == 0
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    a = compactnn.load(tmp_path / "serial", model=tiny_factory()).state_dict()
    b = compactnn.load(tmp_path / "dask", model=tiny_factory()).state_dict()
    assert list(a) == list(b) and any("first" in k for k in a)  # a factorized layer
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_unreachable_scheduler_is_one_clear_error_before_capture(monkeypatch) -> None:
    import compactnn.capture as capture

    def no_capture(*a: object, **k: object) -> None:
        raise AssertionError("captured before connecting")

    monkeypatch.setattr(capture, "collect", no_capture)
    addr = "tcp://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(
        ConfigError,
        match=r"could not reach the Dask scheduler at 'tcp://127\.0\.0\.1:9' within 1 s",
    ):
        _run("ddlr", parallel="dask", scheduler=addr, scheduler_timeout=1.0)


def test_missing_distributed_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match="needs the optional 'distributed' package"):
        _run("net-trim", parallel="dask")


def _problems() -> dict[str, LayerProblem]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in ("net.a", "net.b", "net.c"):
        X = torch.relu(torch.randn(30, 6, generator=g, dtype=torch.float64))
        W = torch.randn(4, 6, generator=g, dtype=torch.float64)
        out[name] = LayerProblem(X, X @ W.T, None)
    return out


def _counts_layers_held(X, Y, bias, *, linear, layer):
    """Solve, and record how many layer problems the worker holds while solving."""
    import dataclasses

    from distributed import get_worker

    from compactnn.solvers.layerwise import solve_ddlr

    held = sum(isinstance(v, LayerProblem) for v in get_worker().data.values())
    res = solve_ddlr(X, Y, bias, linear=linear, layer=layer)
    return dataclasses.replace(res, extras={**res.extras, "held": held})


def test_one_layer_in_flight_bounds_the_data_on_the_workers(cluster) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with distributed.Client(cluster, timeout=30) as client:
            out = solve_layers(_problems(), _counts_layers_held, backend="dask",
                               dask_client=client, max_in_flight=1, progress=False)  # fmt: skip
            assert [r.extras["held"] for r in out.values()] == [1, 1, 1]
            # local_cluster spawns workers without the nanny's malloc trim threshold (2x slower)
            assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
            # every layer's data and result is released once back (the release is asynchronous)
            import time

            def left() -> list[str]:
                ours = ("compactnn-layer-", "LayerProblem-")
                return [str(k) for k in client.who_has() if str(k).startswith(ours)]

            deadline = time.monotonic() + 10
            while left() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not left()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _raises_on_b(X, Y, bias, *, linear, layer):
    if layer == "net.b":
        raise ValueError("bad data")
    from compactnn.solvers.layerwise import solve_ddlr

    return solve_ddlr(X, Y, bias, linear=linear, layer=layer)


def _dies_on_c(X, Y, bias, *, linear, layer):
    if layer == "net.c":
        os._exit(3)  # the worker process dies (as an OOM kill would)
    from compactnn.solvers.layerwise import solve_ddlr

    return solve_ddlr(X, Y, bias, linear=linear, layer=layer)


def test_worker_errors_name_the_layer(cluster) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    try:
        with distributed.Client(cluster, timeout=30) as client:
            with pytest.raises(SolverError, match=r"Solving layer 'net\.b' failed: ValueError"):
                solve_layers(_problems(), _raises_on_b, backend="dask", dask_client=client,
                             progress=False)  # fmt: skip
            # last: kills a worker of the shared cluster (its nanny restarts it). Which future
            # reports it first is a race: net.c's (KilledWorker) or another layer's that ran on
            # the same worker or was dropped with it (FutureCancelledError, seen on a loaded
            # machine); either way the error names a layer, the cluster and the likely cause
            with pytest.raises(
                SolverError,
                match=r"(?s)layer 'net\.[a-z]+' on the Dask cluster at 'tcp://127\.0\.0\.1:\d+' "
                r"failed: (KilledWorker|FutureCancelledError).*A worker running it died or was lost",
            ):
                solve_layers(_problems(), _dies_on_c, backend="dask", dask_client=client,
                             progress=False)  # fmt: skip
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_unguarded_script_is_refused_before_spawning(monkeypatch, tmp_path) -> None:
    """Spawned local workers re-import the main script: without a __main__ guard Dask would
    retry for ever, so compactnn refuses up front (a guarded script passes the check)."""
    import types

    from compactnn.solvers.layerwise.parallel import _check_main_guard

    script = tmp_path / "run.py"
    script.write_text("import compactnn\ncompactnn.compress(...)\n")
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=str(script)))
    with pytest.raises(ConfigError, match=r"run\.py.*if __name__ == \"__main__\":"):
        _run("ddlr", parallel="dask")
    script.write_text("import compactnn\nif __name__ == '__main__':\n    compactnn.compress(...)\n")
    _check_main_guard("ddlr")


def test_net_trim_budget_search_connects_once_and_deploys_as_serial(cluster, monkeypatch) -> None:
    """A Net-Trim budget search with parallel="dask" opens one client for all its trials (it
    opened one per trial), then one for the final run; the result is the serial search's."""
    from compactnn.methods.layerwise import NetTrim

    opened = []
    real = NetTrim._dask_client

    def counting(self):  # type: ignore[no-untyped-def]
        opened.append(self.config.eps_frac)
        return real(self)

    monkeypatch.setattr(NetTrim, "_dask_client", counting)
    kw = dict(target={"params": 0.5})
    ser = _run("net-trim", **kw)
    assert opened == []
    par = _run("net-trim", parallel="dask", scheduler=cluster.scheduler_address, **kw)
    trials = len(par.target["trace"])
    assert trials > 1 and len(opened) == 2, (trials, opened)
    _same_deployment(ser, par, ("nnz",))
