"""Deployable layers: exact equivalence with their dense counterparts, counts, fx, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from compactnn.errors import ConfigError
from compactnn.layers import (
    LowRankConv2d,
    LowRankLinear,
    SparseConv2d,
    SparseLinear,
    SparsePlusLowRank,
    stored_param_count,
)

TOL = 1e-5


def test_lowrank_linear_is_b_a_x_plus_b() -> None:
    a, b, bias = torch.randn(2, 5), torch.randn(4, 2), torch.randn(4)
    layer = LowRankLinear.from_factors(a, b, bias)
    x = torch.randn(3, 5)
    assert torch.allclose(layer(x), x @ (b @ a).T + bias, atol=TOL)
    assert torch.allclose(layer.dense_weight(), b @ a)
    assert (layer.in_features, layer.out_features, layer.rank) == (5, 4, 2)
    assert layer.first.bias is None
    assert stored_param_count(layer) == 2 * (5 + 4) + 4


def test_lowrank_conv_from_lowered_equals_conv_with_w_eq_qp() -> None:
    conv = nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2))
    q, p = torch.randn(4, 2), torch.randn(2, 3 * 3 * 2)
    layer = LowRankConv2d.from_lowered(conv, q, p, conv.bias.detach())
    x = torch.randn(2, 3, 9, 9)
    ref = F.conv2d(x, (q @ p).reshape(4, 3, 3, 2), conv.bias, 2, (1, 0), (1, 2))
    assert torch.allclose(layer(x), ref, atol=TOL)
    assert torch.allclose(layer.dense_weight(), (q @ p).reshape(4, 3, 3, 2), atol=1e-6)
    assert stored_param_count(layer) == 2 * (18 + 4) + 4


def test_factor_shape_errors() -> None:
    with pytest.raises(ConfigError, match="do not chain"):
        LowRankLinear.from_factors(torch.ones(2, 5), torch.ones(4, 3), None)
    with pytest.raises(ConfigError, match="do not chain"):
        LowRankConv2d.from_factors(torch.ones(2, 3, 3, 3), torch.ones(4, 3), None)
    with pytest.raises(ConfigError, match="'rank' parameter of LowRankLinear"):
        LowRankLinear(3, 4, 0)


def test_sparse_linear_matches_dense_and_counts_coo() -> None:
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(4, 6) < 0.5)
    nnz = int((lin.weight != 0).sum())
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(3, 6)
    assert torch.allclose(sp(x), lin(x), atol=TOL)
    assert sp.nnz == nnz and sp.coo_param_count() == 3 * nnz
    assert stored_param_count(sp) == 3 * nnz + 4
    assert torch.equal(sp.to_dense().weight, lin.weight)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, (3, 2), stride=2, padding=(0, 1), dilation=(2, 1), bias=False),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
    ],
)
def test_sparse_conv_matches_dense(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.5)
    nnz = int((conv.weight != 0).sum())
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 4, 7, 8)
    assert torch.allclose(sp(x), conv(x), atol=TOL)
    assert sp.nnz == nnz  # block-diagonal zeros of grouped convs are not stored
    assert sp.flops_per_sample(x) == 2 * nnz * conv(x).shape[2] * conv(x).shape[3]


def test_sparse_plus_lowrank_sums_branches_bias_once() -> None:
    w = torch.randn(4, 6)
    s = w * (torch.rand(4, 6) < 0.3)
    a, b = torch.randn(2, 6), torch.randn(4, 2)
    bias = torch.randn(4)
    layer = SparsePlusLowRank(SparseLinear(s), LowRankLinear.from_factors(a, b, bias))
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), x @ (s + b @ a).T + bias, atol=TOL)
    assert layer.out_features == 4
    assert stored_param_count(layer) == 3 * int((s != 0).sum()) + 2 * 10 + 4
    with pytest.raises(ConfigError, match="no bias"):
        SparsePlusLowRank(SparseLinear(s, torch.ones(4)), LowRankLinear.from_factors(a, b, bias))


def test_stored_param_count_dense_modules() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert stored_param_count(m) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (LowRankLinear(5, 3, 2), (2, 5)),
        (LowRankConv2d(3, 4, 2, 3, padding=1), (2, 3, 5, 5)),
        (SparseLinear(torch.randn(3, 5)), (2, 5)),
        (SparseConv2d(torch.randn(4, 3, 3, 3), torch.randn(4), padding=1), (2, 3, 5, 5)),
    ],
)
def test_fx_traceable_and_trainable(layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    gm = fx.symbolic_trace(layer)
    assert torch.allclose(gm(x), layer(x), atol=1e-6)
    layer(x).square().sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert getattr(layer, "is_compactnn_layer", False)


# ---------------------------------------------------------------- kernel-sparse conv (Kiaee)
def _kernel_sparse_weight(n: int, c: int, k: tuple[int, int], zero: float, seed: int = 0):
    """A conv weight at a trained net's scale whose kernels W_ij are zero with prob. ``zero``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, *k, generator=g) / (c * k[0] * k[1]) ** 0.5
    keep = torch.rand(n, c, generator=g) >= zero
    return w * keep[:, :, None, None], keep


