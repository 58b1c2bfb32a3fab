"""Tests of compactnn.capture: exact im2col data, subsampling, hooks, asymmetric mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn.capture import capture, collect, following_activation
from compactnn.errors import (
    CompactnnError,
    InputShapeError,
    UnknownNameError,
    UnsupportedLayerError,
)
from compactnn.structure import lowered

ATOL = 1e-5


def _check_exact(model: nn.Module, name: str, io) -> None:
    mod = model.get_submodule(name)
    w = lowered(mod.weight.detach())
    b = mod.bias.detach() if mod.bias is not None else torch.zeros(w.shape[0])
    g = io.groups
    ng = w.shape[0] // g
    for j in range(g):
        part = io.group(j) if g > 1 else io
        pred = part.X @ w[j * ng : (j + 1) * ng].T + b[j * ng : (j + 1) * ng]
        assert torch.allclose(pred, part.Y, atol=ATOL, rtol=0), (name, j)


CONVS = {
    "plain": nn.Conv2d(3, 5, 3),
    "stride_pad_dil": nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 3)),
    "same_reflect": nn.Conv2d(3, 4, 4, padding="same", padding_mode="reflect", bias=False),
    "circular": nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular"),
    "grouped": nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2),
    "depthwise": nn.Conv2d(6, 6, 3, padding=1, groups=6),
}


@pytest.mark.parametrize("key", list(CONVS))
def test_conv_rows_are_exact_im2col(key) -> None:
    conv = CONVS[key]
    net = nn.Sequential(conv)
    x = torch.randn(2, conv.in_channels, 9, 8)
    with capture(net, ["0"], max_rows=None) as store:
        y = net(x)
    io = store.result()["0"]
    b, n, ho, wo = y.shape
    assert io.kind == "conv" and io.groups == conv.groups
    assert io.X.shape == (b * ho * wo, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
    assert io.Y.shape == (b * ho * wo, n) and io.rows_seen == b * ho * wo
    assert torch.equal(io.Y, y.permute(0, 2, 3, 1).reshape(-1, n))  # rows in (b, h, w) order
    _check_exact(net, "0", io)


def test_linear_rows_and_post_activation() -> None:
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5, 6)  # extra leading axis is flattened into rows
    with capture(net, ["0", "2"], max_rows=None) as store:
        net(x)
    res = store.result()
    assert res["0"].X.shape == (10, 6) and res["0"].Y.shape == (10, 4)
    assert torch.equal(res["0"].X, x.reshape(10, 6))
    assert torch.equal(res["0"].Y_post, torch.relu(res["0"].Y))
    assert torch.equal(res["2"].X, res["0"].Y_post)  # the next layer reads the ReLU output
    assert res["2"].Y_post is None
    for n in ("0", "2"):
        _check_exact(net, n, res[n])


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3)
        self.c2 = nn.Conv2d(2, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.c3 = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.c2(x).relu()
        y = self.c3(x)
        x = torch.relu(self.bn(y)) + y  # c3 also feeds bn and the add: not ReLU-only
        return self.fc(x.mean(dim=(2, 3)))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.body(x)
        return self.body(-x)


def test_following_activation() -> None:
    f = _Functional()
    assert following_activation(f, "c1") == "relu"
    assert following_activation(f, "c2") == "relu"
    assert following_activation(f, "c3") is None
    assert following_activation(f, "fc") is None
    u = _Untraceable()
    assert following_activation(u, "body.0") == "relu"
    assert following_activation(u, "body.2") is None
    with pytest.raises(UnknownNameError, match="'nope'"):
        following_activation(f, "nope")


def test_hooks_removed_and_mode_restored_on_exception() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5))
    net.train()
    net[3].eval()  # a mixed-mode model must come back exactly as it was
    before = net[1].running_mean.clone()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(net, ["0"]) as store:
            assert not net.training and not net[1].training
            assert len(net[0]._forward_hooks) == 1
            out = net(torch.randn(2, 1, 5, 5))
            assert not out.requires_grad  # no_grad inside the block
            raise RuntimeError("boom")
    assert len(net[0]._forward_hooks) == 0
    assert net.training and net[1].training and not net[3].training
    assert torch.equal(net[1].running_mean, before)  # eval inside: BN stats untouched
    assert store.result()["0"].rows_seen == 2 * 9
    # normal exit also removes the hooks
    with capture(net, ["0"]):
        net(torch.randn(1, 1, 5, 5))
    assert len(net[0]._forward_hooks) == 0


def test_bad_names_and_empty_store() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(UnknownNameError, match="'fc9'"):
        with capture(net, ["fc9"]):
            pass
    with pytest.raises(UnsupportedLayerError, match="'1'"):
        with capture(net, ["1"]):
            pass
    assert len(net[0]._forward_hooks) == 0
    with capture(net, ["0"]) as store:
        pass
    with pytest.raises(CompactnnError, match="'0'"):
        store.result()
    with pytest.raises(InputShapeError):
        collect(net, ["0"], [{"x": torch.randn(2, 3)}])


def test_subsampling_bound_determinism_and_accumulation() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU())
    batches = [torch.randn(4, 2, 6, 6) for _ in range(3)]  # 3 x 144 rows
    res = collect(net, ["0"], batches, max_rows=50, seed=1)["0"]
    assert res.X.shape == (50, 18) and res.Y.shape == (50, 3) and res.rows_seen == 432
    _check_exact(net, "0", res)  # sampled X and Y rows stay paired
    # the sampled rows are distinct real rows of the full capture
    full = collect(net, ["0"], batches, max_rows=None)["0"]
    assert full.X.shape == (432, 18)
    idx = torch.cdist(res.X, full.X).argmin(dim=1)
    assert torch.equal(full.X[idx], res.X) and idx.unique().numel() == 50
    again = collect(net, ["0"], batches, max_rows=50, seed=1)["0"]
    assert torch.equal(again.X, res.X)
    other = collect(net, ["0"], batches, max_rows=50, seed=2)["0"]
    assert not torch.equal(other.X, res.X)
    # max_batches and (x, y) batches
    two = collect(net, ["0"], [(b, torch.zeros(4)) for b in batches], max_rows=None, max_batches=2)
    assert two["0"].rows_seen == 288 and torch.equal(two["0"].X, full.X[:288])


def test_subsampling_is_uniform_over_the_stream() -> None:
    lin = nn.Linear(1, 1)
    net = nn.Sequential(lin)
    data = [torch.arange(i, i + 10, dtype=torch.float32).reshape(10, 1) for i in (0, 10, 20, 30)]
    counts = torch.zeros(40)
    trials = 300
    for seed in range(trials):
        with capture(net, ["0"], max_rows=10, seed=seed, post_activation=False) as store:
            for x in data:
                net(x)
        counts[store.result()["0"].X.reshape(-1).long()] += 1
    freq = counts / trials
    assert float(counts.sum()) == 10 * trials
    # every row has inclusion probability 10/40; binomial std ~0.025 per row
    assert float((freq - 0.25).abs().max()) < 0.11
    assert abs(float(freq[:10].mean()) - float(freq[30:].mean())) < 0.06  # no bias to early rows


def test_asymmetric_mode() -> None:
    torch.manual_seed(0)
    orig = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU())
    comp = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU())
    comp.load_state_dict(orig.state_dict())
    with torch.no_grad():
        comp[0].weight.mul_(0.5)  # the "compressed" first layer
    batches = [torch.randn(3, 2, 8, 8) for _ in range(2)]
    asym = collect(comp, ["0", "2"], batches, max_rows=40, seed=3, asymmetric_from=orig)
    mine = collect(comp, ["0", "2"], batches, max_rows=40, seed=3)
    ref = collect(orig, ["0", "2"], batches, max_rows=40, seed=3)
    for n in ("0", "2"):
        assert torch.equal(asym[n].X, mine[n].X)  # X from the compressed model
        assert torch.equal(asym[n].Y, ref[n].Y)  # targets from the original one
        assert torch.equal(asym[n].Y_post, torch.relu(ref[n].Y))
    # layer 0 reads the same input in both models: the sampled rows pair X with orig's Y
    _check_exact(orig, "0", asym["0"])
    assert not torch.allclose(asym["2"].X, ref["2"].X)
    bad = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.ReLU())
    with pytest.raises(InputShapeError, match="'0'"):
        collect(bad, ["0"], batches, asymmetric_from=orig)
