"""ADMM-sparse as Kiaee et al. (2016) describe it (issue 15): FC blocks, exact removal with
BatchNorm, the 50 % guard, the epoch schedule of the fine-tuning, the default layers, every path
point returned and warm start across mu."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import models, surgery
from compactnn.methods import _kernel_forms as kf
from compactnn.methods import admm_sparse as am
from compactnn.methods._common import prune_filters
from compactnn.metrics import accuracy
from compactnn.prox import group_norms
from compactnn.solvers.training import ADMMConfig, ADMMEngine


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    return train, val, DataLoader(ds, batch_size=80)


def test_linear_kernels_are_rows() -> None:
    """Sec. 2 footnote 1: an FC layer is one input map with n 1-dim filters (Table 3(c): 256)."""
    w = nn.Linear(7, 5).weight
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l20", structure="kernels", lam=0.1))
    assert eng.group_dims["w"] == (0,)
    assert group_norms(w.detach(), eng.group_dims["w"]).shape == (5,)


class _Masks:
    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self._m = masks

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._m)


def test_zero_filter_removal_is_exact_with_batchnorm() -> None:
    """conv -> BN -> ReLU: the removed filter's BN gamma/beta are held at 0, so the returned
    (filters removed) model equals the masked one whose accuracy is logged."""
    model = bn_net()
    with torch.no_grad():  # BN with non-trivial statistics and beta: a constant channel
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(0.5, 1.0)
    layers = ["0", "4"]
    norms = am.following_norms(model, layers, (1, 8, 8))
    assert norms == {"0": ["1"], "4": ["5"]}
    masks = {f"{n}.weight": torch.ones_like(model[int(n)].weight, dtype=torch.bool) for n in layers}
    masks["0.weight"][[1, 4]] = False
    masks["4.weight"][2] = False
    fixed = am.ADMMSparse._fix_structure(model, _Masks(masks), layers, norms)
    assert {"0.bias", "1.weight", "1.bias", "4.bias", "5.weight", "5.bias"} <= set(fixed)
    pruned, _ = prune_filters(model, {"0": [0, 2, 3, 5], "4": [0, 1, 3, 4, 5, 6, 7]}, (1, 8, 8))
    model.eval()
    pruned.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(pruned(x), model(x), atol=1e-6, rtol=1e-6)


def test_logged_accuracy_is_that_of_the_returned_model(loaders) -> None:
    train, val, _ = loaders
    res = compactnn.compress(
        bn_net(), "admm-sparse", (train, val, val), progress=False, measure=False,
        structure="filters", mus=(0.5, 3.0), xi=2, steps_per_epoch=2, finetune_epochs=1,
        val_fraction=0.0, on_drop="warn",
    )  # fmt: skip
    assert res.history["removed_filters"], "the test needs removed filters"
    last = res.history["path"][-1]
    assert last["val_top1"] == pytest.approx(accuracy(res.model, val, topk=(1,))["top1"])


def test_guard_never_prunes_more_than_half() -> None:
    """Skewed norms: the mean threshold alone would prune 7 of 10 blocks; the guard prunes 5."""
    norms = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 5.0, 6.0, 7.0])
    v = torch.randn(10, 4)
    v = v / v.norm(dim=1, keepdim=True) * norms[:, None]
    assert int((norms <= norms.mean()).sum()) == 7
    for soft in (False, True):
        f = am.guarded_threshold(v, (0,), soft)
        zero = f.norm(dim=1) == 0
        assert int(zero.sum()) == 5 and bool(zero[:5].all())
        if soft:  # l1 keeps soft shrinkage: (1 - t/||v||) v with t the largest pruned norm
            t = 0.1
            torch.testing.assert_close(f[5:], v[5:] * (1 - t / norms[5:, None]))
        else:
            assert torch.equal(f[5:], v[5:])
    # unskewed: the paper's mean threshold itself (it prunes <= 50 %)
    flat = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[:, None]
    f = am.guarded_threshold(flat, (0,), False)
    assert (f[:, 0] == 0).tolist() == [True, True, True, False, False, False]


def test_guard_hook_fires_on_engine() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10, 4, 3, 3))
    eng = ADMMEngine({"w": w}, ADMMConfig(penalty="l21", structure="kernels", lam=1e3))
    fired: dict[str, bool] = {}
    eng.step_outer(lambda: None, after_f_step=am._overprune_guard(fired))
    assert fired == {"w": True}
    zero = group_norms(eng.state.F["w"], (0, 1)) == 0
    assert int(zero.sum()) <= zero.numel() // 2


def test_default_layers_are_the_papers() -> None:
    nin = models.create("nin", in_channels=3, num_classes=10, input_size=32)
    assert am.kiaee_layers(nin, (3, 32, 32)) == ["conv1", "conv4", "conv5", "conv8"]
    cnn = models.create("kiaee-cnn", in_channels=1, num_classes=10, input_size=28)
    assert am.kiaee_layers(cnn, (1, 28, 28)) == ["conv1", "conv2", "conv3", "conv4", "fc1"]


def test_path_schedule_plans_and_warm_start(loaders, monkeypatch) -> None:
    train, val, _ = loaders
    from compactnn.solvers import training

    calls: list[dict] = []
    real_ft, real_run = am.finetune_model, training.run_admm
    monkeypatch.setattr(
        am, "finetune_model", lambda *a, **k: (calls.append(k), real_ft(*a, **k))[1]
    )
    starts: list = []
    monkeypatch.setattr(
        training, "run_admm",
        lambda eng, step, **k: (starts.append(k.get("warm_start")), real_run(eng, step, **k))[1],
    )  # fmt: skip
    model = bn_net()
    res = compactnn.compress(
        copy.deepcopy(model), "admm-sparse", (train, val, val), progress=False, measure=False,
        structure="filters", mus=(0.2, 1.0, 3.0), xi=1, steps_per_epoch=1, delta=2, nu=2,
        val_fraction=0.0, on_drop="warn",
    )  # fmt: skip
    path, plans = res.history["path"], res.history["path_plans"]
    assert [p["mu"] for p in path] == [0.0, 0.2, 1.0, 3.0] and len(plans) == 4
    # fine-tuning grows with the W-step schedule min(1 + delta i, delta nu) = 1, 3, 4
    assert [c["epochs"] for c in calls] == [1, 3, 4]
    assert [p["epochs"] for p in path] == [0, 1 + 1, 3 + 3, 4 + 4]
    # warm start: mu_i starts from the engine of mu_{i-1}
    assert starts[0] is None and all(s is not None for s in starts[1:])
    # every point's plan rebuilds the model whose validation accuracy is logged
    for entry, plan in zip(path, plans, strict=True):
        rebuilt = surgery.apply(plan, copy.deepcopy(model))
        assert accuracy(rebuilt, val, topk=(1,))["top1"] == pytest.approx(entry["val_top1"])
    assert path[0]["val_top1"] == pytest.approx(accuracy(model, val, topk=(1,))["top1"])


def test_input_channels_dead_for_every_filter_are_removed() -> None:
    """Kernels W_ij zero for every filter j of input i: input channel i goes, and with it the
    producing filter (and its BN) that feeds nothing else; the function is unchanged."""
    from compactnn.methods.base import CompressionData

    model = bn_net()
    layers = ["0", "4"]
    masks = {f"{n}.weight": torch.ones_like(model[int(n)].weight, dtype=torch.bool) for n in layers}
    masks["4.weight"][:, [1, 3]] = False  # kernels from input channels 1 and 3: all zero
    masks["4.weight"][2, 0] = False  # one more zero kernel: stays masked in the dense conv
    am.ADMMSparse._fix_structure(model, _Masks(masks), layers, {"0": ["1"], "4": ["5"]})
    data = CompressionData(train=None, input_shape=(1, 8, 8))
    deployed, plan, keep, _ = am.ADMMSparse()._deploy(model, layers, masks, data)
    assert keep == {}
    assert deployed[0].out_channels == 4 and deployed[1].num_features == 4
    assert deployed[4].in_channels == 4
    model.eval()
    deployed.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(deployed(x), model(x), atol=1e-6, rtol=1e-6)
    rebuilt = surgery.apply(plan, copy.deepcopy(bn_net())).eval()
    torch.testing.assert_close(rebuilt(x), deployed(x), atol=0, rtol=0)


# ------------------------------------------------- kernel sparsity deployed by measured latency
def _kernel_sparse_model() -> tuple[nn.Module, list[str]]:
    """bn_net with zero kernels W_ij in its second conv (no filter and no input fully zero)."""
    model = bn_net().eval()
    with torch.no_grad():
        w = model[4].weight
        keep = torch.rand(w.shape[:2], generator=torch.Generator().manual_seed(1)) > 0.5
        keep[:, 0] = True  # every filter reads input 0: no filter is all zero
        keep[0, :] = True  # filter 0 reads every input: no input is dead for every filter
        w.mul_(keep[:, :, None, None])
    return model, ["0", "4"]


def test_kernel_sparse_conv_chosen_by_measured_latency_is_exact_and_replays() -> None:
    from compactnn.layers import KernelSparseConv2d, stored_param_count
    from compactnn.metrics import count_params
    from compactnn.plan import CompressionPlan, KernelSparse

    model, layers = _kernel_sparse_model()
    samples = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    actions, records = am.choose_kernel_forms(model, layers, samples, repeats=2)
    assert [a.layer for a in actions] == ["4"] and list(records) == ["4"]  # conv "0" is dense
    rec = records["4"]
    w = model[4].weight.detach()
    nnz = int(w.reshape(8, 6, -1).ne(0).any(2).sum())
    assert rec["kernels"] == 48 and rec["zero_kernels"] == 48 - nnz
    timed = [c for c in rec["candidates"] if not c.get("stopped") and not c.get("skipped")]
    assert {c["form"] for c in rec["candidates"]} >= {"dense", "sparse"}
    # a form computing more than its share of the dense conv's multiply-adds is not timed
    for c in rec["candidates"]:
        assert c.get("skipped", False) == (c["macs_fraction"] > kf._MAX_MACS_FRACTION[c["form"]])
    sparse = next(c for c in rec["candidates"] if c["form"] == "sparse")
    assert sparse["macs_fraction"] == pytest.approx(nnz / 48)
    assert all(c["ms"] > 0 and c["ms_b1"] > 0 for c in timed) and rec["conv_ms"] > 0
    assert rec["chosen"]["ms"] == min(c["ms"] for c in timed)  # the fastest at batch 100
    assert rec["stored_values"] == nnz * 9 + 8 and rec["coo_count"] == nnz * 11 + 8
    deployed = surgery.apply(
        CompressionPlan(actions=actions, meta={"input_shape": [1, 8, 8]}), model
    )
    layer = deployed[4]
    assert isinstance(layer, KernelSparseConv2d) and layer.form == rec["chosen"]["form"]
    assert stored_param_count(layer) == rec["stored_values"]
    assert count_params(deployed) == count_params(model) - (48 - nnz) * 9
    x = torch.randn(7, 1, 8, 8)
    torch.testing.assert_close(deployed.eval()(x), model(x), atol=1e-5, rtol=0)
    # every form replays on a fresh, untrained instance (plan saved and loaded)
    for form in ("dense", "grouped", "sparse"):
        groups = ((0, 2, 4, 6), (1, 3, 5, 7)) if form == "grouped" else ()
        act = KernelSparse(layer="4", weight=w, bias=model[4].bias.detach(), form=form,
                           filter_groups=groups)  # fmt: skip
        plan = am.replay_plan(
            CompressionPlan(actions=[act]),
            surgery.apply(CompressionPlan(actions=[act], meta={"input_shape": [1, 8, 8]}), model),
            (1, 8, 8),
        )
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            plan.save(f"{d}/p")
            loaded = CompressionPlan.load(f"{d}/p")
        assert loaded.actions[0] == act
        rebuilt = surgery.apply(loaded, bn_net()).eval()
        assert rebuilt[4].form == form and rebuilt[4].filter_groups == (
            groups or rebuilt[4].filter_groups
        )
        torch.testing.assert_close(rebuilt(x), model(x), atol=1e-5, rtol=0)


def test_kernel_sparse_action_refuses_bad_targets() -> None:
    from compactnn.errors import PlanError
    from compactnn.plan import CompressionPlan, KernelSparse

    model = bn_net()
    w = model[4].weight.detach()
    with pytest.raises(PlanError, match="names a Linear"):
        surgery.apply(
            CompressionPlan(actions=[KernelSparse("8", torch.zeros(12, 128, 1, 1), None)]), model
        )
    with pytest.raises(PlanError, match="weight has shape"):
        surgery.apply(CompressionPlan(actions=[KernelSparse("4", w[:, :3], None)]), model)
    with pytest.raises(PlanError, match="'form' must be one of"):
        KernelSparse("4", w, None, form="csr")
    with pytest.raises(PlanError, match="must partition"):
        surgery.apply(
            CompressionPlan(actions=[KernelSparse("4", w, None, "grouped", ((0, 1),))]), model
        )


@pytest.mark.parametrize("form", ["dense", "grouped", "sparse"])
def test_kernel_sparse_conv_exports_to_onnx_and_torchscript(form: str, tmp_path) -> None:
    from compactnn import export
    from compactnn.layers import KernelSparseConv2d

    pytest.importorskip("onnxruntime")
    model, _ = _kernel_sparse_model()
    deployed = copy.deepcopy(model)
    deployed[4] = KernelSparseConv2d.from_conv(model[4], form=form, max_groups=3)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    rec = export.to_onnx(deployed, tmp_path / "m.onnx", x[:2], samples=x)
    assert rec["max_abs_diff"] <= 1e-4
    out = export.ort_session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), atol=1e-4, rtol=0)
    ts = export.to_torchscript(deployed, tmp_path / "m.pt", x[:2], samples=x)
    assert ts["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    torch.testing.assert_close(loaded(x), model(x).detach(), atol=1e-4, rtol=0)
    # the compact checkpoint (stored kernels only) restores it on a fresh instance
    from compactnn.plan import CompressionPlan, KernelSparse

    layer = deployed[4]
    act = KernelSparse("4", layer.dense_weight().detach(), layer.bias.detach(), form,
                       layer.filter_groups if form == "grouped" else ())  # fmt: skip
    plan = CompressionPlan(actions=[act], meta={"input_shape": [1, 8, 8]}).with_state(deployed)
    export.save_checkpoint(deployed, plan, tmp_path / "ckpt")
    back = export.load(tmp_path / "ckpt", bn_net())
    assert back[4].form == form and back[4].filter_groups == layer.filter_groups
    torch.testing.assert_close(back(x), deployed.eval()(x), atol=0, rtol=0)


def test_path_records_kernel_deployment_and_measured_speedup(tmp_path) -> None:
    """structure='kernels' on a conv net: every path point records its kernel deployment
    (candidates' times at batch 100 and 1) and its measured latency / speed-up over mu = 0;
    every point's plan rebuilds its model exactly."""
    from compactnn.layers import KernelSparseConv2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=64)
    model = bn_net()
    res = compactnn.compress(
        copy.deepcopy(model), "admm-sparse", (train, val, val), progress=False, measure=False,
        structure="kernels", mus=(0.05, 0.3), xi=1, steps_per_epoch=2, nu=1, on_drop="warn",
    )  # fmt: skip
    path = res.history["path"]
    assert path[0]["speedup"] == 1.0 and path[0]["kernel_deploy"] == {}
    assert all(p["latency_ms"] > 0 and p["latency_ms_b1"] > 0 and p["speedup"] > 0 for p in path)
    last = path[-1]
    assert last["kernel_deploy"], "mu = 0.3 leaves zero kernels in the second conv"
    for name, rec in last["kernel_deploy"].items():
        layer = res.model.get_submodule(name)
        assert isinstance(layer, KernelSparseConv2d) and layer.form == rec["chosen"]["form"]
    for entry, plan in zip(path, res.history["path_plans"], strict=True):
        rebuilt = surgery.apply(plan, copy.deepcopy(model))
        assert accuracy(rebuilt, val, topk=(1,))["top1"] == pytest.approx(entry["val_top1"])
    # the compact checkpoint (values of the stored kernels only) restores the deployed model
    from compactnn import export

    export.save_checkpoint(res.model, res.plan, tmp_path / "ckpt", input_shape=(1, 8, 8))
    back = export.load(tmp_path / "ckpt", bn_net())
    xb = x[:16]
    torch.testing.assert_close(back(xb), res.model.eval()(xb), atol=0, rtol=0)


