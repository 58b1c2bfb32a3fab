"""What the command line prints (issue 34): a log file a person can follow, a summary with the
numbers of report.json, a method's own options first in ``--help``, and errors whose hint
fixes them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from compactnn import data as D
from compactnn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def rgb32() -> nn.Module:
    """A 3x32x32 classifier (CIFAR-like input) that a grey 28x28 dataset does not fit."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 12), nn.ReLU(), nn.Linear(12, 10))


def rgb_conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


# ----------------------------------------------------------------------------- the log file
def _stamp(line: str) -> int | None:
    m = re.match(r"^\[\s*(?:(\d+):)?(\d+):(\d\d)\] ", line)
    if not m:
        return None
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return 3600 * h + 60 * mi + s


def test_log_file_has_a_line_every_interval_and_the_summary_of_report_json(tmp_path) -> None:
    interval = 1
    out, log = tmp_path / "res", tmp_path / "log.txt"
    argv = [
        sys.executable, "-m", "compactnn.cli", "compress", "--factory",
        "tests.test_cli_data:mlp", "--method", "l1-norm", "--opt", "keep=[6]", "--opt",
        "finetune_epochs=2", "--data", "digits", "--on-drop", "warn", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, COMPACTNN_PROGRESS_INTERVAL=str(interval), OMP_NUM_THREADS="1")
    env.pop("COMPACTNN_VERBOSE", None)
    with open(log, "w") as f:  # stdout and stderr to a file, as `compactnn ... > log 2>&1`
        rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    assert rc == 0, text
    lines = text.splitlines()
    stamped = [(t, ln) for ln in lines if (t := _stamp(ln)) is not None]
    # a line at every stage
    for name in ("load model", "data", "compress", "export + latency"):
        assert any(f"stage: {name}" in ln for _, ln in stamped), (name, text)
    # at least one line per interval of work: the heartbeat wakes every interval / 4; the
    # slack (stamps are whole seconds; a loaded machine, or a C call holding the GIL, may
    # delay the thread) still tells a heartbeat from none
    times = [t for t, _ in stamped]
    assert times == sorted(times), text
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps, default=0) <= 3 * interval + 2, text
    # the summary's numbers are report.json's (one measurement per runtime, protocol named)
    rep = json.loads((out / "report.json").read_text())
    ups = rep["speedup"]["batch 100"]
    assert set(ups) == {"eager", "eager channels_last", "onnxruntime"}
    head = next(ln for ln in lines if ln.startswith("speed-up at batch 100"))
    assert rep["speedup_protocol"] in head and "1 thread(s)" in head
    for runtime, v in ups.items():
        row = next(ln for ln in lines if ln.startswith(f"  {runtime} "))
        nums = re.findall(r"[\d.]+", row)
        assert nums == [
            f"{v['original_ms']:.3f}", f"{v['compressed_ms']:.3f}", f"{v['speedup']:.2f}"
        ], row  # fmt: skip
    assert not any(ln.startswith("latency  ") for ln in lines)  # no second eager number
    assert rep["before"]["latency"]["median_ms"] == ups["eager"]["original_ms"]
    assert rep["after"]["latency"]["median_ms"] == ups["eager"]["compressed_ms"]
    params = next(ln for ln in lines if ln.startswith("params "))
    assert f"{rep['before']['params']:,} -> " in params
    assert f"-> {rep['after']['params']:>12,}" in params
    macs = next(ln for ln in lines if ln.startswith("MACs "))
    assert f"{rep['before']['macs']:,} -> " in macs and f"{rep['after']['macs']:,}" in macs
    # the per-layer widths printed are the returned model's (report.json 'after')
    for layer in rep["after"]["layers"]:
        row = next(ln for ln in lines if ln.startswith(f"{layer['name']} "))
        assert row.split()[2] == str(layer["units"]), row
    md = (out / "report.md").read_text()
    for runtime, v in ups.items():
        assert f"| 100 | {runtime} | {v['original_ms']:.3f} | {v['compressed_ms']:.3f} |" in md


