"""``make demo``'s baseline ships with compactnn (issue 34): safetensors + a sidecar with its
sha256, the training data's hash and the command that trained it; loading checks the sha256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compactnn import cli, demo, models
from compactnn.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_baseline_is_verified_and_described() -> None:
    path, meta = demo.demo_weights()
    assert path.name == demo.DEMO_WEIGHTS and path.stat().st_size < 4_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    for key in ("command", "training_data", "model", "dataset", "seed", "epochs", "test_top1"):
        assert meta.get(key) not in (None, ""), key
    assert meta["model"] == "lenet-caffe" and meta["dataset"] == "mnist" and meta["seed"] == 0
    assert "compactnn" in meta["command"] and "--retrain" in meta["command"]
    assert len(meta["training_data"]["sha256"]) == 64
    model, _ = cli._load_ckpt(path, models.create("lenet-caffe"))
    assert sum(p.numel() for p in model.parameters()) == 431_080


def test_training_data_hash_is_the_mnist_shipped_here() -> None:
    _, meta = demo.demo_weights()
    assert demo.training_data_sha256("mnist") == meta["training_data"]["sha256"]


def test_a_damaged_baseline_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = demo.demo_weights()
    pkg = tmp_path / "compactnn"
    shutil.copytree(path.parent, pkg / "_weights")
    damaged = pkg / "_weights" / path.name
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 1  # one bit of one weight
    damaged.write_bytes(bytes(raw))
    monkeypatch.setattr("importlib.resources.files", lambda _name: pkg)
    with pytest.raises(CheckpointError, match="damaged.*--retrain"):
        demo.demo_weights()
    (pkg / "_weights" / path.name).unlink()
    with pytest.raises(CheckpointError, match="missing.*--retrain"):
        demo.demo_weights()


def test_demo_baseline_loads_the_shipped_weights_without_training(capsys) -> None:
    rng = torch.get_rng_state()
    model, test_loader, path = demo.demo_baseline(seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert path == demo.demo_weights()[0]
    assert "sha256" in capsys.readouterr().out and test_loader is not None
    shipped = json.loads(path.with_suffix(".json").read_text())
    assert shipped["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_make_demo_prints_at_most_40_lines(tmp_path: Path) -> None:
    """The whole demo (minutes): shipped baseline, compress, export; <= 40 lines of log."""
    env = dict(os.environ, COMPACTNN_CACHE=str(tmp_path / "cache"))
    env.pop("COMPACTNN_VERBOSE", None)
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "compactnn.cli", "demo", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout
    assert len(proc.stdout.splitlines()) <= 40, proc.stdout
    for name in ("report.md", "report.json", "model.onnx", "model.safetensors", "plan.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == demo.DEMO_METHOD and rep["demo"]["target"] == demo.DEMO_TARGET
    assert "fine-tuning epochs, not 30" in proc.stdout  # says what changed
