"""Graph bank (issue 13): every channel cut is exact or refused with a message naming the cause.

Exactness is judged independently of the surgery's own self-check: the reference is the original
model with the removed structure neutralised *by hand* (the consumers' weight columns of the
removed channels zeroed, written out per case), and the parameter count removed is computed by
hand from the layer shapes.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _graph_bank import build_graph  # noqa: E402
from compactnn._preflight import CHECK_SAMPLES  # noqa: E402
from compactnn.errors import PlanError  # noqa: E402
from compactnn.plan import CompressionPlan, KeepOutputs  # noqa: E402
from compactnn.surgery import _channels, apply  # noqa: E402

TOL = 1e-5
SHAPE = [3, 8, 8]

# id, model, kwargs, root, removed, neutralise [(layer, "in" columns | "out" rows, idx)], saved
EXACT = [
    ("chunk", "chunk", {}, "a", [1, 10], [("b", "in", [1]), ("c", "in", [2])], 155),
    ("chunk-swapped", "chunk", {"swap": True}, "a", [1, 10], [("b", "in", [1]), ("c", "in", [2])], 155),
    ("chunk-swapped-same-offset", "chunk", {"swap": True}, "a", [1, 9], [("b", "in", [1]), ("c", "in", [1])], 155),
    # one channel from the second chunk only: chunk(2) of 15 is 8 + 7, the boundary stays
    ("chunk-boundary-kept", "chunk", {}, "a", [10], [("c", "in", [2])], 82),
    ("chunk-boundary-kept-swapped", "chunk", {"swap": True}, "a", [10], [("c", "in", [2])], 82),
    ("groupnorm-whole-group", "groupnorm", {"affine": False}, "a", [0, 1, 2, 3], [("b", "in", [0, 1, 2, 3])], 328),
    ("groupnorm-affine-whole-group", "groupnorm", {}, "a", [4, 5, 6, 7], [("b", "in", [4, 5, 6, 7])], 336),
    ("lrn-holes", "lrn", {}, "a", [2], [("a", "out", [2]), ("b", "in", [2])], 82),
    ("instancenorm-running-stats", "instancenorm", {}, "a", [1, 6], [("b", "in", [1, 6])], 168),
    (
        "se-resnet-stream",
        "se",
        {},
        "a",
        [2],
        [("se_a.fc1", "in", [2]), ("b", "in", [2]), ("se_b.fc1", "in", [2]), ("fc", "in", [2])],
        187,
    ),
    (
        "se-resnet-stream-from-b",
        "se",
        {},
        "b",
        [5],
        [("se_a.fc1", "in", [5]), ("b", "in", [5]), ("se_b.fc1", "in", [5]), ("fc", "in", [5])],
        187,
    ),
    ("se-inner", "se", {}, "se_a.fc1", [3], [("se_a.fc2", "in", [3])], 17),
    ("shuffle-branch", "shuffle", {}, "b1", [1], [("b3", "in", [1])], 27),
    ("resnext-group-consistent", "resnext", {}, "reduce", [0, 2, 4, 6], [("grouped", "in", [0])], 108),
    ("resnext-stream", "resnext", {}, "stem", [1], [("reduce", "in", [1]), ("fc", "in", [1])], 48),
    ("depth-multiplier-whole-group", "depth_multiplier", {}, "stem", [1], [("pw", "in", [2, 3])], 60),
    ("cbam-channel-attention", "cbam", {}, "ca1", [1], [("ca2", "in", [1])], 17),
    ("view-sum-pair", "view_sum", {}, "a", [2, 10], [("b", "in", [2])], 110),
    ("weight-shared-conv", "shared_conv", {}, "stem", [2], [("shared", "in", [2]), ("fc", "in", [2])], 131),
    ("weight-shared-conv-root", "shared_conv", {}, "shared", [2], [("shared", "in", [2]), ("fc", "in", [2])], 131),
    ("dict-output", "dict_out", {}, "a", [2], [("b", "in", [2])], 84),
]  # fmt: skip

# id, model, kwargs, root, removed, message regex
REFUSED = [
    ("split-hard-coded-sizes", "split", {}, "a", [7], r"split.*split sizes.*same number of channels from every chunk"),
    # cuts that move a chunk boundary: refused naming the chunk and what to do
    ("chunk-boundary-moves", "chunk", {}, "a", [1], r"chunk.*same number of channels from every chunk"),
    ("chunk-boundary-moves-swapped", "chunk", {"swap": True}, "a", [1], r"chunk.*same number of channels from every chunk"),
    ("chunk-boundary-moves-two", "chunk", {}, "a", [1, 2], r"chunk.*same number of channels from every chunk"),
    # parts that reach a cat with no layer in between: the dependency analysis cannot follow
    # them (a Torch-Pruning limitation), refused before anything is cut, equal cut or not
    ("chunk-pool", "chunk_pool", {}, "a", [1, 9], r"model runs, but the dependency analysis cannot follow.*exclude this layer"),
    ("split-pool", "chunk_pool", {"op": "split"}, "a", [1, 2], r"model runs, but the dependency analysis cannot follow.*exclude this layer"),
    ("groupnorm-part-of-group", "groupnorm", {"affine": False}, "a", [1], r"GroupNorm 'gn'.*whole groups of 4"),
    ("groupnorm-affine-part-of-group", "groupnorm", {}, "a", [1, 5], r"GroupNorm 'gn'.*whole groups of 4"),
    ("shuffle-unit-input", "shuffle", {}, "conv1.0", [1], r"channel shuffle"),
    ("shuffle-branch-output", "shuffle", {}, "b3", [1], r"channel shuffle"),
    ("layernorm-over-channels", "layernorm", {}, "a", [3], r"LayerNorm 'ln'.*across channels.*exclude this layer"),
    ("dict-input-batches", "dict_in", {}, "a", [3], r"does not run on the example inputs.*dict"),
    ("resnext-group-inconsistent", "resnext", {}, "reduce", [1], r"group-inconsistent.*'grouped'"),
    ("depth-multiplier-outputs", "depth_multiplier", {}, "dw", [2, 3], r"depth multiplier 2"),
    ("cbam-spatial-attention", "cbam", {}, "a", [2], r"every input channel of Conv2d 'sa'.*mean"),
    ("linear-view-conv", "linear_view", {}, "lin", [5], r"part of input channel.*'b' through view/reshape.*16 values"),
    ("linear-view-conv-whole", "linear_view", {}, "lin", list(range(16, 32)), r"view/reshape"),
    ("view-sum-half-pair", "view_sum", {}, "a", [2], r"view/reshape"),
]  # fmt: skip


def _neutralised(model: nn.Module, spec: list[tuple[str, str, list[int]]]) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, side, idx in spec:
            m = ref.get_submodule(layer)
            if side == "in":
                m.weight[:, idx] = 0
            else:
                m.weight[idx] = 0
                if m.bias is not None:
                    m.bias[idx] = 0
    return ref


def _x() -> torch.Tensor:
    return torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(7))


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(out: object) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out  # type: ignore[index]


def _plan(model: nn.Module, root: str, removed: list[int]) -> CompressionPlan:
    size = model.get_submodule(root).weight.shape[0]
    keep = [i for i in range(size) if i not in removed]
    return CompressionPlan([KeepOutputs(root, keep)], meta={"input_shape": SHAPE})


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
def test_cut_is_exact(case: tuple) -> None:
    _, name, kwargs, root, removed, spec, saved = case
    model = build_graph(name, **kwargs)
    ref_model = _neutralised(model, spec)
    new = apply(_plan(model, root, removed), model, allow_output_change=name == "dict_out")
    x = _x()
    with torch.no_grad():
        ref, out = _logits(ref_model(x)), _logits(new(x))
        assert not torch.allclose(ref, _logits(model(x)), atol=1e-6)  # the neutralising matters
    assert (out - ref).abs().max().item() <= TOL
    assert _n(model) - _n(new) == saved
    # the check on a batch of the user's data (once per plan, mapped back to the original's
    # channel numbering) agrees: no false alarm, the same model
    user = 3 * torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(11))
    again = apply(_plan(model, root, removed), model, allow_output_change=name == "dict_out", check_inputs=user)  # fmt: skip
    with torch.no_grad():
        assert torch.equal(_logits(again(x)), out)


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_cut_is_refused_naming_the_cause(case: tuple) -> None:
    _, name, kwargs, root, removed, pattern = case
    model = build_graph(name, **kwargs)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PlanError, match=pattern) as info:
        apply(_plan(model, root, removed), model)
    assert "out of range" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lrn_cut_twice_keeps_original_neighbourhoods() -> None:
    model = build_graph("lrn")
    plan = CompressionPlan(
        [KeepOutputs("a", [0, 1, 3, 4, 5, 6, 7]), KeepOutputs("a", [0, 1, 2, 4, 5, 6])],
        meta={"input_shape": SHAPE},
    )  # removes original channels 2, then 4 (index 3 of the cut model)
    user = 3 * torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(11))
    new = apply(plan, model, check_inputs=user)  # the user-data check maps both cuts back
    ref = _neutralised(model, [("a", "out", [2, 4]), ("b", "in", [2, 4])])
    x = _x()
    with torch.no_grad():
        assert (new(x) - ref(x)).abs().max().item() <= TOL
    assert new.lrn.positions.tolist() == [0, 1, 3, 5, 6, 7]


def _swap_chunk_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a wrong index mapping: chunk consumers b and c get each other's columns."""
    real = _channels._map_checked

    def swapped(*args: object, **kwargs: object):  # noqa: ANN202
        cuts, zero_in, res = real(*args, **kwargs)
        model = args[0]
        b, c = model.b, model.c  # type: ignore[attr-defined]
        cuts[b]["in"], cuts[c]["in"] = {2}, {1}
        zero_in[b], zero_in[c] = {1}, {2}  # the neutralisation the plan defines stays right
        return cuts, zero_in, res

    monkeypatch.setattr(_channels, "_map_checked", swapped)


