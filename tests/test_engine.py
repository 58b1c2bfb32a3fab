"""The budgeted engine (issue 33): exact cost model, knapsack projection, one joint run to an
exact budget for ssr / pgt / admm-sparse, errors before any training."""

from __future__ import annotations

import copy
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import metrics
from compactnn.budget import Target, measure
from compactnn.errors import ConfigError
from compactnn.methods._common import prune_filters
from compactnn.methods._engine import (
    Allocation,
    CostModel,
    EngineSettings,
    _groups,
    knapsack,
    run_engine,
    uniform_allocation,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import SeqCNN, TinyResNet  # noqa: E402

ENGINE = dict(engine_steps=60, anneal_steps=30)


def _data(shape: tuple[int, ...], n: int = 256, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, -1].mean(dim=(1, 2)) > 0.2).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(ds, batch_size=64)


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize("cls", [SeqCNN, TinyResNet])
def test_the_cost_model_equals_the_measured_size_of_every_cut(cls: type[nn.Module]) -> None:
    """Params and MACs are multilinear of degree 2 in the kept counts: the fitted model is
    exact on cut models it never measured (residual groups included)."""
    model = _model(cls)
    shape = cls.input_shape  # type: ignore[attr-defined]
    layers = compactnn.methods._common.prunable_layers(model, shape)
    groups = _groups(model, layers, {"input_shape": list(shape)})
    target = Target(params=0.5, macs=0.5)
    costs = CostModel(model, groups, target, shape)
    base = measure(model, shape, target.keys)
    rng = random.Random(0)
    for _ in range(6):
        counts = {g.rep: rng.randint(1, g.size) for g in groups}
        cut = prune_filters(model, {r: list(range(c)) for r, c in counts.items()}, shape)[0]
        got = measure(cut, shape, target.keys).fractions(base)
        pred = costs.cost(counts)
        for k in target.keys:
            assert pred[k] == pytest.approx(got[k], rel=1e-9, abs=1e-12), (counts, k)


def test_knapsack_meets_the_budget_keeps_floors_and_drops_the_cheapest_value_first() -> None:
    # two groups, linear costs: a unit of "a" costs 1, of "b" costs 3 (of a total of 10)
    def cost(c: dict[str, int]) -> dict[str, float]:
        return {"macs": (c["a"] * 1 + c["b"] * 3) / 10}

    def marginal(c: dict[str, int], r: str) -> dict[str, float]:
        return {"macs": (1 if r == "a" else 3) / 10}

    scores = {"a": torch.tensor([4.0, 1.0, 5.0, 0.5]), "b": torch.tensor([2.0, 3.0])}
    alive = {r: torch.ones(len(s), dtype=torch.bool) for r, s in scores.items()}
    keep, ok = knapsack(Allocation(scores, alive, cost, marginal, {"macs": 0.5}))
    assert ok
    counts = {r: int(k.sum()) for r, k in keep.items()}
    assert cost(counts)["macs"] <= 0.5
    # value per cost: a -> 4, 1, 5, 0.5 ; b -> 0.67, 1: the order of removal is a[3], b[0], ...
    assert not bool(keep["a"][3]) and not bool(keep["b"][0])
    # within a group the smallest score goes first
    for r in keep:
        dropped = scores[r][~keep[r]]
        kept = scores[r][keep[r]]
        if len(dropped) and len(kept):
            assert float(dropped.max()) <= float(kept.min())
    # floors hold; an unreachable budget says so
    keep, ok = knapsack(
        Allocation(scores, alive, cost, marginal, {"macs": 0.01}, min_keep={"a": 2, "b": 1})
    )
    assert not ok and int(keep["a"].sum()) == 2 and int(keep["b"].sum()) == 1


def test_knapsack_never_overshoots_when_a_cheap_unit_suffices() -> None:
    """Near the budget a dear unit is credited only with the excess: the greedy drops the
    cheap unit that closes the gap instead of a dear one that would leave budget unused."""

    def cost(c: dict[str, int]) -> dict[str, float]:
        return {"params": (c["big"] * 50 + c["small"]) / 200}

    def marginal(c: dict[str, int], r: str) -> dict[str, float]:
        return {"params": (50 if r == "big" else 1) / 200}

    scores = {"big": torch.tensor([10.0, 10.0]), "small": torch.full((100,), 1.0)}
    alive = {r: torch.ones(len(s), dtype=torch.bool) for r, s in scores.items()}
    keep, ok = knapsack(Allocation(scores, alive, cost, marginal, {"params": 0.99}))
    assert ok and int(keep["big"].sum()) == 2 and int(keep["small"].sum()) == 98


