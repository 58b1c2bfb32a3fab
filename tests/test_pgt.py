"""PGT (Zhou et al. 2016): each backward step is the prox it claims (group) or Algorithm 1
step by step (low rank), zero neurons stay zero, removal is exact, top-t keeps exactly t, the
supplement's parameter accounting, and clear errors for bad options."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compactnn import metrics, models
from compactnn.errors import ConfigError
from compactnn.methods import PGT, CompressionData
from compactnn.methods.pgt import _NeuronStep, neuron_shapes
from compactnn.solvers.training import ProxGradient, ProxGroup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import ShapeCheckedNet  # noqa: E402

DT = torch.float64


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )


def _data(n: int = 64) -> CompressionData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 10, 10, generator=g)
    y = (x[:, 0, :5].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 5:].mean(dim=(1, 2)) > 0).long()
    ds = TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    return CompressionData(train=loader, val=DataLoader(ds, batch_size=64), input_shape=(1, 10, 10))


def _joint(m: nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.weight.detach().reshape(m.weight.shape[0], -1), m.bias.detach()[:, None]], 1
    )


# ------------------------------------------------------------------ neuron shapes
def test_neuron_shapes_conv_fc_and_mlp() -> None:
    lenet = models.create("lenet-caffe")
    assert neuron_shapes(lenet, ["conv2", "fc1"], (1, 28, 28)) == {
        "conv2": (20, 5, 5),
        "fc1": (50, 4, 4),  # supplement Table 2: "fc3 500 filters 4x4"
    }
    assert neuron_shapes(ShapeCheckedNet(), ["fc"], (1, 8, 8)) == {"fc": (12, 4, 4)}
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    assert neuron_shapes(mlp, ["0", "2"], (5,)) == {"0": (5, 1, 1), "2": (7, 1, 1)}
    with pytest.raises(ConfigError, match="Conv2d and Linear"):
        neuron_shapes(nn.Sequential(nn.BatchNorm1d(3)), ["0"], (3,))


# ------------------------------------------------------------------ backward steps
def _step(model: nn.Module, t: float, **opts) -> _NeuronStep:
    """The method's backward step with threshold t (lr = t, lam = 1)."""
    method = PGT(layers=("0", "3", "6"), lam=1.0, **opts)
    hook = method._hook(model, ["0", "3", "6"], (1, 10, 10))
    hook(t)
    return hook


@pytest.mark.parametrize("t", [0.05, 0.3, 1.0])
def test_group_step_is_the_prox_of_the_neuron_group_norm(t: float) -> None:
    model = _net().double()
    before = {n: _joint(m) for n, m in model.named_modules() if n in ("0", "3", "6")}
    _step(model, t)
    gen = torch.Generator().manual_seed(1)
    for n, m in model.named_modules():
        if n not in before:
            continue
        v, x = before[n], _joint(m)
        # closed form: each neuron (weights + bias) scaled by (1 - t / ||v_j||)_+
        norms = v.norm(dim=1, keepdim=True)
        assert torch.allclose(x, v * (1 - t / norms).clamp_min(0), atol=1e-12)

        def obj(z: torch.Tensor, v: torch.Tensor = v) -> float:
            return float(t * z.norm(dim=1).sum() + 0.5 * (z - v).pow(2).sum())

        best = obj(x)
        for i in range(40):
            d = torch.randn(x.shape, generator=gen, dtype=DT) * 10.0 ** (-(i % 4))
            assert obj(x + d) >= best - 1e-12


def _svt_np(m: np.ndarray, tau: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u * np.maximum(s - tau, 0)) @ vt


def _algorithm1(v: np.ndarray, tau: float, iters: int) -> np.ndarray:
    """Supplement Algorithm 1 written out for one order-3 neuron v (numpy, independent)."""
    w = v.copy()  # line 1
    for _ in range(iters):  # line 2
        ms = []
        for i in range(3):  # lines 3-5: M_i = D_tau(1/2 (w_(i) + v_(i)))
            a = np.moveaxis((w + v) / 2, i, 0)
            mi = _svt_np(a.reshape(a.shape[0], -1), tau).reshape(a.shape)
            ms.append(np.moveaxis(mi, 0, i))
        w = sum(ms) / 3  # line 6
    return w


