"""Logs a person can read: one line per epoch when not on a terminal, nothing when quiet."""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compactnn._progress import Progress
from compactnn.train import TrainConfig, train


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=4)


def test_training_log_is_one_line_per_epoch_when_not_a_tty(capsys) -> None:
    model = nn.Linear(4, 2)
    train(model, _data(), config=TrainConfig(epochs=3, lr=0.1), progress=True, desc="fit")
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 3, err
    assert re.match(r"^\[ +0:\d\d\] fit: epoch 1/3: loss", lines[0]) and "\r" not in err
    assert len(err) < 400  # 16 steps per epoch, yet a few short lines


def test_quiet_prints_nothing_and_verbose_prints_steps(capsys, monkeypatch) -> None:
    train(nn.Linear(4, 2), _data(), config=TrainConfig(epochs=1), progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("COMPACTNN_VERBOSE", "1")
    with Progress(3, "solve") as p:
        for _ in range(3):
            p.step(loss=0.5)
        p.epoch(1, 1, loss=0.5)
    err = capsys.readouterr().err.splitlines()
    assert [ln.split("] ", 1)[1] for ln in err[:3]] == [
        "solve: step 1: loss 0.5",
        "solve: step 2: loss 0.5",
        "solve: step 3: loss 0.5",
    ]
    assert err[3].split("] ", 1)[1].startswith("solve: epoch 1/1: loss 0.5")
