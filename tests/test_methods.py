"""Registry conformance: every filter-pruning method runs end to end on a tiny model."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from _zoo import tiny_cnn  # tests/ is on sys.path (pytest prepend import mode)
from compactnn import metrics, surgery
from compactnn.errors import ConfigError, UnknownNameError
from compactnn.methods import get_method, list_methods

TRAINING_METHODS = ["ssr", "admm-sparse", "random", "l1-norm", "apoz", "magnitude", "taylor"]


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(ds, batch_size=64)
    return train, test


FAST = {
    "ssr": dict(lam=0.3, max_outer=2, w_steps=3, finetune_epochs=1, finetune_steps_per_epoch=3),
    "admm-sparse": dict(mus=(0.05, 0.2), xi=2, steps_per_epoch=3, finetune_epochs=1),
    "random": dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3),
    "l1-norm": dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3),
    "apoz": dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
    "magnitude": dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3),
    "taylor": dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
}


def test_registry_lists_methods() -> None:
    names = list_methods()
    for m in TRAINING_METHODS:
        assert m in names
    with pytest.raises(UnknownNameError, match="Unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_method_end_to_end(method: str, loaders) -> None:
    model = tiny_cnn()
    original = copy.deepcopy(model.state_dict())
    res = compactnn.compress(
        model, method, loaders, progress=False, latency_batch_size=4, **FAST[method]
    )
    # the user's model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k
    small = res.model
    assert small is not model
    # report is consistent with the model it describes
    assert res.report_after.params == metrics.count_params(small)
    assert res.report_before.params == metrics.count_params(model)
    assert res.report_after.params <= res.report_before.params
    assert res.report_after.accuracy is not None
    out = small(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    # the plan replays on the original model to the same function
    replayed = surgery.apply(res.plan, copy.deepcopy(model))
    x = torch.randn(4, 1, 8, 8)
    small.eval()
    replayed.eval()
    torch.testing.assert_close(replayed(x), small(x), atol=1e-5, rtol=1e-5)


def test_baseline_budget_is_exact(loaders) -> None:
    res = compactnn.compress(
        tiny_cnn(),
        "l1-norm",
        loaders,
        progress=False,
        measure=False,
        keep={"0": 3, "3": 5, "6": 7},
        finetune_epochs=0,
    )
    convs = [m for m in res.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [c.weight.shape[0] for c in convs] == [3, 5, 7, 3]


def test_compress_leaves_the_callers_compression_data_untouched(loaders) -> None:
    from compactnn.methods import CompressionData

    train, test = loaders
    cd = CompressionData(train=train, val=test, test=test, input_shape=(1, 8, 8))
    res = compactnn.compress(
        tiny_cnn(), "l1-norm", cd, progress=False, measure=False, ratio=0.5, finetune_epochs=0
    )
    assert res.model is not None
    assert cd.check_batch is None  # the self-check's real samples went into a copy


def test_ssr_removes_filters_with_large_lambda(loaders) -> None:
    res = compactnn.compress(
        tiny_cnn(),
        "ssr",
        loaders,
        progress=False,
        measure=False,
        lam=[2.0, 2.0, 2.0],
        on_drop="warn",  # collapses on purpose
        max_outer=3,
        w_steps=2,
        finetune_epochs=0,
    )
    hist = res.history["layers"]
    assert all(h["filters_after"] < h["filters_before"] for h in hist.values())
    convs = [m for m in res.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [c.weight.shape[0] for c in convs[:3]] == [h["filters_after"] for h in hist.values()]


def test_ssr_lambda_path_prunes_in_stages_and_replays(loaders) -> None:
    """Algorithm 1's set S: each stage prunes the already-pruned net; the plan composes them."""
    model = tiny_cnn()
    with torch.no_grad():  # spread the filter norms so that each lambda cuts a few more
        for i, n in ((0, 8), (3, 12), (6, 16)):
            w = model[i].weight
            w.mul_(torch.linspace(0.1, 2.0, n).view(-1, *([1] * (w.dim() - 1))))
    res = compactnn.compress(
        model,
        "ssr",
        loaders,
        progress=False,
        measure=False,
        lam_path=[[0.0, 0.0, 0.6], [0.0, 0.0, 1.2], [0.6, 0.6, 1.2]],
        max_outer=3,
        w_steps=2,
        path_finetune_epochs=0,  # nothing but layer l moves: the classifier stays original
        finetune_epochs=0,
    )
    stages = res.history["stages"]
    assert len(stages) == 3 and all("val_top1" in s for s in stages)
    fc = [s["filters"]["6"] for s in stages]
    assert 16 > fc[0] > fc[1], fc  # layer "6" loses neurons in two different stages
    counts = stages[-1]["filters"]
    assert counts["0"] < 8 and counts["3"] < 12
    convs = [m for m in res.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [c.weight.shape[0] for c in convs[:3]] == [counts[k] for k in ("0", "3", "6")]
    # the plan is the sequence of cuts (each on the model the earlier ones left); composed,
    # the keep indices point at the original neurons: the untouched classifier's columns are
    # exactly the original classifier's columns at those indices
    keep: dict[str, list[int]] = {}
    for a in res.plan.actions:
        if type(a).__name__ == "KeepOutputs":
            prev = keep.get(a.layer)
            keep[a.layer] = list(a.keep) if prev is None else [prev[i] for i in a.keep]
    assert len(keep["6"]) == fc[-1] and len(set(keep["6"])) == fc[-1] and max(keep["6"]) < 16
    torch.testing.assert_close(convs[3].weight, model[8].weight[:, list(keep["6"])])
    replayed = surgery.apply(res.plan, copy.deepcopy(model))
    x = torch.randn(4, 1, 8, 8)
    res.model.eval()
    replayed.eval()
    torch.testing.assert_close(replayed(x), res.model(x), atol=1e-5, rtol=1e-5)
    # every point of S but the last (the result) comes back as a plan rebuilding that model
    # (on a fresh instance) with the stage's widths; with finetune_epochs=0 the last stage's
    # model is the result, so a third plan would be a copy of res.plan
    plans = res.history["stage_plans"]
    assert len(plans) == 2
    for st, plan in zip(stages[:2], plans, strict=True):
        point = surgery.apply(plan, tiny_cnn()).eval()
        pts = [m for m in point.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert [m.weight.shape[0] for m in pts[:3]] == [st["filters"][k] for k in ("0", "3", "6")]
        assert torch.isfinite(point(x)).all()


def test_admm_sparse_path_records_every_mu(loaders) -> None:
    res = compactnn.compress(
        tiny_cnn(), "admm-sparse", loaders, progress=False, measure=False, **FAST["admm-sparse"]
    )
    path = res.history["path"]
    assert [p["mu"] for p in path] == [0.0, 0.05, 0.2]  # the dense start first (Kiaee Table 3)
    assert all("val_top1" in p and 0 <= p["sparsity_percent"] <= 100 for p in path)
    assert path[-1]["sparsity_percent"] > 0.0  # the larger mu zeroes kernels W_ij
    # the reported non-zeros are those of the returned model (masked fine-tuning held the zeros)
    nnz = sum(int((p != 0).sum()) for p in res.model.parameters())
    assert res.history["nonzero_params"] == nnz


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("ssr", {"rho": -1.0}, "'rho' parameter of SSR"),
        ("ssr", {"penalty": "l3"}, "'penalty' parameter of SSR"),
        ("ssr", {"lam": [0.1, 0.2]}, "one value per pruned layer"),
        ("ssr", {"layers": ("nope",)}, "Layer 'nope' does not exist"),
        ("ssr", {"bogus": 1}, "Unknown option"),
        ("ssr", {"lam_path": []}, "'lam_path' parameter of SSR"),
        ("ssr", {"lam_path": [0.1, [0.1, 0.2]]}, r"'lam_path\[1\]' parameter of SSR"),
        ("ssr", {"lam_path": [0.1, -0.2]}, r"'lam_path\[1\]' parameter of SSR must be a finite"),
        ("ssr", {"finetune_distill": 2.0}, "'finetune_distill' parameter of SSR"),
        ("random", {"finetune_distill": -0.1}, "'finetune_distill' parameter of criterion"),
        ("admm-sparse", {"penalty": "l2"}, "'penalty' parameter of ADMM-sparse"),
        ("admm-sparse", {"mus": (0.2, 0.1)}, "increasing"),
        ("random", {"keep": [1, 2]}, "one count per pruned layer"),
        ("l1-norm", {"keep": {"0": 99}}, "keep"),
    ],
)
def test_bad_options_are_clear(method, options, match, loaders) -> None:
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        compactnn.compress(tiny_cnn(), method, loaders, progress=False, measure=False, **options)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ssr", {"penalty": "l1", "lam": 0.5, "max_outer": 2, "w_steps": 3}),
        ("ssr", {"lam": [2.0, 2.0, 2.0], "max_outer": 2, "w_steps": 3}),
        ("l1-norm", {"ratio": 0.5}),
    ],
)
def test_finetune_distill_teaches_from_the_uncompressed_model(
    method, options, loaders, monkeypatch
) -> None:
    """The teacher is the model as given, even when the method trained its copy in place."""
    import compactnn.train as train_mod

    model = tiny_cnn()
    original = copy.deepcopy(model.state_dict())
    seen: list[tuple[Any, float]] = []
    real_train = train_mod.train  # every method trains through compactnn.train.train

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("teacher") is not None:
            seen.append(
                (
                    {k: v.clone() for k, v in kwargs["teacher"].state_dict().items()},
                    kwargs["config"].distill_weight,
                )
            )
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train", spy)
    res = compactnn.compress(
        model,
        method,
        loaders,
        progress=False,
        measure=False,
        finetune_epochs=1,
        finetune_distill=0.7,
        on_drop="warn",  # lam 2.0 collapses the tiny net: the test is about the teacher
        **options,
    )
    assert len(seen) == 1  # only the final fine-tuning distils
    state, weight = seen[0]
    assert weight == 0.7
    for k, v in original.items():
        assert torch.equal(state[k], v), k
    assert res.config.finetune_distill == 0.7
