"""The shared budget split (uniform share, then filled): exact targets, maximality, and the
criterion baselines that calibrate through it (issue 19: our searches left up to a tenth of a
MACs budget unused, the peers' did not)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_bank import build_graph  # noqa: E402
from compactnn import compress, models  # noqa: E402
from compactnn.budget import Target, measure  # noqa: E402
from compactnn.methods._calibrate import fill_counts, uniform_counts  # noqa: E402
from compactnn.methods._common import prune_filters  # noqa: E402

LENET = ["conv1", "conv2", "fc1"]
SHAPE = (1, 28, 28)


def _cut(model: torch.nn.Module, counts: dict[str, int]) -> torch.nn.Module:
    units = {n: model.get_submodule(n).weight.shape[0] for n in counts}
    keep = {n: list(range(k)) for n, k in counts.items() if k < units[n]}
    return prune_filters(model, keep, SHAPE)[0] if keep else model


def _kept(model: torch.nn.Module, cand: torch.nn.Module, keys: tuple[str, ...]) -> dict[str, float]:
    return measure(cand, SHAPE, keys).fractions(measure(model, SHAPE, keys))


@pytest.mark.parametrize("frac", [0.5, 0.25, 0.05])
def test_filled_split_meets_the_target_exactly_and_no_unit_more_fits(frac: float) -> None:
    model = models.create("lenet-caffe")
    target = Target(macs=frac)
    uni, uni_kept = uniform_counts(model, LENET, target, SHAPE, fill=False)
    filled, kept = uniform_counts(model, LENET, target, SHAPE)
    assert all(filled[n] >= uni[n] for n in LENET)
    assert uni_kept["macs"] <= kept["macs"] <= frac  # exact: no tolerance used
    # the reported fractions are those of the model cut at these counts
    assert kept == pytest.approx(_kept(model, _cut(model, filled), ("macs",)))
    # maximal: one more unit in any layer that is not whole breaks the budget
    for n in LENET:
        if filled[n] < model.get_submodule(n).weight.shape[0]:
            more = _kept(model, _cut(model, {**filled, n: filled[n] + 1}), ("macs",))
            assert more["macs"] > frac, n


def test_lenet_at_five_percent_uses_the_budget_the_uniform_share_leaves() -> None:
    """3-8-75 (the best one share) keeps 4.01 % of the MACs; filled, 3-11-100 keeps 5.00 %."""
    model = models.create("lenet-caffe")
    uni, uni_kept = uniform_counts(model, LENET, Target(macs=0.05), SHAPE, fill=False)
    filled, kept = uniform_counts(model, LENET, Target(macs=0.05), SHAPE)
    assert uni == {"conv1": 3, "conv2": 8, "fc1": 75}
    assert uni_kept["macs"] == pytest.approx(0.0401, abs=5e-5)
    assert filled == {"conv1": 3, "conv2": 11, "fc1": 100}
    assert 0.0499 <= kept["macs"] <= 0.05


def test_fill_honours_every_key_of_a_two_key_target() -> None:
    model = models.create("lenet-caffe")
    target = Target(macs=0.25, params=0.05)
    counts, kept = uniform_counts(model, LENET, target, SHAPE)
    assert kept["macs"] <= 0.25 and kept["params"] <= 0.05
    assert max(kept["macs"] / 0.25, kept["params"] / 0.05) > 0.98  # the binding key is filled


def test_fill_leaves_counts_that_meet_the_target_only_within_its_tolerance() -> None:
    model = models.create("lenet-caffe")
    big = {"conv1": 20, "conv2": 50, "fc1": 300}
    over = _kept(model, _cut(model, big), ("macs",))["macs"]
    target = Target(macs=over / 1.05)  # met within the default 10 % tolerance, not exactly
    counts, kept = fill_counts(model, LENET, big, target, SHAPE)
    assert counts == big and kept["macs"] == pytest.approx(over)


def _digits_like(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPE, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size=32)


@pytest.mark.parametrize("method", ["l1-norm", "apoz"])
def test_criteria_budget_goes_through_the_filled_split(method: str) -> None:
    model = models.create("lenet-caffe")
    res = compress(
        model, method, (_digits_like(), _digits_like()), target={"macs": 0.05},
        finetune_epochs=0, measure=False, progress=False, max_drop=None,
    )  # fmt: skip
    assert res.history["keep"] == {"conv1": 3, "conv2": 11, "fc1": 100}
    assert res.target["option"] == "filters per layer (uniform share, filled)"
    assert res.target["kept"]["macs"] <= 0.05
    assert res.target["kept"] == pytest.approx(_kept(model, res.model, ("macs",)))
    assert res.chosen["keep"] == {"conv1": 3, "conv2": 11, "fc1": 100}


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("se", ["a", "b", "se_a.fc1", "se_b.fc1"]),  # SE-ResNet: a and b share the stream
        ("resnext", ["reduce", "stem"]),  # grouped conv: group-consistent selection
    ],
)
def test_criteria_budget_on_a_coupled_graph_is_met_by_the_model_returned(
    name: str, layers: list[str]
) -> None:
    """The split cuts coupled layers together, and a grouped conv keeps whole groups;
    whichever way the budget is found (filled split, or the generic search where the split
    cannot cut or the proxy run disagrees), the model returned keeps at most the budget."""
    model = build_graph(name)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(
            torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
        ),
        batch_size=16,
    )
    res = compress(
        model, "l1-norm", (data, data), input_shape=(3, 8, 8), target={"params": 0.5},
        layers=layers, finetune_epochs=0, measure=False,
        progress=False, max_drop=None,
    )  # fmt: skip
    # se: the filled split; resnext: the split's cut of the grouped conv is refused by
    # surgery, so the generic search over one pruned fraction decides
    assert (
        res.target["option"]
        == {
            "se": "filters per layer (uniform share, filled)",
            "resnext": "pruned fraction per layer",
        }[name]
    )
    full = sum(p.numel() for p in model.parameters())
    kept = sum(p.numel() for p in res.model.parameters()) / full
    assert res.target["kept"]["params"] == pytest.approx(kept)
    assert kept <= 0.5 * (1 + res.target["tolerance"])
