"""Adversarial graphs for the surgery self-check (issue 34): every cut is exact or refused.

Exactness is judged here independently of the surgery: the reference is a float64 copy of the
original model with the removed units zeroed *at their source* by forward hooks written out per
case (the outputs of the producers and norms whose channels go), and the parameters saved are
counted by hand from the layer shapes. A refused cut names the layer or the op; where the
unverified cut (``verify=False``) still builds a model, that model is shown to be wrong (it
differs from the original with the removed filters dead), so the refusal is no false alarm.

Graphs from ``tests/_graph_bank.py`` (chunk/split, shuffle, SE, CBAM, LRN, ...) are exercised by
``test_graph_bank.py``; the weight-shared conv of the bank is re-checked here against the
source-masked reference.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _graph_bank import build_graph  # noqa: E402
from compactnn.errors import PlanError  # noqa: E402
from compactnn.plan import CompressionPlan, KeepOutputs  # noqa: E402
from compactnn.surgery import apply  # noqa: E402

SHAPE = [3, 8, 8]
K = 3


class _Head(nn.Module):
    def _head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TwoConsumers(_Head):
    """conv a -> BN -> ReLU, consumed by two convs b and c (added)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        return self._head(torch.relu(self.b(h) + self.c(h)))


class ConvAndResidual(_Head):
    """h = relu(a(x)) consumed by conv b and by a residual add: relu(b(h)) + h -> conv c."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        return self._head(torch.relu(self.c(torch.relu(self.b(h)) + h)))


class Inplace(_Head):
    """In-place ops: ReLU(inplace=True), a residual ``add_`` into conv b's output, ``relu_``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.a(x))
        g = self.b(h)
        g.add_(h)
        return self._head(torch.relu_(self.c(torch.relu_(g))))


class ToLinear(nn.Module):
    """conv a (4) -> ReLU -> pool to 4x4 -> ``how`` (flatten / view / reshape / permute to
    channels-last then flatten) -> Linear fc (64 -> 3)."""

    def __init__(self, how: str = "flatten") -> None:
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(64, K)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(torch.relu(self.a(x)), 2)
        n = h.shape[0]
        if self.how == "flatten":
            h = torch.flatten(h, 1)
        elif self.how == "view":
            h = h.view(n, -1)
        elif self.how == "reshape":
            h = h.reshape(n, -1)
        else:
            h = h.permute(0, 2, 3, 1).reshape(n, -1)
        return self.fc(h)


class Cat(_Head):
    """Two convs on the input, concatenated on channels -> conv c."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self._head(torch.relu(self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))))


class FunctionalConv(_Head):
    """Conv b applied as a module and through ``F.conv2d(..., self.b.weight, self.b.bias)``:
    on the mirrored ``h`` (``other=False``) or on the output of another conv c (``other=True``)."""

    def __init__(self, other: bool = False) -> None:
        super().__init__()
        self.other = other
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        g = torch.relu(self.c(x)) if self.other else torch.flip(h, [3])
        y = self.b(h) + F.conv2d(g, self.b.weight, self.b.bias, padding=1)
        return self._head(torch.relu(y))


class BNAfter(_Head):
    """conv a -> BatchNorm (non-zero bias, running statistics) -> ReLU -> conv b; ``order=
    'relu-bn'`` puts the ReLU first."""

    def __init__(self, order: str = "bn-relu") -> None:
        super().__init__()
        self.order = order
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        h = torch.relu(self.bn(h)) if self.order == "bn-relu" else self.bn(torch.relu(h))
        return self._head(torch.relu(self.b(h)))


class FeatureOut(nn.Module):
    """conv a (8) -> ReLU -> pooled: the model's output is a's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.a(x)).mean((2, 3))


