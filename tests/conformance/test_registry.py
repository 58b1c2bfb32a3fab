"""Common checks over the method registry (like scikit-learn's estimator checks).

Every method in ``list_methods()`` must pass all of them; a newly registered method without an
entry in ``FAST`` / ``ZERO`` fails here until it declares how to run it quickly.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import metrics, surgery
from compactnn.errors import ConfigError
from compactnn.methods import get_method, list_methods
from compactnn.solvers.layerwise import ADMMOptions
from compactnn.train import TrainConfig
from compactnn.train import train as train_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _zoo import ShapeCheckedNet  # noqa: E402

METHODS = list_methods()

# a target runs ssr / pgt / admm-sparse through the budgeted engine: 60 steps (default 1500)
ENGINE = dict(engine_steps=60, anneal_steps=30)
# quick settings per method (tiny model, a few steps)
FAST: dict[str, dict[str, Any]] = {
    "ssr": dict(max_outer=2, w_steps=3, finetune_epochs=1, finetune_steps_per_epoch=3, **ENGINE),
    "admm-sparse": dict(xi=2, steps_per_epoch=3, finetune_epochs=1, n_mu=2, **ENGINE),
    "random": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "l1-norm": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "apoz": dict(finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
    "magnitude": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "taylor": dict(finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
    "ddlr": dict(calib_batches=2, max_rows=512),
    # ADMM to 2000 iterations (default 20000: at eps_frac 1e-4 it runs them all, 20 s a run)
    "net-trim": dict(calib_batches=2, max_rows=512, options=ADMMOptions(max_iter=2000)),
    "pgt": dict(
        epochs=1, steps_per_epoch=3, finetune_epochs=1, finetune_steps_per_epoch=3, **ENGINE
    ),
    "slr": dict(calib_batches=2, max_rows=512, finetune_epochs=1, finetune_steps_per_epoch=3),
}
# options at which the method removes nothing: the function must stay (almost) the same
ZERO: dict[str, tuple[dict[str, Any], float]] = {
    "ssr": (dict(lam=0.0, lr=1e-9, max_outer=1, w_steps=1, finetune_epochs=0), 1e-4),
    "admm-sparse": (dict(mus=(0.0,), lr=1e-9, xi=1, steps_per_epoch=1, finetune_epochs=0), 1e-4),
    "random": (dict(ratio=1.0, finetune_epochs=0), 1e-6),
    "l1-norm": (dict(ratio=1.0, finetune_epochs=0), 1e-6),
    "apoz": (dict(ratio=1.0, finetune_epochs=0, calib_batches=2), 1e-6),
    "magnitude": (dict(ratio=1.0, finetune_epochs=0), 1e-6),
    "taylor": (dict(ratio=1.0, finetune_epochs=0, calib_batches=2), 1e-6),
    # 8 x 32 rows > 192 inputs: fitted on 2 batches (64 rows) fc generalised to 0.71 of the
    # tolerance off the calibration rows (a margin a machine could flip); here 0.12
    "ddlr": (
        dict(
            eps_frac=1e-4,
            rank=10**6,
            dense_fallback=True,
            calib_batches=8,
            options=ADMMOptions(max_iter=300),
        ),
        5e-2,
    ),
    # N > d rows (8 x 32 > 192): with N < d the min-l1 interpolant is sparse even at eps -> 0
    "net-trim": (dict(eps_frac=1e-4, calib_batches=8, options=ADMMOptions(max_iter=2000)), 5e-2),
    "pgt": (dict(lam=0.0, lr=1e-9, epochs=1, steps_per_epoch=1, finetune_epochs=0), 1e-4),
    "slr": (dict(lam1=0.0, lam2=0.0, calib_batches=2), 1e-6),  # the original weights, kept
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ShapeCheckedNet()


@pytest.fixture(scope="module")
def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(ds, batch_size=160)


@pytest.fixture(scope="module")
def trained(data: tuple[DataLoader, DataLoader]) -> nn.Module:
    model = _model()
    train_model(model, data[0], config=TrainConfig(epochs=6, lr=0.05), progress=False)
    return model


def _run(model: nn.Module, method: str, data: Any, **kw: Any) -> Any:
    opts = {**FAST[method], **kw}
    return compactnn.compress(model, method, data, progress=False, on_drop="warn", **opts)


def test_every_registered_method_declares_its_checks() -> None:
    assert set(METHODS) <= set(FAST), "add the new method to FAST"
    assert set(METHODS) <= set(ZERO), "add the new method to ZERO"


@pytest.mark.parametrize("method", METHODS)
def test_untraceable_model_default_options_user_model_and_rng_untouched(
    method: str, trained: nn.Module, data: Any
) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
    res = _run(trained, method, data)  # default layer choice: needs no torch.fx
    assert torch.equal(rng[0], torch.get_rng_state())
    assert rng[1] == random.getstate()
    assert np.array_equal(rng[2], np.random.get_state()[1])  # noqa: NPY002
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), f"{method} modified the user's model ({k})"
    x = next(iter(data[1]))[0][:5]
    # output width kept, classifier untouched in shape
    assert res.model(x).shape == trained(x).shape
    assert res.model.head.out_features == 3


@pytest.mark.parametrize("method", METHODS)
def test_report_is_consistent_with_the_returned_model(
    method: str, trained: nn.Module, data: Any
) -> None:
    res = _run(trained, method, data)
    after = res.report_after
    assert after.params == metrics.count_params(res.model)
    assert after.flops == metrics.count_flops(res.model, (1, 8, 8))
    assert after.accuracy["top1"] == pytest.approx(
        metrics.accuracy(res.model, data[1], topk=(1,))["top1"]
    )
    assert res.report_before.params == metrics.count_params(trained)
    assert res.chosen and res.validation is not None


@pytest.mark.parametrize("method", METHODS)
def test_zero_strength_leaves_the_function_unchanged(
    method: str, trained: nn.Module, data: Any
) -> None:
    opts, tol = ZERO[method]
    res = compactnn.compress(
        trained, method, data, progress=False, measure=False, on_drop="warn", **opts
    )
    assert metrics.count_params(res.model) >= metrics.count_params(trained)  # nothing removed
    x = next(iter(data[1]))[0]
    with torch.no_grad():
        ref, got = trained.eval()(x), res.model.eval()(x)
    scale = float(ref.abs().max())
    assert float((ref - got).abs().max()) <= tol * max(scale, 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_target_is_met_and_measured_on_the_returned_model(
    method: str, trained: nn.Module, data: Any
) -> None:
    goal = 0.5 if method not in ("net-trim",) else 0.9
    res = _run(trained, method, data, target={"params": goal})
    assert res.target is not None and res.target["met"], res.target
    kept = metrics.count_params(res.model) / metrics.count_params(trained)
    assert res.target["kept"]["params"] == pytest.approx(kept)
    assert kept <= goal * 1.1
    # replaying the chosen options (no search) gives the same architecture
    again = compactnn.compress(
        trained, method, data, progress=False, measure=False, on_drop="warn", **res.chosen
    )
    assert metrics.count_params(again.model) == metrics.count_params(res.model)


@pytest.mark.parametrize("method", METHODS)
def test_plan_replays_on_a_fresh_untrained_instance(
    method: str, trained: nn.Module, data: Any
) -> None:
    res = _run(trained, method, data, measure=False)
    fresh = _model()
    torch.manual_seed(99)
    for p in fresh.parameters():  # make sure nothing of the trained weights is in it
        nn.init.normal_(p)
    replayed = surgery.apply(res.plan, fresh)
    x = next(iter(data[1]))[0]
    with torch.no_grad():
        assert torch.allclose(replayed.eval()(x), res.model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_bad_options_are_refused_at_construction(method: str) -> None:
    cls = get_method(method)
    with pytest.raises(ConfigError, match="no_such_option"):
        cls(no_such_option=1)
    with pytest.raises(ConfigError, match="'seed'"):
        cls(seed="abc")
    with pytest.raises(ConfigError, match="'layers'"):
        cls(layers=5)
