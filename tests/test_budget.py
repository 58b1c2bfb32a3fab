"""Targets, the calibration search, the validation split and the accuracy-drop guard."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from _zoo import tiny_cnn  # tests/ is on sys.path (pytest prepend import mode)
from compactnn.api import as_compression_data, split_loader
from compactnn.budget import Strength, Target, measure, search
from compactnn.errors import AccuracyDropError, ConfigError
from compactnn.train import TrainConfig
from compactnn.train import train as train_model


# ---------------------------------------------------------------- Target
def test_target_parses_mappings_strings_and_instances() -> None:
    assert Target.parse({"macs": 0.1}).as_dict() == {"macs": 0.1}
    t = Target.parse("params=0.2, macs=0.05")
    assert t.as_dict() == {"params": 0.2, "macs": 0.05}
    assert Target.parse(t) is t
    assert compactnn.Target is Target


@pytest.mark.parametrize(
    "bad, words",
    [
        ({}, "at least one"),
        ({"macs": 0.0}, "'macs'"),
        ({"macs": 1.5}, "'macs'"),
        ({"flops": 0.1}, "Unknown target key"),
        ("macs", "KEY=FRACTION"),
        ("macs=abc", "must be a number"),
        (3, "must be a compactnn.Target"),
    ],
)
def test_bad_targets_get_one_clear_error(bad: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Target.parse(bad)


def test_slack_and_tolerance() -> None:
    t = Target(params=0.2, macs=0.1, tolerance=0.1)
    assert t.slack({"params": 0.1, "macs": 0.1}) == pytest.approx(1.0)
    assert t.met({"params": 0.21, "macs": 0.05})
    assert not t.met({"params": 0.25, "macs": 0.05})


# ---------------------------------------------------------------- search
def test_search_finds_the_weakest_strength_meeting_a_continuous_target() -> None:
    calls = []

    def kept(s: float) -> dict[str, float]:
        calls.append(s)
        return {"macs": 1.0 / (1.0 + s)}

    # kept <= 0.25  <=>  s >= 3
    res = search(kept, Target(macs=0.25), Strength("s", 0.1, 0.5), max_evals=30, rel_tol=1e-3)
    assert res.met
    assert res.strength >= 3.0
    assert res.strength == pytest.approx(3.0, rel=2e-3)
    assert len(res.trace) == len(set(calls))
    # every trace entry records the slack it saw
    for t in res.trace:
        assert t["slack"] == pytest.approx(t["kept"]["macs"] / 0.25)


def test_search_on_a_step_function_returns_a_point_inside_the_budget() -> None:
    def kept(s: float) -> dict[str, float]:  # discrete: like counts of filters
        return {"params": max(1, math.ceil(10 * (1 - s))) / 10}

    res = search(kept, Target(params=0.33), Strength("s", 0.1, 0.5, log=False, bound_hi=0.999))
    assert res.met and res.kept["params"] == pytest.approx(0.3)


def test_search_reports_an_unreachable_target() -> None:
    res = search(
        lambda s: {"params": 0.5},
        Target(params=0.1),
        Strength("s", 0.1, 1.0, bound_hi=10.0),
        max_evals=6,
    )
    assert not res.met
    assert res.strength == 10.0


def test_measure_counts_params_and_macs_of_the_model_as_it_is() -> None:
    m = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    got = measure(m, (10,), ("params", "macs"))
    assert got.values == {"params": 10 * 5 + 5 + 5 * 2 + 2, "macs": 10 * 5 + 5 * 2}


# ---------------------------------------------------------------- validation split
def _loader(n: int = 100, shuffle: bool = True) -> DataLoader:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    y = torch.zeros(n, dtype=torch.long)
    g = torch.Generator().manual_seed(0) if shuffle else None
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle, generator=g)


def _ids(loader: DataLoader) -> list[int]:
    return sorted(int(v) for x, _ in loader for v in x.flatten())


def test_validation_split_is_seeded_disjoint_and_complete() -> None:
    tr, va = split_loader(_loader(), 0.1, seed=3)  # type: ignore[misc]
    a, b = _ids(tr), _ids(va)
    assert len(b) == 10 and len(a) == 90
    assert sorted(a + b) == list(range(100))
    tr2, va2 = split_loader(_loader(), 0.1, seed=3)  # type: ignore[misc]
    assert _ids(va2) == b
    _, va3 = split_loader(_loader(), 0.1, seed=4)  # type: ignore[misc]
    assert _ids(va3) != b
    assert tr.batch_size == 8


def test_split_leaves_global_rng_alone_and_refuses_unsplittable_loaders() -> None:
    torch.manual_seed(11)
    before = torch.get_rng_state()
    split_loader(_loader(), 0.2, seed=0)
    assert torch.equal(before, torch.get_rng_state())
    assert split_loader([(torch.zeros(1, 1), torch.zeros(1))], 0.1, 0) is None


def test_compression_data_gets_a_validation_split_and_the_test_set_is_untouched() -> None:
    train, test = _loader(), _loader(20, shuffle=False)
    cd = as_compression_data((train, test), val_fraction=0.2, seed=0)
    assert cd.test is test and cd.val is not None
    assert len(_ids(cd.val)) == 20 and len(_ids(cd.train)) == 80
    explicit = as_compression_data((train, test, test))
    assert explicit.val is test and explicit.train is train
    none = as_compression_data((train, test), val_fraction=0.0)
    assert none.val is None
    with pytest.raises(ConfigError, match="val_fraction"):
        as_compression_data((train, test), val_fraction=0.9)


def test_empty_loader_without_input_shape_is_a_clear_error() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0)), batch_size=4)
    with pytest.raises(ConfigError, match="input_shape"):
        as_compression_data(empty, val_fraction=0.0)


# ---------------------------------------------------------------- compress with budgets
def _data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.2).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(ds, batch_size=100)


def test_l1_norm_meets_a_params_target_chosen_without_the_test_set() -> None:
    train, test = _data()
    g = torch.Generator().manual_seed(7)
    other = DataLoader(  # a different "test set": the choices must not change
        TensorDataset(
            torch.randn(100, 1, 8, 8, generator=g), torch.randint(0, 3, (100,), generator=g)
        ),
        batch_size=50,
    )
    runs = [
        compactnn.compress(
            tiny_cnn(),
            "l1-norm",
            (train, t),
            target={"params": 0.4},
            finetune_epochs=0,
            measure=False,
            progress=False,
            on_drop="warn",
        )  # fmt: skip
        for t in (test, other)
    ]
    res = runs[0]
    assert runs[1].chosen == res.chosen
    assert runs[1].target["trace"] == res.target["trace"]
    assert res.target is not None and res.target["met"]
    kept = res.target["kept"]["params"]
    assert kept <= 0.4
    assert kept == pytest.approx(
        compactnn.metrics.count_params(res.model) / compactnn.metrics.count_params(tiny_cnn())
    )
    # the chosen options replay without search: same architecture
    again = compactnn.compress(
        tiny_cnn(), "l1-norm", (train, test), measure=False, progress=False, on_drop="warn",
        **res.chosen,
    )  # fmt: skip
    shapes = [p.shape for p in res.model.parameters()]
    assert [p.shape for p in again.model.parameters()] == shapes


def test_compress_leaves_every_global_rng_untouched() -> None:
    train, test = _data()
    model = tiny_cnn()  # seeds torch itself
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: NPY002
    compactnn.compress(
        model, "random", (train, test), ratio=0.5, finetune_epochs=1, measure=False,
        progress=False, on_drop="warn",
    )  # fmt: skip
    assert torch.equal(states[0], torch.get_rng_state())
    assert states[1] == random.getstate()
    assert np.array_equal(states[2], np.random.get_state()[1])  # noqa: NPY002


def test_silent_destruction_is_refused_with_the_numbers() -> None:
    train, test = _data()
    model = tiny_cnn()
    train_model(model, train, config=TrainConfig(epochs=8, lr=0.05), progress=False)
    with pytest.raises(AccuracyDropError, match=r"collapsed to <= 1 unit: '0' \(1\)") as info:
        compactnn.compress(
            model, "l1-norm", (train, test), keep={"0": 1, "3": 1, "6": 1},
            finetune_epochs=0, measure=False, progress=False,
        )  # fmt: skip
    assert info.value.result is not None  # nothing computed is lost
    with pytest.warns(RuntimeWarning, match="on_drop='warn'"):
        res = compactnn.compress(
            model, "l1-norm", (train, test), keep={"0": 1, "3": 1, "6": 1},
            finetune_epochs=0, measure=False, progress=False, on_drop="warn",
        )  # fmt: skip
    assert res.validation is not None and res.validation["n"] == 40


def test_drop_guard_uses_max_drop() -> None:
    train, test = _data()
    model = tiny_cnn()
    train_model(model, train, config=TrainConfig(epochs=8, lr=0.05), progress=False)
    res = compactnn.compress(
        model, "magnitude", (train, test), ratio=0.75, finetune_epochs=0, measure=False,
        progress=False, max_drop=100.0,
    )  # fmt: skip
    drop = res.validation["drop"]  # type: ignore[index]
    assert drop > 0  # pruning 25 % of every layer without fine-tuning costs accuracy here
    with pytest.raises(AccuracyDropError, match="max_drop"):
        compactnn.compress(
            model, "magnitude", (train, test), ratio=0.75, finetune_epochs=0,
            measure=False, progress=False, max_drop=drop / 2,
        )  # fmt: skip
    # on_drop="warn": the warning is attributed to the caller's line, not to compactnn's
    with pytest.warns(RuntimeWarning, match="max_drop") as rec:
        compactnn.compress(
            model, "magnitude", (train, test), ratio=0.75, finetune_epochs=0,
            measure=False, progress=False, max_drop=drop / 2, on_drop="warn",
        )  # fmt: skip
    assert [w.filename for w in rec if "max_drop" in str(w.message)] == [__file__]
