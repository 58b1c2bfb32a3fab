"""Shipping a compressed model: ONNX + onnxruntime, TorchScript, compact checkpoint, latency."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn import export
from compactnn.errors import CheckpointError, ConfigError, ExportError
from compactnn.layers import (
    LowRankConv2d,
    LowRankLinear,
    SelectInputs,
    SparseConv2d,
    SparseLinear,
    SparsePlusLowRank,
)
from compactnn.methods import list_methods
from compactnn.train import TrainConfig
from compactnn.train import train as train_model


def _registry_fast() -> dict[str, dict[str, Any]]:
    """The quick settings every registered method declares in the registry conformance suite."""
    path = Path(__file__).parent / "conformance" / "test_registry.py"
    spec = importlib.util.spec_from_file_location("_export_registry_fast", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return dict(mod.FAST)


FAST: dict[str, dict[str, Any]] = {
    "ssr": dict(max_outer=2, w_steps=3, finetune_epochs=1, finetune_steps_per_epoch=3),
    "admm-sparse": dict(xi=2, steps_per_epoch=3, finetune_epochs=1, n_mu=2),
    "random": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "l1-norm": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "apoz": dict(finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
    "magnitude": dict(finetune_epochs=1, finetune_steps_per_epoch=3),
    "taylor": dict(finetune_epochs=1, finetune_steps_per_epoch=3, calib_batches=2),
    "ddlr": dict(calib_batches=2, max_rows=512),
    "net-trim": dict(calib_batches=2, max_rows=512),
}
FAST = {**_registry_fast(), **FAST}


class SmallNet(nn.Module):
    """Conv -> BN -> ReLU -> pool -> conv -> flatten -> FC -> FC (a user's own class)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.conv2(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _fresh() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet()


@pytest.fixture(scope="module")
def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(ds, batch_size=160)


@pytest.fixture(scope="module")
def trained(data: tuple[DataLoader, DataLoader]) -> nn.Module:
    model = _fresh()
    train_model(model, data[0], config=TrainConfig(epochs=4, lr=0.05), progress=False)
    return model.eval()


def _samples(data: tuple[DataLoader, DataLoader]) -> torch.Tensor:
    return next(iter(data[1]))[0][:64]


def _zoo() -> dict[str, nn.Module]:
    """One model per deployable layer."""
    torch.manual_seed(0)
    w = torch.randn(6, 16) * (torch.rand(6, 16) < 0.3)
    wc = torch.randn(6, 4, 3, 3) * (torch.rand(6, 4, 3, 3) < 0.3)
    wg = torch.randn(6, 2, 3, 3) * (torch.rand(6, 2, 3, 3) < 0.5)
    lin = nn.Linear(16, 6)
    return {
        "lowrank-linear": nn.Sequential(nn.Flatten(), LowRankLinear(16, 6, 2)),
        "lowrank-conv": nn.Sequential(LowRankConv2d(1, 4, 2, 3, padding=1), nn.Flatten()),
        "sparse-linear": nn.Sequential(nn.Flatten(), SparseLinear(w, torch.randn(6))),
        "sparse-conv": nn.Sequential(
            nn.Conv2d(1, 4, 1), SparseConv2d(wc, torch.randn(6), stride=2, padding=1)
        ),
        "sparse-conv-grouped": nn.Sequential(
            nn.Conv2d(1, 4, 1), SparseConv2d(wg, None, padding=(1, 0), groups=2)
        ),
        "sparse+lowrank": nn.Sequential(
            nn.Flatten(),
            SparsePlusLowRank(SparseLinear(w), LowRankLinear(16, 6, 2)),
        ),
        "select-inputs": nn.Sequential(
            nn.Conv2d(1, 4, 1), SelectInputs([0, 2], nn.Conv2d(2, 3, 3)), nn.Flatten()
        ),
        "dense": nn.Sequential(nn.Flatten(), lin),
    }


def _layer_classes() -> list[type]:
    """Every public layer class of compactnn.layers (new ones are picked up automatically)."""
    import inspect

    import compactnn.layers as L

    return [
        c
        for n, c in vars(L).items()
        if inspect.isclass(c)
        and issubclass(c, nn.Module)
        and c.__module__ == L.__name__
        and not n.startswith("_")
    ]


def _sparse_linear() -> nn.Linear:
    torch.manual_seed(1)
    lin = nn.Linear(16, 6)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(6, 16) < 0.4)
        lin.weight[:, 3] = 0  # a whole zero column
    return lin