def test_uniform_allocation_keeps_one_fraction_then_fills_the_budget() -> None:
    """Bilinear MACs of a chain a -> b -> c: the largest common fraction that fits, the least
    kept group grown while a unit still fits, the highest scores kept inside each group."""
    n = {"a": 10, "b": 20, "c": 40}

    def cost(c: dict[str, int]) -> dict[str, float]:
        return {"macs": (3 * c["a"] + c["a"] * c["b"] + c["b"] * c["c"]) / (30 + 200 + 800)}

    def marginal(c: dict[str, int], r: str) -> dict[str, float]:
        return {"macs": 0.0}  # unused by the uniform rule

    g = torch.Generator().manual_seed(0)
    scores = {r: torch.rand(k, generator=g) for r, k in n.items()}
    alive = {r: torch.ones(k, dtype=torch.bool) for r, k in n.items()}
    keep, ok = uniform_allocation(Allocation(scores, alive, cost, marginal, {"macs": 0.3}))
    counts = {r: int(k.sum()) for r, k in keep.items()}
    assert ok and cost(counts)["macs"] <= 0.3
    # maximal: no group can take one more unit within the budget
    assert all(counts[r] == n[r] or cost({**counts, r: counts[r] + 1})["macs"] > 0.3 for r in n)
    # the fractions differ by at most the fill (a unit of the coarsest group)
    fr = [counts[r] / n[r] for r in n]
    assert max(fr) - min(fr) <= 1 / min(n.values()) + 1e-9
    for r in n:  # the highest scores are kept
        if 0 < counts[r] < n[r]:
            assert float(scores[r][~keep[r]].max()) <= float(scores[r][keep[r]].min())
    # floors hold; an unreachable budget says so
    floors = {"a": 2, "b": 1, "c": 1}
    keep, ok = uniform_allocation(
        Allocation(scores, alive, cost, marginal, {"macs": 0.001}, floors)
    )
    assert not ok and [int(keep[r].sum()) for r in n] == [2, 1, 1]


def test_the_uniform_allocation_meets_a_target_exactly(seq: Any) -> None:
    model, data = seq
    res = compactnn.compress(
        model, "ssr", data, target={"macs": 0.35}, progress=False, on_drop="warn",
        finetune_epochs=0, input_shape=SeqCNN.input_shape, engine_allocation="uniform", **ENGINE,
    )  # fmt: skip
    assert res.target["met"] and res.target["kept"]["macs"] <= 0.35 + 1e-12
    assert res.chosen["engine_allocation"] == "uniform"


def _trained(cls: type[nn.Module]) -> tuple[nn.Module, Any]:
    from compactnn.train import TrainConfig, train

    shape = cls.input_shape  # type: ignore[attr-defined]
    data = _data(shape)
    model = _model(cls)
    train(model, data[0], config=TrainConfig(epochs=4, lr=0.05, seed=0), progress=False)
    return model.eval(), data


@pytest.fixture(scope="module")
def seq() -> tuple[nn.Module, Any]:
    return _trained(SeqCNN)


def test_run_engine_reaches_the_budget_exactly_and_its_keep_replays(seq: Any) -> None:
    model, (train, val) = seq
    shape = SeqCNN.input_shape
    layers = ["conv1", "conv2", "fc1"]
    target = Target(macs=0.3)
    before = copy.deepcopy(model.state_dict())
    run = run_engine(
        copy.deepcopy(model), layers, train, val, target, shape,
        EngineSettings(steps=40, anneal_steps=20, project_every=5, cut_every=10, eval_every=10),
    )  # fmt: skip
    for k, v in model.state_dict().items():  # the engine worked on a copy
        assert torch.equal(v, before[k])
    kept = measure(run.model, shape, ("macs",)).fractions(measure(model, shape, ("macs",)))
    assert kept["macs"] <= 0.3 + 1e-12
    # maximal: no single unit of any layer could have been kept within the budget
    widths = {n: int(run.model.get_submodule(n).weight.shape[0]) for n in layers}
    full = {n: int(model.get_submodule(n).weight.shape[0]) for n in layers}
    assert widths == {n: len(run.keep[n]) for n in layers}
    # the original indices rebuild the same architecture on the input model
    rebuilt, _ = prune_filters(model, run.keep, shape)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in run.model.parameters()]
    assert any(widths[n] < full[n] for n in layers)
    assert run.history and run.history[-1]["step"] == run.info["steps"]
    assert {"budget", "kept", "val_top1", "units"} <= set(run.history[0])
    assert run.info["cuts"][-1]["why"] in ("final projection", "zero rows")


