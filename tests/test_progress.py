"""Logs a person can read: one line per epoch when not on a terminal, nothing when quiet."""

from __future__ import annotations

import re
import time

import pytest
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
    # stamped with the run's elapsed time (the process clock: any value inside a long suite)
    assert re.match(r"^\[ *(\d+:)?\d+:\d\d\] fit: epoch 1/3: loss", lines[0]) and "\r" not in err
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


def test_heartbeat_names_the_stage_while_nothing_else_prints(capsys, monkeypatch) -> None:
    from compactnn import _progress

    monkeypatch.setenv("COMPACTNN_PROGRESS_INTERVAL", "0.2")
    with _progress.Heartbeat(), _progress.stage("solve", "layer 3"):
        time.sleep(1.5)  # work that prints nothing itself
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("stage: solve (layer 3)"), err  # after the grace (the interval)
    assert any("solve: still running" in ln for ln in err[1:]), err


def test_a_stage_that_fails_at_once_prints_only_the_error(capsys) -> None:
    from compactnn import _progress

    with pytest.raises(ValueError), _progress.Heartbeat(), _progress.stage("load model"):
        raise ValueError("bad input")
    assert capsys.readouterr().err == ""
    with _progress.stage("load model", "ok"):
        pass
    assert capsys.readouterr().err.rstrip().endswith("stage: load model (ok)")


def test_a_long_training_run_gets_an_estimate_and_status_lines(capsys, monkeypatch) -> None:
    from compactnn import _progress

    monkeypatch.setenv("COMPACTNN_PROGRESS_INTERVAL", "0.05")
    with _progress.Progress(40, "fit") as bar:
        for _ in range(40):
            time.sleep(0.01)
            bar.step(loss=0.5)
    err = capsys.readouterr().err
    assert "fit: 40 steps planned; the first 20 took" in err and "estimate" in err, err
    assert re.search(r"fit: \d+/40 steps \(\d+ %\), loss 0.5, elapsed [\d:]+, ETA", err), err
