"""Criterion methods on coupled graphs (issue 13 item 4/5): keep-sets computed on the current
model after each cut, group-consistent selection for grouped convs, honest history counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_bank import build_graph  # noqa: E402
from compactnn import compress  # noqa: E402


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("se", ["a", "b", "se_a.fc1", "se_b.fc1"]),  # SE-ResNet: a and b share the stream
        ("shared_conv", ["stem", "shared"]),  # weight-shared conv coupled to the stem
        ("resnext", ["reduce", "stem"]),  # grouped conv: group-consistent selection
        ("depth_multiplier", ["stem"]),
    ],
)
@pytest.mark.parametrize("method", ["l1-norm", "random"])
def test_criteria_prune_coupled_graphs(name: str, layers: list[str], method: str) -> None:
    model = build_graph(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = compress(
        model,
        method,
        (_loader(), _loader()),
        input_shape=(3, 8, 8),
        layers=layers,
        ratio=0.5,
        finetune_epochs=0,
        max_drop=None,
    )
    new = res.model
    assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in model.parameters())
    for n in layers:  # history reports the widths the returned model really has
        assert res.history["keep"][n] == new.get_submodule(n).weight.shape[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if name == "resnext":
        assert new.grouped.groups == 4 and new.grouped.in_channels % 4 == 0
        assert new.grouped.in_channels < 8