def test_run_engine_is_deterministic(seq: Any) -> None:
    model, (train, val) = seq
    st = EngineSettings(steps=30, anneal_steps=20, project_every=5, cut_every=10, eval_every=10)
    a = run_engine(copy.deepcopy(model), ["conv1", "conv2", "fc1"], train, val,
                   Target(params=0.4), SeqCNN.input_shape, st)  # fmt: skip
    b = run_engine(copy.deepcopy(model), ["conv1", "conv2", "fc1"], train, val,
                   Target(params=0.4), SeqCNN.input_shape, st)  # fmt: skip
    assert a.keep == b.keep
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_an_unreachable_target_is_refused_before_any_training(seq: Any) -> None:
    model, (train, val) = seq

    class NoData:
        def __iter__(self) -> Any:  # training never starts
            raise AssertionError("the engine read training data before refusing")

    with pytest.raises(ConfigError, match="cannot be reached"):
        run_engine(copy.deepcopy(model), ["fc1"], NoData(), val, Target(macs=0.01),
                   SeqCNN.input_shape, EngineSettings(steps=10, anneal_steps=5))  # fmt: skip


@pytest.mark.parametrize("method", ["ssr", "pgt", "admm-sparse"])
@pytest.mark.parametrize("key", ["macs", "params"])
def test_a_target_is_met_exactly_in_one_run_by_every_engine_method(
    method: str, key: str, seq: Any
) -> None:
    model, data = seq
    extra = {"overprune_guard": False} if method == "admm-sparse" else {}
    res = compactnn.compress(
        model, method, data, target={key: 0.35}, progress=False, on_drop="warn",
        finetune_epochs=0, input_shape=SeqCNN.input_shape, **ENGINE, **extra,
    )  # fmt: skip
    kept = res.target["kept"][key]
    assert kept <= 0.35 + 1e-12 and res.target["met"]
    assert res.target["option"].startswith("budgeted engine")
    assert res.history["engine"] and res.history["engine_info"]["steps"] <= ENGINE["engine_steps"]
    assert res.history["keep"] == {
        n: int(res.model.get_submodule(n).weight.shape[0]) for n in res.history["keep"]
    }
    assert res.chosen["budget"][key] == 0.35  # replayable without any search
    # the plan replays the returned model on the original
    replay = compactnn.surgery.apply(res.plan, model)
    x = next(iter(data[1]))[0]
    with torch.no_grad():
        assert torch.allclose(replay.eval()(x), res.model.eval()(x), atol=1e-5)
    assert metrics.count_params(replay) == metrics.count_params(res.model)


def test_residual_groups_are_cut_together(seq: Any) -> None:
    model, data = _trained(TinyResNet)
    layers = ["conv", "block1.conv_a", "block3.conv_a"]  # conv couples every stage-1 add
    res = compactnn.compress(
        model, "ssr", data, target={"macs": 0.5}, progress=False, on_drop="warn",
        finetune_epochs=0, layers=tuple(layers), input_shape=TinyResNet.input_shape, **ENGINE,
    )  # fmt: skip
    assert res.target["kept"]["macs"] <= 0.5 + 1e-12
    w = res.model.conv.weight.shape[0]
    assert res.model.block1.conv_b.weight.shape[0] == w == res.model.block2.conv_b.weight.shape[0]


@pytest.mark.parametrize(
    ("method", "opts", "what"),
    [
        ("ssr", {"penalty": "l1"}, "penalty='l1'"),
        ("pgt", {"penalty": "lowrank"}, "penalty='lowrank'"),
        ("admm-sparse", {"structure": "kernels"}, "structure='kernels'"),
    ],
)
def test_settings_the_engine_cannot_budget_are_refused_up_front(
    method: str, opts: dict[str, Any], what: str, seq: Any
) -> None:
    model, data = seq
    with pytest.raises(ConfigError, match=what.replace("(", r"\(")):
        compactnn.compress(model, method, data, target={"macs": 0.5}, progress=False,
                           input_shape=SeqCNN.input_shape, **opts)  # fmt: skip


def test_a_bad_budget_option_names_it() -> None:
    with pytest.raises(ConfigError, match="'budget'"):
        compactnn.methods.SSR(budget={"flops": 0.5})
    with pytest.raises(ConfigError, match="anneal_steps"):
        EngineSettings(steps=10, anneal_steps=20)


