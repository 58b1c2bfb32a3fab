"""The command line's data (--data module:function, --data-opt, dict batches, --val-fraction),
--seed, --quiet / --verbose, --compile, and what report.json records (issue 14, items 2, 4, 6)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compactnn import data as D
from compactnn import export
from compactnn.cli import main


class DictImages(Dataset):
    """A Hugging-Face-like dataset: every item a dict with the image, its label and an id."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = (self.x[:, 0, :4].mean(dim=(1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"pixels": self.x[i], "answer": self.y[i], "id": i}


def dict_loaders(n: int = 200, batch_size: int = 25) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders of dict batches {'pixels', 'answer', 'id'}."""
    train = DataLoader(
        DictImages(n), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return train, DataLoader(DictImages(80, seed=1), batch_size=40)


def not_data() -> str:
    return "mnist"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _compress(tmp_path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "res"
    argv = [
        "compress", "--factory", "tests.test_cli_data:mlp", "--method", "l1-norm",
        "--opt", "keep=[6]", "--opt", "finetune_epochs=1", "--on-drop", "warn",
        "--out", str(out), *extra,
    ]  # fmt: skip
    rc = main(argv)
    rep = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return rc, rep


def test_dict_batches_from_a_function(tmp_path, capsys) -> None:
    rc, rep = _compress(
        tmp_path, "--data", "tests.test_cli_data:dict_loaders", "--data-opt", "n=200",
        "--input-key", "pixels", "--label-key", "answer", "--val-fraction", "0.2", "--quiet",
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    fed = rep["data_fed"]
    assert fed["input_key"] == "pixels" and fed["label_key"] == "answer"
    assert fed["splits"]["train"]["samples"] == 160 and fed["splits"]["val"]["samples"] == 40
    assert fed["splits"]["test"]["samples"] == 80 and fed["input_shape"] == [1, 8, 8]
    assert fed["kind"] == "user function" and fed["options"] == {"n": 200}
    assert "compactnn does not change it" in fed["normalisation"]
    # the model was measured on the test labels of the dict batches and exported on its images
    assert rep["after"]["accuracy"]["n"] == 80
    assert rep["deploy"]["check_samples_from"] == "test split"
    assert rep["deploy"]["artifacts"]["model.onnx"]["max_abs_diff"] <= 1e-4
    md = (tmp_path / "res" / "report.md").read_text()
    assert "input 'pixels', label 'answer'" in md and "train 160" in md
    # recipe.yaml replays the run with the same data (options and keys)
    import yaml

    recipe = yaml.safe_load((tmp_path / "res" / "recipe.yaml").read_text())
    assert recipe["data_opts"] == {"n": 200} and recipe["input_key"] == "pixels"
    assert recipe["label_key"] == "answer" and recipe["options"]["seed"] == 0
    again = tmp_path / "again"
    argv = ["compress", "--factory", "tests.test_cli_data:mlp", "--recipe",
            str(tmp_path / "res" / "recipe.yaml"), "--val-fraction", "0.2", "--on-drop", "warn",
            "--quiet", "--out", str(again)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((again / "report.json").read_text())["data_fed"] == fed
    # export of the earlier result rebuilds the same data (keys included)
    (tmp_path / "res" / "model.onnx").unlink()
    assert main(["export", str(tmp_path / "res"), "--format", "onnx"]) == 0
    assert "test split" in capsys.readouterr().out


def test_registry_data_options_are_fed_and_recorded(tmp_path, capsys) -> None:
    rc, rep = _compress(
        tmp_path, "--data", "digits", "--data-opt", "mean=0.5,std=0.25",
        "--data-opt", "limit=300,batch_size=32", "--seed", "2", "--quiet",
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    fed = rep["data_fed"]
    assert fed["normalisation"] == {
        "normalize": True, "mean": [0.5], "std": [0.25], "source": "given (mean=, std=)",
    }  # fmt: skip
    assert fed["splits"]["train"] == {"samples": 270, "batch_size": 32}
    assert fed["splits"]["val"]["samples"] == 30 and fed["splits"]["test"]["samples"] == 300
    assert fed["seed"] == 2 and rep["environment"]["seed"] == 2
    # what get_dataset fed: (raw - 0.5) / 0.25 on the seeded subset
    raw = D.get_dataset("digits", "test", normalize=False, limit=300, seed=2).tensors[0]
    fedx = D.get_dataset("digits", "test", mean=0.5, std=0.25, limit=300, seed=2).tensors[0]
    assert torch.allclose(fedx, (raw - 0.5) / 0.25)


def test_report_json_holds_config_history_timings_versions_and_seed(tmp_path, capsys) -> None:
    rc, rep = _compress(tmp_path, "--data", "digits", "--data-opt", "limit=200", "--seed", "4")
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    cfg = rep["config"]
    assert cfg["method"] == "l1-norm" and cfg["seed"] == 4 and cfg["val_fraction"] == 0.1
    assert cfg["options"] == {"keep": [6], "finetune_epochs": 1}
    assert cfg["data_opts"] == {"limit": 200} and cfg["factory"] == "tests.test_cli_data:mlp"
    assert rep["chosen"]["seed"] == 4 and rep["chosen"]["keep"] == [6]  # resolved options
    assert rep["history"]["keep"] == {"1": 6}  # per-layer history of the method
    assert isinstance(rep["warnings"], list)
    assert {"data", "compress", "export + latency"} <= set(rep["seconds"])
    assert all(v >= 0 for v in rep["seconds"].values())
    env = rep["environment"]
    for key in ("compactnn", "torch", "onnx", "onnxruntime", "python", "machine", "cpus"):
        assert env[key], key
    assert env["seed"] == 4
    assert rep["plots"] and all((tmp_path / "res" / p).is_file() for p in rep["plots"])
    # not --quiet: progress lines go to stderr, one per epoch; the summary to stdout
    assert "params" in cap.out and "fine-tune: epoch 1/1" in cap.err
    assert "fine-tune: step" not in cap.err


def test_quiet_keeps_the_summary_and_verbose_logs_steps(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("COMPACTNN_VERBOSE", raising=False)
    rc, _ = _compress(tmp_path, "--data", "digits", "--data-opt", "limit=200", "--quiet")
    cap = capsys.readouterr()
    assert rc == 0 and "params" in cap.out and "kept" in cap.out
    assert "epoch 1/1" not in cap.err and "step 1:" not in cap.err
    rc, _ = _compress(tmp_path, "--data", "digits", "--data-opt", "limit=200", "--verbose")
    cap = capsys.readouterr()
    steps = [line for line in cap.err.splitlines() if "fine-tune: step" in line]
    assert rc == 0 and len(steps) >= 2  # one line per training step
    assert "epoch 1/1" in cap.err
    assert "COMPACTNN_VERBOSE" not in os.environ  # set for that command only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "digits", "--data-opt", "mean=[0.1,0.2]"], "--data-opt mean"),
        (["--data", "digits", "--data-opt", "std=0"], "--data-opt std"),
        (["--data", "digits", "--data-opt", "mena=0.1"], "Did you mean 'mean'"),
        (["--data", "digits", "--data-opt", "batch_size=0"], "--data-opt batch_size"),
        (["--data", "digits", "--data-opt", "limit"], "must look like name=value"),
        (["--data-opt", "limit=10"], "--data-opt needs --data"),
        (["--data", "nosuchmod:fn"], "Cannot import --data 'nosuchmod:fn'"),
        (["--data", "tests.test_cli_data:not_data"], "must return loaders or datasets"),
        (["--data", "tests.test_cli_data:dict_loaders", "--data-opt", "m=1"], "--data-opt"),
        (["--data", "tests.test_cli_data:dict_loaders"], "pass --input-key"),
        (["--data", "tests.test_cli_data:dict_loaders", "--input-key", "image"], "'pixels'"),
        (["--data", "digits", "--input-key", "image"], "drop it"),
        (["--data", "digits", "--val-fraction", "0.9"], "--val-fraction"),
        (["--data", "digits", "--seed", "-1"], "--seed"),
        (["--data", "nosuchdata"], "Unknown dataset"),
    ],
)
def test_bad_data_values_are_one_clear_error(tmp_path, capsys, extra, message) -> None:
    rc, _ = _compress(tmp_path, *extra, "--quiet")
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("compactnn: error:") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "res").exists()  # refused before anything was written


def test_compile_latency_degrades_with_a_clear_warning(tmp_path, capsys, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    rc, rep = _compress(
        tmp_path, "--data", "digits", "--data-opt", "limit=200", "--quiet", "--compile"
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert "torch.compile latency skipped" in err and "C++ compiler" in err
    assert any("torch.compile latency skipped" in w for w in rep["warnings"])
    dep = rep["deploy"]
    assert (
        dep["torch_compile"]["ok"] is False
        and "InvalidCxxCompiler" in dep["torch_compile"]["error"]
    )
    assert all("torch.compile" not in row for row in dep["latency"].values())
    assert {"eager", "onnxruntime"} <= set(dep["latency"]["batch 100"])
    assert "torch.compile not timed" in (tmp_path / "res" / "report.md").read_text()


def test_compiled_form_records_a_checked_compile(monkeypatch) -> None:
    """compiled_form's bookkeeping (ok, compile time, parity against the model) with
    torch.compile stubbed; the real inductor compile (30 s here) is the slow test below."""
    calls: list[dict] = []

    def fake_compile(module, **kw):  # type: ignore[no-untyped-def]
        calls.append(kw)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = mlp().eval()
    x = torch.randn(6, 1, 8, 8)
    compiled, rec = export.compiled_form(model, x)
    assert calls and calls[0]["backend"] == "inductor"
    assert compiled is not None and rec["ok"] and rec["max_abs_diff"] <= 1e-4
    assert rec["compile_seconds"] > 0
    with torch.no_grad():
        assert np.allclose(compiled(x).numpy(), model(x).numpy(), atol=1e-4)


@pytest.mark.slow
def test_compiled_form_runs_and_matches_where_inductor_works() -> None:
    model = mlp().eval()
    x = torch.randn(6, 1, 8, 8)
    compiled, rec = export.compiled_form(model, x)
    if compiled is None:  # no C++ compiler on this machine: the degradation is tested above
        pytest.skip(f"torch.compile unavailable here: {rec.get('error')}")
    assert rec["ok"] and rec["max_abs_diff"] <= 1e-4 and rec["compile_seconds"] > 0
    with torch.no_grad():
        assert np.allclose(compiled(x).numpy(), model(x).numpy(), atol=1e-4)


def test_api_dict_batches_and_datasets() -> None:
    from compactnn.api import as_compression_data, describe_data
    from compactnn.errors import ConfigError

    train, test = dict_loaders()
    cd = as_compression_data({"train": train, "test": test}, input_key="pixels", label_key="answer")
    x, y = next(iter(cd.train))
    assert x.shape == (25, 1, 8, 8) and y.dtype == torch.long
    assert describe_data(cd)["splits"]["val"]["samples"] == 20
    # a Dataset (not a loader) is wrapped; 'label' style keys are found without label_key
    cd = as_compression_data(DictImages(50), input_key="pixels", label_key="answer", batch_size=10)
    assert next(iter(cd.train))[0].shape[0] == 10
    with pytest.raises(ConfigError, match="label_key"):
        as_compression_data(DictImages(50), input_key="pixels")  # no label-like key
    with pytest.raises(ConfigError, match="may hold only"):
        as_compression_data({"train": train, "tset": test})
