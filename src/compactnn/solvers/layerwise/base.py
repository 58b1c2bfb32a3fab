r"""The layer-solver interface: one class per layer-wise solver, with declared capabilities.

A layer-wise solver turns one layer's captured data (a :class:`LayerProblem`: input ``X``,
original output ``Y``, bias, linear flag) into a :class:`LayerSolveResult` (the new ``U``, with
the new weight ``U.T``). Each solver is a frozen dataclass whose fields are its hyper-parameters
(``eps_frac``, ``zero_tol``, ...) and which declares, as class attributes:

* :attr:`LayerSolver.capabilities` -- what it optimises and what it can do
  (:class:`Capabilities`: objective, constraints, backends, warm start, factor output);
* :attr:`LayerSolver.backend_table` -- how each declared backend runs (:class:`Backend`: the
  options type and the entry point). This table is the only place where a backend name is
  turned into code.

:meth:`LayerSolver.solve` checks the backend, the options and the warm start against these
declarations (a :class:`~compactnn.errors.ConfigError` naming the solver, the backend and what
is supported) and then calls the solver's :meth:`LayerSolver._solve` with the checked
request (:class:`SolveCall`). A new solver is one such class, added to
:data:`compactnn.solvers.layerwise.registry.LAYER_SOLVERS`.

References:
    Papadimitriou & Jain (2021), Algorithm 1 and sec. 3.2 (layers are independent problems).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from compactnn.errors import ConfigError
from compactnn.solvers.layerwise.problem import LayerProblem, LayerSolveResult

__all__ = ["CONSTRAINTS", "Backend", "Capabilities", "LayerSolver", "SolveCall"]

CONSTRAINTS: Mapping[str, str] = {
    "fit_ball": "||(XU + 1b^T - Y) o M||_F <= eps, eps = eps_frac * ||X||_F, M = [Y > 0] "
    "(M = 1 for a linear layer)",
    "relu_inactive": "(XU + 1b^T) o M' <= 0: outputs the original ReLU switched off stay off",
}
"""Known constraint names of :attr:`Capabilities.constraints` (a penalised solver has none)."""


@dataclass(frozen=True)
class Capabilities:
    """What a layer solver declares about itself.

    Attributes:
        objective: The function minimised over ``U``: ``"nuclear"`` (``||U||_*``), ``"l1"``,
            or a solver's own name for a composite one (e.g. ``"l21+nuclear"``).
        constraints: Names of the constraints on ``U`` (see :data:`CONSTRAINTS`); empty for a
            penalised (unconstrained) problem.
        backends: The backends it accepts, the default first.
        warm_start: Accepts ``warm_start=`` (backends that cannot use one ignore it).
        factor_output: Its ``U`` is deployed as factors (low-rank ``second @ first``) rather
            than as a dense or sparse weight.
    """

    objective: str
    constraints: tuple[str, ...]
    backends: tuple[str, ...]
    warm_start: bool
    factor_output: bool

    def __post_init__(self) -> None:
        if not isinstance(self.objective, str) or not self.objective:
            raise ConfigError(
                f"Capabilities.objective must be a non-empty string. Got {self.objective!r}."
            )
        for field in ("constraints", "backends"):
            value = getattr(self, field)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"Capabilities.{field} must be a tuple of strings. Got {value!r} instead."
                )
        if not self.backends:
            raise ConfigError("Capabilities.backends must name at least one backend.")


@dataclass(frozen=True)
class Backend:
    """One way of running a solver: the row of a solver's backend table.

    Attributes:
        name: The backend name users pass (``backend="admm"``).
        options_type: The options dataclass of this backend (default-constructible), or
            ``None`` when it takes no options.
        run: The entry point; its signature is the solver family's (the solver calls it).
        warm_start: Uses a warm start (other backends of a warm-startable solver ignore it).
        exact_zeros: Returns exact zeros for sparse objectives (no clean-up threshold needed).
        keep_state: Maps options to options that keep what a later warm start needs (e.g.
            ``ADMMOptions(keep_state=True)``), for solves along a path; ``None``: unchanged.
    """

    name: str
    options_type: type | None
    run: Callable[..., Any]
    warm_start: bool = False
    exact_zeros: bool = False
    keep_state: Callable[[Any], Any] | None = None

    def default_options(self) -> Any:
        """The backend's default options (``None`` when it takes none)."""
        return None if self.options_type is None else self.options_type()

    def path_options(self, options: Any) -> Any:
        """``options`` (or the defaults) set up for warm-started solves along a path."""
        options = self.default_options() if options is None else options
        return options if self.keep_state is None else self.keep_state(options)


@dataclass(frozen=True)
class SolveCall:
    """One checked solve request, what :meth:`LayerSolver.solve` hands to a solver's
    :meth:`LayerSolver._solve`.

    Attributes:
        backend: The backend's table row (declared by the solver).
        options: The backend's options, defaulted when none were given.
        warm_start: A previous result / state / ``U`` (``None``: a cold start).
        layer: Dotted layer name, for messages (``None``: unnamed).
    """

    backend: Backend
    options: Any
    warm_start: Any = None
    layer: str | None = None