def test_self_check_refuses_a_wrong_index_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the mapping were wrong (chunk consumers swapped), the self-check must catch it."""
    _swap_chunk_consumers(monkeypatch)
    model = build_graph("chunk")
    with pytest.raises(PlanError, match=r"self-check failed.*\['a', 'b', 'c'\]"):
        apply(_plan(model, "a", [1, 10]), model)


def _dormant_chunk() -> nn.Module:
    """The chunk model with conv a silent on N(0, 1) inputs (bias -10, small positive weights):
    on the seeded random batch every channel after the ReLU is 0, so a wrong mapping is
    invisible there; on large positive inputs (images in 0..255) the channels are active."""
    model = build_graph("chunk")
    with torch.no_grad():
        model.a.weight.copy_(torch.rand(model.a.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.01 + 0.01)  # fmt: skip
        model.a.bias.fill_(-10.0)
        model.a.weight[[1, 10]] *= 0.5  # the two smallest l1 norms: one filter per chunk
    return model


def test_self_check_on_user_data_catches_what_the_random_batch_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _swap_chunk_consumers(monkeypatch)
    model = _dormant_chunk()
    apply(_plan(model, "a", [1, 10]), model)  # random batch only: the wrong model goes through
    user = torch.full((3, *SHAPE), 100.0) + torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))  # fmt: skip
    with pytest.raises(PlanError, match=r"self-check failed.*\['a', 'b', 'c'\]"):
        apply(_plan(model, "a", [1, 10]), model, check_inputs=user)


def test_compress_runs_the_self_check_on_the_users_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """compress keeps the first training inputs (read by its up-front checks anyway) and every
    surgery of the run self-checks on them: the same wrong mapping is refused through compress."""
    from torch.utils.data import DataLoader, TensorDataset

    from compactnn import compress, surgery

    gen = torch.Generator().manual_seed(0)
    x = torch.full((32, *SHAPE), 100.0) + torch.randn(32, *SHAPE, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    seen: list[object] = []
    real_apply = surgery.apply

    def spy(*args: object, **kwargs: object):  # noqa: ANN202
        seen.append(kwargs.get("check_inputs"))
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(surgery, "apply", spy)
    opts = {"input_shape": SHAPE, "layers": ["a"], "keep": [14], "finetune_epochs": 0}
    res = compress(_dormant_chunk(), "l1-norm", (train, train), max_drop=None, val_fraction=0.0, measure=False, **opts)  # fmt: skip
    assert seen and all(isinstance(t, torch.Tensor) for t in seen)
    assert torch.equal(seen[0], x[:CHECK_SAMPLES])  # from the first batch: no extra data pass
    assert res.model.a.out_channels == 14
    _swap_chunk_consumers(monkeypatch)
    with pytest.raises(PlanError, match=r"self-check failed"):
        compress(_dormant_chunk(), "l1-norm", (train, train), max_drop=None, val_fraction=0.0, measure=False, **opts)  # fmt: skip


def test_user_data_check_maps_repeated_cuts_back_to_the_original() -> None:
    """Two cuts of the same producer: the plan-level check on the user's batch composes the
    consumers' removed columns into the original numbering (a wrong composition would be a
    false alarm here)."""
    model = build_graph("chunk")
    plan = CompressionPlan(
        [
            KeepOutputs("a", [i for i in range(16) if i not in (1, 10)]),
            KeepOutputs("a", list(range(1, 7)) + list(range(8, 14))),  # original 0 and 8
        ],
        meta={"input_shape": SHAPE},
    )
    user = 3 * torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(11))
    new = apply(plan, model, check_inputs=user)
    ref = _neutralised(model, [("b", "in", [0, 1]), ("c", "in", [0, 2])])
    x = _x()
    with torch.no_grad():
        assert (new(x) - ref(x)).abs().max().item() <= TOL
    assert new.a.out_channels == 12 and new.b.in_channels == 6 and new.c.in_channels == 6


@pytest.mark.parametrize("swap", [False, True], ids=["b-first", "c-first"])
def test_compress_l1_norm_on_chunk_with_dead_filters_is_exact(swap: bool) -> None:
    """Issue 13 case 1 through compress: filters 1 and 10 of a made dead (one per chunk),
    l1-norm removes exactly them, so the pruned model equals the original in both orders."""
    from torch.utils.data import DataLoader, TensorDataset

    from compactnn import compress

    model = build_graph("chunk", swap=swap)
    with torch.no_grad():
        model.a.weight[[1, 10]] = 0
        model.a.bias[[1, 10]] = 0
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(16, *SHAPE, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    )
    loader = DataLoader(data, batch_size=8)
    res = compress(model, "l1-norm", (loader, loader), input_shape=SHAPE, layers=["a"], keep=[14], finetune_epochs=0, max_drop=None, measure=False)  # fmt: skip
    assert res.plan.actions[0].keep == tuple(i for i in range(16) if i not in (1, 10))
    x = _x()
    with torch.no_grad():
        assert (res.model(x) - model(x)).abs().max().item() <= TOL


def test_compress_on_dict_batches_cuts_exactly() -> None:
    """Dict batches (``{"image": x, "label": y}``) through compress with input_key: the cut of
    dead filters is exact and the self-check ran on the selected real inputs."""
    from torch.utils.data import DataLoader

    from compactnn import compress

    model = build_graph("chunk")
    with torch.no_grad():
        model.a.weight[[1, 10]] = 0
        model.a.bias[[1, 10]] = 0
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(16, *SHAPE, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    items = [{"image": x, "label": y} for x, y in zip(xs, ys, strict=True)]
    loader = DataLoader(items, batch_size=8)
    res = compress(model, "l1-norm", (loader, loader), input_key="image", layers=["a"], keep=[14], finetune_epochs=0, max_drop=None, measure=False)  # fmt: skip
    assert res.plan.actions[0].keep == tuple(i for i in range(16) if i not in (1, 10))
    x = _x()
    with torch.no_grad():
        assert (res.model(x) - model(x)).abs().max().item() <= TOL
