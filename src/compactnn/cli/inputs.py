"""What the user typed, read and checked before a model or a dataset is loaded.

``--opt`` / ``--factory-kwargs`` / ``--data-opt`` values (YAML), ``--input-shape``,
``--recipe``, ``--out``, ``--factory`` / ``--data`` functions (``package.module:function``),
a checkpoint file's kind (:func:`_load_ckpt`), and :func:`_plain` / :func:`_json_values`,
the plain values written to recipe.yaml and report.json.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactnn.errors import CheckpointError, ConfigError

# PyYAML (~50 ms) and compactnn.train (torch) are imported in the functions that use them:
# ``compactnn --help`` imports this module (DATASET_OPTS) and needs neither.


def _yaml_value(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{where}: {text!r} is not a valid YAML value ({first}); quote strings and close "
            "brackets, e.g. lam=[0.1,0.2]."
        ) from exc


def _parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars/lists (``lam=[0.1,0.2]``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--opt '{pair}' must look like key=value (e.g. --opt lam=0.5).")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = _yaml_value(v, f"--opt {k.strip()}")
    return out


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (q.strip() for q in parts) if p]


def _parse_factory_kwargs(text: str | None) -> dict[str, Any]:
    """``--factory-kwargs k=v,k2=[1,2]`` -> ``{"k": v, "k2": [1, 2]}`` (YAML-parsed values)."""
    out: dict[str, Any] = {}
    for pair in _split_top_level(text or ""):
        k, sep, v = pair.partition("=")
        if not sep or not k.strip().isidentifier():
            raise ConfigError(
                f"--factory-kwargs: '{pair}' must look like name=value (e.g. --factory-kwargs "
                "num_classes=10,width=[16,32])."
            )
        out[k.strip()] = _yaml_value(v, f"--factory-kwargs {k.strip()}")
    return out


def _import_callable(spec: str, flag: str, returns: str, example: str) -> Any:
    """``package.module:function`` -> the function (the current directory is importable)."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ConfigError(
            f"{flag} '{spec}' must look like package.module:function (a callable that "
            f"{returns}), e.g. {flag} {example}."
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Cannot import {flag} '{spec}' ({exc}); run from the directory that holds "
            f"{mod_name.split('.')[0]} or put it on PYTHONPATH."
        ) from exc
    if not callable(fn):
        raise ConfigError(f"{flag} '{spec}' names a {type(fn).__name__}, not a function.")
    return fn


#: --data-opt keys of a registry dataset (compactnn.data.get_loaders / get_dataset)
DATASET_OPTS = (
    "mean",
    "std",
    "normalize",
    "batch_size",
    "test_batch_size",
    "limit",
    "pad_to",
    "channels",
    "flatten",
    "root",
)


def _parse_data_opts(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--data-opt mean=0.5,std=0.25 --data-opt limit=1000`` -> a dict (YAML values)."""
    out: dict[str, Any] = {}
    for text in pairs or []:
        for pair in _split_top_level(text):
            k, sep, v = pair.partition("=")
            key = k.strip().replace("-", "_")
            if not sep or not key.isidentifier():
                raise ConfigError(
                    f"--data-opt '{pair}' must look like name=value (e.g. --data-opt "
                    "mean=0.1307,std=0.3081 or --data-opt batch_size=64,limit=2000)."
                )
            out[key] = _yaml_value(v, f"--data-opt {key}")
    return out


_RECIPE_KEYS = (
    "method", "data", "data_opts", "input_key", "label_key", "options", "target", "max_drop",
)  # fmt: skip


def _read_recipe(path: str) -> dict[str, Any]:
    """A recipe YAML file, checked: a mapping with known keys, ``options`` a mapping."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"--recipe {path}: no such file; give the path of a YAML recipe (compactnn compress "
            "--out DIR writes DIR/recipe.yaml)."
        )
    try:
        recipe = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"--recipe {path}: YAML syntax error{where} ({problem}); fix the file."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--recipe {path}: cannot read the file ({exc}).") from exc
    if not isinstance(recipe, dict):
        raise ConfigError(
            f"--recipe {path} must be a YAML mapping such as 'method: ssr' / 'options: "
            f"{{lam: 0.1}}'. Got a {type(recipe).__name__}."
        )
    for key in recipe:
        if key not in _RECIPE_KEYS:
            close = difflib.get_close_matches(str(key), _RECIPE_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"--recipe {path}: unknown key {key!r}; a recipe has only "
                f"{', '.join(_RECIPE_KEYS)}.{hint}"
            )
    options = recipe.get("options")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(
            f"--recipe {path}: 'options' must be a mapping option -> value (e.g. 'options: "
            f"{{lam: 0.1, finetune_epochs: 2}}'). Got {options!r}."
        )
    return recipe


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape 1,28,28`` -> ``(1, 28, 28)``."""
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(
            f"--input-shape {text!r} must be the per-sample shape as positive ints separated by "
            "commas, e.g. --input-shape 1,28,28."
        )
    return shape


def _check_out(out: str | None) -> None:
    """Refuse ``--out`` naming an existing file (before any work is done)."""
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(
            f"--out {out} is an existing file; --out names a directory (created if missing) "
            "for the model, plan and report. Choose another path."
        )


def _load_ckpt(path: Any, model: Any = None) -> tuple[Any, dict[str, Any]]:
    """:func:`compactnn.train.load_checkpoint` of a path the user gave, after a look at the
    file's first bytes: a file that is neither safetensors nor a torch.save file is refused
    with one error saying what it holds (not torch's unpickling error)."""
    from compactnn.train import load_checkpoint

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(64)
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        is_safetensors = head[8:9] == b"{" and 0 < n < p.stat().st_size
        is_torch = head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"  # zip / legacy pickle
        if not (is_safetensors or is_torch):
            what = "an empty file" if not head else "neither safetensors nor torch.save data"
            try:
                text = head.decode("utf-8")
                if text.isprintable() or "\n" in text:
                    what = f"text: {text.splitlines()[0][:40]!r}..." if text.strip() else what
            except UnicodeDecodeError:
                pass
            raise CheckpointError(
                f"Checkpoint '{p}' is not a model checkpoint ({what}). Give a "
                ".safetensors file or a torch.save file (.pt / .pth) of the model's state dict "
                "(compactnn train --out, compactnn.train.save_checkpoint, or "
                "torch.save(model.state_dict(), 'model.pt'))."
            )
    return load_checkpoint(p, model)


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """Options as YAML-safe plain values (tuples -> lists); unset (None) options dropped."""

    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v)

    return {k: conv(v) for k, v in options.items() if v is not None}


_DROP = object()


def _json_values(value: Any) -> Any:
    """The JSON-plain part of a method's history (plans, tensors and modules left out)."""
    if isinstance(value, dict):
        out = {str(k): _json_values(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _DROP}
    if isinstance(value, (list, tuple)):
        items = [_json_values(v) for v in value]
        kept = [v for v in items if v is not _DROP]
        return kept if len(kept) == len(items) or kept else _DROP
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor / numpy scalar
        return value.item()
    return _DROP
