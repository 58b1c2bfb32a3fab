"""Tests of compactnn.models: shapes, exact parameter counts, overrides, errors, tracing, seeding."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch
import torch.fx
from torch import nn

from compactnn import models
from compactnn.errors import ConfigError, InputShapeError, UnknownNameError
from compactnn.zoo.models.base import _spatial_out  # the geometry helper, tested below

ALL = [
    "alexnet-caffe",
    "cifar-quick",
    "kiaee-cnn",
    "lenet-caffe",
    "lenet5",
    "nin",
    "resnet20",
    "resnet56",
    "spiral-mlp",
    "vgg16-cifar",
]
SMALL = [n for n in ALL if n != "alexnet-caffe"]  # cheap enough for a real forward pass
FLATTEN_HEAD = ["alexnet-caffe", "cifar-quick", "kiaee-cnn", "lenet-caffe", "lenet5", "vgg16-cifar"]

_CACHE: dict[str, nn.Module] = {}


def _default(name: str) -> nn.Module:
    """Default-built model (seed 0), shared by read-only tests; AlexNet lives on the meta device."""
    if name not in _CACHE:
        if name == "alexnet-caffe":
            with torch.device("meta"):
                _CACHE[name] = models.create(name, seed=0)
        else:
            _CACHE[name] = models.create(name, seed=0)
    return _CACHE[name]


def _device(name: str) -> str:
    return "meta" if name == "alexnet-caffe" else "cpu"


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Parameter counts from the layer shapes: (in, out, k) convs, (in, out) linears, BN = 2*C.
def conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = True) -> int:
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def fc(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(c: int) -> int:
    return 2 * c


def _resnet_params(n: int, projection: bool) -> int:
    total = conv(3, 16, 3, bias=False) + bn(16) + fc(64, 10)
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, planes, 3, bias=False) + conv(planes, planes, 3, bias=False)
            total += 2 * bn(planes)
            if projection and cin != planes:
                total += conv(cin, planes, 1, bias=False) + bn(planes)
            cin = planes
    return total


def _vgg16_params() -> int:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for w in widths:
        total += conv(cin, w, 3) + bn(w)
        cin = w
    return total + fc(512, 512) + fc(512, 512) + fc(512, 10)


EXPECTED_PARAMS = {
    # Given by the papers.
    "lenet-caffe": 431_080,  # SSR Table I "0.43M"; conv(1,20,5)+conv(20,50,5)+fc(800,500)+fc(500,10)
    "alexnet-caffe": 60_965_224,  # Zhou supplement Table 1 / text
    # Computed from the layer shapes (formulas re-checked in test_param_count_formula).
    "lenet5": 44_426,
    "spiral-mlp": 6_882,
    "cifar-quick": 145_578,  # the known Caffe cifar10_quick count
    "kiaee-cnn": 821_066,
    "nin": 994_826,
    "vgg16-cifar": 15_253_578,
    "resnet20": 272_474,  # = 269,722 (He et al. option A, "0.27M") + 2,752 projection params
    "resnet56": 855_770,  # = 853,018 (option A, "0.85M") + 2,752
}

FORMULAS = {
    "lenet-caffe": conv(1, 20, 5) + conv(20, 50, 5) + fc(800, 500) + fc(500, 10),
    "lenet5": conv(1, 6, 5) + conv(6, 16, 5) + fc(256, 120) + fc(120, 84) + fc(84, 10),
    "spiral-mlp": fc(2, 80) + fc(80, 80) + fc(80, 2),
    "cifar-quick": conv(3, 32, 5)
    + conv(32, 32, 5)
    + conv(32, 64, 5)
    + fc(64 * 4 * 4, 64)
    + fc(64, 10),
    "kiaee-cnn": conv(3, 96, 3)
    + conv(96, 128, 3)
    + conv(128, 256, 3)
    + conv(256, 64, 3)
    + fc(1024, 256)
    + fc(256, 10),
    "nin": conv(3, 192, 3)
    + conv(192, 160, 1)
    + conv(160, 96, 1)
    + conv(96, 192, 3)
    + conv(192, 192, 3)
    + 2 * conv(192, 192, 1)
    + conv(192, 192, 3)
    + conv(192, 192, 1)
    + conv(192, 10, 1),
    "vgg16-cifar": _vgg16_params(),
    "alexnet-caffe": conv(3, 96, 11)
    + conv(96, 256, 5, groups=2)
    + conv(256, 384, 3)
    + conv(384, 384, 3, groups=2)
    + conv(384, 256, 3, groups=2)
    + fc(9216, 4096)
    + fc(4096, 4096)
    + fc(4096, 1000),
    "resnet20": _resnet_params(3, projection=True),
    "resnet56": _resnet_params(9, projection=True),
}


def test_list_models_is_sorted_registry() -> None:
    assert models.list_models() == ALL


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_on_default_input(name: str) -> None:
    m = _default(name).eval()
    spec = models.model_spec(name)
    shape = models.default_input_shape(name)
    assert m.input_shape == shape and m.model_name == name
    x = torch.randn(2, *shape) if name != "alexnet-caffe" else torch.empty(2, *shape, device="meta")
    with torch.no_grad():
        y = m(x)
    assert tuple(y.shape) == (2, spec.num_classes)
    if name != "alexnet-caffe":
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_exact_parameter_count(name: str) -> None:
    assert _n_params(_default(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", ALL)
def test_param_count_formula(name: str) -> None:
    assert FORMULAS[name] == EXPECTED_PARAMS[name]


def test_resnet_option_a_reference_counts() -> None:
    # He et al. 2016: ResNet-20 0.27M / ResNet-56 0.85M with parameter-free (option A) shortcuts.
    assert _resnet_params(3, projection=False) == 269_722
    assert _resnet_params(9, projection=False) == 853_018
    assert EXPECTED_PARAMS["resnet20"] - 269_722 == conv(16, 32, 1, bias=False) + bn(32) + conv(
        32, 64, 1, bias=False
    ) + bn(64)


def test_alexnet_layers_match_zhou_table1() -> None:
    m = _default("alexnet-caffe")
    per_layer = {
        n: sum(p.numel() for p in mod.parameters())
        for n, mod in m.named_children()
        if isinstance(mod, nn.Conv2d | nn.Linear)
    }
    # Zhou Table 1 "total": 34.94K, 307.46K, 885.12K, 663.94K, 442.62K, 37.75M, 16.78M, 4.10M.
    assert per_layer == {
        "conv1": 34_944,
        "conv2": 307_456,
        "conv3": 885_120,
        "conv4": 663_936,
        "conv5": 442_624,
        "fc6": 37_752_832,
        "fc7": 16_781_312,
        "fc8": 4_097_000,
    }
    assert [m.conv2.groups, m.conv4.groups, m.conv5.groups] == [2, 2, 2]
    assert m.conv2.weight.shape[1] == 48 and m.conv4.weight.shape[1] == 192
    assert m.fc6.in_features == 6 * 6 * 256 == 9216
    assert sum(isinstance(c, nn.LocalResponseNorm) for c in m.children()) == 2


def test_alexnet_zhou_neuron_removal_accounting() -> None:
    m = _default("alexnet-caffe")
    removed = 2996
    fc6_removed = m.fc6.in_features * removed + removed  # weight rows + biases of fc6
    fc7_removed = removed * m.fc7.out_features  # matching input columns of fc7
    total = fc6_removed + fc7_removed
    assert fc6_removed == 27_614_132 and fc7_removed == 12_271_616
    assert total == 39_885_748
    assert round(100 * total / _n_params(m), 2) == 65.42
    assert round(total * 4 / 2**20, 1) == 152.2
    # The same number from the shapes of the cut layers.
    kept = m.fc6.out_features - removed
    new_fc = fc(m.fc6.in_features, kept) + fc(kept, m.fc7.out_features)
    assert _n_params(m.fc6) + _n_params(m.fc7) - new_fc == total


def test_alexnet_caffe_ceil_pooling_accepts_224_when_asked() -> None:
    with torch.device("meta"):
        m = models.create("alexnet-caffe", input_size=224)
        y = m(torch.empty(1, 3, 224, 224))
    assert m.fc6.in_features == 9216 and tuple(y.shape) == (1, 1000)


@pytest.mark.slow
def test_alexnet_real_forward_227() -> None:
    m = models.create("alexnet-caffe", seed=0).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 227, 227))
    assert tuple(y.shape) == (1, 1000) and torch.isfinite(y).all()


def test_kiaee_and_nin_kernel_counts_match_kiaee_table3() -> None:
    def kernels(m: nn.Module, names: list[str]) -> list[int]:
        return [getattr(m, n).in_channels * getattr(m, n).out_channels for n in names]

    cnn = _default("kiaee-cnn")
    assert kernels(cnn, ["conv1", "conv2", "conv3", "conv4"]) == [288, 12288, 32768, 16384]
    assert cnn.fc1.in_features == 1024 and cnn.fc1.out_features == 256
    nin = _default("nin")
    assert kernels(nin, ["conv1", "conv4", "conv5", "conv8"]) == [576, 18432, 36864, 36864]
    widths = [getattr(nin, f"conv{i}").out_channels for i in range(1, 11)]
    assert widths == [192, 160, 96, 192, 192, 192, 192, 192, 192, 10]


def test_zhou_lenet_and_cifar_quick_shapes() -> None:
    lenet = _default("lenet-caffe")
    assert (lenet.conv1.out_channels, lenet.conv2.out_channels, lenet.fc1.out_features) == (
        20,
        50,
        500,
    )
    assert lenet.fc1.in_features == 50 * 4 * 4  # Zhou Table 2 "500 filters 4x4"
    quick = _default("cifar-quick")
    assert quick.fc1.in_features == 64 * 4 * 4  # Zhou Table 3 "64 filters 4x4"
    assert [type(quick.pool1), type(quick.pool2), type(quick.pool3)] == [
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AvgPool2d,
    ]


def test_resnet_structure() -> None:
    for name, n in (("resnet20", 3), ("resnet56", 9)):
        m = _default(name)
        for i, planes in enumerate((16, 32, 64), start=1):
            layer = getattr(m, f"layer{i}")
            assert len(layer) == n
            for j, block in enumerate(layer):
                assert isinstance(block, models.BasicBlock)
                assert block.conv1.out_channels == block.conv2.out_channels == planes
                has_proj = isinstance(block.shortcut, nn.Sequential)
                assert has_proj == (i > 1 and j == 0)
                if has_proj:
                    assert block.shortcut.conv.kernel_size == (1, 1)
                    assert block.shortcut.conv.stride == (2, 2)
                    assert isinstance(block.shortcut.bn, nn.BatchNorm2d)
        n_conv3 = sum(isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())
        assert n_conv3 == 6 * n + 1  # plus the fc layer: depth 6n + 2


def test_lenet5_reproduces_ddlr_dense_sizes() -> None:
    mnist = _default("lenet5")
    assert [mnist.fc1.in_features, mnist.fc2.in_features, mnist.fc3.in_features] == [256, 120, 84]
    cifar = models.create("lenet5", in_channels=3, input_size=32)
    assert [cifar.fc1.in_features, cifar.fc2.in_features, cifar.fc3.in_features] == [400, 120, 84]
    assert _n_params(cifar) == conv(3, 6, 5) + conv(6, 16, 5) + fc(400, 120) + fc(120, 84) + fc(
        84, 10
    )
    assert tuple(cifar(torch.randn(2, 3, 32, 32)).shape) == (2, 10)


@pytest.mark.parametrize("name", ALL)
def test_num_classes_and_in_channels_overrides(name: str) -> None:
    dev = _device(name)
    with torch.device(dev):
        m = models.create(name, in_channels=5, num_classes=7)
    shape = models.default_input_shape(name, in_channels=5)
    assert shape[0] == 5 and m.input_shape == shape
    with torch.no_grad():
        y = m.eval()(torch.zeros(2, *shape, device=dev))
    assert tuple(y.shape) == (2, 7)
    first = next(x for x in m.modules() if isinstance(x, nn.Conv2d | nn.Linear))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == 5


def test_lenet_caffe_with_3_channels_32x32() -> None:
    m = models.create("lenet-caffe", in_channels=3, input_size=32)
    assert m.fc1.in_features == 50 * 5 * 5
    assert models.default_input_shape("lenet-caffe", in_channels=3, input_size=32) == (3, 32, 32)
    assert tuple(m(torch.randn(2, 3, 32, 32)).shape) == (2, 10)


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("lenet-caffe", [16, 17, 24, 29, 33]),
        ("lenet5", [16, 20, 31, 32]),
        ("cifar-quick", [8, 9, 13, 24, 31]),
        ("kiaee-cnn", [8, 13, 24, 40]),
        ("vgg16-cifar", [32, 47, 64]),
        ("nin", [4, 5, 9, 17, 40]),
        ("resnet20", [1, 7, 16]),
    ],
)
def test_input_size_override_matches_real_forward(name: str, sizes: list[int]) -> None:
    # The analytically computed flatten size must be what the layers really produce.
    for s in sizes:
        m = models.create(name, input_size=s).eval()
        assert m.input_shape[1:] == (s, s)
        with torch.no_grad():
            assert tuple(m(torch.zeros(1, m.input_shape[0], s, s)).shape) == (1, 10)


@pytest.mark.parametrize("name", ["lenet-caffe", "lenet5", "cifar-quick", "kiaee-cnn", "nin"])
def test_analytic_geometry_matches_torch(name: str) -> None:
    # The flatten size / minimum input size computed in __init__ equal torch's, size by size
    # (ceil-mode pooling included).
    m = _default(name).eval()
    children = dict(m.named_children())
    stop = list(children).index("flatten" if name != "nin" else "pool3")
    feats = m[:stop]
    c = m.input_shape[0]
    for size in range(1, 41):
        out, bad = _spatial_out(size, children)
        try:
            with torch.no_grad():
                real = feats(torch.zeros(1, c, size, size))
        except RuntimeError:
            assert bad is not None, f"{name}: torch fails at {size} but analytic size is {out}"
            continue
        assert bad is None and real.shape[-2:] == (out, out), f"{name} at {size}"


@pytest.mark.parametrize(
    "name, smallest", [("lenet-caffe", 16), ("cifar-quick", 8), ("nin", 4), ("kiaee-cnn", 8)]
)
def test_input_size_too_small_names_minimum(name: str, smallest: int) -> None:
    with pytest.raises(ConfigError, match=rf"input_size >= {smallest}\."):
        models.create(name, input_size=smallest - 1)
    m = models.create(name, input_size=smallest).eval()
    with torch.no_grad():
        assert tuple(m(torch.zeros(1, m.input_shape[0], smallest, smallest)).shape) == (1, 10)


def test_input_size_too_small_message() -> None:
    with pytest.raises(ConfigError, match=r"'input_size' parameter of model 'nin'"):
        models.create("nin", input_size=2)


def test_global_pool_models_accept_other_sizes() -> None:
    for name in ("nin", "resnet20"):
        m = _default(name).eval()
        with torch.no_grad():
            assert tuple(m(torch.zeros(2, 3, 40, 24)).shape) == (2, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"num_classes": 0},
        {"num_classes": 2.0},
        {"input_size": True},
        {"seed": -1},
        {"seed": "1"},
    ],
)
def test_invalid_overrides_raise_config_error(kwargs: dict) -> None:
    key = next(iter(kwargs))
    with pytest.raises(ConfigError, match=rf"'{key}' parameter of model 'lenet-caffe'"):
        models.create("lenet-caffe", **kwargs)


def test_mlp_rejects_input_size() -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        models.create("spiral-mlp", input_size=8)
    with pytest.raises(ConfigError):
        models.default_input_shape("spiral-mlp", input_size=8)
    assert models.default_input_shape("spiral-mlp", in_channels=3) == (3,)


def test_unknown_name() -> None:
    for fn in (models.create, models.model_spec, models.default_input_shape):
        with pytest.raises(UnknownNameError, match=r"Unknown model 'lenet-7'.*lenet-caffe"):
            fn("lenet-7")
    with pytest.raises(KeyError):  # UnknownNameError is also a KeyError
        models.create("LeNet-Caffe")


def test_model_spec_frozen_with_defaults() -> None:
    spec = models.model_spec("alexnet-caffe")
    assert (spec.in_channels, spec.num_classes, spec.input_size) == (3, 1000, 227)
    assert "zhou2016" in spec.paper and spec.description
    assert models.model_spec("spiral-mlp").input_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 10  # type: ignore[misc]
    for name in ALL:
        s = models.model_spec(name)
        assert s.name == name
        want = (
            (s.in_channels,)
            if s.input_size is None
            else (s.in_channels, s.input_size, s.input_size)
        )
        assert models.default_input_shape(name) == want


@pytest.mark.parametrize("name", ALL)
def test_wrong_channels_raise_input_shape_error(name: str) -> None:
    m = _default(name)
    shape = models.default_input_shape(name)
    bad = (shape[0] + 1, *shape[1:])
    first = next(iter(m.named_children()))[0]
    with pytest.raises(InputShapeError, match=rf"{name!r}.*{first!r}.*in_channels={bad[0]}"):
        m(torch.zeros(2, *bad, device=_device(name)))


@pytest.mark.parametrize("name", FLATTEN_HEAD)
def test_wrong_spatial_size_raises_for_flatten_models(name: str) -> None:
    m = _default(name)
    c, h, _ = models.default_input_shape(name)
    with pytest.raises(InputShapeError, match=rf"input_size={h + 4}"):
        m(torch.zeros(1, c, h + 4, h + 4, device=_device(name)))


def test_wrong_rank_and_type() -> None:
    m = _default("lenet-caffe")
    with pytest.raises(InputShapeError, match=r"\(N, 1, 28, 28\).*unsqueeze"):
        m(torch.zeros(1, 28, 28))
    with pytest.raises(InputShapeError, match="torch.Tensor"):
        m([[0.0]])
    mlp = _default("spiral-mlp")
    with pytest.raises(InputShapeError, match=r"'fc1' takes 2 input features"):
        mlp(torch.zeros(4, 3))
    with pytest.raises(InputShapeError):
        mlp(torch.zeros(4, 2, 1))
    with pytest.raises(InputShapeError, match="'resnet20'.*'conv1'"):
        _default("resnet20")(torch.zeros(2, 1, 32, 32))


@pytest.mark.parametrize("name", ALL)
def test_fx_trace_is_faithful_and_module_based(name: str) -> None:
    m = _default(name).eval()
    gm = torch.fx.symbolic_trace(m)
    called = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    leaves = {n for n, x in m.named_modules() if len(list(x.children())) == 0}
    # Every leaf module is called exactly once (no shared ReLU/pool), no functional ReLU/flatten.
    assert set(called) == leaves and set(called.values()) == {1}
    funcs = {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}
    assert funcs <= {__import__("operator").add}
    if name != "alexnet-caffe":
        x = torch.randn(2, *models.default_input_shape(name))
        with torch.no_grad():
            torch.testing.assert_close(gm(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith("resnet")])
def test_every_hidden_conv_linear_is_followed_by_relu(name: str) -> None:
    # In forward order, each Conv2d/Linear except the classifier reaches a ReLU through
    # BN/pool/dropout/LRN only: what "layer followed by ReLU" code expects. (ResNet blocks end
    # in an add; their structure is checked in test_resnet_structure.)
    order = [x for x in _default(name).children()]
    weighted = [i for i, x in enumerate(order) if isinstance(x, nn.Conv2d | nn.Linear)]
    passthrough = (nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.LocalResponseNorm)
    for i in weighted[:-1]:
        j = i + 1
        while isinstance(order[j], passthrough):
            j += 1
        assert isinstance(order[j], nn.ReLU), f"{name}: layer {i} not followed by ReLU"


@pytest.mark.parametrize("name", ["lenet-caffe", "resnet20", "nin"])
def test_seeded_init_is_deterministic_and_leaves_global_rng(name: str) -> None:
    state = torch.get_rng_state()
    a = models.create(name, seed=3).state_dict()
    b = models.create(name, seed=3).state_dict()
    c = models.create(name, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    torch.manual_seed(11)
    d = models.create(name).state_dict()
    torch.manual_seed(11)
    e = models.create(name).state_dict()
    assert all(torch.equal(d[k], e[k]) for k in d)


def test_he_initialisation_statistics() -> None:
    m = _default("vgg16-cifar")
    w = m.conv4_1.weight  # 512 x 256 x 3 x 3 = 1.18M samples
    assert abs(w.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.01
    assert abs(w.mean().item()) < 1e-3
    assert torch.count_nonzero(m.conv4_1.bias) == 0
    assert torch.equal(m.bn4_1.weight, torch.ones(512))


def test_slicing_gives_plain_sequential() -> None:
    m = _default("lenet-caffe")
    head = m[:3]
    assert type(head) is nn.Sequential and list(dict(head.named_children())) == [
        "conv1",
        "relu1",
        "pool1",
    ]
    assert tuple(head(torch.zeros(1, 1, 28, 28)).shape) == (1, 20, 12, 12)
    assert m[0] is m.conv1


def test_deepcopy_and_pickle_keep_behaviour() -> None:
    import copy
    import io

    for name in ("lenet-caffe", "resnet20"):
        m = _default(name).eval()
        x = torch.randn(2, *m.input_shape)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        for clone in (copy.deepcopy(m), torch.load(buf, weights_only=False)):
            torch.testing.assert_close(clone(x), m(x), rtol=0, atol=0)
            with pytest.raises(InputShapeError):
                clone(torch.zeros(2, 2, 32, 32))
