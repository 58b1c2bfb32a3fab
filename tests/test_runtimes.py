"""export.time_runtimes / speedup_table: a model and its baseline timed in turns in every
runtime (eager NCHW, eager channels_last, onnxruntime), the speed-up taken in the SAME runtime,
the ratio speed-up / MACs reduction, a runtime that fails recorded instead of raised. The
timings are faked where a number is checked (the ``fake_clock`` fixture of conftest.py, see
_timing.py): no assertion hinges on a measured time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _timing import Log, Tagged, _x
from compactnn import export
from compactnn.errors import ConfigError, InputShapeError


def test_the_speedup_compares_model_and_baseline_in_the_same_runtime(fake_clock) -> None:
    table = export.speedup_table(Tagged("small"), Tagged("base"), _x(), macs_reduction=4.0,
                                 batch_sizes=(1, 5), rounds=2, repeats=3)  # fmt: skip
    assert set(table) == {"eager", "eager channels_last", "onnxruntime"}
    for rt, want in (("eager", 3.0), ("eager channels_last", 3.0), ("onnxruntime", 2.0)):
        assert set(table[rt]) == {"batch 1", "batch 5"}
        for e in table[rt].values():
            assert e["speedup"] == pytest.approx(want), rt  # never another runtime's baseline
            assert e["ratio"] == pytest.approx(want / 4.0)  # speed-up / MACs reduction
    ort = table["onnxruntime"]["batch 5"]
    assert (ort["base_ms"], ort["model_ms"]) == (4.0, 2.0)
    # no MACs reduction given: no ratio
    table = export.speedup_table(Tagged("small"), Tagged("base"), _x(), batch_sizes=(2,),
                                 runtimes=["eager"], rounds=1, repeats=1)  # fmt: skip
    assert "ratio" not in table["eager"]["batch 2"]


def test_rounds_alternate_and_reverse_in_every_runtime_and_batch(fake_clock) -> None:
    got = export.time_runtimes({"base": Tagged("base"), "small": Tagged("small")}, _x(),
                               batch_sizes=(1, 4), rounds=3, repeats=2)  # fmt: skip
    # per (runtime, batch): base, small / small, base / base, small; runtimes one after another
    want = []
    for rt in ("eager", "eager", "onnxruntime"):  # NCHW, channels_last, onnxruntime
        for b in (1, 4):
            want += [(rt, t, b) for t in ("base", "small", "small", "base", "base", "small")]
    assert fake_clock == want
    res = got.latency["onnxruntime"][4]
    assert res["base"].repeats == 3 * 2 and res["base"].batch_size == 4
    assert got.protocol["interleaved"] and got.protocol["rounds"] == 3


def test_channels_last_converts_the_models_and_the_batch_once_never_the_users() -> None:
    seen = Log()
    a, b = Tagged("a", seen), Tagged("b", seen)
    got = export.time_runtimes({"a": a, "b": b}, _x(), batch_sizes=(3,),
                               runtimes=["eager", "eager channels_last"], rounds=2, warmup=1,
                               repeats=1)  # fmt: skip
    assert set(got.latency) == {"eager", "eager channels_last"} and not got.errors
    # real eager runs, in turns: NCHW first (a a, b b, b b, a a), then the channels_last copies
    order = ["a", "a", "b", "b", "b", "b", "a", "a"]
    assert seen == [(t, False) for t in order] + [(t, True) for t in order]
    assert (
        a.conv.weight.is_contiguous() and a.training
    )  # the user's model: untouched, mode restored
    with pytest.raises(ConfigError, match="needs 4-D image inputs"):
        export.time_runtimes({"a": nn.Linear(4, 2)}, torch.randn(5, 4),
                             runtimes=["eager channels_last"])  # fmt: skip
    with pytest.raises(InputShapeError, match="cannot run on an input of shape"):
        export.time_runtimes({"a": a}, torch.randn(4, 1, 8, 8))  # eager NCHW: raised, not kept
    with pytest.raises(ConfigError, match="unknown runtime"):
        export.time_runtimes({"a": a}, _x(), runtimes=["tvm"])
    with pytest.raises(ConfigError, match="macs_reduction"):
        export.speedup_table(a, b, _x(), macs_reduction=0.0)
    # non-image inputs: channels_last is left out by default
    got = export.time_runtimes({"a": nn.Linear(4, 2)}, torch.randn(5, 4), batch_sizes=(2,),
                               runtimes=None, rounds=1, repeats=1)  # fmt: skip
    assert "eager channels_last" not in got.latency and "eager" in got.latency


def test_a_runtime_that_fails_is_recorded_not_raised(tmp_path) -> None:
    """The model's ONNX file cannot be opened: onnxruntime's entry carries the error, the
    eager runtimes are still timed (real timings here; only their presence is checked)."""
    table = export.speedup_table(Tagged("small"), Tagged("base"), _x(), batch_sizes=(2,),
                                 runtimes=["eager", "onnxruntime"], rounds=1, repeats=1,
                                 onnx_files={"model": tmp_path / "missing.onnx"})  # fmt: skip
    assert set(table["onnxruntime"]) == {"error"} and "model:" in table["onnxruntime"]["error"]
    assert table["eager"]["batch 2"]["speedup"] > 0
