"""DDLR / Net-Trim registry methods (compactnn.methods.layerwise): tiny models, admm backend."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import surgery
from compactnn.errors import ConfigError, UnsupportedLayerError
from compactnn.layers import LowRankConv2d, LowRankLinear, SparseConv2d, SparseLinear
from compactnn.methods import get_method
from compactnn.methods.layerwise import DDLR, DDLRConfig, NetTrim, default_layers
from compactnn.plan import CompressionPlan


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)
    )


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))


def _loader(shape: tuple[int, ...], n: int = 64, nan: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=g)
    if nan:
        x[3, 0] = float("nan")
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=32)


def _run(model: nn.Module, method: str, data: DataLoader, **kw: object) -> object:
    kw.setdefault("on_drop", "warn")  # these tests are about the solvers, not accuracy
    return compactnn.compress(model, method, (data, data), progress=False, measure=False, **kw)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_registry_and_default_layers() -> None:
    assert get_method("ddlr") is DDLR and get_method("net-trim") is NetTrim
    assert DDLR.needs_training_data and NetTrim.needs_training_data
    # every Linear followed by ReLU except the classifier
    assert default_layers(_mlp()) == ["0", "2"]
    assert default_layers(_cnn()) == ["0"]


def test_ddlr_lowrank_param_count_replay_and_untouched() -> None:
    model, data = _mlp(), _loader((6,))
    before = _state(model)
    res = _run(model, "ddlr", data, eps_frac=0.3, dense_fallback=False)
    # user model untouched (same values, same module types)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    hist = res.history["layers"]
    assert set(hist) == {"0", "2"} and res.history["retrained"] is False
    for name, (d, n) in {"0": (6, 12), "2": (12, 10)}.items():
        layer = res.model.get_submodule(name)
        assert isinstance(layer, LowRankLinear)
        r = hist[name]["rank"]
        assert layer.rank == r and 1 <= r <= min(d, n)
        assert sum(p.numel() for p in layer.parameters()) == r * (d + n) + n
        assert hist[name]["stored_weights"] == r * (d + n)
        assert hist[name]["status"] in ("optimal", "optimal_inaccurate")
        for key in ("objective", "violation", "iterations", "seconds", "deployed_violation"):
            assert key in hist[name]
    # bias kept exactly (eq. 4 keeps b fixed)
    assert torch.equal(res.model[2].second.bias, model[2].bias)
    # the plan replays on the original model: identical outputs
    replay = surgery.apply(res.plan, model)
    x = next(iter(data))[0]
    assert torch.equal(replay(x), res.model(x))
    # the returned model is smaller
    n_orig = sum(p.numel() for p in model.parameters())
    n_new = sum(p.numel() for p in res.model.parameters())
    assert n_new == n_orig - 6 * 12 - 12 * 10 + sum(
        hist[k]["rank"] * (d + n) for k, (d, n) in {"0": (6, 12), "2": (12, 10)}.items()
    )


def test_ddlr_plan_save_load_roundtrip(tmp_path: object) -> None:
    model, data = _mlp(), _loader((6,))
    res = _run(model, "ddlr", data, eps_frac=0.3, layers=["2"], dense_fallback=False)
    path = res.plan.save(tmp_path / "plan")  # type: ignore[operator]
    loaded = CompressionPlan.load(path)
    x = next(iter(data))[0]
    assert torch.equal(surgery.apply(loaded, model)(x), res.model(x))


def test_ddlr_small_eps_keeps_outputs_close() -> None:
    model, data = _mlp(), _loader((6,))
    x = torch.cat([b[0] for b in data])
    res = _run(model, "ddlr", data, eps_frac=0.01, energy=0.999999, layers=["2"])
    h = res.history["layers"]["2"]
    assert h["status"] == "optimal" and h["violation"] <= 1e-3
    # layer-level guarantee of eq. (4) for the deployed weight: ||(XU + b - Y) o M|| <= eps
    assert h["deployed_violation"] <= 0.05
    with torch.no_grad():
        y0, y1 = model(x), res.model(x)
    rel = float((y1 - y0).norm() / y0.norm())
    assert rel < 0.05


def test_refuses_layer_not_followed_by_relu_and_linear_accepts() -> None:
    model, data = _mlp(), _loader((6,))
    with pytest.raises(UnsupportedLayerError, match="'4'") as e:
        _run(model, "ddlr", data, layers=["4"])
    assert "linear=True" in str(e.value)
    res = _run(
        model, "ddlr", data, layers=["4"], linear=True, eps_frac=0.05, rank=2, dense_fallback=False
    )
    layer = res.model[4]
    assert isinstance(layer, LowRankLinear) and layer.rank == 2
    assert sum(p.numel() for p in layer.parameters()) == 2 * (10 + 3) + 3


def test_refuses_other_layer_types_and_grouped_conv() -> None:
    model, data = _mlp(), _loader((6,))
    with pytest.raises(UnsupportedLayerError, match="'1'"):
        _run(model, "net-trim", data, layers=["1"])
    grouped = nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    with pytest.raises(UnsupportedLayerError, match="'0'.*groups=2"):
        _run(grouped, "ddlr", _loader((2, 6, 6)), layers=["0"])


def test_nan_calibration_data_raises_no_partial_result() -> None:
    model, data = _mlp(), _loader((6,), nan=True)
    before = _state(model)
    # refused up front by compress's data checks, before any capture or solve
    with pytest.raises(ConfigError, match="NaN"):
        _run(model, "ddlr", data, max_rows=None, val_fraction=0.0)  # every sample calibrates
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_empty_loader_raises() -> None:
    model = _mlp()
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ConfigError, match="no calibration batch"):
        DDLR().run(model, compactnn.methods.CompressionData(train=empty, input_shape=(6,)))


def test_net_trim_coo_param_count() -> None:
    model, data = _mlp(), _loader((6,))
    res = _run(model, "net-trim", data, eps_frac=0.2)
    for name, (d, n) in {"0": (6, 12), "2": (12, 10)}.items():
        layer = res.model.get_submodule(name)
        assert isinstance(layer, SparseLinear)
        h = res.history["layers"][name]
        nnz = int((layer.dense_matrix() != 0).sum())
        assert layer.nnz == nnz == h["nnz"] and 0 < nnz < d * n
        assert layer.stored_param_count() == 3 * nnz + n
        assert h["stored_weights"] == 3 * nnz
        # the deployed sparse weight is the solver's U^T (no re-fit)
        assert h["deployed_violation"] <= 1e-2
    x = next(iter(data))[0]
    assert torch.equal(surgery.apply(res.plan, model)(x), res.model(x))


def test_conv_layer_path_ddlr_and_net_trim() -> None:
    model, data = _cnn(), _loader((2, 6, 6))
    x = next(iter(data))[0]
    with pytest.raises(UnsupportedLayerError, match="conv=True"):  # dense layers by default
        _run(model, "ddlr", data, eps_frac=0.2, rank=3, max_rows=256)
    kw = dict(eps_frac=0.2, rank=3, dense_fallback=False, max_rows=256, conv=True)
    res = _run(model, "ddlr", data, **kw)
    conv = res.model[0]
    assert isinstance(conv, LowRankConv2d) and conv.rank == 3
    # r (c k k + n) weights + n bias
    assert sum(p.numel() for p in conv.parameters()) == 3 * (2 * 9 + 5) + 5
    # equivalent dense conv gives the same outputs
    dense = copy.deepcopy(model[0])
    with torch.no_grad():
        dense.weight.copy_(conv.dense_weight())
        torch.testing.assert_close(dense(x), conv(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(surgery.apply(res.plan, model)(x), res.model(x))
    nt = _run(model, "net-trim", data, eps_frac=0.2, max_rows=256, conv=True)
    sconv = nt.model[0]
    assert isinstance(sconv, SparseConv2d)
    assert sconv.stored_param_count() == 3 * sconv.nnz + 5
    assert sconv.nnz == nt.history["layers"]["0"]["nnz"]


def test_dense_fallback_when_factorization_is_larger() -> None:
    model, data = _mlp(), _loader((6,))
    # rank 5 of a 12x10 layer: 5 * 22 = 110 < 120 -> low rank; rank 6: 132 >= 120 -> dense
    lo = _run(model, "ddlr", data, layers=["2"], rank=5)
    hi = _run(model, "ddlr", data, layers=["2"], rank=6)
    assert isinstance(lo.model[2], LowRankLinear) and lo.history["layers"]["2"]["form"] == "lowrank"
    assert type(hi.model[2]) is nn.Linear and hi.history["layers"]["2"]["form"] == "dense"
    s = torch.linalg.svdvals(hi.model[2].weight.detach().double())
    assert float(s[5]) > 1e-3 * float(s[0]) and float(s[6]) < 1e-5 * float(s[0])  # rank 6


def test_asymmetric_single_layer_equals_symmetric() -> None:
    model, data = _mlp(), _loader((6,))
    a = _run(model, "ddlr", data, layers=["0"], eps_frac=0.2, asymmetric=True)
    s = _run(model, "ddlr", data, layers=["0"], eps_frac=0.2)
    x = next(iter(data))[0]
    # the first layer's input does not depend on compression: same problem, same answer
    assert torch.equal(a.model(x), s.model(x))
    both = _run(model, "ddlr", data, eps_frac=0.2, asymmetric=True, dense_fallback=False)
    assert isinstance(both.model[0], LowRankLinear) and isinstance(both.model[2], LowRankLinear)
    assert torch.equal(surgery.apply(both.plan, model)(x), both.model(x))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="eps_frac"):
        DDLRConfig(eps_frac=0.0)
    with pytest.raises(ConfigError, match="not both"):
        DDLRConfig(rank=2, energy=0.9)
    with pytest.raises(ConfigError, match="parallel"):
        DDLRConfig(parallel="threads")
    with pytest.raises(ConfigError, match="CvxpyOptions"):
        from compactnn.solvers.layerwise import ADMMOptions

        DDLRConfig(backend="cvxpy", options=ADMMOptions())
    with pytest.raises(ConfigError, match="Unknown option"):
        DDLR(eps=0.1)
    with pytest.raises(ConfigError, match="one value per"):
        _run(_mlp(), "ddlr", _loader((6,)), eps_frac=[0.1])


def test_per_layer_eps_recorded() -> None:
    model, data = _mlp(), _loader((6,))
    res = _run(model, "net-trim", data, eps_frac={"0": 0.1, "2": 0.3})
    h = res.history["layers"]
    assert res.history["eps_frac"] == {"0": 0.1, "2": 0.3}
    # larger eps -> sparser (both layers solved with their own epsilon)
    tight = _run(model, "net-trim", data, eps_frac=0.1, layers=["2"])
    assert h["2"]["nnz"] <= tight.history["layers"]["2"]["nnz"]


def test_cvxpy_backend_agrees_with_admm_on_tiny_layer() -> None:
    pytest.importorskip("cvxpy")
    model, data = _mlp(), _loader((6,), n=32)
    kw = {"layers": ["2"], "eps_frac": 0.2, "max_rows": 32, "rank": 3}
    a = _run(model, "ddlr", data, **kw)
    c = _run(model, "ddlr", data, backend="cvxpy", **kw)
    oa, oc = a.history["layers"]["2"]["objective"], c.history["layers"]["2"]["objective"]
    assert c.history["layers"]["2"]["backend"] == "cvxpy"
    assert abs(oa - oc) <= 2e-3 * max(oc, 1.0)


def test_report_counts_match_model() -> None:
    from compactnn.metrics import count_params

    model, data = _mlp(), _loader((6,))
    res = compactnn.compress(
        model, "net-trim", (data, data), progress=False, eps_frac=0.3, latency_batch_size=4
    )
    nnz = {n: res.model.get_submodule(n).nnz for n in ("0", "2")}
    expected = 3 * nnz["0"] + 12 + 3 * nnz["2"] + 10 + (10 * 3 + 3)
    assert res.report_after.params == count_params(res.model) == expected
    assert res.report_before.params == sum(p.numel() for p in model.parameters())


def test_eps_list_follows_user_layer_order() -> None:
    model, data = _mlp(), _loader((6,))
    res = _run(model, "net-trim", data, layers=["2", "0"], eps_frac=[0.3, 0.1])
    assert res.history["eps_frac"] == {"2": 0.3, "0": 0.1}


@pytest.mark.slow
def test_joblib_parallel_matches_serial() -> None:
    model, data = _mlp(), _loader((6,))
    s = _run(model, "ddlr", data, eps_frac=0.2)
    p = _run(model, "ddlr", data, eps_frac=0.2, parallel="joblib", n_jobs=2)
    x = next(iter(data))[0]
    assert torch.equal(s.model(x), p.model(x))


def test_net_trim_refits_the_bias_and_deploys_it() -> None:
    """Aghasi et al.: the bias is re-fit with the weights; the deployed layer carries it and
    satisfies eq. (4) with it. refit_bias=False keeps the original bias."""
    model, data = _mlp(), _loader((6,))
    res = _run(model, "net-trim", data, layers=["0", "2"], eps_frac=0.1)
    for n in ("0", "2"):
        st = res.history["layers"][n]
        assert st["bias_refit"] and st["deployed_violation"] <= 1e-3
    assert not torch.equal(res.model[0].bias, model[0].bias)
    x = next(iter(data))[0]
    assert torch.equal(surgery.apply(res.plan, model)(x), res.model(x))
    fixed = _run(model, "net-trim", data, layers=["0"], eps_frac=0.1, refit_bias=False)
    assert torch.equal(fixed.model[0].bias, model[0].bias)
    assert "bias_refit" not in fixed.history["layers"]["0"]


def test_ddlr_and_net_trim_default_to_dense_layers() -> None:
    """The paper compresses the dense layers; conv=True adds the convs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip
    data = _loader((2, 6, 6))
    for method in ("ddlr", "net-trim"):
        res = _run(model, method, data, eps_frac=0.3, max_rows=256)
        assert list(res.history["layers"]) == ["3"]
        both = _run(model, method, data, eps_frac=0.3, max_rows=256, conv=True)
        assert list(both.history["layers"]) == ["0", "3"]


