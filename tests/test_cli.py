"""The command line: inspect, compress, clear errors."""

from __future__ import annotations

import json

import torch
from torch import nn

from compactnn.cli import main
from compactnn.train import save_checkpoint


def test_inspect_reference_model(capsys) -> None:
    assert main(["inspect", "lenet-caffe", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "431,080" in out and "2,293,000" in out  # params, MACs per sample
    assert "conv1" in out and "fc2" in out


def test_inspect_checkpoint(tmp_path, capsys) -> None:
    from compactnn.models import create

    p = save_checkpoint(
        create("spiral-mlp", seed=0), tmp_path / "s.safetensors", model="spiral-mlp"
    )
    assert main(["inspect", str(p), "--no-latency"]) == 0
    assert "6,882" in capsys.readouterr().out


def test_unknown_model_is_one_clear_error(capsys) -> None:
    assert main(["inspect", "resnet-9000", "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'resnet-9000'" in err and "lenet-caffe" in err


def tiny_factory() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


def test_compress_user_factory_with_options(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "compress",
            "--factory",
            "tests.test_cli:tiny_factory",
            "--method",
            "l1-norm",
            "--data",
            "digits",
            "--opt",
            "keep=[5]",
            "--opt",
            "finetune_epochs=0",
            "--on-drop",
            "warn",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["before"]["params"] == 64 * 12 + 12 + 12 * 10 + 10
    assert rep["after"]["params"] == 64 * 5 + 5 + 5 * 10 + 10
    assert (out / "plan.json").is_file() and (out / "plan.safetensors").is_file()
    assert "params" in capsys.readouterr().out  # --quiet keeps the final summary
    # the shipped model: ONNX (parity recorded), TorchScript, compact checkpoint, report.md
    for f in ("model.onnx", "model.pt", "model.safetensors", "report.md"):
        assert (out / f).stat().st_size > 0, f
    dep = rep["deploy"]
    assert dep["artifacts"]["model.onnx"]["max_abs_diff"] <= 1e-4
    assert dep["artifacts"]["model.pt"]["max_abs_diff"] <= 1e-4
    assert dep["artifacts"]["checkpoint"]["max_abs_diff"] == 0.0
    assert {"eager", "onnxruntime", "fastest"} <= set(dep["latency"]["batch 1"])
    assert rep["environment"]["onnxruntime"] and rep["seconds"]["compress"] > 0
    assert "onnxruntime" in (out / "report.md").read_text()
    import compactnn

    small = compactnn.load(out, model=tiny_factory())
    assert small[1].out_features == 5
    (out / "model.onnx").unlink()
    assert main(["export", str(out), "--format", "onnx"]) == 0
    assert (out / "model.onnx").is_file() and "max |delta|" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "layers_params.png").is_file()


def test_export_and_report_bad_dirs_are_clear(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "onnx", "--model", "lenet-caffe"]) == 2
    assert "plan.json does not exist" in capsys.readouterr().err


def test_compress_bad_option_is_clear(capsys) -> None:
    rc = main(
        [
            "compress",
            "--factory",
            "tests.test_cli:tiny_factory",
            "--method",
            "ssr",
            "--data",
            "digits",
            "--opt",
            "rho=-1",
            "--quiet",
        ]
    )
    assert rc == 2
    assert "option 'rho' (--opt rho=...) of SSR" in capsys.readouterr().err  # CLI terms


def test_help_does_not_import_torch() -> None:
    """``compactnn --help`` answers without loading torch (the commands import it once parsed);
    the demo's names that moved out of cli still resolve, lazily."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "import compactnn.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert callable(cli.cache_dir) and 'torch' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    """``compactnn compress --method X --help | head -1``: the reader is gone before compactnn
    writes; the command stops with 128 + SIGPIPE and no 'internal error' line."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has already gone when compactnn writes
    try:
        run = subprocess.run(
            [sys.executable, "-m", "compactnn.cli", "compress", "--method", "l1-norm", "--help"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert run.returncode == 141 and "error" not in run.stderr, run.stderr
