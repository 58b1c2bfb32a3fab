"""SSR as Lin et al. (2019) describe it (issue 15): l1 zeros never grow back, the paper's
fine-tuning schedule on request."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn.methods import ssr as ssr_mod


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)
    )


@pytest.fixture(scope="module")
def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :8].mean(1) > 0).long() + (x.flatten(1)[:, 8:].mean(1) > 0.3).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip


def test_l1_train_all_zeros_do_not_grow_back(loader) -> None:
    """The K-step of layer 2 trains every parameter (train_all): layer 1's zeros must stay."""
    res = compactnn.compress(
        mlp(), "ssr", (loader, loader), progress=False, measure=False, penalty="l1", lam=0.02,
        train_all=True, max_outer=3, w_steps=4, finetune_epochs=0, val_fraction=0.0,
        on_drop="warn",
    )  # fmt: skip
    first = res.history["layers"]["1"]
    assert 0 < first["nonzero_after"] < first["weights"], "the test needs zeros in layer 1"
    assert int((res.model[1].weight != 0).sum()) == first["nonzero_after"]


def test_paper_finetune_schedule(loader, monkeypatch) -> None:
    """30 epochs from 1e-4, x0.1 every 10 epochs (Lin sec. IV)."""
    calls: list[dict] = []
    monkeypatch.setattr(ssr_mod, "finetune_model", lambda *a, **k: calls.append(k))
    method = ssr_mod.SSR(finetune_epochs=25, finetune_lr=1e-4, finetune_schedule="paper")
    method._finetune(mlp(), loader, epochs=25, seed=0, masks=None, desc="", progress=False)
    assert [c["epochs"] for c in calls] == [10, 10, 5]
    assert [c["lr"] for c in calls] == pytest.approx([1e-4, 1e-5, 1e-6])
    assert {c["schedule"] for c in calls} == {"constant"}
    # the default is documented as a CPU-scale choice, not the paper's
    doc = ssr_mod.SSRConfig.__doc__ or ""
    assert "not** the paper's" in doc and "30 epochs from lr 1e-4" in doc
