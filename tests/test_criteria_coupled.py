"""Criterion methods on coupled graphs (issue 13 item 4/5): keep-sets computed on the current
model after each cut, group-consistent selection for grouped convs, honest history counts."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_bank import build_graph  # noqa: E402
from compactnn import compress  # noqa: E402


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("se", ["a", "b", "se_a.fc1", "se_b.fc1"]),  # SE-ResNet: a and b share the stream
        ("shared_conv", ["stem", "shared"]),  # weight-shared conv coupled to the stem
        ("resnext", ["reduce", "stem"]),  # grouped conv: group-consistent selection
        ("depth_multiplier", ["stem"]),
    ],
)
@pytest.mark.parametrize("method", ["l1-norm", "random"])
def test_criteria_prune_coupled_graphs(name: str, layers: list[str], method: str) -> None:
    model = build_graph(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = compress(
        model,
        method,
        (_loader(), _loader()),
        input_shape=(3, 8, 8),
        layers=layers,
        ratio=0.5,
        finetune_epochs=0,
        max_drop=None,
    )
    new = res.model
    assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in model.parameters())
    for n in layers:  # history reports the widths the returned model really has
        assert res.history["keep"][n] == new.get_submodule(n).weight.shape[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if name == "resnext":
        assert new.grouped.groups == 4 and new.grouped.in_channels % 4 == 0
        assert new.grouped.in_channels < 8


# ---------------------------------------------------------------- coupling groups (issue 13)
from torch import nn  # noqa: E402

from compactnn import criteria, surgery  # noqa: E402
from compactnn.methods._common import prune_filters  # noqa: E402

SHAPE = (3, 8, 8)


class _Block(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.c2 = nn.Conv2d(mid, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.c2(torch.relu(self.bn1(self.c1(x))))))


class ResNetish(nn.Module):
    """stem + BN -> two basic blocks with identity shortcuts -> GAP -> fc: stem, block1.c2 and
    block2.c2 form one coupling group (the residual stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = _Block(8, 6)
        self.block2 = _Block(8, 6)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


class RotatedResidual(nn.Module):
    """a(x) + roll(b(x)): channel j of a is added to channel (j + 5) % 8 of b."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.b(x)
        z = torch.cat([z[:, 5:], z[:, :5]], 1)
        return self.fc(self.c(torch.relu(self.a(x) + z)).mean((2, 3)))


def _resnetish() -> nn.Module:
    torch.manual_seed(0)
    model = ResNetish()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            if isinstance(m, nn.Conv2d):  # spread the filter norms: scores differ per layer
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1, generator=gen) * 2 + 0.1)
    return model.eval()


GROUPS = {  # model, root, the coupling group it must find (root first)
    "resnet": (_resnetish, "stem", ["stem", "block1.c2", "block2.c2"]),
    "se": (lambda: build_graph("se"), "a", ["a", "b", "se_a.fc2", "se_b.fc2"]),
}


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(GROUPS))
def test_coupling_finds_the_group_with_identity_maps(name: str) -> None:
    build, root, members = GROUPS[name]
    got = surgery.coupling(build(), root, meta={"input_shape": list(SHAPE)})
    assert list(got)[0] == root and sorted(got) == sorted(members)
    n = len(got[root])
    assert all(phi == tuple(range(n)) for phi in got.values())


def test_coupling_correspondence_is_measured_not_assumed() -> None:
    """A rotated residual: the measured map is j -> (j + 5) % 8 (an index-equal guess is wrong)."""
    torch.manual_seed(0)
    got = surgery.coupling(RotatedResidual().eval(), "a", meta={"input_shape": list(SHAPE)})
    assert got["b"] == tuple((j + 5) % 8 for j in range(8))


def _hand_apoz(model: nn.Module, bn: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    h = bn.register_forward_hook(lambda _m, _i, o: seen.append((o > 0).float().mean((0, 2, 3))))
    with torch.no_grad():
        for x in batches:
            model(x)
    h.remove()
    return torch.stack(seen).mean(0)


def _hand_scores(
    criterion: str, model: nn.Module, members: list[str], batches: list
) -> torch.Tensor:
    """mean over the members of (score / its mean), written out per criterion."""
    per = []
    for name in members:
        w = model.get_submodule(name).weight.detach()
        if criterion == "l1-norm":
            s = w.abs().flatten(1).sum(1)
        elif criterion == "magnitude":
            s = (w.flatten(1) ** 2).sum(1).sqrt()
        else:  # apoz: post-BN positive fraction of the conv's own BN
            bn = {"stem": "bn", "block1.c2": "block1.bn2", "block2.c2": "block2.bn2"}[name]
            s = _hand_apoz(model, model.get_submodule(bn), batches)
        per.append(s.double() / s.double().mean())
    return torch.stack(per).mean(0).float()


@pytest.mark.parametrize("criterion", ["l1-norm", "magnitude", "apoz"])
def test_group_scores_match_a_hand_computation(criterion: str) -> None:
    model = _resnetish()
    members = surgery.coupling(model, "stem", meta={"input_shape": list(SHAPE)})
    batches = [torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(3))]
    got = criteria.group_scores(criterion, model, members, batches=batches)
    want = _hand_scores(criterion, model, list(members), batches)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    alone = criteria.filter_scores(criterion, model, "stem", batches=batches)
    if criterion != "apoz":  # the aggregate is not the root's own ranking here
        assert criteria.select_top(got, 4) != criteria.select_top(alone, 4)


def _neutral(model: nn.Module, consumers: list[str], removed: list[int]) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for c in consumers:
            ref.get_submodule(c).weight[:, removed] = 0
    return ref


CUT = {  # the consumers of the group's channels (their input columns go) per model
    "resnet": ["block1.c1", "block2.c1", "fc"],
    "se": ["se_a.fc1", "b", "se_b.fc1", "fc"],
}


@pytest.mark.parametrize("criterion", ["l1-norm", "magnitude", "apoz", "random"])
@pytest.mark.parametrize("name", list(GROUPS))
def test_criteria_cut_one_keep_set_per_group_exactly(name: str, criterion: str) -> None:
    build, root, members = GROUPS[name]
    model = build()
    loader = _loader()
    res = compress(
        model, criterion, (loader, _loader()), input_shape=SHAPE, layers=[root], ratio=0.5,
        finetune_epochs=0, max_drop=None, val_fraction=0.0, calib_batches=2, measure=False,
    )  # fmt: skip
    new = res.model
    assert sorted(res.history["groups"][root]) == sorted(members)
    # the keep-set is the top half of the aggregated score, identical in every member
    group = surgery.coupling(model, root, meta={"input_shape": list(SHAPE)})
    batches = [x for x, _ in loader][:2]
    if criterion == "random":
        scores = torch.rand(8, generator=torch.Generator().manual_seed(0))
    else:
        scores = (
            _hand_scores(criterion, model, list(group), batches)
            if name == "resnet"
            else (criteria.group_scores(criterion, model, group, batches=batches))
        )
    keep = sorted(torch.argsort(-scores, stable=True)[:4].tolist())
    for m in members:
        w0, w1 = model.get_submodule(m).weight, new.get_submodule(m).weight
        assert w1.shape[0] == 4
        want = w0[keep][:, keep] if m in CUT[name] else w0[keep]  # b also consumes the stream
        torch.testing.assert_close(w1, want, rtol=0, atol=0)
    # exact: equal to the original with the removed channels neutralised (consumers' columns)
    removed = [i for i in range(8) if i not in keep]
    ref = _neutral(model, CUT[name], removed)
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (new(x) - ref(x)).abs().max().item() <= 1e-5
    # exact parameter count: 4 rows of every member (+ its BN / bias), 4 columns of every consumer
    saved = 0
    for m in members:
        w = model.get_submodule(m).weight
        saved += 4 * w[0].numel() + (4 if model.get_submodule(m).bias is not None else 0)
    saved += 2 * 4 * sum(isinstance(m, nn.BatchNorm2d) for m in _bns_of(model, members))
    saved += sum(4 * model.get_submodule(c).weight[:, 0].numel() for c in CUT[name])
    for m in set(members) & set(CUT[name]):  # rows and columns removed: the 4 x 4 overlap once
        saved -= 4 * 4 * model.get_submodule(m).weight[0, 0].numel()
    assert _n(model) - _n(new) == saved
    replay = surgery.apply(res.plan, build())
    with torch.no_grad():
        assert (replay(x) - new(x)).abs().max().item() <= 1e-6


def _bns_of(model: nn.Module, members: list[str]) -> list[nn.Module]:
    """The BatchNorm directly after each conv member (module order), as in the models above."""
    names = [n for n, _ in model.named_modules()]
    out = []
    for m in members:
        nxt = (
            model.get_submodule(names[names.index(m) + 1])
            if names.index(m) + 1 < len(names)
            else None
        )
        if isinstance(nxt, nn.BatchNorm2d):
            out.append(nxt)
    return out


def test_prune_filters_cuts_a_group_once_with_the_union_of_listed_keeps() -> None:
    """SSR / admm-sparse / pgt deploy through prune_filters: two coupled layers that keep
    different filters give one cut, removing only the channels both drop."""
    model = build_graph("se")
    new, plan = prune_filters(model, {"a": [0, 1, 2, 3], "b": [1, 2, 3, 4]}, SHAPE)
    assert [(a.layer, a.keep) for a in plan.actions] == [("a", (0, 1, 2, 3, 4))]
    for m in ("a", "b", "se_a.fc2", "se_b.fc2"):
        assert new.get_submodule(m).weight.shape[0] == 5
    ref = _neutral(model, CUT["se"], [5, 6, 7])
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (new(x) - ref(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("ssr", {"max_outer": 2, "w_steps": 2, "lam": 1.0}),
        ("admm-sparse", {}),
        ("pgt", {}),
    ],
)
def test_training_methods_cut_coupled_layers_consistently(method: str, opts: dict) -> None:
    """ssr / admm-sparse / pgt on an SE-ResNet with every member of the stream's group listed:
    the group keeps one width, the plan replays the returned model exactly."""
    import warnings

    model = build_graph("se")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compress(
            model, method, (_loader(), _loader()), input_shape=SHAPE,
            layers=["a", "b", "se_a.fc2", "se_b.fc2"], finetune_epochs=0, max_drop=None,
            on_drop="warn", measure=False, progress=False, **opts,
        )  # fmt: skip
    new = res.model
    widths = set()
    for m in ("a", "b", "se_a.fc2", "se_b.fc2"):
        mod = new.get_submodule(m)
        widths.add((getattr(mod, "layer", mod)).weight.shape[0])
    assert len(widths) == 1
    replay = surgery.apply(res.plan, build_graph("se"))
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    new.eval()
    with torch.no_grad():
        assert (replay(x) - new(x)).abs().max().item() <= 1e-5


def test_default_layers_of_a_resnext_block_prune_and_skip_clearly() -> None:
    """Cutting 'reduce' to one input channel per group of 'grouped' makes it a depth-multiplier
    conv whose outputs cannot be cut alone: it is skipped with a warning naming it, not refused."""
    model = build_graph("resnext")
    with pytest.warns(RuntimeWarning, match=r"\['grouped'\] not pruned.*depth multiplier 2"):
        res = compress(
            model, "l1-norm", (_loader(), _loader()), input_shape=SHAPE, ratio=0.5,
            finetune_epochs=0, max_drop=None, measure=False,
        )  # fmt: skip
    assert list(res.history["skipped"]) == ["grouped"]
    assert res.model.reduce.out_channels == 4 and res.model.grouped.groups == 4
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    replay = surgery.apply(res.plan, build_graph("resnext"))
    with torch.no_grad():
        assert (replay(x) - res.model(x)).abs().max().item() <= 1e-6