@pytest.mark.parametrize(("t", "iters"), [(0.05, 1), (0.2, 3), (5.0, 2)])
def test_lowrank_step_matches_algorithm1_step_by_step(t: float, iters: int) -> None:
    model = _net().double()
    shapes = neuron_shapes(model, ["0", "3", "6"], (1, 10, 10))
    assert shapes["6"] == (8, 2, 2)
    before = {n: _joint(m) for n, m in model.named_modules() if n in shapes}
    _step(model, t, penalty="lowrank", lrtc_iter=iters)
    for n, m in model.named_modules():
        if n not in shapes:
            continue
        v = before[n].numpy()
        x = _joint(m).numpy()
        d = int(np.prod(shapes[n]))
        for j in range(v.shape[0]):
            ref = _algorithm1(v[j, :d].reshape(shapes[n]), t, iters).reshape(-1)
            np.testing.assert_allclose(x[j, :d], ref, atol=1e-10)
            # the bias is kept, and zeroed with a neuron whose weights all became zero
            expect_b = 0.0 if not ref.any() else v[j, d]
            assert x[j, d] == pytest.approx(expect_b, abs=1e-12)
    if t == 5.0:  # every unfolding under the threshold: the whole layer is zero
        assert not _joint(model[0]).any()


def test_topk_step_keeps_exactly_t_neurons_of_largest_norm() -> None:
    model = _net().double()
    v = _joint(model[3])
    PGT(layers=("3",), penalty="topk", keep=3)._hook(model, ["3"], (1, 10, 10))(0.1)
    x = _joint(model[3])
    kept = torch.nonzero(x.ne(0).any(dim=1)).flatten().tolist()
    assert kept == sorted(v.norm(dim=1).argsort(descending=True)[:3].tolist())
    assert torch.equal(x[kept], v[kept])  # kept neurons untouched


# ------------------------------------------------------------------ zero neurons stay zero
def test_a_zero_neuron_stays_zero_under_further_steps() -> None:
    model = _net()
    conv = model[3]
    with torch.no_grad():
        conv.weight[2] *= 1e-4  # neuron 2 is tiny: the first step zeroes it
        conv.bias[2] = 0.0
    groups = [ProxGroup({"3.weight": conv.weight, "3.bias": conv.bias}, lam=1.0, joint=True)]
    hook = _NeuronStep(ProxGradient(groups), {"3": conv}, hold=True)
    hook(0.01)
    assert not _joint(conv)[2].any() and _joint(conv)[[0, 1, 3]].ne(0).any(dim=1).all()
    with torch.no_grad():  # a forward step that would revive it
        conv.weight[2] += 1.0
    hook(0.0)
    assert not _joint(conv)[2].any()
    free = _NeuronStep(ProxGradient(groups), {"3": conv}, hold=False)
    with torch.no_grad():
        conv.weight[2] += 1.0
    free(0.0)
    assert _joint(conv)[2].any()


def test_zero_neurons_stay_zero_through_training() -> None:
    data = _data()
    model = _net()
    method = PGT(layers=("3", "6"), lam=[3.0, 3.0], epochs=3, lr=0.05, finetune_epochs=0)
    dead_seen: dict[str, set[int]] = {"3": set(), "6": set()}
    hook_cls = _NeuronStep.__call__

    def spy(self: _NeuronStep, lr: float) -> None:
        hook_cls(self, lr)
        for n, m in self.layers.items():
            dead = set(torch.nonzero(~self.rows_nonzero(m)).flatten().tolist())
            assert dead_seen[n] <= dead, f"layer {n}: a zero neuron came back"
            dead_seen[n] = dead

    _NeuronStep.__call__ = spy  # type: ignore[method-assign]
    try:
        method.train_sparse(model, data)
    finally:
        _NeuronStep.__call__ = hook_cls  # type: ignore[method-assign]
    assert dead_seen["3"] or dead_seen["6"]


# ------------------------------------------------------------------ removal
@pytest.mark.parametrize("penalty", ["group", "lowrank", "topk"])
def test_removal_is_exact_masked_equals_pruned(penalty: str) -> None:
    data = _data()
    model = _net()
    lam = {"group": [2.5, 2.5], "lowrank": [1.5, 1.5]}  # removes some neurons, not all
    opts = dict(keep={"3": 3, "6": 4}) if penalty == "topk" else dict(lam=lam[penalty])
    method = PGT(layers=("3", "6"), penalty=penalty, epochs=2, lr=0.05, **opts)
    layers, record = method.train_sparse(model, data)
    masked = copy.deepcopy(model)
    pruned, plan, keep = method.remove(model, layers, (1, 10, 10))
    assert keep, "nothing was removed"
    x = next(iter(data.val))[0]
    with torch.no_grad():
        assert torch.allclose(masked.eval()(x), pruned.eval()(x), atol=1e-5)
    assert pruned[3].out_channels == record["neurons_after_training"]["3"]
    assert pruned[6].in_features == 4 * pruned[3].out_channels
    # exact parameter count: every removed neuron takes its weights, bias and next inputs
    n3, n6 = pruned[3].out_channels, pruned[6].out_features
    expected = (1 * 9 + 1) * 6 + (6 * 9 + 1) * n3 + (n3 * 4 + 1) * n6 + (n6 + 1) * 3
    assert metrics.count_params(pruned) == expected
    if penalty == "topk":
        assert (n3, n6) == (3, 4)


