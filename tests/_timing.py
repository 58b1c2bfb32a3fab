"""Tiny models that log their forward passes, and a fake clock for the latency tests.

:func:`install_fake_clock` replaces the eager and onnxruntime timers of
:mod:`compactnn.export.runtimes` with ones that return :data:`FAKE_MS` by runtime and model
tag (the ``fake_clock`` fixture of conftest.py), so that a speed-up can be checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compactnn.export import runtimes

#: fake milliseconds per (runtime, model tag): the baseline 3x slower in eager, 2x in ORT
FAKE_MS = {("eager", "base"): 3.0, ("eager", "small"): 1.0,
           ("onnxruntime", "base"): 4.0, ("onnxruntime", "small"): 2.0}  # fmt: skip


class Log(list):
    """A list the copies of a model share (channels_last times a deep copy)."""

    def __deepcopy__(self, memo: dict) -> Log:
        return self


class Tagged(nn.Module):
    """A small CNN that records (tag, channels_last input?) of every forward pass."""

    def __init__(self, tag: str, seen: Log | None = None, width: int = 4):
        super().__init__()
        self.tag = tag
        self.seen = seen if seen is not None else Log()
        self.conv = nn.Conv2d(3, width, 3)
        self.fc = nn.Linear(width * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            self.seen.append((self.tag, nhwc))
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def install_fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Fake eager / onnxruntime timers: FAKE_MS by runtime and model tag (an exported file
    holds its model's tag); every round called is logged as (runtime, tag, batch)."""
    log: list[tuple[str, str, int]] = []

    def eager(model, x, *, threads, warmup, repeats):  # type: ignore[no-untyped-def]
        def run() -> list[float]:
            log.append(("eager", model.tag, int(x.shape[0])))
            return [FAKE_MS[("eager", model.tag)]] * repeats

        return run

    def ort(path, x, *, threads, warmup, repeats):  # type: ignore[no-untyped-def]
        tag = Path(path).read_text()

        def run() -> list[float]:
            log.append(("onnxruntime", tag, int(x.shape[0])))
            return [FAKE_MS[("onnxruntime", tag)]] * repeats

        return run

    monkeypatch.setattr(runtimes, "eager_timer", eager)
    monkeypatch.setattr(runtimes, "ort_timer", ort)
    monkeypatch.setattr(runtimes, "to_onnx", lambda m, path, ex: Path(path).write_text(m.tag))
    return log