def test_unconverged_layers_get_one_warning_naming_each() -> None:
    """A solver stopped by max_iter is reported once per run, naming every such layer."""
    import warnings

    from compactnn.solvers.layerwise import ADMMOptions

    model, data = _mlp(), _loader((6,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(model, "ddlr", data, options=ADMMOptions(max_iter=1, check_every=1))
    msgs = [str(w.message) for w in caught if "without converging" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "2 of 2 layers" in msgs[0] and "'0' (max_iter" in msgs[0] and "'2' (max_iter" in msgs[0]


def test_unconverged_warning_names_what_was_missed() -> None:
    """SLR has no constraint: a layer stopped at max_iter is reported by its ADMM residuals
    (it was 'relative constraint violation 0', which said nothing); Net-Trim keeps its
    constraint violation."""
    from compactnn.solvers.layerwise import SLRAdmmOptions

    data = _loader((6,))
    opts = SLRAdmmOptions(max_iter=1)
    with pytest.warns(RuntimeWarning, match=r"'0' \(max_iter after 1 iterations, residuals primal"):
        _run(_mlp(), "slr", data, layers=["0"], options=opts)
    with pytest.warns(RuntimeWarning) as rec:
        _run(_mlp(), "slr", data, layers=["0"], options=opts)
    assert not any("constraint violation" in str(w.message) for w in rec)


def test_slr_under_a_macs_target_never_picks_the_dense_form(monkeypatch) -> None:
    """form='auto' times the deployed layer in each form; the dense one computes the dropped
    columns' MACs. Under load its timing can win (LeNet's conv2 on 2026-12-04: 83 % of the MACs kept at
    every strength, budget unreachable), so under a MACs target the search and the final run use
    'auto-sparse'. Here the dense form is made the fastest: without a target it is picked, under
    a MACs target it never is, and the target is met."""
    from compactnn import metrics
    from compactnn.layers import ColumnSparseConv2d, ColumnSparseLinear

    real = metrics.measure_latency

    def fake(model, *a, **k):  # type: ignore[no-untyped-def]
        # the candidates are whole deployed layers: both branches, a lone branch, or fused
        branch = getattr(model, "sparse", model)
        if isinstance(branch, (ColumnSparseConv2d, ColumnSparseLinear)):
            ms = 0.001 if branch.form == "dense" else 1.0
            return metrics.LatencyResult(ms, ms, ms, 100, 1, 1, 0)
        if getattr(model, "is_compactnn_layer", False):  # the fused forms: slower here
            return metrics.LatencyResult(2.0, 2.0, 2.0, 100, 1, 1, 0)
        return real(model, *a, **k)

    monkeypatch.setattr(metrics, "measure_latency", fake)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 4 * 4, 24), nn.ReLU(), nn.Linear(24, 3))  # fmt: skip
    data = _loader((2, 8, 8), n=96)

    def forms(m: nn.Module) -> list[str]:
        return [
            x.form for x in m.modules() if isinstance(x, (ColumnSparseConv2d, ColumnSparseLinear))
        ]

    from compactnn.solvers.layerwise import SLRAdmmOptions

    # the forms, not the solves, are under test: 30 ADMM iterations (150 by default) are enough
    # to meet the budget and cut the search's proxy runs 5x
    kw = dict(options=SLRAdmmOptions(max_iter=30), calib_batches=2)
    free = _run(copy.deepcopy(model), "slr", data, share=0.2, **kw)
    assert forms(free.model) and set(forms(free.model)) == {"dense"}
    res = _run(copy.deepcopy(model), "slr", data, target={"macs": 0.5}, **kw)
    assert res.chosen["form"] == "auto-sparse"
    assert forms(res.model) and "dense" not in forms(res.model)
    assert res.target["met"]
    fixed = _run(copy.deepcopy(model), "slr", data, target={"macs": 0.5}, form="gather", **kw)
    assert fixed.chosen["form"] == "gather"  # an explicit form is kept


def test_slr_skip_first_leaves_out_the_models_first_conv_only() -> None:
    """skip_first drops the model's first executed conv, not the first of the default list:
    cifar-quick's conv1 (conv -> max-pool -> ReLU) is not a default layer, so conv2 stays."""
    from compactnn import models
    from compactnn.methods.slr import SLR, SLRConfig

    for name, first in (("cifar-quick", None), ("kiaee-cnn", "conv1")):
        model = models.create(name)
        x = torch.zeros(2, *models.default_input_shape(name))
        every = default_layers(model, x)
        kept = SLR(SLRConfig())._targets_on(model, x)[0]
        assert kept == [n for n in every if n != first], (name, every, kept)
    assert (
        "conv2"
        in SLR(SLRConfig())._targets_on(models.create("cifar-quick"), torch.zeros(2, 3, 32, 32))[0]
    )


class _ConvBNReLU(nn.Module):
    """conv -> BN -> ReLU blocks (conv2 without bias) and a residual add after conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(y)) + x)
        return self.fc(x.mean((2, 3)))


def _conv_bn_relu(seed: int = 0) -> _ConvBNReLU:
    torch.manual_seed(seed)
    m = _ConvBNReLU()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2, m.bn3):  # statistics far from the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _image_data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 8, 8, generator=g), torch.randint(0, 4, (256,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def test_slr_approximates_conv_bn_relu_by_folding_the_bn() -> None:
    """conv -> BN -> ReLU is one affine map and a ReLU in eval mode: slr folds the BN of each
    layer it approximates (only those), and the plan replays it exactly on a fresh instance."""
    model = _conv_bn_relu()
    before = copy.deepcopy(model.state_dict())
    assert surgery.foldable_before_relu(model) == {"conv1": "bn1", "conv2": "bn2"}
    dl = _image_data()
    res = compactnn.compress(model, "slr", (dl, dl), input_shape=(3, 8, 8), measure=False,
                             progress=False, on_drop="warn", finetune_epochs=0)  # fmt: skip
    assert list(res.history["layers"]) == ["conv2"]  # conv1: skip_first; conv3: residual add
    assert res.history["folded_bn"] == {"conv2": "bn2"}
    assert isinstance(res.model.bn2, nn.Identity) and isinstance(res.model.bn1, nn.BatchNorm2d)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.bn2, nn.BatchNorm2d)  # the user's model is not touched
    x = torch.randn(4, 3, 8, 8)
    again = surgery.apply(res.plan, _ConvBNReLU().eval())  # a fresh, untrained instance
    assert torch.equal(again(x), res.model(x))
    kinds = [type(a).__name__ for a in res.plan.actions]
    assert kinds[0] == "FoldBatchNorm" and kinds[-1] == "SetState"


def test_fold_action_is_exact_roundtrips_and_names_bad_layers(tmp_path: object) -> None:
    from compactnn.errors import PlanError
    from compactnn.plan import FoldBatchNorm

    model = _conv_bn_relu()
    plan = CompressionPlan([FoldBatchNorm("conv2", "bn2")], meta={"input_shape": [3, 8, 8]})
    folded = surgery.apply(plan, model)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    assert isinstance(folded.bn2, nn.Identity) and folded.conv2.bias is not None
    torch.testing.assert_close(folded.double()(x), copy.deepcopy(model).double()(x))
    path = tmp_path / "fold"  # type: ignore[operator]
    plan.save(path)
    assert CompressionPlan.load(path).actions == plan.actions
    with pytest.raises(PlanError, match=r"bn='conv3'.*BatchNorm"):
        surgery.apply(CompressionPlan([FoldBatchNorm("conv2", "conv3")]), model)
    with pytest.raises(PlanError, match=r"layer='bn1'.*Conv2d or Linear"):
        surgery.apply(CompressionPlan([FoldBatchNorm("bn1", "bn2")]), model)


def test_ddlr_takes_an_explicit_conv_bn_relu_layer() -> None:
    model = _conv_bn_relu()
    dl = _image_data()
    res = compactnn.compress(model, "ddlr", (dl, dl), input_shape=(3, 8, 8), measure=False,
                             progress=False, on_drop="warn", layers=["conv1", "conv2"],
                             eps_frac=0.05)  # fmt: skip
    assert res.history["folded_bn"] == {"conv1": "bn1", "conv2": "bn2"}
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(surgery.apply(res.plan, _ConvBNReLU().eval())(x), res.model(x))
