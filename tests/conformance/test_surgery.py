"""Surgery exactness conformance suite.

For every graph of the zoo (sequential CNN with BN and flatten -> linear, ResNet with residual
adds, AlexNet-style grouped convs, concat block, depthwise block, MLP): make a random admissible
structure *dead* in the model (zero the weight rows and biases of every coupled producer and the
affine parameters of the BNs that follow, so those channels are exactly 0), remove it with a plan,
and check ``max |delta output| <= 1e-5``, the exact parameter count from the hand formula, and
that the new model trains.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _zoo import ZOO, build, n_params  # noqa: E402
from compactnn.errors import PlanError  # noqa: E402
from compactnn.layers import (  # noqa: E402
    LowRankConv2d,
    LowRankLinear,
    SparsePlusLowRank,
    stored_param_count,
)
from compactnn.plan import (  # noqa: E402
    CompressionPlan,
    KeepInputs,
    KeepOutputs,
    LowRank,
    SetWeights,
    SparseLowRank,
)
from compactnn.surgery import SelectInputs, apply, fold_batchnorm  # noqa: E402

TOL = 1e-5

# id, model, root layer, width name, original width, groups, dropped per group, masked layers
CASES = [
    ("seq-conv1", "seq", "conv1", "c1", 6, 1, 2, ["conv1", "bn1"]),
    ("seq-conv2-flatten-linear", "seq", "conv2", "c2", 5, 1, 2, ["conv2", "bn2"]),
    ("seq-fc1", "seq", "fc1", "h", 7, 1, 3, ["fc1"]),
    (
        "resnet-residual-stream",
        "resnet",
        "block1.conv_b",
        "w1",
        6,
        1,
        2,
        ["conv", "bn", "block1.conv_b", "block1.bn_b", "block2.conv_b", "block2.bn_b"],
    ),
    ("resnet-inner", "resnet", "block1.conv_a", "m1", 5, 1, 2, ["block1.conv_a", "block1.bn_a"]),
    (
        "resnet-projection-shortcut",
        "resnet",
        "block3.conv_b",
        "w2",
        7,
        1,
        3,
        ["block3.conv_b", "block3.bn_b", "block3.short.0", "block3.short.1"],
    ),
    ("alexnet-into-grouped", "alexnet", "conv1", "c1", 8, 2, 1, ["conv1"]),
    ("alexnet-grouped-out", "alexnet", "conv2", "c2", 8, 2, 1, ["conv2"]),
    ("alexnet-grouped-to-grouped", "alexnet", "conv4", "c4", 12, 2, 2, ["conv4"]),
    ("alexnet-grouped-flatten", "alexnet", "conv5", "c5", 8, 2, 1, ["conv5"]),
    ("inception-branch-a", "inception", "a", "a", 4, 1, 2, ["a", "a_bn"]),
    ("inception-branch-b-offset", "inception", "b2", "b2", 5, 1, 2, ["b2", "b2_bn"]),
    ("inception-stem", "inception", "stem", "c0", 5, 1, 2, ["stem", "stem_bn"]),
    ("depthwise", "depthwise", "expand", "c", 6, 1, 2, ["expand", "bn1", "dw", "bn2"]),
    ("mlp-fc1", "mlp", "fc1", "h1", 8, 1, 3, ["fc1"]),
    ("mlp-fc2", "mlp", "fc2", "h2", 6, 1, 2, ["fc2"]),
]


def _removed(size: int, groups: int, drop: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    per = size // groups
    out: list[int] = []
    for g in range(groups):
        out += [g * per + int(i) for i in torch.randperm(per, generator=gen)[:drop]]
    return sorted(out)


def _mask(model: nn.Module, layers: list[str], removed: list[int]) -> nn.Module:
    """Zero weight rows + bias (Conv/Linear) and BN weight + bias of the removed channels."""
    masked = copy.deepcopy(model)
    mods = dict(masked.named_modules())
    idx = torch.tensor(removed)
    with torch.no_grad():
        for name in layers:
            m = mods[name]
            m.weight[idx] = 0
            if m.bias is not None:
                m.bias[idx] = 0
    return masked


def _x(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(1))


def _trains(model: nn.Module) -> None:
    model.train()
    x = _x(model)
    y = torch.tensor([0, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    opt.step()
    assert torch.isfinite(loss)
    assert torch.isfinite(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_removing_dead_channels_is_exact(case: tuple) -> None:
    _, name, layer, width, size, groups, drop, masked_layers = case
    model = build(name)
    removed = _removed(size, groups, drop, seed=len(layer) + size)
    keep = [i for i in range(size) if i not in removed]
    masked = _mask(model, masked_layers, removed)
    x = _x(model)
    with torch.no_grad():
        ref = masked(x)
        assert not torch.equal(ref, model(x))  # the mask really changed the function
    plan = CompressionPlan(
        [KeepOutputs(layer, keep)], meta={"input_shape": list(model.input_shape)}
    )
    new = apply(plan, masked)
    new.eval()
    with torch.no_grad():
        out = new(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL
    assert n_params(new) == ZOO[name].count(**{width: size - groups * drop})
    _trains(new)


def test_residual_prune_removes_channel_in_all_coupled_layers() -> None:
    model = build("resnet")
    new = apply(
        CompressionPlan(
            [KeepOutputs("block2.conv_b", [0, 2, 3, 5])], meta={"input_shape": [3, 8, 8]}
        ),
        model,
    )
    m = dict(new.named_modules())
    for out in ("conv", "block1.conv_b", "block2.conv_b"):
        assert m[out].out_channels == 4 and m[out].weight.shape[0] == 4
    for bn in ("bn", "block1.bn_b", "block2.bn_b"):
        assert m[bn].num_features == 4 and m[bn].running_mean.shape == (4,)
    for cin in ("block1.conv_a", "block2.conv_a", "block3.conv_a", "block3.short.0"):
        assert m[cin].in_channels == 4 and m[cin].weight.shape[1] == 4
    # kept channels carry the original weights (rows 0, 2, 3, 5)
    assert torch.equal(m["conv"].weight, model.conv.weight[[0, 2, 3, 5]])
    assert torch.equal(m["block3.conv_a"].weight, model.block3.conv_a.weight[:, [0, 2, 3, 5]])
    # untouched widths
    assert m["block1.conv_a"].out_channels == 5 and m["block3.conv_b"].out_channels == 7


def test_residual_stream_into_grouped_conv_15_channels_is_refused() -> None:
    model = build("residual_grouped")
    before = copy.deepcopy(model.state_dict())
    plan = CompressionPlan([KeepOutputs("stem", list(range(15)))], meta={"input_shape": [3, 4, 4]})
    with pytest.raises(PlanError, match=r"'gconv'.*groups=2.*\[0, 1\]"):
        apply(plan, model)
    state = model.state_dict()
    assert all(torch.equal(before[k], state[k]) for k in before)  # user model untouched


def test_residual_stream_into_grouped_conv_group_consistent_cut_is_exact() -> None:
    model = build("residual_grouped")
    removed = [3, 12]  # one channel from each group of 8
    masked = _mask(model, ["stem", "res"], removed)
    keep = [i for i in range(16) if i not in removed]
    new = apply(
        CompressionPlan([KeepOutputs("res", keep)], meta={"input_shape": [3, 4, 4]}), masked
    )
    assert new.gconv.in_channels == 14 and new.gconv.groups == 2
    assert new.gconv.weight.shape == (16, 7, 3, 3)  # its outputs are not coupled to the stream
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - masked(x)).abs().max().item() <= TOL
    stem, res, gconv, fc = 3 * 14 * 9 + 14, 14 * 14 * 9 + 14, 16 * 7 * 9 + 16, 16 * 3 + 3
    assert n_params(new) == stem + res + gconv + fc


def test_group_inconsistent_output_cut_of_grouped_conv_is_refused() -> None:
    model = build("alexnet")
    plan = CompressionPlan(
        [KeepOutputs("conv2", [0, 1, 4, 5, 6, 7])], meta={"input_shape": [3, 8, 8]}
    )  # removes 2 from group 0, 0 from group 1
    with pytest.raises(PlanError, match=r"grouped conv 'conv2'.*\[2, 0\]"):
        apply(plan, model)


def test_keep_inputs_private_producer_is_removed_too() -> None:
    model = build("seq")
    removed = [1, 4]
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.conv2.weight[:, removed] = 0
    keep = [i for i in range(6) if i not in removed]
    new = apply(
        CompressionPlan([KeepInputs("conv2", keep)], meta={"input_shape": [3, 8, 8]}), masked
    )
    assert new.conv1.out_channels == 4 and new.bn1.num_features == 4
    assert n_params(new) == ZOO["seq"].count(c1=4)
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - masked(x)).abs().max().item() <= TOL


@pytest.mark.parametrize(
    ("name", "layer", "size", "removed", "saved"),
    [
        ("resnet", "block2.conv_a", 6, [0, 5], 2 * 4 * 9),  # stream feeds other layers
        ("mlp", "fc1", 10, [2, 3, 7], 3 * 8),  # model input
        ("seq", "fc1", 20, [1, 6, 13], 3 * 7),  # single flattened features
    ],
)
def test_keep_inputs_shared_producer_inserts_selection(
    name: str, layer: str, size: int, removed: list[int], saved: int
) -> None:
    model = build(name)
    masked = copy.deepcopy(model)
    mod = masked.get_submodule(layer)
    with torch.no_grad():
        mod.weight[:, removed] = 0
    keep = [i for i in range(size) if i not in removed]
    plan = CompressionPlan([KeepInputs(layer, keep)], meta={"input_shape": list(model.input_shape)})
    new = apply(plan, masked)
    sel = new.get_submodule(layer)
    assert isinstance(sel, SelectInputs)
    assert sel.index.tolist() == keep
    assert n_params(new) == n_params(model) - saved
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - masked(x)).abs().max().item() <= TOL
    _trains(new)


def _svd_factors(w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w2d.double(), full_matrices=False)
    r = s.sqrt()
    return (r[:, None] * vh).float(), (u * r).float()  # first (r x in), second (out x r)


@pytest.mark.parametrize("layer", ["conv2", "fc1", "conv1"])
def test_full_rank_factorization_reproduces_layer(layer: str) -> None:
    model = build("seq")
    mod = model.get_submodule(layer)
    w = mod.weight.detach()
    first, second = _svd_factors(w.reshape(w.shape[0], -1))
    rank = first.shape[0]
    assert rank == min(w.shape[0], w[0].numel())
    plan = CompressionPlan([LowRank(layer, first, second, mod.bias.detach())])
    new = apply(plan, model)
    lr = new.get_submodule(layer)
    assert isinstance(lr, LowRankConv2d if w.dim() == 4 else LowRankLinear)
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - model(x)).abs().max().item() <= TOL
    n, d = w.shape[0], w[0].numel()
    assert n_params(new) == n_params(model) - (n * d + n) + (rank * (n + d) + n)
    _trains(new)


@pytest.mark.parametrize("layer", ["conv2", "fc1"])
def test_sparse_plus_lowrank_with_sum_equal_to_w_reproduces_layer(layer: str) -> None:
    model = build("seq")
    mod = model.get_submodule(layer)
    w = mod.weight.detach()
    gen = torch.Generator().manual_seed(3)
    sparse = w * (torch.rand(w.shape, generator=gen) < 0.3)
    first, second = _svd_factors((w - sparse).reshape(w.shape[0], -1))
    plan = CompressionPlan([SparseLowRank(layer, sparse, first, second, mod.bias.detach())])
    new = apply(plan, model)
    slr = new.get_submodule(layer)
    assert isinstance(slr, SparsePlusLowRank)
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - model(x)).abs().max().item() <= TOL
    nnz = int((sparse != 0).sum())
    n, d, r = w.shape[0], w[0].numel(), first.shape[0]
    assert stored_param_count(slr) == 3 * nnz + r * (n + d) + n
    _trains(new)


@pytest.mark.parametrize("layer", ["conv2", "fc1", "conv1"])
def test_sparse_set_weights_reproduces_masked_layer(layer: str) -> None:
    model = build("seq")
    mod = model.get_submodule(layer)
    w = mod.weight.detach() * (torch.rand(mod.weight.shape) < 0.4)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.get_submodule(layer).weight.copy_(w)
    new = apply(CompressionPlan([SetWeights(layer, w, mod.bias.detach(), sparse=True)]), model)
    x = _x(model)
    with torch.no_grad():
        assert (new(x) - masked(x)).abs().max().item() <= TOL
    assert stored_param_count(new.get_submodule(layer)) == 3 * int((w != 0).sum()) + w.shape[0]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_user_model_untouched_when_not_inplace(name: str) -> None:
    model = build(name)
    ids = {n: id(m) for n, m in model.named_modules()}
    pids = {n: id(p) for n, p in model.named_parameters()}
    before = copy.deepcopy(model.state_dict())
    layer = next(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    size = model.get_submodule(layer).weight.shape[0]
    keep = list(range(size))[::2] if name != "residual_grouped" else list(range(0, 16, 2))
    new = apply(
        CompressionPlan([KeepOutputs(layer, keep)], meta={"input_shape": list(model.input_shape)}),
        model,
    )
    assert new is not model
    assert {n: id(m) for n, m in model.named_modules()} == ids
    assert {n: id(p) for n, p in model.named_parameters()} == pids
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(before[k], state[k]) for k in before)
    assert not model.training  # tracing restored the mode
    assert n_params(new) < n_params(model)


def test_inplace_modifies_given_model() -> None:
    model = build("mlp")
    out = apply(
        CompressionPlan([KeepOutputs("fc1", [0, 1])], meta={"input_shape": [10]}),
        model,
        inplace=True,
    )
    assert out is model and model.fc1.out_features == 2 and model.fc2.in_features == 2


@pytest.mark.parametrize("name", ["seq", "resnet", "inception", "depthwise"])
def test_fold_batchnorm_is_exact_in_eval(name: str) -> None:
    model = build(name)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = _x(model)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() <= TOL
    n_bn = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    n_new_bias = sum(
        m.out_channels
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.bias is None
    )
    assert n_params(folded) == n_params(model) - n_bn + n_new_bias


def test_multi_action_plan_chains_and_replays() -> None:
    model = build("seq")
    w1 = model.fc2.weight.detach()[:, [0, 2, 3, 4]]
    plan = CompressionPlan(
        [
            KeepOutputs("conv1", [0, 1, 3, 4]),
            KeepOutputs("fc1", [0, 2, 3, 4]),
            SetWeights("fc2", w1 * 2, None),
        ],
        meta={"input_shape": [3, 8, 8]},
    )
    new = apply(plan, model)
    assert new.conv2.in_channels == 4 and new.fc2.in_features == 4 and new.fc2.bias is None
    assert torch.equal(new.fc2.weight, w1 * 2)
    assert n_params(new) == ZOO["seq"].count(c1=4, h=4) - 3


def test_reference_resnet20_stream_cut_is_exact() -> None:
    models = pytest.importorskip("compactnn.models")
    model = models.create("resnet20").eval()
    from _zoo import randomize_bn

    randomize_bn(model, torch.Generator().manual_seed(0))
    removed = [2, 9, 13]
    stream = ["conv1", "bn1"] + [f"layer1.{j}.{s}" for j in range(3) for s in ("conv2", "bn2")]
    masked = _mask(model, stream, removed)
    keep = [i for i in range(16) if i not in removed]
    new = apply(
        CompressionPlan([KeepOutputs("conv1", keep)], meta={"input_shape": [3, 32, 32]}), masked
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (new(x) - masked(x)).abs().max().item() <= TOL
    # stream convs (3x3, no bias) and BNs lose 3 channels; consumers (layer1 conv1s, layer2.0
    # conv1 and 1x1 shortcut) lose 3 input channels
    saved = 3 * 3 * 9 + 2 * 3  # stem conv + bn
    saved += 3 * (3 * 16 * 9 + 2 * 3)  # layer1 conv2 rows + bn2
    saved += 3 * (3 * 16 * 9)  # layer1 conv1 columns
    saved += 3 * 32 * 9 + 3 * 32  # layer2.0 conv1 columns + shortcut conv columns
    assert n_params(new) == n_params(model) - saved


@pytest.mark.slow
def test_reference_alexnet_caffe_grouped_cuts() -> None:
    models = pytest.importorskip("compactnn.models")
    model = models.create("alexnet-caffe").eval()
    shape = list(models.default_input_shape("alexnet-caffe"))
    with pytest.raises(PlanError, match="grouped conv 'conv2'"):
        apply(
            CompressionPlan([KeepOutputs("conv1", list(range(95)))], meta={"input_shape": shape}),
            model,
        )
    keep = [i for i in range(96) if i not in (0, 50)]
    new = apply(CompressionPlan([KeepOutputs("conv1", keep)], meta={"input_shape": shape}), model)
    assert new.conv2.in_channels == 94 and new.conv2.weight.shape[1] == 47
