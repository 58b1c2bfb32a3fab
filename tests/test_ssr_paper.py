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


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip


def test_gap_head_linear_is_pooled_features_times_a_zero_classifier() -> None:
    from compactnn import surgery
    from compactnn.plan import CompressionPlan, GapHead

    model = small_cnn()
    head = GapHead("4", ("5", "6", "7"), linear=True)
    new = surgery.apply(CompressionPlan([head], meta={"input_shape": [1, 4, 4]}), model)
    lin = new[4][2]
    assert (lin.in_features, lin.out_features) == (8, 3)
    assert not lin.weight.any() and not lin.bias.any()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 8))
        x = torch.randn(5, 1, 4, 4)
        feats = model[3](model[2](model[1](model[0](x)))).mean(dim=(2, 3))
        assert torch.allclose(new(x), feats @ lin.weight.T + lin.bias, atol=1e-6)
    # exact parameter count: the convs plus one 8 x 3 classifier
    assert sum(p.numel() for p in new.parameters()) == (6 * 9 + 6) + (8 * 6 * 9 + 8) + (8 * 3 + 3)
    with pytest.raises(Exception, match="'linear' must be True or False"):
        GapHead("4", ("5",), linear="yes")  # type: ignore[arg-type]


def test_ssr_gap_prunes_convs_fits_the_head_and_replays(loader) -> None:
    from compactnn import surgery
    from compactnn.methods._common import add_gap_head
    from compactnn.plan import GapHead

    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = compactnn.compress(
        model, "ssr", (loader, loader), progress=False, measure=False, gap=True, lam=0.5,
        max_outer=3, w_steps=4, finetune_epochs=1, val_fraction=0.0, on_drop="warn",
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not mutated
    # only the convs were pruned; the FC head is gone, one Linear(c_last, 3) replaces it
    assert set(res.history["layers"]) == {"0", "2"}
    assert res.history["gap"]["classifier_removed"] == ["5", "6", "7"]
    c_last = res.model[2].out_channels
    assert res.model[4][2].in_features == c_last == res.history["gap"]["features"]
    assert all(isinstance(res.model[i], nn.Identity) for i in (5, 6, 7))
    # the plan replays on a fresh instance to the same network
    fresh = surgery.apply(res.plan, small_cnn())
    x = torch.randn(4, 1, 4, 4)
    assert torch.allclose(fresh(x), res.model(x), atol=1e-6)
    # the least-squares fit is the ridge solution: its normal equations hold
    xs = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    fixed = DataLoader(TensorDataset(xs, torch.zeros(64, dtype=torch.long)), batch_size=16)
    head = GapHead("4", ("5", "6", "7"), linear=True)
    new, rec = add_gap_head(small_cnn(), small_cnn().eval(), head, fixed, (1, 4, 4), max_samples=48)
    assert rec["fit_samples"] == 48
    with torch.no_grad():
        f = new[3](new[2](new[1](new[0](xs[:48])))).mean(dim=(2, 3)).double()
        z = small_cnn()(xs[:48]).double()
        a = torch.cat([f, torch.ones(48, 1, dtype=f.dtype)], 1)
        w = torch.cat([new[4][2].weight.T, new[4][2].bias[None]]).double()
    delta = 1e-4 * float((a.T @ a).diagonal().mean())
    grad = a.T @ (a @ w - z) + delta * w
    assert float(grad.abs().max()) < 1e-4 * float((a.T @ z).abs().max())


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"gap": True, "layers": ["0", "5"]}, r"prunes conv layers only.*\['5'\]"),
        ({"gap": True, "gap_flatten": "5"}, "must name an nn.Flatten"),
        ({"gap": True, "gap_flatten": ""}, "non-empty string"),
    ],
)
def test_ssr_gap_bad_options(loader, opts, match) -> None:  # noqa: ANN001
    with pytest.raises(compactnn.CompactnnError, match=match):
        compactnn.compress(small_cnn(), "ssr", (loader, loader), progress=False, measure=False,
                           val_fraction=0.0, **opts)  # fmt: skip
