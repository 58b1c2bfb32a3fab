"""The method registry's contract: inputs (:class:`CompressionData`), outputs
(:class:`CompressionResult`) and the :class:`Method` base class.

A method is a thin composition of the shared core (prox, structure, capture, solvers, plan,
surgery, train, metrics). It receives a *copy* of the user's model (the API makes it unless
``inplace=True``), returns the physically smaller model and the plan that produced it; the API
measures the before/after reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from compactnn._validation import Rule, validate_options
from compactnn.budget import Strength
from compactnn.errors import ConfigError, UnknownNameError
from compactnn.methods._calibrate import search_strength
from compactnn.methods._common import replay_plan
from compactnn.metrics import format_comparison
from compactnn.train import _seeded

__all__ = ["CompressionData", "CompressionResult", "Method", "MethodConfig"]


@dataclass
class CompressionData:
    """Data a method may use.

    Attributes:
        train: loader of ``(x, y)`` batches for training-based methods and fine-tuning.
        test: loader for accuracy in the final report only (optional): no automatic choice
            ever looks at it.
        val: validation loader, carved from the training data by :func:`compactnn.compress`
            (``val_fraction``, seeded) unless given; every automatic choice (strength search,
            accuracy-drop guard, elbows, early stopping) is made on it.
        calib: batches for layer-local methods (activation capture); defaults to ``train``.
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        name: dataset name when known (for reports).
        check_batch: a few real input samples (:func:`compactnn.compress` keeps the first
            samples of the first training batch, which its up-front checks read anyway): every
            surgery self-check of the run also runs on them (``surgery.apply(check_inputs=)``).
    """

    train: DataLoader | None
    test: DataLoader | None = None
    val: DataLoader | None = None
    calib: Iterable[Any] | None = None
    input_shape: tuple[int, ...] | None = None
    name: str | None = None
    check_batch: Any = None

    def calib_batches(
        self,
        max_batches: int | None = None,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> Iterator[torch.Tensor]:
        """Input tensors for activation capture (labels dropped), moved to ``device`` (the
        model's, e.g. :func:`compactnn.structure.module_device`) when given.

        A shuffling training loader is reseeded with ``seed`` first, so every call yields the
        same batches (a budget search's trials and the final run calibrate on the same data).
        """

        src = self.calib if self.calib is not None else self.train
        if src is not None and self.calib is None:
            src = _seeded(src, seed)
        if src is None:
            raise ConfigError(
                "This method needs calibration data: pass data=(train_loader, test_loader) or a "
                "dataset name to compactnn.compress."
            )
        for i, b in enumerate(src):
            if max_batches is not None and i >= max_batches:
                break
            x = b[0] if isinstance(b, (tuple, list)) else b
            yield x if device is None else x.to(device)

    def train_batches(
        self,
        method: str,
        max_batches: int | None = None,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Labelled ``(x, y)`` batches of the training loader (for criteria that take a loss
        gradient), reseeded with ``seed`` as in :meth:`calib_batches`, moved to ``device``
        when given."""

        for i, b in enumerate(_seeded(self.require_train(method), seed)):
            if max_batches is not None and i >= max_batches:
                break
            yield (b[0], b[1]) if device is None else (b[0].to(device), b[1].to(device))

    def require_input_shape(self, method: str) -> tuple[int, ...]:
        if self.input_shape is None:
            raise ConfigError(
                f"Method '{method}' needs the per-sample input shape: pass input_shape= to "
                "compactnn.compress (e.g. (1, 28, 28))."
            )
        return self.input_shape

    def require_val(self, what: str) -> DataLoader:
        if self.val is None:
            raise ConfigError(
                f"{what} needs a validation split: pass data=(train_loader, val_loader, "
                "test_loader), or a map-style training DataLoader / dataset name with "
                "val_fraction > 0 so compactnn can carve one from the training data."
            )
        return self.val

    def require_train(self, method: str) -> DataLoader:
        if self.train is None:
            raise ConfigError(
                f"Method '{method}' trains the model and needs a training loader: pass "
                "data=(train_loader, test_loader) or a dataset name such as 'mnist'."
            )
        return self.train


@dataclass
class CompressionResult:
    """What :func:`compactnn.compress` returns.

    Attributes:
        model: the physically smaller model.
        plan: the :class:`~compactnn.plan.CompressionPlan` that maps the original to ``model``
            (replayable with ``compactnn.surgery.apply(plan, model)`` on the original or on a
            fresh instance of its architecture; for training-based methods the plan also
            carries the trained weights).
        method: registry name.
        config: the method's configuration (frozen dataclass).
        report_before / report_after: :class:`~compactnn.metrics.Report` of the original and of
            the returned model (filled by the API).
        history: method-specific trace (ADMM residuals, mu path, per-layer solver stats, ...).
        chosen: the options the run used, with every automatic choice resolved (e.g. the
            per-layer ``lam`` an SSR budget search picked): ``compress(model, method, data,
            **result.chosen)`` replays the run without any search.
        target: the budget record (``None`` without ``target=``): the target, the fractions
            kept measured on ``model``, whether it is met, and the search trace.
        validation: validation accuracy before / after and the drop in points (``None`` when
            no validation split was available).
    """

    model: nn.Module
    plan: Any
    method: str
    config: Any
    report_before: Any = None
    report_after: Any = None
    history: dict[str, Any] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    validation: dict[str, float] | None = None

    def summary(self) -> str:
        lines = [f"== {self.method} =="]
        if self.target is not None:
            kept = ", ".join(
                f"{k} {100 * v:.2f} % (target {100 * self.target['target'][k]:.2f} %)"
                for k, v in self.target["kept"].items()
            )
            verdict = "met" if self.target["met"] else "NOT met"
            lines.append(f"target {verdict}: kept {kept}")
            eng = self.history.get("engine_info") if isinstance(self.history, dict) else None
            if eng:
                cuts = len(eng.get("cuts") or [])
                val = eng.get("val_top1_engine")
                lines.append(
                    f"  budgeted engine: one joint run, {eng['steps']} optimizer steps, "
                    f"{eng['seconds']:.1f} s, {cuts} cut(s) while training"
                    + (
                        f", validation top-1 {val:.2f} % before fine-tuning"
                        if val is not None
                        else ""
                    )
                )
            lat = self.target.get("latency_prediction")
            if lat and lat.get("predicted_fraction") is not None:
                lines.append(
                    f"  latency model: predicted {100 * lat['predicted_fraction']:.2f} % "
                    f"({lat['predicted_ms']:.3f} ms), measured {100 * lat['measured_fraction']:.2f} % "
                    f"({lat['measured_ms']:.3f} of {lat['original_ms']:.3f} ms, interleaved, "
                    f"batch {lat['batch_size']}, {lat['threads']} thread(s), {lat['runtime']})"
                )
            if self.target.get("strength") is not None:
                lines.append(
                    f"  chosen on validation: {self.target['option']} = "
                    f"{self.target['strength']:.4g} after {len(self.target['trace'])} trial "
                    f"run(s), {self.target['seconds']:.1f} s of search"
                )
        if self.validation is not None:
            v = self.validation
            lines.append(
                f"validation top-1 {v['before']:.2f} % -> {v['after']:.2f} % "
                f"({-v['drop']:+.2f} points, {int(v['n'])} samples)"
            )
        if self.report_before is None or self.report_after is None:
            lines.append("(no reports measured)")
        else:
            lines.append(format_comparison(self.report_before, self.report_after))
        return "\n".join(lines)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's frozen hyper-parameter dataclass.

    A config sets ``owner`` (the name its errors use) and ``rules`` (``{option: rule}``, the
    shared tables of :mod:`compactnn.methods._options` spread in), which every construction
    applies in order (:func:`~compactnn._validation.validate_options`); a config with checks
    across options adds them in its own ``__post_init__`` after ``super().__post_init__()``.
    """

    owner: ClassVar[str] = "method"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType({})

    def __post_init__(self) -> None:
        validate_options(self, self.owner, self.rules)

    @classmethod
    def from_options(cls, owner: str, **options: Any) -> MethodConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(
                f"Unknown option(s) {', '.join(repr(u) for u in unknown)} for method '{owner}'. "
                f"Valid options: {', '.join(sorted(names))}."
            )
        return cls(**options)


#: the config dataclass of a :class:`Method` subclass
C = TypeVar("C", bound=MethodConfig)


class Method(Generic[C]):
    """Base class: subclasses set ``name``, ``Config`` (the class ``C`` they are generic over,
    e.g. ``class SSR(Method[SSRConfig])``) and implement :meth:`run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_training_data: ClassVar[bool] = True
    description: ClassVar[str] = ""
    config: C

    def __init__(self, config: C | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError(f"Pass either config= or keyword options to '{self.name}', not both.")
        self.config = cast(
            C, config if config is not None else self.Config.from_options(self.name, **options)
        )
        if not isinstance(self.config, self.Config):
            raise ConfigError(
                f"Method '{self.name}' expects a {self.Config.__name__}; got "
                f"{type(self.config).__name__}."
            )

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        raise NotImplementedError

    # ------------------------------------------------------------------ budget contract
    def strength(self) -> Strength | None:
        """The scalar a budget search moves for this method (``None``: no budget support).

        A larger strength must give a smaller model. Methods that choose their structure from
        one solve (``ddlr``) override :meth:`calibrate` instead.
        """
        return None

    def at_strength(self, s: float, model: nn.Module, data: CompressionData) -> Method:
        """A copy of this method whose options realise strength ``s`` on ``model``."""
        raise NotImplementedError(f"Method '{self.name}' has no budget strength.")

    def proxy(self) -> Method:
        """A cheaper variant that selects the *same structure* (e.g. without fine-tuning)."""
        return self

    def with_options(self, **changes: Any) -> Self:
        """A new instance of this method with some options replaced (validated again)."""
        return type(self)(**{**self.options(), **changes})

    def options(self) -> dict[str, Any]:
        """The options of this instance, as keyword arguments that rebuild it."""
        return {f.name: getattr(self.config, f.name) for f in fields(self.config)}

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """Choose this method's strength so that ``model`` compressed meets ``target``.

        Default: :func:`compactnn.budget.search` over :meth:`strength`, each trial a run of
        :meth:`proxy` at that strength on a copy of ``model`` (training data only, the
        candidate measured physically). Returns the method to run and the search record.
        """

        return search_strength(self, model, data, target, progress=progress)

    def result(
        self, model: nn.Module, plan: Any, input_shape: Any, history: dict[str, Any]
    ) -> CompressionResult:
        """The result of a run that cut ``model`` by the structure ``plan`` and trained it
        since: the plan made self-contained for ``model`` (:func:`replay_plan`: it replays
        ``model`` exactly on a fresh instance), this method's name and config, ``history``."""
        plan = replay_plan(plan, model, input_shape)
        return CompressionResult(model, plan, self.name, self.config, history=history)

    def _check_layers(self, model: nn.Module, layers: Iterable[str]) -> None:
        """Raise a clear error for layer names that do not exist in ``model``."""
        mods = dict(model.named_modules())
        for name in layers:
            if name not in mods:
                known = [n for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
                raise UnknownNameError(
                    f"Layer '{name}' does not exist in {type(model).__name__}. "
                    f"Conv2d/Linear layers: {', '.join(known)}."
                )