# ----------------------------------------------------------------------------- help
def test_method_help_shows_its_own_options_first_each_fully_described(capsys) -> None:
    assert main(["compress", "--method", "taylor", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("options of method 'taylor'")
    assert out.index("finetune_epochs = 2") < out.index("usage:")
    block = out[: out.index("usage:")]
    meaning: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if m := re.match(r"^  (\w+) = ", line):
            name = m.group(1)
            meaning[name] = ""
        elif name and line.startswith("      "):
            meaning[name] += " " + line.strip()
    five = ("finetune_epochs", "lr", "momentum", "weight_decay", "finetune_steps_per_epoch")
    assert len({meaning[n] for n in five}) == 5, meaning  # each its own description
    assert "(None = the whole training loader each epoch)." in meaning[five[-1]]
    assert not any(m.rstrip().endswith("...") for m in meaning.values()), meaning


# ----------------------------------------------------------------------------- errors
def _fashion() -> None:
    try:
        D.load_arrays("fashion-mnist", "test")
    except Exception as exc:  # noqa: BLE001 - not installed here
        pytest.skip(f"fashion-mnist not available ({exc})")


@pytest.mark.parametrize(
    ("factory", "shape"),
    [("rgb32", ["--input-shape", "3,32,32"]), ("rgb32", []), ("rgb_conv", [])],
)
def test_a_model_the_dataset_does_not_fit_gets_the_data_opt_that_fixes_it(
    capsys, factory: str, shape: list[str]
) -> None:
    _fashion()
    argv = [
        "compress", "--factory", f"tests.test_cli_output:{factory}", "--method", "l1-norm",
        "--opt", "finetune_epochs=0", "--on-drop", "warn", "--quiet", "--data", "fashion-mnist",
        *shape,
    ]  # fmt: skip
    assert main([*argv, "--data-opt", "limit=100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --input-shape" not in err, err
    fix = re.search(r"pass --data-opt (\S+?)[ .]", err)
    assert fix, err
    if factory == "rgb32":
        assert "channels=3" in fix.group(1) and "pad_to=32" in fix.group(1), err
    # followed, the hint fixes the error
    assert main([*argv, "--data-opt", fix.group(1)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("content", [b"some notes\nline two\n", b"", b"\x00\x01binary"])
@pytest.mark.parametrize("suffix", [".txt", ".pt", ".safetensors"])
def test_a_file_that_is_not_a_checkpoint_gets_one_clear_error(
    tmp_path, capsys, content: bytes, suffix: str
) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(content)
    for argv in (
        ["compress", "lenet-caffe", "--checkpoint", str(path), "--method", "l1-norm"],
        ["compress", "--factory", "tests.test_cli_data:mlp", "--checkpoint", str(path),
         "--method", "l1-norm", "--data", "digits"],
        ["inspect", str(path)],
    ):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"Checkpoint '{path}' is not a model checkpoint" in err, err
        assert "Error" not in err.split("error:", 1)[1], err  # no internal exception named


def test_a_real_checkpoint_still_loads(tmp_path: Path, capsys: Any) -> None:
    import torch

    from compactnn.train import save_checkpoint

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    for suffix in (".safetensors", ".pt"):
        p = save_checkpoint(model, tmp_path / f"m{suffix}")
        argv = ["inspect", "--factory", "tests.test_cli_data:mlp", "--checkpoint", str(p)]
        assert main([*argv, "--input-shape", "1,8,8", "--no-latency"]) == 0
        assert "1,210" in capsys.readouterr().out
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    argv = ["inspect", "--factory", "tests.test_cli_data:mlp", "--checkpoint"]
    assert main([*argv, str(tmp_path / "plain.pth"), "--input-shape", "1,8,8", "--no-latency"]) == 0


def grey_loaders(batch_size: int = 16) -> tuple[Any, Any]:
    """(train, test) loaders of 1x28x28 samples (for a model that takes 3x32x32)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=batch_size)


def test_a_user_data_function_that_does_not_fit_is_not_told_to_pass_input_shape(capsys) -> None:
    argv = [
        "compress", "--factory", "tests.test_cli_output:rgb32", "--method", "l1-norm",
        "--quiet", "--data", "tests.test_cli_output:grey_loaders", "--input-shape", "3,32,32",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --input-shape" not in err.lower(), err
    assert "--data tests.test_cli_output:grey_loaders returns samples the model cannot" in err
