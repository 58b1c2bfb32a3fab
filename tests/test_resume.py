"""Resumable runs: a run killed after a stage checkpoint and started again with the same
arguments ends with the same model as an uninterrupted run, without redoing finished stages;
a resume with other options, model or data is refused; nothing is pickled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import _ddp
from compactnn import resume
from compactnn.errors import ConfigError


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def _kill_after(key_part: str, n: int) -> Any:
    seen = []

    def hook(key: str) -> None:
        if key_part in key:
            seen.append(key)
            if len(seen) == n:
                raise Killed(key)

    return hook


def _run(method: str, rdir: Path | None, **kw: Any) -> Any:
    return _ddp.compress(method, 16, resume_dir=rdir, **kw)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def saves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every checkpoint key written (the hook of a kill is chained in front of it)."""
    keys: list[str] = []
    monkeypatch.setattr(resume, "after_save", keys.append)
    return keys


# (method, where the run is killed: a checkpoint key part and its occurrence, calls that the
# resumed run must no longer make)
CASES = [
    ("ssr", "ssr stages", 2, "_aulm_layer", 1),  # killed after conv2: only fc1's AULM is left
    ("ssr", "train/SSR fine-tune", 1, "_aulm_layer", 0),  # killed in the fine-tuning
    ("admm-sparse", "admm-sparse mu path", 1, "_solve_mu", 1),  # after mu 1 of 2
    ("pgt", "train/pgt proximal-gradient training", 2, None, 0),  # after epoch 2 of 3
]


@pytest.mark.parametrize(("method", "key", "n", "call", "calls_left"), CASES)
def test_killed_and_resumed_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, key: str, n: int,
    call: str | None, calls_left: int,
) -> None:  # fmt: skip
    whole = _run(method, None)
    monkeypatch.setattr(resume, "after_save", _kill_after(key, n))
    with pytest.raises(Killed):
        _run(method, tmp_path / "run")
    keys: list[str] = []
    monkeypatch.setattr(resume, "after_save", keys.append)
    if call is not None:
        from compactnn.methods import get_method

        cls = get_method(method)
        made: list[int] = []
        orig = getattr(cls, call)
        monkeypatch.setattr(cls, call, lambda self, *a, **k: made.append(1) or orig(self, *a, **k))
    again = _run(method, tmp_path / "run")
    _same(whole.model, again.model)
    if call is not None:
        assert len(made) == calls_left
    if method == "pgt":  # epoch 3 was the only training epoch left to run
        assert keys.count("train/pgt proximal-gradient training") == 1
        assert again.history["steps"] == whole.history["steps"]
    if method == "admm-sparse":
        assert len(again.history["path"]) == len(whole.history["path"]) == 3
        # the first mu's plan was loaded from the run directory: it replays that point's model
        from compactnn import surgery

        first = surgery.apply(again.history["path_plans"][1], _ddp.tiny_model())
        ref = surgery.apply(whole.history["path_plans"][1], _ddp.tiny_model())
        _same(first, ref)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files  # no pickle, no tmp


def test_a_finished_run_replays_from_its_checkpoints(tmp_path: Path, saves: list[str]) -> None:
    first = _run("pgt", tmp_path / "run")
    n = len(saves)
    again = _run("pgt", tmp_path / "run")
    _same(first.model, again.model)
    assert len(saves) == n  # nothing recomputed, nothing written


def test_budget_search_choice_is_checkpointed(tmp_path: Path, monkeypatch) -> None:
    kw = {"target": {"params": 0.5}, "finetune_epochs": 1}
    monkeypatch.setattr(resume, "after_save", _kill_after("budget search", 1))
    with pytest.raises(Killed):
        _run("l1-norm", tmp_path / "run", **kw)
    monkeypatch.setattr(resume, "after_save", None)
    from compactnn.methods import get_method

    monkeypatch.setattr(get_method("l1-norm"), "calibrate", None)  # must not be called again
    again = _run("l1-norm", tmp_path / "run", **kw)
    monkeypatch.undo()
    whole = _run("l1-norm", None, **kw)
    _same(whole.model, again.model)
    assert again.chosen == whole.chosen


def test_a_different_run_is_refused(tmp_path: Path) -> None:
    _run("pgt", tmp_path / "run", finetune_epochs=1)
    with pytest.raises(ConfigError, match=r"different run.*options\.finetune_epochs: 1 then, 2"):
        _run("pgt", tmp_path / "run", finetune_epochs=2)
    from compactnn import compress

    other = _ddp.tiny_model()
    with torch.no_grad():
        other.fc2.bias.add_(1.0)
    with pytest.raises(ConfigError, match=r"model\.state"):
        compress(other, "pgt", _ddp.tiny_data(16), measure=False, progress=False,
                 resume_dir=tmp_path / "run", **{**_ddp.OPTIONS["pgt"], "finetune_epochs": 1})  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.train\.batch_size"):
        compress(_ddp.tiny_model(), "pgt", _ddp.tiny_data(8), measure=False, progress=False,
                 resume_dir=tmp_path / "run", **{**_ddp.OPTIONS["pgt"], "finetune_epochs": 1})  # fmt: skip
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _run("pgt", tmp_path / "file")
