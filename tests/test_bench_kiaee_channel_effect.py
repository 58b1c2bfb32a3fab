"""benchmarks/bench_kiaee_channel_effect.py: its variants are kiaee-cnn at the widths asked, its
stages compose back to the whole model, timing in channels_last never converts the NCHW
variants, and the report reads the measured numbers."""

from __future__ import annotations

import pytest
import torch

from _bench import load_bench


def _b():
    return load_bench("bench_kiaee_channel_effect")


def test_variants_and_stages_compose_to_the_whole_model() -> None:
    b = _b()
    state = torch.random.get_rng_state()
    ref, cut = b.variant(96), b.variant(95)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG untouched
    assert ref.conv1.out_channels == 96 and cut.conv1.out_channels == 95
    assert cut.conv2.in_channels == 95 and cut.conv3.weight.shape == ref.conv3.weight.shape
    x = torch.randn(2, 1, b.H, b.H, generator=torch.Generator().manual_seed(0))
    for m in (ref, cut):
        st = b.stages(m)
        h = x
        for name in ("conv1", "relu1+pool1", "conv2"):
            mod, shape = st[name]
            assert tuple(h.shape[1:]) == shape
            h = mod(h)
        assert tuple(h.shape[1:]) == (128, b.H // 2, b.H // 2)
        # the rest (relu2, pool2 ... fc2) on conv2's output gives the whole model's output
        h2 = st["rest (control)"][0](h)
        with torch.no_grad():
            torch.testing.assert_close(h2, m(x))


def test_channels_last_timing_leaves_the_variants_nchw() -> None:
    b = _b()
    m = b.variant(95)
    threads = torch.get_num_threads()
    try:
        ms = b.time_set({"C=95": m}, (1, b.H, b.H), rounds=1, repeats=1, cl=True)
    finally:
        torch.set_num_threads(threads)
    assert ms["C=95"] > 0
    assert m.conv2.weight.is_contiguous()  # Module.to() would have converted it in place
    assert not m.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_report_and_options() -> None:
    b = _b()
    out = {
        "command": "c", "date": "d", "machine": "m", "torch": "t", "load_start": [1.0],
        "load_end": [2.0], "batch": 100, "rounds": 1, "repeats": 1, "channels": [96, 95],
        "ms": {"conv1": {"C=96": 50.0, "C=95": 10.0}},
        "onednn_conv1": {"C=96": ["reorder jit:blk: x"]},
    }  # fmt: skip
    md = b.markdown(out)
    assert "| conv1 | 50.00 (1.00x) | 10.00 (5.00x) |" in md
    assert "`reorder jit:blk: x`" in md
    with pytest.raises(SystemExit):
        b.main(["--channels", "95", "96"])


def test_stages_of_differing_input_widths_are_timed_together() -> None:
    """conv2's input has 96 channels in one variant and 95 in the other: one interleaved call,
    each stage on a batch of its own shape."""
    b = _b()
    st96, st95 = b.stages(b.variant(96)), b.stages(b.variant(95))
    ms = {"C=96": st96["conv2"][0], "C=95": st95["conv2"][0]}
    shapes = {"C=96": st96["conv2"][1], "C=95": st95["conv2"][1]}
    assert shapes["C=96"][0] == 96 and shapes["C=95"][0] == 95
    threads = torch.get_num_threads()
    try:
        got = b.time_set(ms, shapes, rounds=2, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert set(got) == {"C=96", "C=95"} and all(v > 0 for v in got.values())