def test_run_end_to_end_topk_keeps_exactly_t_and_reports_neurons() -> None:
    data = _data()
    res = PGT(layers=("0", "3"), penalty="topk", keep=[4, 2], epochs=1, finetune_epochs=1).run(
        _net(), data, progress=False
    )
    assert res.model[0].out_channels == 4 and res.model[3].out_channels == 2
    assert res.history["neurons"] == {"0": 4, "3": 2}
    assert 0.0 <= res.history["val_top1_before_finetune"] <= 100.0


def test_scratch_init_reinitialises_before_training() -> None:
    data = _data()
    a, b = _net(), _net()
    with torch.no_grad():
        b[0].weight.mul_(100.0)  # different starting weights, same architecture
    opts = dict(layers=("3",), lam=0.0, epochs=1, init="scratch", finetune_epochs=0)
    ra = PGT(**opts).run(a, data, progress=False)
    rb = PGT(**opts).run(b, data, progress=False)
    for pa, pb in zip(ra.model.parameters(), rb.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------ supplement sec. 1
def test_alexnet_accounting_of_the_supplement() -> None:
    """fc6 loses 2,996 neurons: 6x6x256x2996 + 2996 weights + biases and fc7's 2996 inputs."""
    with torch.device("meta"):
        net = models.create("alexnet-caffe")
    total = metrics.count_params(net)
    assert total == 60_965_224
    fc6, fc7 = net.fc6, net.fc7
    kept = fc6.out_features - 2996
    with torch.device("meta"):
        net.fc6 = nn.Linear(fc6.in_features, kept)
        net.fc7 = nn.Linear(kept, fc7.out_features)
    removed = total - metrics.count_params(net)
    assert removed == 27_614_132 + 12_271_616 == 39_885_748
    assert round(100 * removed / total, 2) == 65.42
    assert round(removed * 4 / 1024 / 1024, 1) == 152.2


# ------------------------------------------------------------------ options
def test_bad_options_give_clear_errors() -> None:
    with pytest.raises(ConfigError, match="'keep' parameter of PGT must be given with"):
        PGT(penalty="topk")
    with pytest.raises(ConfigError, match="'penalty' parameter of PGT"):
        PGT(penalty="l21")
    with pytest.raises(ConfigError, match=r"'lam\[1\]' parameter of PGT"):
        PGT(lam=[0.1, -1.0])
    data = _data()
    with pytest.raises(ConfigError, match="'lam' parameter of PGT must have one value per"):
        PGT(layers=("0", "3"), lam=[0.1, 0.2, 0.3]).run(_net(), data, progress=False)
    with pytest.raises(ConfigError, match="'keep' parameter of PGT names layer"):
        PGT(layers=("3",), penalty="topk", keep={"9": 1}).run(_net(), data, progress=False)
    with pytest.raises(Exception, match="does not exist"):
        PGT(layers=("nope",)).run(_net(), data, progress=False)
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ConfigError, match="same size of axis 0"):
        ProxGroup({"w": conv.weight, "b": torch.zeros(4)}, lam=1.0, joint=True)
    with pytest.raises(ConfigError, match="structure must be 'filters'"):
        ProxGroup({"w": conv.weight}, lam=1.0, joint=True, structure="channels")


def test_joint_group_penalty_and_counts() -> None:
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[1] = 0
        conv.bias[1] = 0
    pg = ProxGradient([ProxGroup({"w": conv.weight, "b": conv.bias}, lam=0.5, joint=True)])
    v = _joint(conv)
    assert pg.penalty() == pytest.approx(0.5 * float(v.norm(dim=1).sum()))
    assert pg.group_counts() == {"w": {"nonzero": 2, "total": 3}, "b": {"nonzero": 2, "total": 3}}


