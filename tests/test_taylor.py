"""The ``taylor`` criterion (Molchanov et al. 2019, eq. (8)): its scores are the squared
first-order change of the loss when a filter is removed, averaged over batches; computing them
leaves the model untouched; coupled layers are scored in one pass; the method cuts the
best-scored filters and meets a budget like the other criteria."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compactnn import compress, criteria, metrics
from compactnn.errors import UnsupportedLayerError

SHAPE = (1, 8, 8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip


def _batches(n: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, *SHAPE, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]  # fmt: skip


def _loss(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(b[0]), b[1])


def test_scores_are_the_squared_first_order_loss_change_of_removing_each_filter() -> None:
    """Per batch, sum_k g_k w_k of a filter is the derivative of the loss along the filter's
    own direction: d/dt L(W with filter i scaled by (1 - t)) at t = 0 is -sum_k g_k w_k. The
    score is its square averaged over the batches (measured here by central differences)."""
    model = _net().double().eval()
    batches = [(x.double(), y) for x, y in _batches()]
    got = criteria.taylor_scores(model, ["0", "3", "7"], batches)
    for layer, n in (("0", 6), ("3", 8), ("7", 12)):
        want = torch.zeros(n, dtype=torch.float64)
        for b in batches:
            for i in range(n):
                d = []
                for t in (1e-5, -1e-5):
                    m = copy.deepcopy(model)
                    with torch.no_grad():
                        mod = m.get_submodule(layer)
                        mod.weight[i] *= 1 - t
                        mod.bias[i] *= 1 - t
                    with torch.no_grad():
                        d.append(float(_loss(m, b)))
                want[i] += ((d[0] - d[1]) / 2e-5) ** 2
        torch.testing.assert_close(got[layer].double(), want / len(batches), rtol=1e-4, atol=1e-9)


def test_scoring_leaves_the_model_untouched_and_restores_its_mode() -> None:
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    criteria.taylor_scores(model, ["0", "3"], _batches())
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # no .grad written
    for k, v in model.state_dict().items():  # BatchNorm running statistics did not move
        assert torch.equal(v, before[k]), k


def test_one_pass_for_several_layers_equals_one_layer_at_a_time() -> None:
    model = _net()
    b = _batches()
    both = criteria.taylor_scores(model, ["3", "7"], b)
    for layer in ("3", "7"):
        torch.testing.assert_close(both[layer], criteria.filter_scores("taylor", model, layer,
                                                                       batches=b))  # fmt: skip


def test_clear_errors_for_unlabelled_batches_and_non_filter_layers() -> None:
    model = _net()
    with pytest.raises(ValueError, match="labelled"):
        criteria.taylor_scores(model, ["0"], [torch.randn(4, *SHAPE)])
    with pytest.raises(ValueError, match="needs data"):
        criteria.filter_scores("taylor", model, "0")
    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d"):
        criteria.taylor_scores(model, ["1"], _batches())
    with pytest.raises(Exception, match="nope"):
        criteria.taylor_scores(model, ["nope"], _batches())


def test_taylor_method_cuts_the_best_scored_filters_and_meets_a_budget() -> None:
    model = _net()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, *SHAPE, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    before = copy.deepcopy(model.state_dict())
    res = compress(
        model, "taylor", (train, train), input_shape=SHAPE, layers=["0"], ratio=0.5,
        finetune_epochs=0, max_drop=None, val_fraction=0.0, calib_batches=2, measure=False,
    )  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the keep-set: the top 3 of 6 by the scores on the same two (reseeded) training batches
    from compactnn.train import _seeded

    batches = [b for _, b in zip(range(2), _seeded(train, 0), strict=False)]
    scores = criteria.taylor_scores(model, ["0"], batches)["0"]
    keep = sorted(torch.argsort(-scores, stable=True)[:3].tolist())
    torch.testing.assert_close(res.model.get_submodule("0").weight, model[0].weight[keep],
                               rtol=0, atol=0)  # fmt: skip
    # a MACs target through the shared filled split, measured on the returned model
    res = compress(
        model, "taylor", (train, train), input_shape=SHAPE, target={"macs": 0.3},
        finetune_epochs=0, max_drop=None, val_fraction=0.0, calib_batches=2, measure=False,
    )  # fmt: skip
    macs = metrics.count_flops(res.model, SHAPE) / metrics.count_flops(model, SHAPE)
    assert macs <= 0.3 + 1e-9 and res.target["option"].startswith("filters per layer")
