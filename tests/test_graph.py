"""Layer discovery without torch.fx: compactnn.graph, its users and the output width guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from compactnn import surgery
from compactnn.capture import following_activation
from compactnn.errors import PlanError, UnsupportedLayerError
from compactnn.graph import discover, prunable_layers
from compactnn.methods import _common
from compactnn.methods.layerwise import default_layers
from compactnn.plan import CompressionPlan, KeepOutputs


class _ClassifierFirst(nn.Module):
    """Untraceable (checks and branches on x.shape); registers its classifier first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 10)  # classifier, registered before everything else
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.hidden = nn.Linear(6 * 7 * 7, 12)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expects (N, 1, 28, 28), got {tuple(x.shape)}")
        if x.shape[0] == 1:
            x = x.expand(2, -1, -1, -1)  # batch-size dependent branch
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.hidden(x.flatten(1)))
        return self.fc(x)


class _UntraceableResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.inner = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.outer = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != 8:
            raise ValueError("8x8 inputs only")
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.inner(x)))
        x = F.relu(self.bn2(self.outer(y)) + x)
        return self.head(x.mean(dim=(2, 3)))


def _x(shape: tuple[int, ...] = (1, 28, 28)) -> Tensor:
    return torch.zeros(2, *shape)


def test_model_is_untraceable() -> None:
    for m in (_ClassifierFirst(), _UntraceableResidual()):
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever fx raises
            fx.symbolic_trace(m)


def test_discover_order_and_classifier_without_fx() -> None:
    model = _ClassifierFirst().train()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen parameters: the input clone carries the grad graph
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    g = discover(model, _x())
    assert g.order == ("conv1", "conv2", "hidden", "fc")
    assert g.classifier == "fc"
    assert g.output_shape == (2, 10)
    assert not g.traced and g.residual_coupled == frozenset() and not g.reused
    assert g.activations == {"conv1": "relu", "conv2": "relu", "hidden": "relu", "fc": None}
    assert model.training  # mode restored
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert prunable_layers(model, _x()) == ["conv1", "conv2", "hidden"]
    assert _common.prunable_layers(model, (1, 28, 28)) == ["conv1", "conv2", "hidden"]


def test_untraceable_without_input_says_what_to_pass() -> None:
    with pytest.raises(UnsupportedLayerError, match="input_shape=.*layers="):
        _common.prunable_layers(_ClassifierFirst())


def test_reused_layer() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.relu(self.a(torch.relu(self.a(x)))))

    g = discover(Twice(), torch.zeros(2, 4))
    assert g.order == ("a", "b") and g.reused == frozenset({"a"}) and g.classifier == "b"


def test_untraceable_residual_coupling() -> None:
    model = _UntraceableResidual().eval()
    g = discover(model, _x((3, 8, 8)))
    assert not g.traced
    # stem (via bn0/relu as the shortcut) and outer (via bn2) feed the add; inner does not
    assert g.residual_coupled == frozenset({"stem", "outer"})
    assert g.classifier == "head"
    assert prunable_layers(model, _x((3, 8, 8))) == ["inner"]


def test_traceable_model_uses_fx_rule_and_fx_only_mode() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 3, 3, padding=1)
            self.c2 = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc((torch.relu(self.c2(torch.relu(self.c1(x)))) + x).mean(dim=(2, 3)))

    model = Res()
    hooked, traced = discover(model, _x((3, 4, 4))), discover(model)
    assert hooked.traced and traced.traced
    assert hooked.residual_coupled == traced.residual_coupled == frozenset({"c2"})
    assert hooked.order == traced.order == ("c1", "c2", "fc")
    assert hooked.classifier == traced.classifier == "fc"


def test_no_prunable_layer_lists_layers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(UnsupportedLayerError, match=r"1 \(Linear, weight \(3, 4\)\).*layers="):
        prunable_layers(model, torch.zeros(2, 4))


def test_output_width_guard() -> None:
    model = _ClassifierFirst().eval()
    plan = CompressionPlan([KeepOutputs("fc", [0, 1, 2])], meta={"input_shape": [1, 28, 28]})
    with pytest.raises(PlanError, match=r"layer='fc'.*\(2, 10\) to \(2, 3\).*allow_output_change"):
        surgery.apply(plan, model)
    new = surgery.apply(plan, model, allow_output_change=True)
    assert new.fc.out_features == 3
    # an inner cut keeps the output shape and passes
    inner = CompressionPlan([KeepOutputs("hidden", [0, 3])], meta={"input_shape": [1, 28, 28]})
    assert surgery.apply(inner, model).hidden.out_features == 2


def test_ddlr_default_layers_and_activation_on_untraceable_model() -> None:
    model = _ClassifierFirst()
    assert default_layers(model, _x()) == ["conv1", "conv2", "hidden"]
    assert following_activation(model, "conv2", _x()) == "relu"
    assert following_activation(model, "fc", _x()) is None


def test_ddlr_runs_on_untraceable_model() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    import compactnn

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    data = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=16)
    res = compactnn.compress(
        _ClassifierFirst(),
        "ddlr",
        (data, data),
        progress=False,
        measure=False,
        eps_frac=0.3,
        conv=True,  # DDLR compresses dense layers only by default (the paper's setting)
        max_rows=256,
    )
    lowrank = [a.layer for a in res.plan.actions if type(a).__name__ == "LowRank"]
    assert lowrank == ["conv1", "conv2", "hidden"]  # the classifier fc is left alone
    assert res.model(x[:2]).shape == (2, 10)


def test_methods_default_layers_take_one_layer_per_coupled_group() -> None:
    """The methods' default layers include the residual-coupled group (its first layer, which
    cuts every member); the fixed-strength paper protocols keep the inner convs only."""
    model = _UntraceableResidual().eval()
    shape = (3, 8, 8)
    assert _common.prunable_layers(model, shape, coupled=False) == ["inner"]
    assert _common.prunable_layers(model, shape) == ["stem", "inner"]
    assert set(surgery.coupling(model, "stem", meta={"input_shape": list(shape)})) == {
        "stem", "outer"}  # fmt: skip


def test_a_coupled_group_surgery_refuses_is_left_out_with_a_warning() -> None:
    class ToInput(nn.Module):  # c2 is added to the image itself: its channels cannot go
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 6, 3, padding=1)
            self.c2 = nn.Conv2d(6, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc((torch.relu(self.c2(torch.relu(self.c1(x)))) + x).mean(dim=(2, 3)))

    with pytest.warns(RuntimeWarning, match=r"left out of the default layers.*c2: "):
        assert _common.prunable_layers(ToInput(), (3, 4, 4)) == ["c1"]


def test_criteria_cut_a_residual_group_by_default_consistently() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    import compactnn

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 5, (64,), generator=g)
    )
    loader = DataLoader(data, batch_size=32)
    model = _UntraceableResidual().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = compactnn.compress(model, "l1-norm", (loader, loader), input_shape=(3, 8, 8),
                             ratio=0.5, finetune_epochs=0, measure=False, progress=False,
                             on_drop="warn")  # fmt: skip
    m = res.model
    assert m.stem.out_channels == m.outer.out_channels == m.inner.in_channels == 4
    assert m.bn0.num_features == m.bn2.num_features == m.head.in_features == 4
    assert m.inner.out_channels == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not mutated
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 5)