def test_a_target_under_the_guards_floor_is_refused_before_any_training(
    loaders, monkeypatch
) -> None:
    """With the 50 % guard no regularised layer loses more than half of its filters: a target
    under the size of the model cut to ceil(n/2) filters per layer is refused at once (no
    strength search, no training), naming the guard and overprune_guard=False; a target
    above that floor goes on to the search."""
    train, val, test = loaders
    model = bn_net()
    layers = am.kiaee_layers(model, (1, 8, 8))
    floor_model = prune_filters(
        model, {n: list(range(-(-model.get_submodule(n).weight.shape[0] // 2))) for n in layers},
        (1, 8, 8),
    )[0]  # fmt: skip
    from compactnn.metrics import count_flops

    floor = count_flops(floor_model, (1, 8, 8)) / count_flops(model, (1, 8, 8))
    searched: list[object] = []
    monkeypatch.setattr(
        "compactnn.methods._calibrate.search_strength", lambda *a, **k: searched.append(a) or 1 / 0
    )
    from compactnn.errors import ConfigError

    # under the floor: far under it, and within the 10 % tolerance (the search aims at the
    # target exactly and would refuse that too, after all its trials)
    for below in (round(floor * 0.97, 4), round(floor / 1.3, 4)):
        with pytest.raises(ConfigError, match="overprune_guard=False") as e:
            compactnn.compress(model, "admm-sparse", (train, val, test), input_shape=(1, 8, 8),
                               target={"macs": below}, measure=False, val_fraction=0.0)  # fmt: skip
        assert f"{round(floor, 4)}" in str(e.value) and not searched
    # above the floor, and with the guard off, the check hands the target to the engine (no
    # search ever): one run with the budget as its option
    from compactnn.budget import Target
    from compactnn.methods import ADMMSparse, CompressionData

    cd = CompressionData(train=train, val=val, input_shape=(1, 8, 8))
    for opts, tgt in (({}, min(1.0, floor * 1.05)), ({"overprune_guard": False}, below)):
        chosen, rec = ADMMSparse(**opts).calibrate(model, cd, Target(macs=tgt))
        assert chosen.config.budget["macs"] == tgt and rec["option"].startswith("budgeted engine")
    assert not searched