def _sparse_conv() -> nn.Conv2d:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(6, 4, 3, 3) < 0.4)
        conv.weight[:, 1] = 0  # a whole zero input channel
    return conv


def _wrap(layer: nn.Module, kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A model around ``layer`` taking (1, 4, 4) images: Flatten for a 16-input linear layer,
    a 1x1 conv to 4 channels for a 4-channel conv."""
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), layer), (1, 4, 4)
    return nn.Sequential(nn.Conv2d(1, 4, 1), layer, nn.Flatten()), (1, 4, 4)


def _from_dense_examples(cls: type) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Examples built through the class's ``from_dense`` (whatever its signature), in every
    ``form=`` the class offers: how a new layer class is covered without editing this file."""
    import inspect

    fn = getattr(cls, "from_dense", None)
    if fn is None:
        return []
    params = inspect.signature(fn).parameters
    forms: tuple[Any, ...] = (None,)
    if "form" in params:
        from compactnn.layers import COLUMN_FORMS

        forms = COLUMN_FORMS
    out = []
    for kind, dense in (("linear", _sparse_linear()), ("conv", _sparse_conv())):
        for form in forms:
            kw = {} if form is None else {"form": form}
            for args in ((dense,), (dense.weight.detach(), dense.bias.detach()),
                         (dense, dense.weight.detach(), dense.bias.detach())):  # fmt: skip
                try:
                    layer = fn(*args, **kw)
                except (TypeError, ValueError, AttributeError, RuntimeError, ConfigError):
                    continue
                if kind == "conv" and isinstance(layer, nn.Module):
                    try:  # a linear-only class may accept a conv weight: keep what runs
                        _wrap(layer, kind)[0](torch.randn(2, 1, 4, 4))
                    except (RuntimeError, ValueError):
                        continue
                out.append((f"{kind}-{form or 'default'}", *_wrap(layer, kind)))
                break
    return out


def _layer_examples(cls: type) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Models holding ``cls``: hand-made for the wrappers, ``from_dense`` for the rest."""
    zoo = _zoo()
    by_class = {
        "LowRankLinear": ["lowrank-linear"],
        "LowRankConv2d": ["lowrank-conv"],
        "SparseLinear": ["sparse-linear"],
        "SparseConv2d": ["sparse-conv", "sparse-conv-grouped"],
        "SparsePlusLowRank": ["sparse+lowrank"],
        "SelectInputs": ["select-inputs"],
    }
    out = [(n, zoo[n], (1, 4, 4)) for n in by_class.get(cls.__name__, [])]
    if cls.__name__ == "SparsePlusLowRank":  # SLR's form: a column-sparse branch + low rank
        from compactnn.layers import ColumnSparseLinear

        w = _sparse_linear().weight.detach()
        branch = ColumnSparseLinear.from_dense(w)
        lr = SparsePlusLowRank(branch, LowRankLinear(16, 6, 2))
        out.append(("column-sparse+lowrank", nn.Sequential(nn.Flatten(), lr), (1, 4, 4)))
    if cls.__name__ in ("FusedSparseLowRankConv2d", "FusedSparseLowRankLinear"):
        out += _fused_examples(cls)
    return out + _from_dense_examples(cls)


def _fused_examples(cls: type) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """SLR's fused layer (one GEMM over [P x; X_K]) in each of its forms, with and without
    the low-rank part."""
    from compactnn.layers import (
        FUSED_FORMS,
        ColumnSparseConv2d,
        ColumnSparseLinear,
        FusedSparseLowRankConv2d,
    )

    if cls is FusedSparseLowRankConv2d:
        conv = _sparse_conv()
        branch = ColumnSparseConv2d.from_dense(conv, conv.weight.detach())
        lowrank = LowRankConv2d(4, 6, 2, 3, padding=1)
        out = []
        for form in FUSED_FORMS:
            pair = cls.from_module(SparsePlusLowRank(branch, lowrank), form=form)  # type: ignore[attr-defined]
            out.append((f"fused-conv-{form}", _wrap(pair, "conv")[0], (1, 4, 4)))
        alone = ColumnSparseConv2d.from_dense(conv, conv.weight.detach(), conv.bias.detach())
        out.append(("fused-conv-rank0", _wrap(cls.from_module(alone), "conv")[0], (1, 4, 4)))  # type: ignore[attr-defined]
        return out
    lin = _sparse_linear()
    pair = SparsePlusLowRank(ColumnSparseLinear.from_dense(lin.weight.detach()),
                             LowRankLinear(16, 6, 2))  # fmt: skip
    return [("fused-linear", _wrap(cls.from_module(pair), "linear")[0], (1, 4, 4))]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", _layer_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("sparse", export.SPARSE_FORMS)
def test_every_layer_class_exports_to_onnx_and_torchscript(
    cls: type, sparse: str, tmp_path
) -> None:
    """Each deployable class of compactnn.layers (this list grows by itself) exports to ONNX
    and TorchScript in every sparse form, with parity, and the batch stays dynamic."""
    examples = _layer_examples(cls)
    assert examples, (
        f"{cls.__name__}: no example model; give it a from_dense(nn.Linear | nn.Conv2d | weight) "
        "constructor or add one to _layer_examples in tests/test_export.py"
    )
    for name, model, shape in examples:
        model = model.eval()
        assert any(isinstance(m, cls) for m in model.modules()), name
        x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
        rec = export.to_onnx(model, tmp_path / "m.onnx", x[:2], samples=x, sparse=sparse)
        assert rec["max_abs_diff"] <= 1e-4, name
        ts = export.to_torchscript(model, tmp_path / "m.pt", x[:2], samples=x, sparse=sparse)
        assert ts["max_abs_diff"] <= 1e-4, name
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
        assert loaded(torch.randn(3, *shape)).shape[0] == 3, name


@pytest.mark.parametrize("name", list(_zoo()))
@pytest.mark.parametrize("sparse", export.SPARSE_FORMS)
def test_every_layer_exports_to_onnx_and_torchscript(name: str, sparse: str, tmp_path) -> None:
    model = _zoo()[name].eval()
    x = torch.randn(3, 1, 4, 4)
    rec = export.to_onnx(model, tmp_path / "m.onnx", x[:2], samples=x, sparse=sparse)
    assert rec["max_abs_diff"] <= 1e-4 and rec["bytes"] > 0 and rec["opset"] >= 17
    ts = export.to_torchscript(model, tmp_path / "m.pt", x[:2], samples=x, sparse=sparse)
    assert ts["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert loaded(torch.randn(5, 1, 4, 4)).shape[0] == 5  # batch stays dynamic


def test_gather_form_stores_only_nonzeros() -> None:
    model = _zoo()["sparse-linear"]
    nnz = model[1].nnz
    form = export.export_form(model, sparse="gather")
    assert isinstance(form[1], export.GatherLinear) and form[1].values.numel() == nnz
    dense = export.export_form(model, sparse="dense")
    assert isinstance(dense[1], nn.Linear)
    assert isinstance(model[1], SparseLinear)  # the original is untouched


def test_export_bad_inputs_are_clear(tmp_path) -> None:
    model = _zoo()["dense"]
    with pytest.raises(ConfigError, match="'sparse' parameter"):
        export.export_form(model, sparse="csr")
    with pytest.raises(ExportError, match="floating-point batch"):
        export.to_onnx(model, tmp_path / "m.onnx", torch.ones(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="opset"):
        export.to_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 4, 4), opset=11)
    with pytest.raises(ExportError, match="one tensor output"):
        export.to_onnx(_TwoOut(), tmp_path / "m.onnx", torch.randn(2, 4))


class _TwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


@pytest.mark.parametrize("method", list_methods())
def test_every_method_ships(method: str, trained, data, tmp_path) -> None:
    """ONNX, TorchScript and the compact checkpoint of every method's output agree."""
    res = compactnn.compress(
        trained, method, data, progress=False, on_drop="warn", measure=False, **FAST.get(method, {})
    )
    x = _samples(data)
    rec = export.to_onnx(res.model, tmp_path / "model.onnx", x[:2], samples=x)
    assert rec["max_abs_diff"] <= 1e-4
    export.to_torchscript(res.model, tmp_path / "model.pt", x[:2], samples=x)
    info = export.save_checkpoint(res.model, res.plan, tmp_path, input_shape=(1, 8, 8))
    (tmp_path / "plan.safetensors").unlink()  # the compact checkpoint does not need it
    loaded = compactnn.load(tmp_path, model=_fresh())
    assert info["bytes"] == sum(info["files"].values())
    # same structure (shapes, ranks, supports) and the same function
    want = {k: tuple(v.shape) for k, v in res.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in loaded.state_dict().items()}
    assert got == want
    for k, v in res.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k].to(v.dtype), v), k
    with torch.no_grad():
        assert torch.allclose(loaded(x), res.model.eval()(x), atol=1e-6)


