"""ADMM-sparse as Kiaee et al. (2016) describe it (issue 15): FC blocks, exact removal with
BatchNorm, the 50 % guard, the epoch schedule of the fine-tuning, the default layers, every path
point returned and warm start across mu."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import models, surgery
from compactnn.methods import admm_sparse as am
from compactnn.methods._common import prune_filters
from compactnn.metrics import accuracy
from compactnn.prox import group_norms
from compactnn.solvers.training import ADMMConfig, ADMMEngine


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    return train, val, DataLoader(ds, batch_size=80)


def test_linear_kernels_are_rows() -> None:
    """Sec. 2 footnote 1: an FC layer is one input map with n 1-dim filters (Table 3(c): 256)."""
    w = nn.Linear(7, 5).weight
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l20", structure="kernels", lam=0.1))
    assert eng.group_dims["w"] == (0,)
    assert group_norms(w.detach(), eng.group_dims["w"]).shape == (5,)


class _Masks:
    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self._m = masks

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._m)


def test_zero_filter_removal_is_exact_with_batchnorm() -> None:
    """conv -> BN -> ReLU: the removed filter's BN gamma/beta are held at 0, so the returned
    (filters removed) model equals the masked one whose accuracy is logged."""
    model = bn_net()
    with torch.no_grad():  # BN with non-trivial statistics and beta: a constant channel
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(0.5, 1.0)
    layers = ["0", "4"]
    norms = am.following_norms(model, layers, (1, 8, 8))
    assert norms == {"0": ["1"], "4": ["5"]}
    masks = {f"{n}.weight": torch.ones_like(model[int(n)].weight, dtype=torch.bool) for n in layers}
    masks["0.weight"][[1, 4]] = False
    masks["4.weight"][2] = False
    fixed = am.ADMMSparse._fix_structure(model, _Masks(masks), layers, norms)
    assert {"0.bias", "1.weight", "1.bias", "4.bias", "5.weight", "5.bias"} <= set(fixed)
    pruned, _ = prune_filters(model, {"0": [0, 2, 3, 5], "4": [0, 1, 3, 4, 5, 6, 7]}, (1, 8, 8))
    model.eval()
    pruned.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(pruned(x), model(x), atol=1e-6, rtol=1e-6)


def test_logged_accuracy_is_that_of_the_returned_model(loaders) -> None:
    train, val, _ = loaders
    res = compactnn.compress(
        bn_net(), "admm-sparse", (train, val, val), progress=False, measure=False,
        structure="filters", mus=(0.5, 3.0), xi=2, steps_per_epoch=2, finetune_epochs=1,
        val_fraction=0.0, on_drop="warn",
    )  # fmt: skip
    assert res.history["removed_filters"], "the test needs removed filters"
    last = res.history["path"][-1]
    assert last["val_top1"] == pytest.approx(accuracy(res.model, val, topk=(1,))["top1"])


def test_guard_never_prunes_more_than_half() -> None:
    """Skewed norms: the mean threshold alone would prune 7 of 10 blocks; the guard prunes 5."""
    norms = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 5.0, 6.0, 7.0])
    v = torch.randn(10, 4)
    v = v / v.norm(dim=1, keepdim=True) * norms[:, None]
    assert int((norms <= norms.mean()).sum()) == 7
    for soft in (False, True):
        f = am.guarded_threshold(v, (0,), soft)
        zero = f.norm(dim=1) == 0
        assert int(zero.sum()) == 5 and bool(zero[:5].all())
        if soft:  # l1 keeps soft shrinkage: (1 - t/||v||) v with t the largest pruned norm
            t = 0.1
            torch.testing.assert_close(f[5:], v[5:] * (1 - t / norms[5:, None]))
        else:
            assert torch.equal(f[5:], v[5:])
    # unskewed: the paper's mean threshold itself (it prunes <= 50 %)
    flat = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[:, None]
    f = am.guarded_threshold(flat, (0,), False)
    assert (f[:, 0] == 0).tolist() == [True, True, True, False, False, False]


def test_guard_hook_fires_on_engine() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10, 4, 3, 3))
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l21", structure="kernels", lam=1e3))
    fired: dict[str, bool] = {}
    eng.step_outer(lambda: None, after_f_step=am._overprune_guard(fired))
    assert fired == {"w": True}
    zero = group_norms(eng.state.F["w"], (0, 1)) == 0
    assert int(zero.sum()) <= zero.numel() // 2


def test_default_layers_are_the_papers() -> None:
    nin = models.create("nin", in_channels=3, num_classes=10, input_size=32)
    assert am.kiaee_layers(nin, (3, 32, 32)) == ["conv1", "conv4", "conv5", "conv8"]
    cnn = models.create("kiaee-cnn", in_channels=1, num_classes=10, input_size=28)
    assert am.kiaee_layers(cnn, (1, 28, 28)) == ["conv1", "conv2", "conv3", "conv4", "fc1"]


def test_path_schedule_plans_and_warm_start(loaders, monkeypatch) -> None:
    train, val, _ = loaders
    from compactnn.solvers import training

    calls: list[dict] = []
    real_ft, real_run = am.finetune_model, training.run_admm
    monkeypatch.setattr(
        am, "finetune_model", lambda *a, **k: (calls.append(k), real_ft(*a, **k))[1]
    )
    starts: list = []
    monkeypatch.setattr(
        training, "run_admm",
        lambda eng, step, **k: (starts.append(k.get("warm_start")), real_run(eng, step, **k))[1],
    )  # fmt: skip
    model = bn_net()
    res = compactnn.compress(
        copy.deepcopy(model), "admm-sparse", (train, val, val), progress=False, measure=False,
        structure="filters", mus=(0.2, 1.0, 3.0), xi=1, steps_per_epoch=1, delta=2, nu=2,
        val_fraction=0.0, on_drop="warn",
    )  # fmt: skip
    path, plans = res.history["path"], res.history["path_plans"]
    assert [p["mu"] for p in path] == [0.0, 0.2, 1.0, 3.0] and len(plans) == 4
    # fine-tuning grows with the W-step schedule min(1 + delta i, delta nu) = 1, 3, 4
    assert [c["epochs"] for c in calls] == [1, 3, 4]
    assert [p["epochs"] for p in path] == [0, 1 + 1, 3 + 3, 4 + 4]
    # warm start: mu_i starts from the engine of mu_{i-1}
    assert starts[0] is None and all(s is not None for s in starts[1:])
    # every point's plan rebuilds the model whose validation accuracy is logged
    for entry, plan in zip(path, plans, strict=True):
        rebuilt = surgery.apply(plan, copy.deepcopy(model))
        assert accuracy(rebuilt, val, topk=(1,))["top1"] == pytest.approx(entry["val_top1"])
    assert path[0]["val_top1"] == pytest.approx(accuracy(model, val, topk=(1,))["top1"])


def test_input_channels_dead_for_every_filter_are_removed() -> None:
    """Kernels W_ij zero for every filter j of input i: input channel i goes, and with it the
    producing filter (and its BN) that feeds nothing else; the function is unchanged."""
    from compactnn.methods.base import CompressionData

    model = bn_net()
    layers = ["0", "4"]
    masks = {f"{n}.weight": torch.ones_like(model[int(n)].weight, dtype=torch.bool) for n in layers}
    masks["4.weight"][:, [1, 3]] = False  # kernels from input channels 1 and 3: all zero
    masks["4.weight"][2, 0] = False  # one more zero kernel: stays masked in the dense conv
    am.ADMMSparse._fix_structure(model, _Masks(masks), layers, {"0": ["1"], "4": ["5"]})
    data = CompressionData(train=None, input_shape=(1, 8, 8))
    deployed, plan, keep = am.ADMMSparse()._deploy(model, layers, masks, data)
    assert keep == {}
    assert deployed[0].out_channels == 4 and deployed[1].num_features == 4
    assert deployed[4].in_channels == 4
    model.eval()
    deployed.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(deployed(x), model(x), atol=1e-6, rtol=1e-6)
    rebuilt = surgery.apply(plan, copy.deepcopy(bn_net())).eval()
    torch.testing.assert_close(rebuilt(x), deployed(x), atol=0, rtol=0)