def test_schedules_are_in_steps_not_epochs(seq: Any) -> None:
    """A loader of 2 batches and one of 8: the same number of optimizer steps."""
    model, _ = seq
    shape = SeqCNN.input_shape
    steps = []
    for n in (64, 256):
        train, val = _data(shape, n=n)
        run = run_engine(copy.deepcopy(model), ["conv1", "conv2", "fc1"], train, val,
                         Target(macs=0.5), shape,
                         EngineSettings(steps=24, anneal_steps=12, patience=100, eval_every=4))  # fmt: skip
        steps.append(run.info["steps"])
    assert steps == [24, 24]


def test_itertools_product_of_counts_brute_force_small() -> None:
    """Knapsack result fits the budget on every small instance (exhaustive over budgets)."""

    def cost(c: dict[str, int]) -> dict[str, float]:
        return {"macs": (2 * c["a"] + 3 * c["b"] + c["a"] * c["b"]) / 35}

    def marginal(c: dict[str, int], r: str) -> dict[str, float]:
        return {"macs": ((2 + c["b"]) if r == "a" else (3 + c["a"])) / 35}

    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(5, generator=g), "b": torch.rand(4, generator=g)}
    alive = {r: torch.ones(len(s), dtype=torch.bool) for r, s in scores.items()}
    for b in (0.2, 0.4, 0.6, 0.8):
        keep, ok = knapsack(Allocation(scores, alive, cost, marginal, {"macs": b}))
        counts = {r: int(k.sum()) for r, k in keep.items()}
        assert ok and cost(counts)["macs"] <= b + 1e-12
        # and it is never worse than keeping a single unit everywhere when that fits
        feasible = [
            (ca, cb) for ca, cb in itertools.product(range(1, 6), range(1, 5))
            if cost({"a": ca, "b": cb})["macs"] <= b
        ]  # fmt: skip
        assert (counts["a"], counts["b"]) in feasible


class _ResidualFirst(nn.Module):
    """An unseen small CNN: the classifier registered first, BatchNorm, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(24, 10)
        self.stem = nn.Conv2d(1, 24, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(24)
        self.c1 = nn.Conv2d(24, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 24, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn2(self.c2(torch.relu(self.bn1(self.c1(x))))))
        x = torch.relu(self.bn3(self.c3(x)))
        return self.head(x.mean(dim=(2, 3)))


def _plain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("net", ["residual", "plain"])
def test_defaults_and_only_a_target_stay_within_max_drop_on_unseen_small_cnns(net: str) -> None:
    """Issue 33's robustness acceptance: small unseen CNNs trained on scikit-learn digits
    (1,437 training images), every engine method with its defaults and only a target
    (macs 0.25, params 0.4), no fine-tuning: within max_drop on validation (compress raises
    AccuracyDropError otherwise) and within the budget. admm-sparse's over-pruning guard refuses
    what it cannot reach up front (naming the way out); without the guard it runs."""
    from compactnn import data as cdata
    from compactnn.errors import AccuracyDropError  # noqa: F401 - raised by compress
    from compactnn.train import TrainConfig, train

    tr, te = cdata.get_loaders("digits", batch_size=32, seed=0)
    torch.manual_seed(0)
    model = _ResidualFirst() if net == "residual" else _plain()
    train(model, tr, config=TrainConfig(epochs=15, lr=0.05, momentum=0.9, seed=0), progress=False)
    model.eval()
    for target in ({"macs": 0.25}, {"params": 0.4}):
        for method in ("ssr", "pgt", "admm-sparse"):
            opts: dict[str, Any] = {"finetune_epochs": 0}
            try:
                res = compactnn.compress(model, method, (tr, te), target=target, input_shape=(1, 8, 8),
                                         progress=False, measure=False, **opts)  # fmt: skip
            except ConfigError as e:
                assert method == "admm-sparse" and "overprune_guard=False" in str(e)
                res = compactnn.compress(model, method, (tr, te), target=target, input_shape=(1, 8, 8),
                                         progress=False, measure=False, overprune_guard=False,
                                         **opts)  # fmt: skip
            ((key, value),) = target.items()
            assert res.target["kept"][key] <= value + 1e-12
            assert res.validation["drop"] <= 5.0


def test_the_summary_says_how_the_budget_was_met(seq: Any) -> None:
    model, data = seq
    res = compactnn.compress(model, "ssr", data, target={"macs": 0.5}, progress=False,
                             on_drop="warn", finetune_epochs=0, input_shape=SeqCNN.input_shape,
                             **ENGINE)  # fmt: skip
    text = res.summary()
    info = res.history["engine_info"]
    assert f"budgeted engine: one joint run, {info['steps']} optimizer steps" in text
    assert f"{info['val_top1_engine']:.2f} % before fine-tuning" in text
