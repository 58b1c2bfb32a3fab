"""Tests of compactnn.structure: lowered views, groups, masks, grouped conv, layer views."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.errors import InputShapeError, UnknownNameError, UnsupportedLayerError
from compactnn.structure import (
    GROUP_KINDS,
    group_dims,
    group_mask,
    group_norms_of,
    input_channel_norms,
    layer_views,
    lowered,
    n_groups,
    unlowered,
    zero_groups,
)

CONV = (6, 4, 3, 2)  # n, c/g, kh, kw
LIN = (5, 7)

EXPECTED_COUNTS = {
    CONV: {"filters": 6, "channels": 4, "columns": 4 * 3 * 2, "kernels": 24, "elements": 144},
    LIN: {"filters": 5, "channels": 7, "columns": 7, "kernels": 5, "elements": 35},
}


def test_lowered_round_trip_and_view() -> None:
    w = torch.randn(CONV)
    m = lowered(w)
    assert m.shape == (6, 24)
    assert torch.equal(m[2], w[2].reshape(-1))
    assert torch.equal(m[:, 3 * 2 + 1], w[:, 1, 0, 1])  # column = (channel, kh, kw) channel-major
    assert torch.equal(unlowered(m, w), w)
    lin = torch.randn(LIN)
    assert lowered(lin) is lin
    assert torch.equal(unlowered(lin.clone(), lin), lin)
    with pytest.raises(InputShapeError, match=r"\(6, 24\)"):
        unlowered(torch.randn(6, 23), w)
    with pytest.raises(InputShapeError):
        lowered(torch.randn(4))


@pytest.mark.parametrize("shape", [CONV, LIN])
@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_group_counts_and_norms(shape, kind) -> None:
    w = torch.randn(shape, dtype=torch.float64)
    assert n_groups(w, kind) == EXPECTED_COUNTS[shape][kind]
    norms = group_norms_of(w, kind)
    assert norms.numel() == EXPECTED_COUNTS[shape][kind]
    # the group norms partition the energy of the weight exactly
    assert float(norms.pow(2).sum()) == pytest.approx(float(w.pow(2).sum()), rel=1e-12)


def test_group_dims_table() -> None:
    w = torch.randn(CONV)
    assert group_dims("filters", w) == (0,)
    assert group_dims("channels", w) == (1,)
    assert group_dims("columns", w) == (1, 2, 3)
    assert group_dims("kernels", w) == (0, 1)
    assert group_dims("elements", w) == (0, 1, 2, 3)
    lin = torch.randn(LIN)
    assert group_dims("columns", lin) == (1,)
    # Kiaee sec. 2 footnote 1: an FC layer is one input map with n 1-dim filters -> rows
    assert group_dims("kernels", lin) == (0,)
    bias = torch.randn(5)
    assert all(group_dims(k, bias) == (0,) for k in GROUP_KINDS)
    with pytest.raises(UnknownNameError, match="'rows'"):
        group_dims("rows", w)


def test_filter_norms_match_lowered_rows_and_columns() -> None:
    w = torch.randn(CONV, dtype=torch.float64)
    m = lowered(w)
    assert torch.allclose(group_norms_of(w, "filters"), m.norm(dim=1), rtol=1e-14)
    cols = group_norms_of(w, "columns").reshape(-1)
    assert torch.allclose(cols, m.norm(dim=0), rtol=1e-14)
    ker = group_norms_of(w, "kernels")
    assert ker.shape == (6, 4)
    assert float(ker[3, 2]) == pytest.approx(float(w[3, 2].norm()), rel=1e-14)


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_group_mask_zeroes_exactly_the_dropped_groups(kind) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(CONV, generator=gen) + 5.0  # no entry is zero
    shape = group_norms_of(w, kind).shape
    keep = torch.rand(shape, generator=gen) < 0.5
    mask = group_mask(w, kind, keep)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    masked = w * mask
    zg = zero_groups(masked, kind)
    assert torch.equal(zg, ~keep)
    assert int((masked == 0).sum()) == int((~keep).sum()) * (w.numel() // keep.numel())
    assert torch.equal(masked[mask], w[mask])  # kept entries untouched
    with pytest.raises(InputShapeError, match="keep"):
        group_mask(w, kind, torch.ones(99, dtype=torch.bool))


def test_zero_groups_exact_even_for_tiny_values() -> None:
    w = torch.zeros(3, 4, dtype=torch.float64)
    w[1, 2] = 1e-200  # its square underflows; the group is still non-zero
    assert torch.equal(zero_groups(w, "filters"), torch.tensor([True, False, True]))
    assert torch.equal(zero_groups(w, "channels"), torch.tensor([True, True, False, True]))


def test_input_channel_norms_grouped_conv() -> None:
    conv = nn.Conv2d(6, 4, 3, groups=2)
    w = conv.weight.detach().double()  # (4, 3, 3, 3): out 0-1 read in 0-2, out 2-3 read in 3-5
    norms = input_channel_norms(w, groups=2)
    assert norms.shape == (6,)
    for a in range(6):
        j, s = divmod(a, 3)
        ref = w[2 * j : 2 * j + 2, s].norm()
        assert float(norms[a]) == pytest.approx(float(ref), rel=1e-14)
    # groups=1 = "channels" group norms
    assert torch.allclose(input_channel_norms(w, 1), group_norms_of(w, "channels"))
    # zeroing an absolute input channel changes the output exactly like zeroing that input
    x = torch.randn(2, 6, 5, 5)
    conv.weight.data[2:4, 1] = 0.0  # absolute channel 3 + 1 = 4
    x2 = x.clone()
    x2[:, 4] = 0.0
    assert torch.allclose(conv(x), conv(x2), atol=0)
    assert float(input_channel_norms(conv.weight.detach(), 2)[4]) == 0.0
    with pytest.raises(InputShapeError, match="groups=3"):
        input_channel_norms(w, 3)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8)
        )
        self.grouped = nn.Conv2d(8, 4, (3, 1), groups=2)
        self.fc = nn.Linear(16, 10)


def test_layer_views() -> None:
    net = _Net()
    views = layer_views(net)
    assert list(views) == ["features.0", "features.2", "grouped", "fc"]
    dw = views["features.2"]
    assert dw.kind == "conv" and dw.depthwise and dw.groups == 8
    assert dw.lowered_shape == tuple(lowered(dw.weight).shape) == (8, 9)
    g = views["grouped"]
    assert (g.in_channels, g.out_channels, g.kernel_size, g.groups, g.depthwise) == (
        8,
        4,
        (3, 1),
        2,
        False,
    )
    assert g.lowered_shape == tuple(lowered(g.weight).shape) == (4, 12)
    fc = views["fc"]
    assert (fc.kind, fc.in_features, fc.out_features, fc.groups) == ("linear", 16, 10, 1)
    assert fc.module is net.fc
    assert list(layer_views(net, include=["fc", "features.0"])) == ["features.0", "fc"]
    with pytest.raises(UnknownNameError, match="'features.9'"):
        layer_views(net, include=["features.9"])
    with pytest.raises(UnsupportedLayerError, match="'features.3'"):
        layer_views(net, include=["features.3"])