class SharedWithInput(_Head):
    """One conv ``shared`` (3 -> 6) called on the input and on ``relu(stem(x))`` (3 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.shared = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.shared(torch.relu(self.stem(x)))) + torch.relu(self.shared(x))
        return self._head(y)


class AfterCut(_Head):
    """conv a -> BN -> ReLU -> ``op`` -> conv b: an op that does not keep a zero channel zero
    (``add`` a constant, in-place ``add_``, ``sigmoid``, ``softplus`` module), the logits
    scaled by a mean over all channels (``mean``), a per-channel buffer added (``buffer``), a
    channel order from a buffer (``buffer-index``), the first half of the channels (``slice``),
    a channel shuffle (``shuffle``), a float32 matrix built in the forward (``float32``)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.softplus = nn.Softplus()
        self.b = nn.Conv2d(4 if op == "slice" else 8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)
        self.register_buffer("shift", torch.linspace(0.1, 0.8, 8))
        self.register_buffer("order", torch.tensor([3, 0, 6, 1, 7, 2, 5, 4]))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.a(x)))
        extra = 0.0
        if self.op == "add":
            h = h + 0.5
        elif self.op == "add_":
            h.add_(0.5)
        elif self.op == "sigmoid":
            h = torch.sigmoid(h)
        elif self.op == "softplus":
            h = self.softplus(h)
        elif self.op == "mean":
            extra = h.mean().item()  # a Python number: no graph to follow
        elif self.op == "buffer":
            h = h + self.shift[None, :, None, None]
        elif self.op == "buffer-index":
            h = h[:, self.order]
        elif self.op == "slice":
            h = h[:, :4]
        elif self.op == "shuffle":
            n, c, hh, ww = h.shape
            h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        y = self._head(torch.relu(self.b(h))) * (1.0 + extra)
        if self.op == "float32":
            y = y @ torch.eye(K)
        return y


class ChannelScale(nn.Module):
    """A layer with a per-channel buffer: ``x * scale[c]``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, c))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale[None, :, None, None]


class BufferLayer(_Head):
    """conv a -> ChannelScale (a module with a buffer indexed by channel) -> conv b."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = ChannelScale(8)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self._head(torch.relu(self.b(self.scale(torch.relu(self.a(x))))))


def _build(cls: type[nn.Module], **kw: object) -> nn.Module:
    torch.manual_seed(0)
    model = cls(**kw)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.3 + 0.2)  # non-zero bias
    return model.eval()


# id, builder, root, removed, sources zeroed in the reference [(module, output channels)], the
# parameters the cut saves (by hand: removed filters 3*3*3+1 = 28 each, BN 2 each, consumer
# columns out*3*3 each)
EXACT = [
    ("tensor-consumed-by-two-convs", lambda: _build(TwoConsumers), "a", [2, 5], [("a", [2, 5]), ("bn", [2, 5])], 2 * 28 + 2 * 2 + 2 * (2 * 6 * 9)),
    # the add couples b's output channel 3 to a's: b loses row 3 (7*9 + 1) and column 3 (8*9)
    ("conv-and-residual-add", lambda: _build(ConvAndResidual), "a", [3], [("a", [3]), ("b", [3])], 28 + (8 * 9 + 7 * 9 + 1) + 6 * 9),
    ("inplace-relu-add_", lambda: _build(Inplace), "a", [1], [("a", [1]), ("b", [1])], 28 + (8 * 9 + 7 * 9 + 1) + 6 * 9),
    # Linear columns: channel 1 of a is 16 (4x4) inputs of fc, 3 outputs each
    ("flatten-linear", lambda: _build(ToLinear, how="flatten"), "a", [1], [("a", [1])], 28 + 16 * 3),
    ("view-linear", lambda: _build(ToLinear, how="view"), "a", [1], [("a", [1])], 28 + 16 * 3),
    ("reshape-linear", lambda: _build(ToLinear, how="reshape"), "a", [1], [("a", [1])], 28 + 16 * 3),
    ("permute-channels-last-linear", lambda: _build(ToLinear, how="permute"), "a", [1, 3], [("a", [1, 3])], 2 * 28 + 2 * 16 * 3),
    ("cat-second-part", lambda: _build(Cat), "b", [1, 4], [("b", [1, 4])], 2 * 28 + 2 * 6 * 9),
    ("bn-nonzero-bias-after-cut", lambda: _build(BNAfter), "a", [2, 6], [("a", [2, 6]), ("bn", [2, 6])], 2 * 28 + 2 * 2 + 2 * 6 * 9),
    ("relu-then-bn-after-cut", lambda: _build(BNAfter, order="relu-bn"), "a", [0], [("a", [0]), ("bn", [0])], 28 + 2 + 6 * 9),
    # bank: stem -> the same conv twice; stem's channel 2 and shared's (its own input) go
    ("weight-shared-conv-bank", lambda: build_graph("shared_conv"), "stem", [2], [("stem", [2]), ("shared", [2])], 28 + (6 * 9 + 5 * 9 + 1) + 3),
]  # fmt: skip

