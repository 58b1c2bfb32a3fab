"""The fused form of SLR's layer (compactnn.layers.fused): one GEMM of [Q | A_K] over [P x; X_K].

* it computes exactly what the two summed branches compute (float64 to 1e-12, float32 to
  1e-5 relative), in both forms, NCHW and channels_last, for every conv geometry;
* its stored parameters are the two branches' (Ma et al. eq. 15), the zeros the "channels"
  form multiplies are counted apart (executed_param_count);
* built by surgery from a SparseLowRank action, replayed from a plan and a compact checkpoint,
  fine-tuned with the dropped columns staying dropped; bad input is one clear error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compactnn import export, surgery
from compactnn.errors import ConfigError, PlanError
from compactnn.layers import (
    ColumnSparseConv2d,
    ColumnSparseLinear,
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    LowRankConv2d,
    LowRankLinear,
    SparsePlusLowRank,
    stored_param_count,
)
from compactnn.plan import CompressionPlan, SparseLowRank

#: (kernel, stride, padding, dilation) -- "same" convs (the channels form fits) and others
GEOMETRIES = [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (3, 2, 1, 1), (3, 2, 0, 1),
              ((3, 5), (2, 1), (0, 2), 1), (1, 1, 0, 1)]  # fmt: skip


def _pair(c: int = 5, n: int = 7, r: int = 3, geometry=(3, 1, 1, 1), seed: int = 0,
          dtype=torch.float64) -> tuple[nn.Conv2d, SparsePlusLowRank, torch.Tensor]:  # fmt: skip
    """A conv, its two-branch SLR layer (about half the columns and one whole input channel
    dropped) and the dense weight ``A + Q P`` the layer computes."""
    k, s, p, d = geometry
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c, n, k, stride=s, padding=p, dilation=d).to(dtype)
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    A = 0.3 * torch.randn(n, c * kk, generator=g, dtype=dtype)
    A[:, torch.randperm(c * kk, generator=g)[: c * kk // 2]] = 0
    A[:, kk : 2 * kk] = 0  # input channel 1: no kept column
    P = 0.3 * torch.randn(r, c * kk, generator=g, dtype=dtype)
    Q = 0.3 * torch.randn(n, r, generator=g, dtype=dtype)
    sparse = ColumnSparseConv2d.from_dense(conv, A.reshape(conv.weight.shape), None)
    lowrank = LowRankConv2d.from_lowered(conv, Q, P, conv.bias.detach()).to(dtype)
    with torch.no_grad():  # from_lowered builds float32 modules: the values in the layer's dtype
        lowrank.first.weight.copy_(P.reshape(lowrank.first.weight.shape))
        lowrank.second.weight.copy_(Q.reshape(lowrank.second.weight.shape))
    return conv, SparsePlusLowRank(sparse, lowrank), (A + Q @ P).reshape(conv.weight.shape)


def _forms(conv: nn.Conv2d) -> list[str]:
    return ["gather", "channels"] if FusedSparseLowRankConv2d.channels_form_fits(conv) else [
        "gather"]  # fmt: skip


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_fused_conv_equals_the_two_branches_in_float64(geometry) -> None:  # type: ignore[no-untyped-def]
    conv, pair, W = _pair(geometry=geometry)
    g = torch.Generator().manual_seed(1)
    for form in _forms(conv):
        fused = FusedSparseLowRankConv2d.from_module(pair, form=form)
        for b in (1, 3):
            x = torch.randn(b, 5, 11, 12, generator=g, dtype=torch.float64)
            ref = nn.functional.conv2d(x, W, conv.bias, conv.stride, conv.padding, conv.dilation)
            with torch.no_grad():
                assert float((pair(x) - ref).abs().max()) <= 1e-12
                assert float((fused(x) - ref).abs().max()) <= 1e-12, form
                last = fused(x.contiguous(memory_format=torch.channels_last))
                assert float((last - ref).abs().max()) <= 1e-12, form
        # the second call reuses the cached gather index: still exact
        with torch.no_grad():
            assert float((fused(x) - ref).abs().max()) <= 1e-12
        assert torch.allclose(fused.dense_weight(), W, atol=1e-14)


@pytest.mark.parametrize("form", ["gather", "channels"])
def test_fused_conv_float32_and_channels_last_model(form: str) -> None:
    conv, pair, _ = _pair(c=16, n=12, r=4, dtype=torch.float32, seed=3)
    fused = FusedSparseLowRankConv2d.from_module(pair, form=form).eval()
    x = torch.randn(4, 16, 9, 9)
    with torch.no_grad():
        ref = pair(x)
        tol = 1e-5 * max(1.0, float(ref.abs().max()))
        assert float((fused(x) - ref).abs().max()) <= tol
        cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
        assert float((cl(x.contiguous(memory_format=torch.channels_last)) - ref).abs().max()) <= tol


def test_fused_conv_counts_the_stored_values_and_the_executed_zeros_apart() -> None:
    conv, pair, _ = _pair(c=5, n=7, r=3)
    kk, c, n, r = 9, 5, 7, 3
    kept = int(pair.sparse.columns.numel())
    chans = int(pair.sparse.channels.numel())
    assert chans == 4  # channel 1 has no kept column
    for form in ("gather", "channels"):
        fused = FusedSparseLowRankConv2d.from_module(pair, form=form)
        # eq. (15): n |K| for A, r (c kh kw + n) for B, plus the bias -- what the branches store
        assert fused.stored_param_count() == n * kept + r * (c * kk + n) + n
        assert fused.stored_param_count() == stored_param_count(pair)
        assert stored_param_count(fused) == sum(p.numel() for p in fused.parameters())
    gather = FusedSparseLowRankConv2d.from_module(pair, form="gather")
    wide = FusedSparseLowRankConv2d.from_module(pair, form="channels")
    assert gather.executed_param_count() == gather.stored_param_count()
    assert wide.executed_param_count() == n * (r + chans) * kk + r * c * kk + n
    assert wide.executed_param_count() > wide.stored_param_count()


def test_fused_conv_without_low_rank_or_without_columns() -> None:
    conv, pair, _ = _pair()
    A = pair.sparse.dense_matrix().reshape(conv.weight.shape)
    alone = ColumnSparseConv2d.from_dense(conv, A, conv.bias.detach())
    fused = FusedSparseLowRankConv2d.from_module(alone)
    assert fused.rank == 0 and fused.first is None
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert float((fused(x) - alone(x)).abs().max()) <= 1e-12
        empty = ColumnSparseConv2d(torch.zeros(7, 0, dtype=torch.float64),
                                   torch.zeros(0, dtype=torch.long), 5, 3, conv.bias.detach(),
                                   stride=2, padding=1)  # fmt: skip
        for form in ("gather", "channels"):
            if form == "channels":
                continue  # stride 2: the gather form only
            y = FusedSparseLowRankConv2d(empty, form=form)(x)
            assert y.shape == (2, 7, 4, 4)
            assert torch.equal(y, conv.bias.detach().reshape(1, -1, 1, 1).expand(2, -1, 4, 4))
        lowrank_only = SparsePlusLowRank(
            ColumnSparseConv2d(torch.zeros(7, 0, dtype=torch.float64),
                               torch.zeros(0, dtype=torch.long), 5, 3, None, padding=1),
            pair.lowrank,
        )  # fmt: skip
        for form in ("gather", "channels"):
            f = FusedSparseLowRankConv2d.from_module(lowrank_only, form=form)
            assert float((f(x) - pair.lowrank(x)).abs().max()) <= 1e-12


def test_fused_linear_equals_the_two_branches() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 20, generator=g, dtype=torch.float64)
    A[:, [0, 3, 4, 9, 17]] = 0
    bias = torch.randn(6, dtype=torch.float64)
    P, Q = torch.randn(2, 20, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    lowrank = LowRankLinear.from_factors(P, Q, bias).double()
    with torch.no_grad():
        (
            lowrank.first.weight.copy_(P),
            lowrank.second.weight.copy_(Q),
            lowrank.second.bias.copy_(bias),
        )
    pair = SparsePlusLowRank(ColumnSparseLinear.from_dense(A), lowrank)
    fused = FusedSparseLowRankLinear.from_module(pair)
    x = torch.randn(5, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = x @ (A + Q @ P).T + bias
        assert float((fused(x) - ref).abs().max()) <= 1e-12
        assert float((fused(x[None]) - ref[None]).abs().max()) <= 1e-12  # leading dims kept
        alone = ColumnSparseLinear.from_dense(A, bias)
        assert float((FusedSparseLowRankLinear(alone)(x) - alone(x)).abs().max()) <= 1e-12
    assert fused.stored_param_count() == stored_param_count(pair) == 6 * 15 + 2 * 26 + 6
    assert torch.allclose(fused.dense_weight(), A + Q @ P)


def test_fused_layers_refuse_bad_input_clearly() -> None:
    conv, pair, _ = _pair(geometry=(3, 2, 1, 1))
    with pytest.raises(ConfigError, match="form 'channels' needs a 'same' conv"):
        FusedSparseLowRankConv2d.from_module(pair, form="channels")
    with pytest.raises(ConfigError, match="'form' parameter of FusedSparseLowRankConv2d"):
        FusedSparseLowRankConv2d.from_module(pair, form="csr")
    with pytest.raises(ConfigError, match="must be a ColumnSparseConv2d"):
        FusedSparseLowRankConv2d(nn.Conv2d(5, 7, 3))  # type: ignore[arg-type]
    with_bias = ColumnSparseConv2d.from_dense(conv, conv.weight.detach(), conv.bias.detach())
    with pytest.raises(ConfigError, match="the bias belongs to the low-rank branch"):
        FusedSparseLowRankConv2d(with_bias, pair.lowrank)
    other = LowRankConv2d(5, 7, 2, 3, stride=1, padding=1)
    with pytest.raises(ConfigError, match="disagree on stride / padding / dilation"):
        FusedSparseLowRankConv2d(pair.sparse, other)
    with pytest.raises(ConfigError, match="disagree on out_channels"):
        FusedSparseLowRankConv2d(pair.sparse, LowRankConv2d(5, 8, 2, 3, stride=2, padding=1))
    with pytest.raises(ConfigError, match="must be a ColumnSparseLinear"):
        FusedSparseLowRankLinear(pair.sparse)  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["fused", "fused-channels"])
def test_surgery_builds_the_fused_layer_and_the_plan_replays(form: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    conv, pair, W = _pair(dtype=torch.float32)
    model = nn.Sequential()
    model.add_module("c", conv)
    act = SparseLowRank(layer="c", sparse=pair.sparse.dense_matrix().detach(),
                        first=pair.lowrank.first.weight.detach().reshape(3, -1),
                        second=pair.lowrank.second.weight.detach().reshape(7, 3),
                        bias=conv.bias.detach(), form=form)  # fmt: skip
    plan = CompressionPlan([act])
    new = surgery.apply(plan, model, example_inputs=torch.randn(2, 5, 8, 8))
    assert isinstance(new.c, FusedSparseLowRankConv2d)
    assert new.c.form == ("channels" if form == "fused-channels" else "gather")
    x = torch.randn(4, 5, 10, 10)
    with torch.no_grad():
        ref = nn.functional.conv2d(x, W, conv.bias, conv.stride, conv.padding)
        assert float((new(x) - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))
        export.save_checkpoint(new, plan, tmp_path / "ck", input_shape=(5, 8, 8))
        fresh = nn.Sequential()
        fresh.add_module("c", nn.Conv2d(5, 7, 3, padding=1))
        loaded = export.load(tmp_path / "ck", fresh)
        assert torch.equal(loaded(x), new(x))  # the skeleton's cached index is not reused


def test_surgery_refuses_the_channels_form_on_a_strided_conv() -> None:
    conv, pair, _ = _pair(geometry=(3, 2, 1, 1), dtype=torch.float32)
    model = nn.Sequential()
    model.add_module("c", conv)
    act = SparseLowRank(layer="c", sparse=pair.sparse.dense_matrix().detach(),
                        first=pair.lowrank.first.weight.detach().reshape(3, -1),
                        second=pair.lowrank.second.weight.detach().reshape(7, 3),
                        bias=conv.bias.detach(), form="fused-channels")  # fmt: skip
    with pytest.raises(PlanError, match=r"SparseLowRank\(layer='c'\).*'same' conv"):
        surgery.apply(CompressionPlan([act]), model, example_inputs=torch.randn(2, 5, 8, 8))


def test_training_keeps_the_dropped_columns_dropped() -> None:
    conv, pair, _ = _pair(dtype=torch.float32)
    fused = FusedSparseLowRankConv2d.from_module(pair)
    zero_cols = pair.sparse.dense_matrix().abs().amax(0) == 0
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    x = torch.randn(4, 5, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        fused(x).square().mean().backward()
        opt.step()
    assert fused.first is not None and fused.first.grad is not None
    assert bool((fused.sparse_matrix().abs().amax(0)[zero_cols] == 0).all())
    assert fused.stored_param_count() == stored_param_count(pair)


def test_dense_equivalent_and_layer_speed_see_the_fused_layer() -> None:
    conv, pair, W = _pair(dtype=torch.float32)
    model = nn.Sequential(FusedSparseLowRankConv2d.from_module(pair)).eval()
    x = torch.randn(3, 5, 8, 8)
    dense = export.dense_equivalent(model[0])
    assert isinstance(dense, nn.Conv2d)
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-5)
    rows = export.layer_speed(model, x, repeats=2, warmup=1)
    assert [r["name"] for r in rows] == ["0"]
    with pytest.raises(PlanError, match="sparse layer '0'"):
        from compactnn.plan import KeepOutputs

        big = nn.Sequential(model[0], nn.ReLU(), nn.Conv2d(7, 2, 1))
        surgery.apply(CompressionPlan([KeepOutputs("2", [0])]), big,
                      example_inputs=torch.randn(2, 5, 8, 8))  # fmt: skip


def test_loading_other_columns_of_the_same_count_drops_the_cached_index() -> None:
    fa = FusedSparseLowRankConv2d.from_module(_pair(seed=0)[1])
    fb = next(f for f in (FusedSparseLowRankConv2d.from_module(_pair(seed=s)[1])
                          for s in range(1, 50)) if f.columns.numel() == fa.columns.numel())  # fmt: skip
    assert fa.columns.numel() == fb.columns.numel() and not torch.equal(fa.columns, fb.columns)
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fa(x)  # caches the gather index of a's columns
        fa.load_state_dict(fb.state_dict())
        assert float((fa(x) - fb(x)).abs().max()) == 0.0
