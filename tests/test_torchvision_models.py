"""torchvision ResNet-18 and MobileNetV2 (reduced width, small-image stems) end to end from the
command line with only --factory, --data, --target (and --method): every residual-coupled group
and the depthwise convs' producers are cut by default, and the shipped ONNX / TorchScript run in
a process where compactnn cannot be imported (issue 35)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import compactnn
from compactnn import budget
from compactnn.cli import main

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="torchvision is not installed (make venv installs torchvision==0.28.0 --no-deps)",
)
SHAPE = (1, 16, 16)


def tiny_images(n: int = 192, seed: int = 0) -> dict[str, TensorDataset]:
    """16x16 one-channel images whose class is the brighter quadrant of three."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, (c // 2) * 8 : (c // 2) * 8 + 8, (c % 2) * 8 : (c % 2) * 8 + 8] += 1.5
    return {"train": TensorDataset(x, y), "test": TensorDataset(x[:64], y[:64])}


_CHECK = r"""
import sys, numpy as np, onnxruntime as ort, torch
sys.modules["compactnn"] = None  # a process that cannot import compactnn
d = sys.argv[1]
ref = np.load(d + "/ref.npz")
s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
a = s.run(None, {"input": ref["x"]})[0]
b = torch.jit.load(d + "/model.pt")(torch.from_numpy(ref["x"])).detach().numpy()
print(max(float(np.abs(a - ref["y"]).max()), float(np.abs(b - ref["y"]).max())))
"""


def _compress(tmp_path: Path, factory: str, kwargs: str, method: str) -> tuple[Path, dict]:
    out = tmp_path / "res"
    argv = [
        "compress", "--factory", f"compactnn.torchvision_models:{factory}",
        "--factory-kwargs", kwargs, "--method", method, "--target", "macs=0.5",
        "--data", "tests.test_torchvision_models:tiny_images", "--input-shape", "1,16,16",
        "--on-drop", "warn", "--quiet", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _ships(out: Path, model: nn.Module) -> None:
    x = tiny_images(n=8, seed=3)["train"].tensors[0]
    with torch.no_grad():
        np.savez(out / "ref.npz", x=x.numpy(), y=model.eval()(x).numpy())
    run = subprocess.run([sys.executable, "-c", _CHECK, str(out)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip()) <= 1e-4


def _macs(model: nn.Module) -> float:
    return budget.measure(model, SHAPE, ("macs",)).values["macs"]


def test_resnet18_every_residual_group_cut_and_shipped(tmp_path: Path) -> None:
    from compactnn.torchvision_models import resnet18

    out, rep = _compress(tmp_path, "resnet18", "num_classes=3,in_channels=1,width=0.125", "l1-norm")
    orig = resnet18(num_classes=3, in_channels=1, width=0.125)
    got = compactnn.load(out, model=resnet18(num_classes=3, in_channels=1, width=0.125))
    assert type(got).__mro__[1].__module__ == "torchvision.models.resnet"  # the real class
    kept = _macs(got) / _macs(orig)
    assert 0.45 <= kept <= 0.5 + 1e-9
    # the stem's residual group: the stem and every layer1 block's conv2 lose the same channels
    w = got.conv1.out_channels
    assert w < orig.conv1.out_channels
    assert got.layer1[0].conv2.out_channels == got.layer1[1].conv2.out_channels == w
    assert got.layer2[0].conv1.in_channels == w
    # the later stages' groups (projection shortcut, both blocks' conv2) are cut as well
    for stage in ("layer2", "layer3", "layer4"):
        s, o = getattr(got, stage), getattr(orig, stage)
        assert s[0].downsample[0].out_channels == s[0].conv2.out_channels == s[1].conv2.out_channels
        assert s[0].conv2.out_channels < o[0].conv2.out_channels, stage
    _ships(out, got)


#: torchvision's first three stages ([t, c, n, s]): depthwise convs, inverted residuals with adds
_SHORT = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2]]


def test_mobilenet_v2_depthwise_and_inverted_residuals_cut_and_shipped(tmp_path: Path) -> None:
    from compactnn.torchvision_models import mobilenet_v2

    kw = {"num_classes": 3, "in_channels": 1, "width": 0.5, "setting": _SHORT}
    out, rep = _compress(tmp_path, "mobilenet_v2", ",".join(
        f"{k}={v}".replace(" ", "") for k, v in kw.items()), "taylor")  # fmt: skip
    orig = mobilenet_v2(**kw)  # type: ignore[arg-type]
    got = compactnn.load(out, model=mobilenet_v2(**kw))  # type: ignore[arg-type]
    kept = _macs(got) / _macs(orig)
    assert 0.45 <= kept <= 0.5 + 1e-9
    convs = {n: m for n, m in got.named_modules() if isinstance(m, nn.Conv2d)}
    for n, m in convs.items():  # a depthwise conv still has one filter per input channel
        if m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels, n
    before = {n: m.out_channels for n, m in orig.named_modules() if isinstance(m, nn.Conv2d)}
    # an inverted residual's projection is cut together with the block it is added to
    assert got.features[2].conv[2].out_channels == got.features[3].conv[2].out_channels
    assert sum(m.out_channels for m in convs.values()) < sum(before.values())
    _ships(out, got)


def test_the_engine_cuts_residual_groups_of_resnet18() -> None:
    from compactnn.torchvision_models import resnet18

    data = tiny_images()
    loader = torch.utils.data.DataLoader(data["train"], batch_size=32)
    model = resnet18(num_classes=3, in_channels=1, width=0.125).eval()
    res = compactnn.compress(model, "ssr", (loader, loader), input_shape=SHAPE,
                             target={"macs": 0.5}, engine_steps=40, anneal_steps=30,
                             finetune_epochs=0, measure=False, progress=False,
                             on_drop="warn")  # fmt: skip
    kept = _macs(res.model) / _macs(model)
    assert 0.45 <= kept <= 0.5 + 1e-9
    assert "conv1" in res.history["keep"]  # the stem's group is a unit of the engine
    assert res.model.conv1.out_channels == res.model.layer1[1].conv2.out_channels


def test_missing_torchvision_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from compactnn import torchvision_models
    from compactnn.errors import ConfigError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    for k in [k for k in sys.modules if k.startswith("torchvision")]:
        monkeypatch.delitem(sys.modules, k)
    with pytest.raises(ConfigError, match=r"torchvision is not installed.*--no-deps"):
        torchvision_models.load("resnet")