class LayerSolver(abc.ABC):
    """A layer-wise solver (subclass it as a frozen dataclass of its hyper-parameters).

    Class attributes to declare:
        name: Registry name (``"ddlr"``).
        owner: Name used in messages (``"DDLR"``).
        capabilities: :class:`Capabilities`.
        backend_table: ``{backend name: Backend}``, one row per entry of
            ``capabilities.backends``.

    Instances are small and picklable (joblib / dask workers receive them).
    """

    name: ClassVar[str] = ""
    owner: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]
    backend_table: ClassVar[Mapping[str, Backend]]

    # ------------------------------------------------------------------ declared
    @classmethod
    def params(cls) -> tuple[str, ...]:
        """Names of the hyper-parameters (the dataclass fields)."""
        if not dataclasses.is_dataclass(cls):
            return ()
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_params(self, **params: Any) -> LayerSolver:
        """A copy with some hyper-parameters replaced (e.g. one layer's ``eps_frac``)."""
        if not params:
            return self
        unknown = sorted(set(params) - set(self.params()))
        if unknown:
            raise ConfigError(
                f"{self.owner or type(self).__name__} has no parameter {unknown[0]!r}. "
                f"Its parameters: {', '.join(self.params()) or 'none'}."
            )
        return dataclasses.replace(self, **params)  # type: ignore[type-var]

    @property
    def default_backend(self) -> str:
        """The first declared backend."""
        return self.capabilities.backends[0]

    def backend(self, backend: str | None) -> Backend:
        """The table row of ``backend`` (``None``: the default one).

        Raises:
            ConfigError: ``backend`` is not declared in :attr:`capabilities` (the message names
                the solver, the backend and the supported ones).
        """
        caps = self.capabilities
        backend = self.default_backend if backend is None else backend
        if not isinstance(backend, str) or backend not in caps.backends:
            supported = ", ".join(repr(b) for b in caps.backends)
            raise ConfigError(
                f"The 'backend' parameter of {self.owner} must be one of {supported} (the "
                f"backends the '{self.name}' layer solver declares). Got {backend!r} instead."
            )
        row = self.backend_table.get(backend)
        if row is None:  # a declaration without an implementation: a bug of the solver class
            raise ConfigError(
                f"The '{self.name}' layer solver declares backend {backend!r} but its "
                f"backend_table has no row for it (rows: {', '.join(self.backend_table)})."
            )
        return row

    def check(
        self, backend: str | None, options: Any, warm_start: Any = None
    ) -> tuple[Backend, Any]:
        """Validate a backend / options / warm-start combination against the declarations.

        Returns:
            ``(backend row, options)`` with ``options`` defaulted when ``None``.

        Raises:
            ConfigError: undeclared backend, options of another backend's type, or a warm
                start given to a solver that does not declare ``warm_start``.
        """
        row = self.backend(backend)
        if options is None:
            options = row.default_options()
        elif row.options_type is None or not isinstance(options, row.options_type):
            want = "None" if row.options_type is None else f"a {row.options_type.__name__}"
            raise ConfigError(
                f"The 'options' parameter of {self.owner} must be {want} for backend="
                f"'{row.name}'. Got {type(options).__name__} instead."
            )
        if warm_start is not None and not self.capabilities.warm_start:
            raise ConfigError(
                f"The 'warm_start' parameter of {self.owner} must be None: the '{self.name}' "
                f"layer solver does not declare warm starts (backends: "
                f"{', '.join(self.capabilities.backends)})."
            )
        return row, options

    # ------------------------------------------------------------------ solving
    def solve(
        self,
        problem: LayerProblem,
        *,
        backend: str | None = None,
        options: Any = None,
        warm_start: Any = None,
        layer: str | None = None,
    ) -> LayerSolveResult:
        """Solve one layer problem.

        Args:
            problem: The layer's data.
            backend: One of ``capabilities.backends`` (``None``: the first).
            options: The backend's options object (``None``: its defaults).
            warm_start: A previous result / state / ``U`` (solvers declaring ``warm_start``).
            layer: Dotted layer name, for messages.

        Raises:
            ConfigError: An unsupported backend / options / warm-start combination.
        """
        if not isinstance(problem, LayerProblem):
            raise ConfigError(
                f"{self.owner}.solve: 'problem' must be a LayerProblem. "
                f"Got {type(problem).__name__} instead."
            )
        row, options = self.check(backend, options, warm_start)
        return self._solve(problem, SolveCall(row, options, warm_start, layer))

    def solve_arrays(
        self,
        X: Tensor,
        Y_pre: Tensor,
        bias: Tensor | None,
        *,
        linear: bool = False,
        backend: str | None = None,
        options: Any = None,
        warm_start: Any = None,
        layer: str | None = None,
    ) -> LayerSolveResult:
        """:meth:`solve` on the tensors of one layer: ``LayerProblem(X, Y_pre, bias, linear)``
        (the functional forms :func:`~compactnn.solvers.layerwise.solve_ddlr` and
        :func:`~compactnn.solvers.layerwise.solve_net_trim` are this on their solver)."""
        return self.solve(
            LayerProblem(X, Y_pre, bias, linear),
            backend=backend,
            options=options,
            warm_start=warm_start,
            layer=layer,
        )

    @abc.abstractmethod
    def _solve(self, problem: LayerProblem, call: SolveCall) -> LayerSolveResult:
        """Solve with an already checked backend row and options (implement this)."""
