"""Where the eager speed-up of "one conv1 filter fewer" on kiaee-cnn comes from (issue 15).

The s-grid extension row of ``kiaee_ext_grid.md`` found that removing ONE of conv1's 96 filters
re-times the whole kiaee-cnn at ~1.4x in PyTorch eager (onnxruntime ~1.0x): not the MACs
removed (0.3 % of them). This script times, at 1 thread, batch 100, interleaved (every variant
in turn, the order flipped per round, :func:`compactnn.metrics.measure_latency_interleaved`):

* the whole model with conv1 (and conv2's inputs) cut to C channels, C in ``--channels``;
* each stage alone at the same widths: ``conv1`` (1 -> C), ``relu1 + pool1`` on C channels,
  ``conv2`` (C -> 128), the rest (conv3 ... fc2, unchanged by C; a control);
* the whole model with oneDNN (mkldnn) switched off, and in channels_last;
* the whole model in onnxruntime (1 thread).

Weights are random (a seeded generator; latency does not depend on values for these ops).
Writes benchmarks/results/kiaee_channel_effect.json and .md.

    python benchmarks/bench_kiaee_channel_effect.py [--channels 96 95 94 92 88 80 64] [--rounds 5]

(``benchmarks/kiaee_channel_effect.py`` before issue 37: the command of the committed result.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import _lib
from compactnn import export, metrics, models

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 100
H = 28  # bench_kiaee_fashion's input: native 28 x 28 Fashion-MNIST, 1 channel


def variant(c: int, seed: int = 0) -> nn.Sequential:
    """kiaee-cnn as ``bench_kiaee_fashion`` builds it (1 x 28 x 28 input, fc1 576 -> 256) with
    conv1 cut to C filters and conv2 to C inputs."""
    m = models.create("kiaee-cnn", in_channels=1, input_size=H, num_classes=10, seed=seed)
    layers = OrderedDict(m.named_children())
    if c != layers["conv1"].out_channels:
        with torch.random.fork_rng(devices=[]):  # never touch the caller's RNG
            torch.manual_seed(seed)
            layers["conv1"] = nn.Conv2d(1, c, 3, padding=1)
            layers["conv2"] = nn.Conv2d(c, 128, 3, padding=1)
    return nn.Sequential(layers).eval()


def stages(m: nn.Sequential) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """conv1, relu1 + pool1, conv2 and the rest of ``m``, each with its input shape."""
    names = [n for n, _ in m.named_children()]
    mods = dict(m.named_children())
    c = mods["conv1"].out_channels
    i2 = names.index("conv2")
    return {
        "conv1": (mods["conv1"], (1, H, H)),
        "relu1+pool1": (nn.Sequential(mods["relu1"], mods["pool1"]), (c, H, H)),
        "conv2": (mods["conv2"], (c, H // 2, H // 2)),
        "rest (control)": (
            nn.Sequential(*[mods[n] for n in names[i2 + 1 :]]),
            (128, H // 2, H // 2),
        ),
    }


def time_set(ms: dict[str, nn.Module], shape: tuple[int, ...] | dict[str, tuple[int, ...]],
             rounds: int, repeats: int, cl: bool = False) -> dict[str, float]:  # fmt: skip
    """Median ms of each model, timed interleaved; ``shape`` is one input shape or one per
    model (the same seeded N(0, 1) batch for every model of one shape)."""
    shapes = shape if isinstance(shape, dict) else dict.fromkeys(ms, shape)
    xs = {k: torch.randn(BATCH, *shapes[k], generator=torch.Generator().manual_seed(0))
          for k in ms}  # fmt: skip
    if cl:  # on copies: Module.to() converts in place, and later timings must stay NCHW
        xs = {k: x.contiguous(memory_format=torch.channels_last) for k, x in xs.items()}
        ms = {k: copy.deepcopy(v).to(memory_format=torch.channels_last) for k, v in ms.items()}
    res = metrics.measure_latency_interleaved(ms, shapes, rounds=rounds, batch_size=BATCH,
                                              threads=1, warmup=3, repeats=repeats, inputs=xs)  # fmt: skip
    return {k: r.median_ms for k, r in res.items()}


TRACE = """
import torch
from torch import nn
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn({b}, 1, {h}, {h})
conv = nn.Conv2d(1, {c}, 3, padding=1)
with torch.inference_mode():
    for _ in range(3):
        conv(x)
