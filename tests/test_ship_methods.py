"""Issue 14's "done when", for every registered method, through the command line.

``compactnn compress --out DIR`` writes model.onnx, model.pt and the compact checkpoint (with
parity recorded in report.json); another Python process then runs model.onnx (onnxruntime) and
model.pt (torch.jit.load) while compactnn cannot be imported, and restores the checkpoint with
``compactnn.load`` -- all three agree with the model the test process restored. That process is
started once for the module and checks every method's directory (``_WORKER``).

The data come through ``--data tests.test_ship_methods:tiny_data`` (a function returning
datasets), so ``--data module:function`` and ``--data-opt`` are exercised too.
"""

from __future__ import annotations

import json
import select
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


# One process, started once for the module (a torch + onnx import costs seconds per process),
# that checks each output directory it reads on stdin as a fresh process would: 1) ONNX and
# TorchScript with compactnn (and the tests package) unimportable -- every compactnn module
# is taken out of sys.modules and "compactnn" blocked, as in a process that never imported it
# -- 2) the compact checkpoint with compactnn.load. One JSON line per directory.
_WORKER = r"""
import json, sys
import numpy as np
import onnx, onnxruntime as ort, torch
sys.path.insert(0, sys.argv[1])


def ours(k):
    return k.split(".")[0] in ("compactnn", "tests")


def check(d):
    ref = np.load(d + "/ref.npz")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
    sys.modules["compactnn"] = None  # 1) ONNX and TorchScript: compactnn must not be needed
    try:
        onnx.checker.check_model(onnx.load(d + "/model.onnx"))
        s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
        a = s.run(None, {"input": ref["x"]})[0]
        b = torch.jit.load(d + "/model.pt")(torch.from_numpy(ref["x"])).detach().numpy()
    finally:
        del sys.modules["compactnn"]
        sys.modules.update(saved)
    out = {"onnx": float(np.abs(a - ref["y"]).max()),
           "torchscript": float(np.abs(b - ref["y"]).max())}
    import compactnn  # 2) the compact checkpoint, with compactnn.load
    from tests.test_export import _fresh
    m = compactnn.load(d, model=_fresh())
    with torch.no_grad():
        c = m(torch.from_numpy(ref["x"])).numpy()
    out["checkpoint"] = float(np.abs(c - ref["y"]).max())
    return out


print(json.dumps({"ready": "compactnn" not in sys.modules}), flush=True)
for line in sys.stdin:
    try:
        out = check(line.strip())
    except Exception as exc:  # reported to the test that sent the directory
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def fresh_check(tmp_path_factory):  # type: ignore[no-untyped-def]
    """``check(dir) -> {"onnx": diff, "torchscript": diff, "checkpoint": diff}`` answered by
    the module's worker process (see ``_WORKER``)."""
    err = (tmp_path_factory.mktemp("worker") / "stderr").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(ROOT)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=err, text=True, cwd=str(tmp_path_factory.getbasetemp()),
    )  # fmt: skip

    def answer() -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line:
            err.seek(0)
            raise AssertionError(f"the check process did not answer: {err.read()[-3000:]}")
        return json.loads(line)

    assert answer() == {"ready": True}  # compactnn was never imported before the first check

    def check(d: Path) -> dict:
        proc.stdin.write(f"{d}\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return answer()

    yield check
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(timeout=60)
    err.close()


@pytest.mark.parametrize("method", list_methods())
def test_every_method_ships_through_the_cli(method: str, tmp_path, fresh_check) -> None:
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
    diffs = fresh_check(out)
    assert "error" not in diffs, diffs["error"]
    assert max(diffs.values()) <= 1e-4, diffs