# id, builder, root, removed, message regex, the unverified cut builds a wrong model (False: a
# cut that would be right but cannot be verified)
REFUSED = [
    ("shared-conv-also-on-input", lambda: _build(SharedWithInput), "stem", [1], r"no longer runs \(RuntimeError in Conv2d 'shared'.*weight sharing", True),
    ("constant-added-after-cut", lambda: _build(AfterCut, op="add"), "a", [2], r"self-check failed.*Conv2d 'b' input channel\(s\) \[2\].*Add", True),
    ("inplace-constant-after-cut", lambda: _build(AfterCut, op="add_"), "a", [2], r"self-check failed.*Conv2d 'b' input channel\(s\) \[2\]", True),
    ("sigmoid-after-cut", lambda: _build(AfterCut, op="sigmoid"), "a", [2], r"self-check failed.*Conv2d 'b' input channel\(s\) \[2\].*Sigmoid", True),
    ("softplus-after-cut", lambda: _build(AfterCut, op="softplus"), "a", [2], r"self-check failed.*Conv2d 'b' input channel\(s\) \[2\].*Softplus", True),
    ("mean-over-all-channels", lambda: _build(AfterCut, op="mean"), "a", [2], r"self-check failed: the pruned model differs.*\['a', 'b', 'bn'\]", True),
    ("layer-with-channel-buffer", lambda: _build(BufferLayer), "a", [2], r"ChannelScale 'scale', which surgery cannot resize", True),
    ("buffer-per-channel", lambda: _build(AfterCut, op="buffer"), "a", [2], r"no longer runs", True),
    ("buffer-channel-index", lambda: _build(AfterCut, op="buffer-index"), "a", [2], r"no longer runs.*indexing", True),
    ("slice-first-channels", lambda: _build(AfterCut, op="slice"), "a", [1], r"no longer runs \(RuntimeError in Conv2d 'b'.*slicing", True),
    ("channel-shuffle", lambda: _build(AfterCut, op="shuffle"), "a", [1], r"channel shuffle", True),
    ("functional-conv-same-input", lambda: _build(FunctionalConv), "a", [2], r"every input channel of Linear 'fc'", True),
    ("functional-conv-other-input", lambda: _build(FunctionalConv, other=True), "a", [2], r"no longer runs.*functional op", True),
    ("float32-hard-coded-in-forward", lambda: _build(AfterCut, op="float32"), "a", [2], r"does not run in float64.*dtype=x.dtype.*verify=False", False),
]  # fmt: skip


def _x(n: int = 4) -> Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(7))


def _plan(model: nn.Module, root: str, removed: list[int]) -> CompressionPlan:
    size = model.get_submodule(root).weight.shape[0]
    keep = [i for i in range(size) if i not in removed]
    return CompressionPlan([KeepOutputs(root, keep)], meta={"input_shape": SHAPE})


def _source_masked(model: nn.Module, sources: list[tuple[str, list[int]]], x: Tensor) -> Tensor:
    """The original in float64 with the output channels ``sources`` zeroed by forward hooks."""
    ref = copy.deepcopy(model).double().eval()
    for name, idx in sources:

        def hook(m: nn.Module, args: object, out: Tensor, idx: list[int] = idx) -> Tensor:
            out = out.clone()
            out[:, idx] = 0
            return out

        ref.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        return ref(x.double())


