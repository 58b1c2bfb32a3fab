"""The plan itself: :class:`CompressionPlan` (an ordered list of actions plus JSON metadata) and
its file format -- ``<name>.json`` (actions, meta, tensor keys) next to ``<name>.safetensors``,
checked by :func:`check_plan_doc` and read back action by action with :func:`decode_action`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from compactnn.errors import CheckpointError, PlanError
from compactnn.plan.actions import _ACTIONS, LAYER_STATE_ACTIONS, Action, SetState

_FORMAT_VERSION = 1


_DOC_KEYS = ("format", "version", "actions", "meta")


def check_plan_doc(doc: Any, path: Path, extra_keys: tuple[str, ...] = ()) -> None:
    """Refuse a plan document of another format, another version or with unknown fields.

    Args:
        doc: the parsed JSON document.
        path: its file (named in the messages).
        extra_keys: further top-level keys allowed (a compact checkpoint's ``"checkpoint"``).

    Raises:
        CheckpointError: naming the file and the offending key or version.
    """
    if not isinstance(doc, dict) or doc.get("format") != "compactnn-plan":
        raise CheckpointError(f"{path} is not a compactnn plan (missing format tag).")
    version = doc.get("version")
    if isinstance(version, bool) or version != _FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: plan format version {version!r} is not supported (this compactnn reads "
            f"version {_FORMAT_VERSION}); write the plan again with this version of compactnn."
        )
    known = (*_DOC_KEYS, *extra_keys)
    unknown = [k for k in doc if k not in known]
    if unknown:
        raise CheckpointError(
            f"{path}: unknown top-level field(s) {', '.join(map(repr, unknown))}; a plan has "
            f"only {', '.join(map(repr, known))}. Remove them (or fix their spelling)."
        )
    if not isinstance(doc.get("actions", []), list):
        raise CheckpointError(f"{path}: 'actions' must be a list of action records.")
    if not isinstance(doc.get("meta", {}), dict):
        raise CheckpointError(f"{path}: 'meta' must be a mapping.")
    for i, rec in enumerate(doc.get("actions", [])):
        kind = _ACTIONS.get(rec.get("type", "")) if isinstance(rec, dict) else None
        if kind is None:
            got = rec.get("type") if isinstance(rec, dict) else rec
            raise CheckpointError(
                f"{path}: action #{i} has unknown type {got!r}; known: {', '.join(_ACTIONS)}."
            )
        names = {f.name for f in fields(kind)}
        extra = [k for k in rec if k != "type" and k not in names]
        if extra:
            raise CheckpointError(
                f"{path}: action #{i} ({rec['type']}) has unknown field(s) "
                f"{', '.join(map(repr, extra))}; its fields are {', '.join(sorted(names))}."
            )


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".safetensors")


def decode_action(kind: type, rec: dict[str, Any], tensor: Any) -> Any:
    """An action of type ``kind`` from its JSON record; ``tensor(name)`` resolves the tensors the
    record names (``{"tensor": name}``, or ``{"tensors": {key: name}}`` for a state dict)."""
    kwargs: dict[str, Any] = {}
    for f in fields(kind):
        if f.name not in rec:
            continue
        v = rec[f.name]
        if isinstance(v, dict) and "tensor" in v:
            v = tensor(v["tensor"])
        elif isinstance(v, dict) and "tensors" in v:
            v = {k: tensor(t) for k, t in v["tensors"].items()}
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return kind(**kwargs)


@dataclass
class CompressionPlan:
    """An ordered list of surgery actions plus JSON-serializable metadata.

    ``meta["input_shape"]`` (per-sample shape, e.g. ``[3, 32, 32]``) is used by surgery when no
    ``example_inputs`` are given.
    """

    actions: list[Action] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    ACTION_TYPES: ClassVar[dict[str, type]] = _ACTIONS

    def __post_init__(self) -> None:
        self.actions = list(self.actions)
        for i, a in enumerate(self.actions):
            if not isinstance(a, tuple(_ACTIONS.values())):
                raise PlanError(
                    f"CompressionPlan action #{i} is a {type(a).__name__}; actions must be one of "
                    f"{', '.join(_ACTIONS)} from compactnn.plan."
                )
        if not isinstance(self.meta, dict):
            raise PlanError(f"CompressionPlan.meta must be a dict. Got {type(self.meta).__name__}.")

    # ------------------------------------------------------------------ serialization
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.json`` (actions, meta, tensor keys) and ``<path>.safetensors``.

        Returns:
            The path of the JSON file.

        Raises:
            PlanError: if ``meta`` is not JSON-serializable.
        """
        from safetensors.torch import save_file

        json_path, st_path = _paths(path)
        tensors: dict[str, Tensor] = {}
        records: list[dict[str, Any]] = []
        for i, a in enumerate(self.actions):
            rec: dict[str, Any] = {"type": type(a).__name__}
            for f in fields(a):
                v = getattr(a, f.name)
                if isinstance(v, Tensor):
                    key = f"{i}.{f.name}"
                    tensors[key] = v.detach().cpu().contiguous()
                    rec[f.name] = {"tensor": key}
                elif isinstance(v, Mapping):  # SetState.state: key -> tensor, in order
                    keys: dict[str, str] = {}
                    for k, t in v.items():
                        keys[k] = f"{i}.{f.name}.{k}"
                        tensors[keys[k]] = t.detach().cpu().contiguous()
                    rec[f.name] = {"tensors": keys}
                elif isinstance(v, tuple):
                    rec[f.name] = list(v)
                else:
                    rec[f.name] = v
            records.append(rec)
        doc = {"format": "compactnn-plan", "version": _FORMAT_VERSION, "actions": records}
        try:
            doc["meta"] = json.loads(json.dumps(self.meta))
        except (TypeError, ValueError) as exc:
            raise PlanError(
                f"CompressionPlan.meta must be JSON-serializable to save the plan ({exc}); store "
                "tensors as actions or convert them with .tolist()."
            ) from exc
        json_path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(st_path), metadata={"format": "compactnn-plan"})
        json_path.write_text(json.dumps(doc, indent=1))
        return json_path

    @classmethod
    def load(cls, path: str | Path) -> CompressionPlan:
        """Read a plan written by :meth:`save` (``path`` with or without suffix).

        Raises:
            CheckpointError: if a file is missing or corrupt.
        """
        from safetensors.torch import load_file

        json_path, st_path = _paths(path)
        for p in (json_path, st_path):
            if not p.is_file():
                raise CheckpointError(
                    f"Plan file {p} does not exist; a plan is saved as <name>.json + "
                    "<name>.safetensors by CompressionPlan.save(path)."
                )
        try:
            doc = json.loads(json_path.read_text())
            tensors = load_file(str(st_path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
            raise CheckpointError(f"Plan {json_path} is corrupt ({exc}); save it again.") from exc
        check_plan_doc(doc, json_path, extra_keys=("checkpoint",))
        actions: list[Action] = []
        for i, rec in enumerate(doc.get("actions", [])):

            def tensor(name: str, i: int = i) -> Tensor:
                if name not in tensors:
                    raise CheckpointError(
                        f"{st_path} lacks tensor {name!r} of action #{i}; the two "
                        "plan files do not belong together."
                    )
                return tensors[name]

            try:
                actions.append(decode_action(_ACTIONS[rec["type"]], rec, tensor))
            except TypeError as exc:
                raise CheckpointError(f"{json_path}: action #{i} is malformed ({exc}).") from exc
        return cls(actions=actions, meta=dict(doc.get("meta", {})))

    # ------------------------------------------------------------------ use
    def with_state(self, model: nn.Module) -> CompressionPlan:
        """This plan plus a final :class:`SetState` holding the state of ``model``.

        ``model`` is the result of applying this plan (then possibly trained with its structure
        fixed). The returned plan replays ``model`` exactly on a fresh, untrained instance of
        the original architecture. Layers replaced or overwritten by a :class:`LowRank` /
        :class:`SparseLowRank` / :class:`SetWeights` action keep their tensors in that action
        only (``SetState.skip``), so use this only when ``model`` did not change them since.
        Any earlier :class:`SetState` is dropped (the new one overrides it).
        """
        actions = [a for a in self.actions if not isinstance(a, SetState)]
        skip = tuple(dict.fromkeys(a.layer for a in actions if isinstance(a, LAYER_STATE_ACTIONS)))
        state = SetState.from_model(model, skip=skip)
        return CompressionPlan(actions=[*actions, state], meta=dict(self.meta))

    def __getattr__(self, name: str) -> Any:
        if name in ("apply", "validate"):
            raise AttributeError(
                f"CompressionPlan.{name} was removed (plan no longer imports surgery); use "
                f"compactnn.surgery.{name}(plan, model, ...) instead."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __len__(self) -> int:
        return len(self.actions)