def test_checkpoint_narrows_indices_and_loads_without_pickle(tmp_path) -> None:
    from safetensors import safe_open

    from compactnn.plan import CompressionPlan, SetWeights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 2))
    w = model[1].weight.detach() * (torch.rand(6, 16) < 0.3)
    plan = CompressionPlan(
        [SetWeights("1", w, model[1].bias.detach(), sparse=True)], meta={"input_shape": [16]}
    )
    small = compactnn.surgery.apply(plan, model)
    export.save_checkpoint(small, plan, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("1.indices").dtype == torch.int32
    back = compactnn.load(tmp_path, model=nn.Sequential(*[type(m)(*_args(m)) for m in model]))
    assert isinstance(back[1], SparseLinear) and back[1].indices.dtype == torch.long
    assert back[1].nnz == small[1].nnz
    x = torch.randn(4, 16)
    assert torch.allclose(back(x), small(x), atol=1e-6)
    # the files hold no pickle: plan.json is JSON, model.safetensors a safetensors header
    json.loads((tmp_path / "plan.json").read_text())
    assert b"\x80\x04" not in (tmp_path / "model.safetensors").read_bytes()[:8]


def _args(m: nn.Module) -> tuple[Any, ...]:
    if isinstance(m, nn.Linear):
        return (m.in_features, m.out_features)
    return ()


def test_load_bad_inputs_are_one_clear_error(tmp_path, trained, data) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        compactnn.load(tmp_path, model=_fresh())
    res = compactnn.compress(
        trained, "l1-norm", data, progress=False, on_drop="warn", measure=False,
        ratio=0.5, finetune_epochs=0,
    )  # fmt: skip
    export.save_checkpoint(res.model, res.plan, tmp_path, input_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="model=<a fresh instance"):
        compactnn.load(tmp_path, model="SmallNet")  # type: ignore[arg-type]
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(CheckpointError, match="does not fit|does not match"):
        compactnn.load(tmp_path, model=wrong)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        compactnn.load(tmp_path, model=_fresh())


def test_artifacts_run_in_a_fresh_process_without_compactnn(tmp_path) -> None:
    model = _zoo()["sparse+lowrank"].eval()
    x = torch.randn(7, 1, 4, 4)
    export.to_onnx(model, tmp_path / "m.onnx", x[:2])
    export.to_torchscript(model, tmp_path / "m.pt", x[:2])
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    code = f"""
import sys, numpy as np, onnxruntime as ort, torch
sys.modules['compactnn'] = None  # importing compactnn must not be needed
d = {str(tmp_path)!r}
x, y = torch.load(d + '/x.pt'), torch.load(d + '/y.pt')
s = ort.InferenceSession(d + '/m.onnx', providers=['CPUExecutionProvider'])
a = s.run(None, {{'input': x.numpy()}})[0]
b = torch.jit.load(d + '/m.pt')(x).detach().numpy()
assert np.abs(a - y.numpy()).max() <= 1e-4 and np.abs(b - y.numpy()).max() <= 1e-4
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_layer_speed_and_densify() -> None:
    model = _zoo()["sparse+lowrank"].eval()
    x = torch.randn(8, 1, 4, 4)
    rows = export.layer_speed(model, x, repeats=3, warmup=1)
    assert [r["name"] for r in rows] == ["1"]
    assert {"ms", "dense_ms", "slower"} <= set(rows[0])
    dense = export.densify(model, ["1"])
    assert isinstance(dense[1], nn.Linear)
    assert torch.allclose(dense(x), model(x), atol=1e-5)


def test_onnx_latency(tmp_path) -> None:
    model = _zoo()["lowrank-conv"].eval()
    x = torch.randn(4, 1, 4, 4)
    export.to_onnx(model, tmp_path / "m.onnx", x)
    lat = export.onnx_latency(tmp_path / "m.onnx", x, repeats=3, warmup=1)
    assert lat.batch_size == 4 and lat.median_ms > 0 and lat.threads == 1


@pytest.mark.slow  # fast suite: tests/test_package.py imports every module, then checks this
def test_export_module_imports_onnx_lazily() -> None:
    code = "import sys, compactnn.export; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_fixture_path_is_this_file() -> None:
    assert Path(__file__).name == "test_export.py"
