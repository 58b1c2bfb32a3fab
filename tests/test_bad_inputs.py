"""Bad inputs (issue 13, item 7): one ``CompactnnError`` naming the argument, before any work.

Two banks: the Python API (error type, the argument named in the message, the user's model
untouched) and the command line (exit 2, one line on stderr, no traceback, CLI flags named).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn
from compactnn.cli import main, method_help
from compactnn.errors import CheckpointError, CompactnnError, ConfigError, PlanError
from compactnn.plan import CompressionPlan, KeepOutputs


def tiny(num_classes: int = 3, width: int = 8) -> nn.Module:
    """A 4x4-image MLP (also the CLI's ``--factory tests.test_bad_inputs:tiny``)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def tiny64(num_classes: int = 10) -> nn.Module:
    """An 8x8-image MLP for the bundled ``digits`` dataset."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, num_classes))


def _loader(n: int = 40, classes: int = 3, nan: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    if nan:
        x[n - 1, 0, 0, 0] = float("nan")  # in the last batch: only a full check finds it
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _empty() -> DataLoader:
    return DataLoader(
        TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)), batch_size=4
    )


def _dict_batches(inputs_only: bool = False) -> tuple[DataLoader, DataLoader]:
    """Loaders of ``{"image": x, "label": y}`` batches (or ``({"image": x}, y)`` pairs)."""
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    items = [({"image": x}, y) if inputs_only else {"image": x, "label": y} for x, y in zip(xs, ys)]
    return DataLoader(items, batch_size=8), DataLoader(items, batch_size=8)


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def _dict_out_model() -> nn.Module:
    return _DictOut()


def _nan_model() -> nn.Module:
    m = tiny()
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    return m


def _pair(**kw: Any) -> tuple[DataLoader, DataLoader]:
    return _loader(**kw), _loader(**kw)


# (id, model factory, method, data factory, kwargs, error type, words the message must contain)
API_CASES: list[tuple[str, Callable[[], nn.Module], str, Callable[[], Any], dict, type, tuple]] = [
    ("seed-str", tiny, "l1-norm", _pair, {"seed": "abc"}, ConfigError, ("'seed'",)),
    ("empty-no-shape", tiny, "l1-norm", _empty, {}, ConfigError, ("empty", "input_shape")),
    ("keep-nan", tiny, "l1-norm", _pair, {"keep": [float("nan")]}, ConfigError, ("'keep[0]'",)),
    ("keep-2.7", tiny, "l1-norm", _pair, {"keep": [2.7]}, ConfigError, ("'keep[0]'", "int")),
    ("keep-bool", tiny, "l1-norm", _pair, {"keep": {"1": True}}, ConfigError, ("keep[",)),
    ("lam-str", tiny, "ssr", _pair, {"lam": [0.1, "x", 0.2]}, ConfigError, ("'lam[1]'",)),
    ("shape-str", tiny, "l1-norm", _pair, {"input_shape": "1,4,4"}, ConfigError, ("input_shape",)),
    ("shape-zero", tiny, "l1-norm", _pair, {"input_shape": (1, 0, 4)}, ConfigError, ("input_",)),
    (
        "labels>=classes",
        tiny,
        "l1-norm",
        lambda: _pair(classes=5),
        {},
        ConfigError,
        ("labels", "3 outputs"),
    ),
    ("nan-data", tiny, "l1-norm", lambda: _pair(nan=True), {}, ConfigError, ("NaN", "data")),
    ("nan-model", _nan_model, "l1-norm", _pair, {}, ConfigError, ("NaN", "'1.weight'")),
    (
        "finetune-empty-train",
        tiny,
        "l1-norm",
        lambda: (_empty(), _loader()),
        {"input_shape": (1, 4, 4), "finetune_epochs": 1},
        ConfigError,
        ("train loader", "empty"),
    ),
    (
        "ssr-empty-train",
        tiny,
        "ssr",
        lambda: (_empty(), _loader()),
        {"input_shape": (1, 4, 4)},
        ConfigError,
        ("train loader", "empty"),
    ),
    ("layers-int", tiny, "l1-norm", _pair, {"layers": 1}, ConfigError, ("'layers'",)),
    ("val-fraction", tiny, "l1-norm", _pair, {"val_fraction": "x"}, ConfigError, ("val_fraction",)),
    ("max-drop", tiny, "l1-norm", _pair, {"max_drop": -1}, ConfigError, ("max_drop",)),
    ("on-drop", tiny, "l1-norm", _pair, {"on_drop": "ignore"}, ConfigError, ("on_drop",)),
    ("unknown-option", tiny, "l1-norm", _pair, {"bogus": 1}, ConfigError, ("bogus",)),
    ("unknown-method", tiny, "nope", _pair, {}, CompactnnError, ("nope",)),
    ("not-a-model", lambda: "model", "l1-norm", _pair, {}, ConfigError, ("'model'",)),
    ("data-int", tiny, "l1-norm", lambda: 3, {}, ConfigError, ("'data'",)),
    (
        "dict-output",
        _dict_out_model,
        "l1-norm",
        _pair,
        {},
        ConfigError,
        ("returns a dict", "'logits'"),
    ),
    (
        "dict-batches",
        tiny,
        "l1-norm",
        _dict_batches,
        {},
        ConfigError,
        ("dicts", "'image'", "input_key"),
    ),
    (
        "dict-inputs",
        tiny,
        "ssr",
        lambda: _dict_batches(True),
        {},
        ConfigError,
        ("are dicts", "input_key"),
    ),
]


@pytest.mark.parametrize(
    ("make_model", "method", "make_data", "kwargs", "error", "words"),
    [c[1:] for c in API_CASES],
    ids=[c[0] for c in API_CASES],
)
def test_api_bad_input_is_one_clear_error(
    make_model: Callable[[], Any],
    method: str,
    make_data: Callable[[], Any],
    kwargs: dict,
    error: type,
    words: tuple,
) -> None:
    model = make_model()
    before = (
        {k: v.clone() for k, v in model.state_dict().items()}
        if isinstance(model, nn.Module)
        else None
    )
    with pytest.raises(error) as info:
        compactnn.compress(model, method, make_data(), progress=False, **kwargs)
    assert isinstance(info.value, CompactnnError)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    if before is not None:  # the user's model is untouched
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) or torch.isnan(v).any() for k, v in before.items())


def test_a_string_layer_list_is_one_name_not_letters() -> None:
    from compactnn.methods.criteria_pruning import L1NormConfig

    assert L1NormConfig(layers="features.0").layers == ("features.0",)


def test_train_and_accuracy_refuse_empty_and_nan_data() -> None:
    from compactnn.metrics import accuracy
    from compactnn.train import TrainConfig, train

    with pytest.raises(ConfigError, match="no batch"):
        train(tiny(), _empty(), config=TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="NaN"):
        accuracy(tiny(), _loader(nan=True))
    with pytest.raises(ConfigError, match="empty"):
        accuracy(tiny(), _empty())


# ----------------------------------------------------------------------------- plan files
def _saved_plan(tmp_path: Path) -> Path:
    return CompressionPlan(actions=[KeepOutputs("1", (0, 2))]).save(tmp_path / "p")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(version=99), ("version 99",)),
        (lambda d: d.update(version=True), ("version",)),
        (lambda d: d.update(extra=1), ("'extra'",)),
        (lambda d: d["actions"][0].update(kep=[0]), ("'kep'",)),
        (lambda d: d["actions"][0].update(type="Nope"), ("'Nope'",)),
        (lambda d: d.update(actions={}), ("'actions'",)),
        (lambda d: d.update(meta=[1]), ("'meta'",)),
    ],
    ids=["version-99", "version-bool", "top-field", "action-field", "type", "actions", "meta"],
)
def test_plan_schema_is_strict(tmp_path: Path, edit: Callable[[dict], Any], words: tuple) -> None:
    path = _saved_plan(tmp_path)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as info:
        CompressionPlan.load(path)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("keep", [[0, 2.7], [True, 1], "01"], ids=["float", "bool", "str"])
def test_plan_keep_counts_are_strict(tmp_path: Path, keep: Any) -> None:
    path = _saved_plan(tmp_path)
    doc = json.loads(path.read_text())
    doc["actions"][0]["keep"] = keep
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="keep"):
        CompressionPlan.load(path)


# ----------------------------------------------------------------------------- CLI bank
FACTORY = ["--factory", "tests.test_bad_inputs:tiny64"]


def _recipe(tmp_path: Path, text: str) -> str:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return str(p)


CLI_CASES: list[tuple[str, Callable[[Path], list[str]], tuple]] = [
    ("input-shape", lambda t: ["--method", "l1-norm", "--input-shape", "1,x"], ("--input-shape",)),
    ("recipe-missing", lambda t: ["--recipe", str(t / "none.yaml")], ("--recipe", "no such file")),
    (
        "recipe-syntax",
        lambda t: ["--recipe", _recipe(t, "method: l1-norm\noptions: {ratio: 0.5\n")],
        ("--recipe", "YAML syntax error", "line"),
    ),
    (
        "recipe-not-mapping",
        lambda t: ["--recipe", _recipe(t, "- a\n- b\n")],
        ("--recipe", "mapping"),
    ),
    (
        "recipe-options",
        lambda t: ["--recipe", _recipe(t, "method: l1-norm\noptions: [1, 2]\n")],
        ("'options'", "mapping"),
    ),
    (
        "recipe-unknown-key",
        lambda t: ["--recipe", _recipe(t, "method: l1-norm\noption:\n  ratio: 0.5\n")],
        ("'option'", "Did you mean 'options'"),
    ),
    (
        "recipe-bad-option",
        lambda t: ["--recipe", _recipe(t, "method: l1-norm\noptions: {keep: [2.7]}\n")],
        ("--opt keep",),
    ),
    ("opt-yaml", lambda t: ["--method", "ssr", "--opt", "lam=[0.1,"], ("--opt lam",)),
    ("opt-no-equals", lambda t: ["--method", "ssr", "--opt", "lam"], ("--opt", "key=value")),
    ("opt-keep-float", lambda t: ["--method", "l1-norm", "--opt", "keep=[2.7]"], ("keep[0]",)),
    ("opt-lam-str", lambda t: ["--method", "ssr", "--opt", "lam=[0.1,x,0.2]"], ("lam[1]",)),
    ("opt-unknown", lambda t: ["--method", "ssr", "--opt", "lamda=1"], ("lamda",)),
    ("no-method", lambda t: [], ("--method",)),
    ("unknown-method", lambda t: ["--method", "nope"], ("nope",)),
    ("target", lambda t: ["--method", "l1-norm", "--target", "macs=x"], ("target",)),
    ("max-drop", lambda t: ["--method", "l1-norm", "--max-drop", "-1"], ("--max-drop",)),
    (
        "val-fraction",
        lambda t: ["--method", "l1-norm", "--val-fraction", "0.9"],
        ("--val-fraction",),
    ),
    (
        "out-is-a-file",
        lambda t: ["--method", "l1-norm", "--out", str(_touch(t / "f"))],
        ("--out", "existing file"),
    ),
    (
        "factory-kwargs-bad",
        lambda t: ["--method", "l1-norm", "--factory-kwargs", "bad=1"],
        ("--factory-kwargs", "bad"),
    ),
    (
        "factory-kwargs-syntax",
        lambda t: ["--method", "l1-norm", "--factory-kwargs", "1x"],
        ("--factory-kwargs",),
    ),
    (
        "labels>=classes",
        lambda t: ["--method", "l1-norm", "--factory-kwargs", "num_classes=5", "--data", "digits"],
        ("labels", "5 outputs"),
    ),
    (
        "empty-data-shape",
        lambda t: ["--method", "l1-norm", "--input-shape", "1,4,4", "--data", "digits"],
        ("--input-shape",),
    ),
]


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


@pytest.mark.parametrize(
    ("args", "words"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: Any, args: Callable[[Path], list[str]], words: tuple
) -> None:
    rc = main(["compress", *FACTORY, *args(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("compactnn: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert "input_shape=" not in err and "max_drop=" not in err  # CLI terms, not API ones


@pytest.mark.parametrize(
    "argv",
    [
        ["compress", "--factory", "nocolon", "--method", "l1-norm"],
        ["compress", "--factory", "no_such_module_xyz:make", "--method", "l1-norm"],
        ["compress", "lenet-caffe", "--method", "l1-norm", "--checkpoint", "none.safetensors"],
        ["inspect"],
        ["inspect", *FACTORY],  # no input shape recorded
        ["inspect", "lenet-caffe", "--factory-kwargs", "a=1"],
        ["compress", "--method", "nope", "--help"],
    ],
    ids=["factory-colon", "factory-import", "checkpoint", "inspect-nothing", "inspect-shape",
         "kwargs-no-factory", "help-unknown-method"],
)  # fmt: skip
def test_cli_other_errors_are_one_line(capsys: Any, argv: list[str]) -> None:
    assert main([*argv, "--no-latency"] if argv[0] == "inspect" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_debug_shows_the_traceback() -> None:
    with pytest.raises(ConfigError):
        main(["--debug", "compress", *FACTORY, "--method", "l1-norm", "--input-shape", "x"])
    with pytest.raises(ConfigError):
        main(["compress", *FACTORY, "--method", "l1-norm", "--input-shape", "x", "--debug"])


# ----------------------------------------------------------------------------- CLI features
def test_method_help_lists_options_with_defaults_and_meaning(capsys: Any) -> None:
    assert main(["compress", "--method", "l1-norm", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--factory-kwargs" in out  # the command's own help follows the method's options
    assert out.index("ratio = 0.5") < out.index("usage:")
    assert "ratio = 0.5" in out and "keep = None" in out
    assert "fraction in (0, 1] of filters kept" in out
    for name in compactnn.methods.list_methods():
        lines = method_help(name).splitlines()
        fields = [i for i, ln in enumerate(lines) if re.match(r"^  \w+ = ", ln)]
        assert fields, name
        for i, j in zip(fields, [*fields[1:], len(lines)]):  # every field: a meaning below it
            meaning = lines[i + 1 : j]
            assert meaning and all(m.startswith("      ") for m in meaning), (name, lines[i])
            assert "(not described" not in meaning[0], (name, lines[i])


def test_factory_kwargs_split_at_top_level_commas() -> None:
    from compactnn.cli import _parse_factory_kwargs

    assert _parse_factory_kwargs("a=1,b=[1, 2],c='x,y',d={k: 2}") == {
        "a": 1,
        "b": [1, 2],
        "c": "x,y",
        "d": {"k": 2},
    }


def test_factory_from_the_current_directory_with_kwargs(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "mynets_cwd.py").write_text(
        "from torch import nn\n"
        "def make(width=4, classes=2):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(9, width), nn.Linear(width, classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    argv = ["inspect", "--factory", "mynets_cwd:make", "--factory-kwargs", "width=7,classes=3"]
    assert main([*argv, "--input-shape", "1,3,3", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "9->7" in out and "7->3" in out


def test_inspect_factory_with_checkpoint_takes_its_input_shape(tmp_path, capsys) -> None:
    from compactnn.train import save_checkpoint

    model = tiny64()
    p = save_checkpoint(model, tmp_path / "w.safetensors", input_shape=[1, 8, 8])
    assert main(["inspect", *FACTORY, "--checkpoint", str(p), "--no-latency"]) == 0
    assert "input (1, 8, 8)" in capsys.readouterr().out


def test_inspect_a_saved_result_directory(tmp_path, capsys) -> None:
    from compactnn import export, surgery

    model = tiny64()
    plan = CompressionPlan(actions=[KeepOutputs("1", (0, 2, 5))], meta={"input_shape": [1, 8, 8]})
    small = surgery.apply(plan, model)
    out = tmp_path / "res"
    export.save_checkpoint(small, plan.with_state(small), out, input_shape=(1, 8, 8))
    (out / "report.json").write_text(
        json.dumps({"model_spec": {"factory": "tests.test_bad_inputs:tiny64"}})
    )
    assert main(["inspect", str(out), "--no-latency"]) == 0
    text = capsys.readouterr().out
    assert "64->3" in text and "3->10" in text
    # a plan from a newer compactnn is refused with one line
    doc = json.loads((out / "plan.json").read_text())
    doc["version"] = 99
    (out / "plan.json").write_text(json.dumps(doc))
    assert main(["inspect", str(out), "--no-latency"]) == 2
    assert "version 99" in capsys.readouterr().err


def test_inspect_help_names_only_flags_that_exist(capsys: Any) -> None:
    """Issue 13 item 8: inspect's help named a --list flag that did not exist."""
    from compactnn import cli

    with pytest.raises(SystemExit):
        cli.main(["inspect", "--help"])
    text = capsys.readouterr().out
    assert "--list" not in text and "--factory" in text and "--checkpoint" in text
