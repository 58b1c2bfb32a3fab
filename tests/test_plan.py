"""CompressionPlan: action validation, save/load round trip, validate/apply errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import build  # noqa: E402
from compactnn import surgery  # noqa: E402
from compactnn.errors import CheckpointError, PlanError  # noqa: E402
from compactnn.plan import (  # noqa: E402
    CompressionPlan,
    GapHead,
    KeepInputs,
    KeepOutputs,
    LowRank,
    SetWeights,
    SparseLowRank,
)


def _all_actions() -> list:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return [
        KeepOutputs("conv1", (0, 2, 3)),
        KeepInputs("fc1", [1, 2]),
        LowRank("fc1", r(2, 20), r(7, 2), r(7)),
        LowRank("conv2", r(2, 6, 3, 3), r(5, 2), None),
        SparseLowRank("fc2", r(3, 7), r(1, 7), r(3, 1), r(3)),
        SetWeights("fc2", r(3, 7), None, sparse=True),
        SetWeights("conv1", r(6, 3, 3, 3), r(6)),
        GapHead("flatten", ("fc1", "relu3", "fc2")),
    ]


def test_save_load_round_trip(tmp_path: Path) -> None:
    plan = CompressionPlan(_all_actions(), meta={"input_shape": [3, 8, 8], "method": "ssr"})
    json_path = plan.save(tmp_path / "plan")
    assert json_path == tmp_path / "plan.json" and (tmp_path / "plan.safetensors").is_file()
    for p in (tmp_path / "plan", json_path, tmp_path / "plan.safetensors"):
        loaded = CompressionPlan.load(p)
        assert loaded.meta == plan.meta
        assert len(loaded.actions) == len(plan.actions)
        for a, b in zip(loaded.actions, plan.actions, strict=True):
            assert type(a) is type(b)
            assert a == b
    loaded = CompressionPlan.load(tmp_path / "plan")
    assert torch.equal(loaded.actions[2].first, plan.actions[2].first)
    assert loaded.actions[3].bias is None and loaded.actions[5].sparse is True


def test_tensor_action_equality_is_exact() -> None:
    w = torch.ones(3, 4)
    assert SetWeights("a", w, None) == SetWeights("a", w.clone(), None)
    assert SetWeights("a", w, None) != SetWeights("a", w + 1e-7, None)
    assert SetWeights("a", w, None) != SetWeights("a", w, torch.zeros(3))
    assert KeepOutputs("a", [0, 1]) == KeepOutputs("a", (0, 1))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CompressionPlan.load(tmp_path / "missing")
    plan = CompressionPlan([KeepOutputs("a", [0])])
    plan.save(tmp_path / "p")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        CompressionPlan.load(tmp_path / "p")


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="JSON-serializable"):
        CompressionPlan([], meta={"t": torch.ones(1)}).save(tmp_path / "x")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KeepOutputs("conv1", []), "keeps no channels"),
        (lambda: KeepOutputs("conv1", [0, 1, 1]), r"duplicate indices \[1\]"),
        (lambda: KeepOutputs("conv1", [-1, 2]), "negative index"),
        (lambda: KeepOutputs("conv1", [0.5]), "must contain ints"),
        (lambda: KeepOutputs("", [0]), "dotted name"),
        (lambda: LowRank("fc1", torch.ones(2, 3), "x", None), "'second' must be a torch.Tensor"),
        (lambda: SetWeights("fc1", torch.full((2, 2), float("nan")), None), "NaN"),
        (lambda: GapHead("flatten", ()), "at least one layer"),
        (lambda: CompressionPlan(["KeepOutputs"]), "action #0"),
    ],
)
def test_inadmissible_actions_are_rejected_on_construction(make, match: str) -> None:  # noqa: ANN001
    with pytest.raises(PlanError, match=match):
        make()


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (KeepOutputs("conv9", [0]), r"'conv9' does not exist.*Did you mean .*'conv1'"),
        (KeepOutputs("conv1", [0, 6]), r"layer='conv1'.*\[6\] are out of range.*6 outputs"),
        (KeepOutputs("bn1", [0]), r"layer='bn1'.*BatchNorm2d"),
        (KeepInputs("conv2", [7]), r"layer='conv2'.*\[7\] are out of range"),
        (
            LowRank("fc1", torch.ones(2, 19), torch.ones(7, 2), None),
            r"'fc1'.*'first' must be \(r, 20\)",
        ),
        (
            LowRank("conv2", torch.ones(2, 6, 3, 3), torch.ones(4, 2), None),
            r"'conv2'.*'second' must be \(5, 2\)",
        ),
        (
            LowRank("fc1", torch.ones(2, 20), torch.ones(7, 2), torch.ones(6)),
            r"'fc1'.*bias has shape \(6,\)",
        ),
        (
            SparseLowRank("fc2", torch.ones(3, 6), torch.ones(1, 7), torch.ones(3, 1), None),
            r"'fc2'.*'sparse' must have",
        ),
        (SetWeights("fc2", torch.ones(3, 6), None), r"'fc2'.*weight has shape \(3, 6\)"),
        (GapHead("flatten", ("fc1", "relu3", "fc2")), r"5 channels but the head predicted 3"),
        (GapHead("fc1", ("fc2",)), "must name the nn.Flatten"),
    ],
)
def test_validate_names_layer(action, match: str) -> None:  # noqa: ANN001
    model = build("seq")
    plan = CompressionPlan([action], meta={"input_shape": [3, 8, 8]})
    with pytest.raises(PlanError, match=match):
        surgery.validate(plan, model)


def test_channel_action_needs_example_inputs() -> None:
    with pytest.raises(PlanError, match="input_shape"):
        surgery.apply(CompressionPlan([KeepOutputs("fc1", [0])]), build("mlp"))
    new = surgery.apply(
        CompressionPlan([KeepOutputs("fc1", [0])]), build("mlp"), example_inputs=torch.randn(2, 10)
    )
    assert new.fc1.out_features == 1


def test_validate_passes_and_leaves_model_unchanged() -> None:
    model = build("seq")
    plan = CompressionPlan([KeepOutputs("conv1", [0, 1])], meta={"input_shape": [3, 8, 8]})
    surgery.validate(plan, model)
    assert model.conv1.out_channels == 6


def test_gap_head_outputs_spatial_mean_of_last_conv() -> None:
    model = build("seq", c2=3)  # 3 channels = 3 classes
    plan = CompressionPlan(
        [GapHead("flatten", ("fc1", "relu3", "fc2"))], meta={"input_shape": [3, 8, 8]}
    )
    new = surgery.apply(plan, model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        feats = model.pool2(
            model.relu2(model.bn2(model.conv2(model.pool1(model.relu1(model.bn1(model.conv1(x)))))))
        )
        assert torch.allclose(new(x), feats.mean(dim=(2, 3)), atol=1e-6)
    assert sum(p.numel() for p in new.parameters()) == (3 * 6 * 9 + 6 + 12) + (6 * 3 * 9 + 3 + 6)
