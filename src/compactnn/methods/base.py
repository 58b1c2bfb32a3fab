"""The method registry's contract: inputs (:class:`CompressionData`), outputs
(:class:`CompressionResult`) and the :class:`Method` base class.

A method is a thin composition of the shared core (prox, structure, capture, solvers, plan,
surgery, train, metrics). It receives a *copy* of the user's model (the API makes it unless
``inplace=True``), returns the physically smaller model and the plan that produced it; the API
measures the before/after reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from compactnn.errors import ConfigError, UnknownNameError

__all__ = ["CompressionData", "CompressionResult", "Method", "MethodConfig"]


@dataclass
class CompressionData:
    """Data a method may use.

    Attributes:
        train: loader of ``(x, y)`` batches for training-based methods and fine-tuning.
        test: loader for accuracy in the report (optional).
        calib: batches for layer-local methods (activation capture); defaults to ``train``.
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        name: dataset name when known (for reports).
    """

    train: DataLoader | None
    test: DataLoader | None = None
    calib: Iterable[Any] | None = None
    input_shape: tuple[int, ...] | None = None
    name: str | None = None

    def calib_batches(self, max_batches: int | None = None) -> Iterator[torch.Tensor]:
        """Input tensors for activation capture (labels dropped)."""
        src = self.calib if self.calib is not None else self.train
        if src is None:
            raise ConfigError(
                "This method needs calibration data: pass data=(train_loader, test_loader) or a "
                "dataset name to compactnn.compress."
            )
        for i, b in enumerate(src):
            if max_batches is not None and i >= max_batches:
                break
            yield b[0] if isinstance(b, (tuple, list)) else b

    def require_input_shape(self, method: str) -> tuple[int, ...]:
        if self.input_shape is None:
            raise ConfigError(
                f"Method '{method}' needs the per-sample input shape: pass input_shape= to "
                "compactnn.compress (e.g. (1, 28, 28))."
            )
        return self.input_shape

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
            (replayable with ``plan.apply(original)``; for training-based methods the plan also
            carries the trained weights).
        method: registry name.
        config: the method's configuration (frozen dataclass).
        report_before / report_after: :class:`~compactnn.metrics.Report` of the original and of
            the returned model (filled by the API).
        history: method-specific trace (ADMM residuals, mu path, per-layer solver stats, ...).
    """

    model: nn.Module
    plan: Any
    method: str
    config: Any
    report_before: Any = None
    report_after: Any = None
    history: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        from compactnn.metrics import format_comparison

        if self.report_before is None or self.report_after is None:
            return f"{self.method}: (no reports measured)"
        return f"== {self.method} ==\n" + format_comparison(self.report_before, self.report_after)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's frozen hyper-parameter dataclass."""

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


class Method:
    """Base class: subclasses set ``name``, ``Config`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_training_data: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError(f"Pass either config= or keyword options to '{self.name}', not both.")
        self.config = (
            config if config is not None else self.Config.from_options(self.name, **options)
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
