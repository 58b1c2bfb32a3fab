"""``round_to``: widths a runtime computes in whole blocks. Every count a structured method keeps
under it is a multiple of ``round_to``, fewer than it, or the whole layer; the budget still
holds and nothing aligned could be added within it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn.budget import aligned_down, aligned_up, fill_aligned
from compactnn.errors import ConfigError
from compactnn.methods._engine import Allocation, uniform_allocation
from compactnn.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import SeqCNN  # noqa: E402


def _allowed(c: int, n: int, r: int) -> bool:
    return c == n or c < r or c % r == 0


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_aligned_down_and_up_are_the_nearest_allowed_counts(r: int) -> None:
    for n in range(1, 41):
        allowed = [c for c in range(0, n + 1) if _allowed(c, n, r)]
        for c in range(0, n + 1):
            d = aligned_down(c, n, r)
            assert d == max(a for a in allowed if a <= c)
            if c < n:
                assert aligned_up(c, n, r) == min(a for a in allowed if a > c)
        assert aligned_down(n + 5, n, r) == n  # never more than the layer has


def test_fill_aligned_grows_the_least_kept_share_in_aligned_steps_until_nothing_fits() -> None:
    widths = {"a": 20, "b": 50, "c": 100}

    def cost(c: dict[str, int]) -> float:
        return (3 * c["a"] + c["a"] * c["b"] + c["b"] * c["c"]) / (60 + 1000 + 5000)

    for budget in (0.05, 0.25, 0.6):
        def fits(c: dict[str, int], b: float = budget) -> bool:
            return cost(c) <= b

        got = fill_aligned({"a": 1, "b": 1, "c": 1}, widths, 8, fits)
        assert cost(got) <= budget and all(_allowed(got[k], widths[k], 8) for k in got), got
        assert all(  # maximal: no key can take its next aligned step
            got[k] == widths[k] or cost({**got, k: aligned_up(got[k], widths[k], 8)}) > budget
            for k in got
        ), got
    # a limit below the width stops a key there; the ties go to the earlier key
    got = fill_aligned({"a": 8, "b": 8}, {"a": 32, "b": 32}, 8, lambda c: sum(c.values()) <= 40,
                       limit={"a": 16, "b": 32})  # fmt: skip
    assert got == {"a": 16, "b": 24}


def test_uniform_allocation_keeps_aligned_counts_and_fills_in_aligned_steps() -> None:
    n = {"a": 20, "b": 50, "c": 100}

    def cost(c: dict[str, int]) -> dict[str, float]:
        return {"macs": (3 * c["a"] + c["a"] * c["b"] + c["b"] * c["c"]) / (60 + 1000 + 5000)}

    def marginal(c: dict[str, int], r: str) -> dict[str, float]:
        return {"macs": 0.0}

    g = torch.Generator().manual_seed(0)
    scores = {r: torch.rand(k, generator=g) for r, k in n.items()}
    alive = {r: torch.ones(k, dtype=torch.bool) for r, k in n.items()}
    for budget in (0.05, 0.25, 0.6):
        keep, ok = uniform_allocation(
            Allocation(scores, alive, cost, marginal, {"macs": budget}, round_to=8)
        )
        counts = {r: int(k.sum()) for r, k in keep.items()}
        assert ok and cost(counts)["macs"] <= budget
        assert all(_allowed(counts[r], n[r], 8) for r in n), counts
        # maximal in aligned steps: no group can step up to its next allowed count
        assert all(
            counts[r] == n[r] or cost({**counts, r: aligned_up(counts[r], n[r], 8)})["macs"] > budget
            for r in n
        ), counts
        for r in n:  # the highest scores are kept
            if 0 < counts[r] < n[r]:
                assert float(scores[r][~keep[r]].max()) <= float(scores[r][keep[r]].min())


@pytest.fixture(scope="module")
def wide() -> tuple[nn.Module, Any]:
    shape = SeqCNN.input_shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, *shape, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, -1].mean(dim=(1, 2)) > 0.2).long()
    ds = TensorDataset(x, y)
    tr = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = SeqCNN(c1=16, c2=12, h=20)
    train(model, tr, config=TrainConfig(epochs=3, lr=0.05, seed=0), progress=False)
    return model.eval(), (tr, DataLoader(ds, batch_size=64))


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: int(model.get_submodule(n).weight.shape[0]) for n in ("conv1", "conv2", "fc1")}


FULL = {"conv1": 16, "conv2": 12, "fc1": 20}


@pytest.mark.parametrize("method,extra", [
    ("l1-norm", {}),
    ("ssr", {"engine_steps": 60, "anneal_steps": 30}),
])  # fmt: skip
def test_a_target_is_met_with_aligned_widths(wide: Any, method: str, extra: dict) -> None:
    model, data = wide
    res = compactnn.compress(
        model, method, data, target={"macs": 0.35}, round_to=4, finetune_epochs=0,
        input_shape=SeqCNN.input_shape, progress=False, on_drop="warn", **extra,
    )  # fmt: skip
    widths = _widths(res.model)
    assert res.target["met"] and res.target["kept"]["macs"] <= 0.35 * (1 + 1e-9)
    assert all(_allowed(widths[n], FULL[n], 4) for n in widths), widths
    assert any(widths[n] < FULL[n] for n in widths)
    assert res.chosen["round_to"] == 4


@pytest.mark.filterwarnings("ignore:l1-norm. validation top-1 fell")
def test_a_ratio_keeps_aligned_counts_and_an_explicit_keep_is_left_alone(wide: Any) -> None:
    model, data = wide
    kw = dict(input_shape=SeqCNN.input_shape, progress=False, finetune_epochs=0, round_to=4,
              on_drop="warn")
    res = compactnn.compress(model, "l1-norm", data, ratio=0.55, **kw)
    assert _widths(res.model) == {"conv1": 8, "conv2": 4, "fc1": 8}  # ceil(.55 n) down to 4s
    res = compactnn.compress(model, "l1-norm", data, keep=[5, 7, 9], **kw)
    assert _widths(res.model) == {"conv1": 5, "conv2": 7, "fc1": 9}


@pytest.mark.parametrize("method", ["l1-norm", "ssr"])
def test_a_bad_round_to_is_one_clear_error(wide: Any, method: str) -> None:
    model, data = wide
    with pytest.raises(ConfigError, match="round_to"):
        compactnn.compress(model, method, data, target={"macs": 0.35}, round_to=0,
                           input_shape=SeqCNN.input_shape, progress=False)  # fmt: skip