# ------------------------------------------------------------------ fine-tuning, rebalancing
def _block_norms(model: nn.Module, layer: int, nxt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Neuron norms (weights + bias) of ``model[layer]`` and the norms of the input blocks of
    ``model[nxt]`` they feed."""
    m, c = model[layer], model[nxt]
    n = m.weight.shape[0]
    w = _joint(m).norm(dim=1)
    cw = c.weight.detach().reshape(c.weight.shape[0], n, -1).transpose(0, 1).reshape(n, -1)
    return w, cw.norm(dim=1)


def test_rebalance_keeps_the_function_and_equalises_the_norms() -> None:
    from compactnn.methods.pgt import rebalance_neurons

    model = _net()
    with torch.no_grad():  # short neurons / long next inputs, as the group threshold leaves them
        model[3].weight[:4] *= 0.01
        model[3].bias[:4] *= 0.01
        model[6].weight[:5] *= 0.02
        model[6].bias[:5] *= 0.02
        model[6].weight[7] = 0  # a zero neuron: left as it is
        model[6].bias[7] = 0
    x = torch.randn(16, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    before8 = model[8].weight.detach().clone()
    alphas = rebalance_neurons(model, ["3", "6"], x)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-6)
    for layer, nxt in ((3, 6), (6, 8)):
        w, c = _block_norms(model, layer, nxt)
        live = w > 0
        assert torch.allclose(w[live], c[live], rtol=1e-4)
    assert alphas["6"][7] == 1.0 and torch.equal(model[8].weight[:, 7], before8[:, 7])
    assert min(alphas["3"][:4]) > 3 and min(alphas["6"][:5]) > 3  # the short ones grew


def test_rebalance_refuses_a_path_that_is_not_positively_homogeneous() -> None:
    from compactnn.methods.pgt import rebalance_neurons

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="'finetune_rebalance' option of PGT changed"):
        rebalance_neurons(model, ["0"], torch.randn(8, 6))
    for k, v in model.state_dict().items():  # restored
        assert torch.equal(v, state[k])
    with pytest.raises(ConfigError, match="'finetune_rebalance' option of PGT needs"):
        rebalance_neurons(model, ["2"], torch.randn(8, 6))
    # PGT.run checks it before training (the model is not trained first)
    x = torch.randn(32, 6)
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    data = CompressionData(train=DataLoader(ds, batch_size=8), input_shape=(6,))
    with pytest.raises(ConfigError, match="finetune_rebalance"):
        PGT(layers=("0",), lam=0.1, finetune_rebalance=True).run(model, data, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(ConfigError, match="'finetune_rebalance' parameter of PGT"):
        PGT(finetune_rebalance="yes")


def test_finetune_after_a_proxy_run_is_the_run() -> None:
    """``PGT.run`` = the run without fine-tuning, then ``PGT.finetune`` on its pruned net
    (what the Table 2 bench uses to compare fine-tuning candidates on one PGT training)."""
    data = _data()
    opts = dict(layers=("3", "6"), lam=[2.5, 2.5], epochs=2, lr=0.05, finetune_epochs=1)
    opts.update(finetune_distill=0.5, finetune_rebalance=True, finetune_lr=0.02)
    full = PGT(**opts).run(_net(), data, progress=False)
    teacher = _net().eval()
    part = PGT(**opts).proxy().run(_net(), data, progress=False)
    rec = PGT(**opts).finetune(part.model, data, ["3", "6"], teacher=teacher)
    assert set(rec["rebalance"]) == {"3", "6"} and full.history["rebalance"] == rec["rebalance"]
    assert part.model[3].out_channels < 8  # something was removed
    for a, b in zip(full.model.parameters(), part.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="needs the teacher"):
        PGT(**opts).finetune(part.model, data, ["3", "6"])


def test_finetune_warmup_is_the_shared_trainers_warmup() -> None:
    """``finetune_warmup=W`` fine-tunes exactly as the shared trainer with ``warmup_steps=W``
    on the same pruned net (and differs from no warm-up)."""
    from compactnn.methods._common import finetune_model

    data = _data()
    opts = dict(layers=("3", "6"), lam=[2.5, 2.5], epochs=2, lr=0.05, finetune_epochs=2)
    part = PGT(**opts).proxy().run(_net(), data, progress=False)
    warm, plain, ref = (copy.deepcopy(part.model) for _ in range(3))
    PGT(**opts, finetune_warmup=3).finetune(warm, data, ["3", "6"])
    PGT(**opts).finetune(plain, data, ["3", "6"])
    cfg = PGT(**opts).config
    finetune_model(
        ref,
        data.train,
        epochs=2,
        lr=cfg.finetune_lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed + 7,
        desc="PGT fine-tune",
        warmup_steps=3,
    )
    for a, b in zip(warm.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(warm.parameters(), plain.parameters()))
