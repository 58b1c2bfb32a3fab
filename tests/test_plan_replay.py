"""Self-contained plans: a result's plan, saved and loaded, replays exactly on a *fresh, untrained*
instance of the architecture (every parameter and buffer, BN statistics included), and a plan
applied to another architecture fails with one PlanError naming the first mismatching key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import surgery
from compactnn.errors import PlanError
from compactnn.plan import CompressionPlan, KeepOutputs, LowRank, SetState, SetWeights

TOL = 1e-5


def _cnn(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 12, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def _mlp(seed: int, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.ReLU(),
        nn.BatchNorm1d(10),
        nn.Linear(10, out),
    )


def _trained_stats(model: nn.Module) -> nn.Module:
    """Give every BN non-default statistics and affine parameters (as training would)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g))
                m.num_batches_tracked.fill_(17)
    return model


def _loaders(shape: tuple[int, ...]) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, *shape, generator=g)
    y = (x.flatten(1)[:, :4].mean(1) > 0).long() + (x.flatten(1)[:, 4:].mean(1) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(ds, batch_size=64)


CASES = {
    "ssr": (
        _cnn,
        (1, 8, 8),
        dict(lam=0.3, max_outer=2, w_steps=3, finetune_epochs=1, finetune_steps_per_epoch=3),
    ),
    "admm-sparse": (
        _cnn,
        (1, 8, 8),
        dict(mus=(0.05, 0.2), xi=2, steps_per_epoch=3, finetune_epochs=1),
    ),
    "l1-norm": (_cnn, (1, 8, 8), dict(ratio=0.5, finetune_epochs=1, finetune_steps_per_epoch=3)),
    "ddlr": (_mlp, (6,), dict(eps_frac=0.3, dense_fallback=False)),
    "net-trim": (_mlp, (6,), dict(eps_frac=0.2)),
}


@pytest.mark.parametrize("method", list(CASES))
def test_saved_plan_replays_on_fresh_instance(method: str, tmp_path: Path) -> None:
    build, shape, kw = CASES[method]
    model = _trained_stats(build(0))
    res = compactnn.compress(model, method, _loaders(shape), progress=False, measure=False, **kw)
    assert isinstance(res.plan.actions[-1], SetState)
    loaded = CompressionPlan.load(res.plan.save(tmp_path / "plan"))
    assert loaded.actions == res.plan.actions and loaded.meta == res.plan.meta
    fresh = build(123)  # untrained, other random init, default BN statistics
    replay = surgery.apply(loaded, fresh)
    x = torch.randn(16, *shape)
    res.model.eval()
    replay.eval()
    with torch.no_grad():
        assert float((replay(x) - res.model(x)).abs().max()) <= TOL
    # every parameter and buffer comes from the compressed model
    want = res.model.state_dict()
    got = replay.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_layerwise_plan_stores_replaced_layers_once() -> None:
    res = compactnn.compress(
        _trained_stats(_mlp(0)),
        "ddlr",
        _loaders((6,)),
        progress=False,
        measure=False,
        eps_frac=0.3,
        dense_fallback=False,
    )
    state = res.plan.actions[-1]
    assert isinstance(state, SetState) and state.skip == ("0", "2")
    assert isinstance(res.plan.actions[0], LowRank)
    assert not any(k.startswith(("0.", "2.")) for k in state.state)
    assert {"4.running_mean", "4.running_var", "4.num_batches_tracked", "5.weight"} <= set(
        state.state
    )


def _plan() -> tuple[CompressionPlan, nn.Module]:
    model = _trained_stats(_mlp(0))
    structure = CompressionPlan([KeepOutputs("2", (0, 3, 4, 7))], meta={"input_shape": [6]})
    small = surgery.apply(structure, model)
    return structure.with_state(small), small


def test_with_state_replays_structure_plan() -> None:
    plan, small = _plan()
    replay = surgery.apply(plan, _mlp(9))
    x = torch.randn(5, 6)
    small.eval()
    replay.eval()
    assert torch.equal(replay(x), small(x))
    # a second with_state replaces the SetState instead of adding one
    again = plan.with_state(small)
    assert sum(isinstance(a, SetState) for a in again.actions) == 1


def test_other_architecture_names_first_mismatching_key() -> None:
    plan, _ = _plan()
    with pytest.raises(
        PlanError, match=r"'5\.weight'.*\(4, 4\) in the model.*\(3, 4\) in the plan"
    ):
        surgery.apply(plan, _mlp(0, out=4))
    extra = nn.Sequential(*_mlp(0), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(PlanError, match=r"model has '7\.weight' \(shape \(2, 3\), layer '7'\)"):
        surgery.apply(plan, extra)
    fewer = nn.Sequential(*list(_mlp(0))[:4], nn.Identity(), _mlp(0)[5])
    with pytest.raises(PlanError, match=r"plan has '4\.weight' \(shape \(4,\), layer '4'\)"):
        surgery.apply(plan, fewer)


def test_set_state_is_strict_and_atomic() -> None:
    model = _mlp(0)
    before = copy.deepcopy(model.state_dict())
    state = dict(model.state_dict())
    state["5.bias"] = torch.zeros(7)
    with pytest.raises(PlanError, match=r"'5\.bias'.*\(3,\) in the model.*\(7,\) in the plan"):
        surgery.apply(CompressionPlan([SetState(state)]), model, inplace=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(PlanError, match="skipped layer"):
        SetState(dict(model.state_dict()), skip=("0",))
    with pytest.raises(PlanError, match="NaN"):
        SetState({"w": torch.tensor([float("nan")])})
    with pytest.raises(PlanError, match="does not exist"):
        surgery.apply(CompressionPlan([SetState({}, skip=("nope",))]), model)


def test_set_state_with_skip_takes_layer_from_action() -> None:
    model = _mlp(0)
    w = torch.randn(12, 6)
    skip_plan = CompressionPlan([SetWeights("0", w, None)]).with_state(model)
    assert skip_plan.actions[-1].skip == ("0",)
    out = surgery.apply(skip_plan, _mlp(4))
    assert torch.equal(out[0].weight, w) and out[0].bias is None
    assert torch.equal(out[5].weight, model[5].weight)


def test_plan_has_no_apply_and_points_to_surgery() -> None:
    plan, _ = _plan()
    with pytest.raises(AttributeError, match=r"compactnn\.surgery\.apply\(plan, model"):
        plan.apply(_mlp(0))  # type: ignore[attr-defined]
    assert not hasattr(plan, "validate")
    assert copy.deepcopy(plan).actions == plan.actions