@pytest.mark.parametrize("form", ["dense", "grouped", "sparse"])
@pytest.mark.parametrize(
    "geom",
    [dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=(2, 1))],
    ids=["plain", "stride-pad", "dilation"],
)
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_sparse_conv_equals_masked_dense_conv(form: str, geom: dict, bias: bool) -> None:
    from compactnn.layers import KernelSparseConv2d

    w, keep = _kernel_sparse_weight(10, 7, (3, 2), zero=0.6)
    b = torch.randn(10) if bias else None
    layer = KernelSparseConv2d(w, b, form=form, max_groups=3, **geom)
    x = torch.randn(4, 7, 11, 9)
    ref = F.conv2d(x, w, b, geom.get("stride", 1), geom.get("padding", 0), geom.get("dilation", 1))
    assert torch.allclose(layer(x), ref, atol=TOL, rtol=0)
    assert torch.equal(layer.dense_weight(), w) and torch.equal(layer.weight, w)
    k = int(keep.sum())
    assert layer.nnz_kernels == k
    assert stored_param_count(layer) == k * 6 + (10 if bias else 0)  # stored values
    assert layer.coo_param_count() == k * (6 + 2) + (10 if bias else 0)  # + (i, j) per kernel
    assert 1 <= len(layer.filter_groups) <= 3
    traced = fx.symbolic_trace(layer)
    assert torch.allclose(traced(x), ref, atol=TOL, rtol=0)


def test_kernel_sparse_conv_grouped_keeps_output_order_and_trains() -> None:
    """Filters of two input supports, interleaved: two groups, outputs back in the original
    order; the gradient reaches exactly the stored kernels."""
    from compactnn.layers import KernelSparseConv2d, support_groups

    w = torch.randn(6, 4, 3, 3)
    w[0::2, 2:] = 0  # even filters read inputs 0, 1
    w[1::2, :2] = 0  # odd filters read inputs 2, 3
    support = w.reshape(6, 4, -1).ne(0).any(2)
    assert support_groups(support, 4) == [[0, 2, 4], [1, 3, 5]]
    assert support_groups(support, 1) == [list(range(6))]
    layer = KernelSparseConv2d(w, torch.randn(6), padding=1, form="grouped")
    assert layer.filter_groups == ((0, 2, 4), (1, 3, 5))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    ref = F.conv2d(x, w, layer.bias, padding=1)
    out = layer(x)
    assert torch.allclose(out, ref, atol=TOL, rtol=0)
    out.square().sum().backward()
    assert layer.values.grad is not None and layer.values.grad.shape == (12, 3, 3)
    assert layer.values.grad.abs().sum() > 0
    assert stored_param_count(layer) == 12 * 9 + 6


def test_kernel_sparse_conv_bad_arguments() -> None:
    from compactnn.layers import KernelSparseConv2d

    w, _ = _kernel_sparse_weight(4, 3, (3, 3), zero=0.5)
    with pytest.raises(ConfigError, match="'form' parameter of KernelSparseConv2d"):
        KernelSparseConv2d(w, form="csr")
    with pytest.raises(ConfigError, match="must partition the 4 filters"):
        KernelSparseConv2d(w, form="grouped", filter_groups=[[0, 1], [1, 2, 3]])
    with pytest.raises(ConfigError, match="'bias' of KernelSparseConv2d"):
        KernelSparseConv2d(w, torch.zeros(3))
    with pytest.raises(ConfigError, match="dimensions"):
        KernelSparseConv2d(w.reshape(4, -1))
    with pytest.raises(ConfigError, match="groups=1"):
        KernelSparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
