"""Issue 14's "done when", for every registered method, through the command line.

``compactnn compress --out DIR`` writes model.onnx, model.pt and the compact checkpoint (with
parity recorded in report.json); a fresh Python process then runs model.onnx (onnxruntime) and
model.pt (torch.jit.load) while compactnn cannot be imported, and restores the checkpoint with
``compactnn.load`` -- all three agree with the model the test process restored.

The data come through ``--data tests.test_ship_methods:tiny_data`` (a function returning
datasets), so ``--data module:function`` and ``--data-opt`` are exercised too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.test_export import FAST, _fresh
from torch.utils.data import TensorDataset

import compactnn
from compactnn.cli import main
from compactnn.methods import list_methods

ROOT = Path(__file__).resolve().parents[1]


def tiny_data(n: int = 320, seed: int = 0) -> dict[str, TensorDataset]:
    """The data of tests/test_export.py as datasets: {'train': ..., 'test': ...}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0.3).long()
    return {"train": TensorDataset(x, y), "test": TensorDataset(x[:160], y[:160])}


_FRESH = r"""
import json, sys
import numpy as np
d = sys.argv[1]
sys.modules["compactnn"] = None  # 1) ONNX and TorchScript: compactnn must not be needed
import onnx, onnxruntime as ort, torch
ref = np.load(d + "/ref.npz")
onnx.checker.check_model(onnx.load(d + "/model.onnx"))
s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
a = s.run(None, {"input": ref["x"]})[0]
b = torch.jit.load(d + "/model.pt")(torch.from_numpy(ref["x"])).detach().numpy()
out = {"onnx": float(np.abs(a - ref["y"]).max()), "torchscript": float(np.abs(b - ref["y"]).max())}
del sys.modules["compactnn"]  # 2) the compact checkpoint, with compactnn.load
sys.path.insert(0, sys.argv[2])
import compactnn
from tests.test_export import _fresh
m = compactnn.load(d, model=_fresh())
with torch.no_grad():
    c = m(torch.from_numpy(ref["x"])).numpy()
out["checkpoint"] = float(np.abs(c - ref["y"]).max())
print(json.dumps(out))
"""


@pytest.mark.parametrize("method", list_methods())
def test_every_method_ships_through_the_cli(method: str, tmp_path) -> None:
    out = tmp_path / "res"
    opts = [a for k, v in FAST.get(method, {}).items() for a in ("--opt", f"{k}={json.dumps(v)}")]
    argv = [
        "compress", "--factory", "tests.test_export:_fresh", "--method", method,
        "--data", "tests.test_ship_methods:tiny_data", "--data-opt", "n=320,batch_size=32",
        "--on-drop", "warn", "--quiet", "--seed", "1", "--out", str(out), *opts,
    ]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    arts = rep["deploy"]["artifacts"]
    for f in ("model.onnx", "model.pt", "model.safetensors", "plan.json", "report.md"):
        assert (out / f).stat().st_size > 0, f
    # parity recorded at ship time (onnxruntime / reloaded TorchScript / restored checkpoint)
    assert arts["model.onnx"]["max_abs_diff"] <= 1e-4 and arts["model.onnx"]["opset"] >= 17
    assert arts["model.pt"]["max_abs_diff"] <= 1e-4
    assert arts["checkpoint"]["max_abs_diff"] <= 1e-4
    assert rep["data_fed"]["splits"]["train"]["samples"] == 288  # 320 - 10 % validation
    assert rep["data_fed"]["splits"]["val"]["samples"] == 32
    assert rep["environment"]["seed"] == 1 and rep["config"]["seed"] == 1
    if "seed" in rep["chosen"]:
        assert rep["chosen"]["seed"] == 1  # --seed seeds the method too
    # a fresh process: ONNX + TorchScript without compactnn, the checkpoint with compactnn.load
    ref_model = compactnn.load(out, model=_fresh())
    x = tiny_data(n=50, seed=7)["train"].tensors[0]
    with torch.no_grad():
        np.savez(out / "ref.npz", x=x.numpy(), y=ref_model(x).numpy())
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(diffs.values()) <= 1e-4, diffs
