"""Issue 12 acceptance: a small model of our own outside the zoo, whose forward branches on the
input shape and which registers its classifier first, compressed to ``params=0.2`` with default
options by every method that applies (slow: full default AULM / ADMM schedules)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import compactnn
import compactnn.errors
from _zoo import ShapeCheckedNet
from compactnn import metrics
from compactnn.methods import list_methods
from compactnn.train import TrainConfig
from compactnn.train import train as train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, tuple[DataLoader, DataLoader]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = ShapeCheckedNet()
    train_model(model, train, config=TrainConfig(epochs=10, lr=0.05), progress=False)
    return model, (train, DataLoader(ds, batch_size=320))


# Methods whose paper rules cannot reach 20 % of THIS model's parameters, and why. They must
# refuse with one clear error before returning anything, then meet the nearest budget.
UNREACHABLE = {
    # COO storage (3 numbers per non-zero) of the hidden layers stays above 25 % here
    "net-trim": 0.3,
    # dense layers only by default (the paper's setting): rank 1 on `fc` still keeps 30 %
    "ddlr": 0.4,
    # Kiaee's over-pruning guard: never more than half of a layer's filters
    "admm-sparse": 0.4,
}


@pytest.mark.parametrize("method", list_methods())
def test_default_options_meet_params_target(method: str, setup) -> None:  # type: ignore[no-untyped-def]
    model, data = setup
    goal = 0.2
    if method in UNREACHABLE:
        with pytest.raises(compactnn.errors.ConfigError, match="cannot reach the target"):
            compactnn.compress(model, method, data, target={"params": goal}, progress=False)
        goal = UNREACHABLE[method]
    res = compactnn.compress(
        model, method, data, target={"params": goal}, progress=False, on_drop="warn"
    )
    kept = metrics.count_params(res.model) / metrics.count_params(model)
    assert res.target is not None and res.target["met"], res.target
    assert kept <= goal * 1.1
    x = next(iter(data[1]))[0][:4]
    assert res.model(x).shape == (4, 3)