"""


def onednn_trace(c: int) -> list[str]:
    """The oneDNN primitives (kind, implementation, memory layouts) PyTorch runs for conv1 at C
    output channels, read from ``ONEDNN_VERBOSE=1`` of the last of 3 calls in a subprocess (the
    times oneDNN prints under verbose are not used)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", TRACE.format(b=BATCH, h=H, c=c)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    ex = [ln.split(",") for ln in proc.stdout.splitlines() if ",exec,cpu," in ln]
    per_call = len(ex) // 3 if len(ex) % 3 == 0 else len(ex)
    # fields: onednn_verbose, v1, primitive, exec, cpu, KIND, IMPL, PROP, LAYOUTS, ATTR, ALG, SHAPE
    return [f"{f[5]} {f[6]}: {f[8]}" for f in ex[-per_call:]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[96, 95, 94, 92, 88, 80, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="kiaee_channel_effect")
    args = ap.parse_args(argv)
    chans = args.channels
    if chans[0] != 96:
        ap.error("--channels must start with 96 (kiaee-cnn's conv1), the reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vs = {c: variant(c) for c in chans}
        out: dict = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} CPU, "
            f"{os.cpu_count()} cores, no GPU; 1 torch thread",
            "torch": torch.__version__, "load_start": list(os.getloadavg()),
            "command": "python benchmarks/bench_kiaee_channel_effect.py " + " ".join(argv or []),
            "channels": chans, "batch": BATCH, "rounds": args.rounds, "repeats": args.repeats,
            "ms": {},
        }  # fmt: skip
        whole = {f"C={c}": m for c, m in vs.items()}
        out["ms"]["whole model, eager"] = time_set(whole, (1, H, H), args.rounds, args.repeats)
        with torch.backends.mkldnn.flags(enabled=False):
            out["ms"]["whole model, eager, mkldnn off"] = time_set(
                whole, (1, H, H), args.rounds, args.repeats)  # fmt: skip
        out["ms"]["whole model, eager, channels_last"] = time_set(
            whole, (1, H, H), args.rounds, args.repeats, cl=True)  # fmt: skip
        for st in ("conv1", "relu1+pool1", "conv2", "rest (control)"):
            # the input width of a stage differs between variants: one input shape per model
            ms = {f"C={c}": stages(m)[st][0] for c, m in vs.items()}
            shp = {f"C={c}": stages(m)[st][1] for c, m in vs.items()}
            out["ms"][st] = time_set(ms, shp, args.rounds, args.repeats)
        ort: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as d:
            x = torch.randn(BATCH, 1, H, H, generator=torch.Generator().manual_seed(0))
            for c, m in vs.items():
                p = Path(d) / f"c{c}.onnx"
                export.to_onnx(m, p, x[:8])
                ort[f"C={c}"] = export.onnx_latency(p, x, threads=1).median_ms
        out["ms"]["whole model, onnxruntime"] = ort
        out["onednn_conv1"] = {f"C={c}": onednn_trace(c) for c in chans}
        out["load_end"] = list(os.getloadavg())
    finally:
        torch.set_num_threads(threads)
    _lib.write_result(RESULTS, args.out, out, markdown, echo=True)
    return out


def markdown(out: dict) -> str:
    chans = out["channels"]
    lines = [
        "# kiaee-cnn: latency vs conv1 width (issue 15, the 96-channel effect)", "",
        f"Command: `{out['command']}`  ",
        f"Date: {out['date']} · {out['machine']} · torch {out['torch']} · load "
        f"{out['load_start'][0]:.1f} -> {out['load_end'][0]:.1f}  ",
        f"Batch {out['batch']}, median ms; variants timed interleaved ({out['rounds']} rounds x "
        f"{out['repeats']} runs); speed-up vs C = 96 in brackets.", "",
        "| what is timed | " + " | ".join(f"C = {c}" for c in chans) + " |",
        "|---|" + "---|" * len(chans),
    ]  # fmt: skip
    for name, ms in out["ms"].items():
        ref = ms["C=96"]
        cells = [f"{ms[f'C={c}']:.2f} ({ref / ms[f'C={c}']:.2f}x)" for c in chans]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if out.get("onednn_conv1"):
        lines += ["", "oneDNN primitives of conv1 alone (NCHW, `ONEDNN_VERBOSE=1`, one call):", ""]
        for k, prims in out["onednn_conv1"].items():
            lines.append(f"- {k}: " + "; ".join(f"`{p}`" for p in prims))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