def _dead(model: nn.Module, sources: list[tuple[str, list[int]]]) -> nn.Module:
    """``model`` with the source channels dead: their weight rows, bias and BN affine zero."""
    dead = copy.deepcopy(model)
    with torch.no_grad():
        for name, idx in sources:
            m = dead.get_submodule(name)
            m.weight[idx] = 0
            if m.bias is not None:
                m.bias[idx] = 0
    return dead


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
def test_cut_equals_the_source_masked_reference(case: tuple) -> None:
    _, builder, root, removed, sources, saved = case
    model = builder()
    before = copy.deepcopy(model.state_dict())
    x = _x()
    new = apply(_plan(model, root, removed), model, check_inputs=x[:2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _n(model) - _n(new) == saved
    ref = _source_masked(model, sources, x)
    with torch.no_grad():
        out = copy.deepcopy(new).double()(x.double())
        orig = copy.deepcopy(model).double()(x.double())
    assert _rel(out, ref) <= 1e-9  # float64: an exact cut agrees to rounding
    assert _rel(orig, ref) > 1e-3  # the removed units mattered: the check was not vacuous


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
def test_removing_dead_units_returns_the_original_function(case: tuple) -> None:
    """The removed units made dead (weights, bias, BN affine zero): the pruned model equals the
    original itself."""
    _, builder, root, removed, sources, _ = case
    model = _dead(builder(), sources)
    new = apply(_plan(model, root, removed), model)
    x = _x()
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
        assert _rel(copy.deepcopy(new).double()(x.double()), want) <= 1e-9


def test_all_zero_filter_with_bias_goes_with_its_bias() -> None:
    """An all-zero filter with a non-zero bias (and the BN after it) is not zero at its output:
    the cut removes the whole unit, so the pruned model equals the model with that unit's output
    zeroed, not the original; the self-check accepts it against that reference."""
    model = _build(BNAfter)
    with torch.no_grad():
        model.a.weight[2] = 0  # bias[2] and the BN's channel 2 stay
    x = _x()
    new = apply(_plan(model, "a", [2]), model, check_inputs=x[:2])
    with torch.no_grad():
        out = copy.deepcopy(new).double()(x.double())
        orig = copy.deepcopy(model).double()(x.double())
    assert _rel(out, _source_masked(model, [("a", [2]), ("bn", [2])], x)) <= 1e-9
    assert _rel(out, orig) > 1e-4


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_cut_is_refused_naming_the_construct(case: tuple) -> None:
    _, builder, root, removed, pattern, _ = case
    model = builder()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PlanError, match=pattern):
        apply(_plan(model, root, removed), model, check_inputs=_x(2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


WRONG = [c for c in REFUSED if c[5]]


@pytest.mark.parametrize("case", WRONG, ids=[c[0] for c in WRONG])
def test_refused_cut_would_change_the_function(case: tuple) -> None:
    """No false alarm: the removed filters made dead (weights and bias zero, BN affine zero), a
    cut built without the check (where it builds at all) differs from the original."""
    _, builder, root, removed, _, _ = case
    model = builder()
    sources = [(root, removed)] + ([("bn", removed)] if hasattr(model, "bn") else [])
    model = _dead(model, sources)
    try:
        bad = apply(_plan(model, root, removed), model, verify=False)
    except PlanError:
        return  # refused before a model exists: nothing to compare
    x = _x()
    try:
        with torch.no_grad():
            got = bad(x)
    except RuntimeError:
        return  # the unverified model does not even run
    with torch.no_grad():
        assert _rel(got, model(x)) > 1e-4


def test_output_channels_removed_with_allow_output_change_are_matched() -> None:
    """Removed channels that reach the output: refused by default (output width), verified on the
    remaining positions with allow_output_change=True."""
    model = _build(FeatureOut)
    with pytest.raises(PlanError, match=r"changes the shape of the model's output"):
        apply(_plan(model, "a", [1, 5]), model)
    new = apply(_plan(model, "a", [1, 5]), model, allow_output_change=True, check_inputs=_x(2))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(new(x), model(x)[:, [0, 2, 3, 4, 6, 7]], atol=1e-6)


def test_a_cut_off_by_a_small_relative_error_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut that moves the output by 3e-5 (under the per-action float32 check's 1e-4, 30 times
    the float64 check's 1e-6 of max(1, max |y|), whatever the CPU) is refused."""
    from compactnn.surgery import _channels

    real = _channels._cut_module

    def off(m: nn.Module, c: dict) -> None:
        real(m, c)
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.bias += 3e-5

    monkeypatch.setattr(_channels, "_cut_module", off)
    model = _build(ToLinear)
    with torch.no_grad():
        assert float(model(_x(2)).abs().max()) < 1.0  # the scale is 1: the error is 3e-5
    with pytest.raises(PlanError, match=r"self-check failed.*by 3e-05.*float64.*1e-06"):
        apply(_plan(model, "a", [1]), model)


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_a_wrong_cut_in_a_longer_plan_is_named(inplace: bool) -> None:
    """The float64 check runs once per run of channel actions; a failure names the action (the
    plan replayed with a check per action; inplace=True checks every action anyway)."""
    model = _build(AfterCut, op="sigmoid")
    plan = CompressionPlan(
        [KeepOutputs("b", [0, 1, 2, 4, 5]), KeepOutputs("a", [0, 1, 3, 4, 5, 6, 7])],
        meta={"input_shape": SHAPE},
    )
    with pytest.raises(PlanError, match=r"^Action #1 KeepOutputs\(layer='a'\): surgery self-check failed.*Sigmoid"):  # fmt: skip
        apply(plan, model, inplace=inplace, check_inputs=_x(2))
    ok = apply(CompressionPlan(plan.actions[:1], meta=plan.meta), _build(AfterCut, op="sigmoid"))
    assert ok.b.out_channels == 5
