"""The options of the layer-wise methods: :class:`LayerSolveOptions` (the base of every
layer-wise config, SLR's too, with their checks on construction), :class:`LayerwiseConfig`
(shared by DDLR and Net-Trim), :class:`DDLRConfig`, :class:`NetTrimConfig` (re-exported by
:mod:`compactnn.methods.layerwise`): the layers, the tolerance, the solver backend and its
options, the parallel / Dask settings, the capture and the sequential schemes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from compactnn._validation import (
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_per_layer,
    check_text,
    parameter_error,
    rule,
)
from compactnn.errors import ConfigError
from compactnn.methods._options import LAYERS, SEED
from compactnn.methods.base import MethodConfig
from compactnn.solvers.layerwise import LAYER_SOLVERS

__all__ = ["LayerSolveOptions", "LayerwiseConfig", "DDLRConfig", "NetTrimConfig"]

_PARALLEL = ("serial", "joblib", "dask")


def _option_types() -> tuple[type, ...]:
    """Options types of every backend of every registered layer solver."""

    out: dict[type, None] = {}
    for cls in LAYER_SOLVERS.values():
        for row in cls.backend_table.values():
            if row.options_type is not None:
                out[row.options_type] = None
    return tuple(out)


def _check_options(value: Any, name: str, owner: str) -> Any:
    """``None`` or a layer-solver options object (matched with ``backend`` in
    ``__post_init__`` against the solver's declared backend table)."""
    if value is None:
        return None
    types = _option_types()
    if not isinstance(value, types):
        what = f"one of {', '.join(t.__name__ for t in types)} (matching 'backend'), or None"
        raise parameter_error(name, owner, what, value)
    return value


def _check_scheduler(value: Any, name: str, owner: str) -> str:
    """A Dask scheduler address such as ``"tcp://10.0.0.5:8786"`` (checked when connecting)."""
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        what = (
            "the address of a Dask scheduler (a str such as 'tcp://10.0.0.5:8786'), or None for "
            "a local cluster"
        )
        raise parameter_error(name, owner, what, value)
    return value


def check_parallel(cfg: Any) -> None:
    """Cross-option checks of the parallel options (``parallel``, ``scheduler``,
    ``asymmetric``), shared by every layer-wise config."""
    owner = cfg.owner
    if cfg.scheduler is not None and cfg.parallel != "dask":
        raise ConfigError(
            f"{owner}: 'scheduler' is the address of a Dask scheduler; pass parallel='dask' with "
            f"it (got parallel={cfg.parallel!r})."
        )
    off = {"asymmetric": False, "cascade": None}  # the options that make the solves sequential
    on = [k for k, v in off.items() if getattr(cfg, k, v) != v]
    if on and cfg.parallel != "serial":
        raise ConfigError(
            f"{owner}: {' and '.join(f'{k}={getattr(cfg, k)}' for k in on)} solves the layers "
            "one after another (each layer's problem is built on the input of the model the "
            f"earlier layers left), so they cannot be solved in parallel (parallel="
            f"{cfg.parallel!r}). Pass {' and '.join(f'{k}={off[k]}' for k in on)} to solve every "
            "layer from the original model in parallel, or parallel='serial'."
        )


@dataclass(frozen=True)
class LayerSolveOptions(MethodConfig):
    r"""The options of every layer-wise method (DDLR, Net-Trim and SLR): the layers, the layer
    solver's backend, the parallel / Dask settings and the capture.

    Attributes:
        layers: dotted names of the layers to compress (default: every Linear/Conv2d followed by
            a ReLU, except the classifier).
        backend: ``"admm"`` (own first-order solver, default) or ``"cvxpy"`` (CVXPY + SCS).
        options: :class:`~compactnn.solvers.layerwise.ADMMOptions` or
            :class:`~compactnn.solvers.layerwise.CvxpyOptions` matching ``backend`` (``None``:
            the backend's defaults).
        n_jobs: worker processes for ``parallel="joblib"``, or of the local Dask cluster
            (``parallel="dask"`` without ``scheduler``).
        parallel: ``"serial"``, ``"joblib"`` or ``"dask"``: the layers are solved independently
            (Algorithm 1), one task per layer, with identical results on every backend. With
            ``"dask"`` and no ``scheduler`` a :class:`distributed.LocalCluster` of ``n_jobs``
            single-threaded worker processes on ``127.0.0.1`` (dashboard off) is started and
            closed. Not with ``asymmetric=True`` (sequential by nature: refused).
        scheduler: address of a running Dask scheduler (``"tcp://10.0.0.5:8786"``) to solve
            on, with ``parallel="dask"``; its workers are used (``n_jobs`` ignored) and it is
            left running. Each layer's captured ``X``, ``Y`` are sent once, client to worker.
        scheduler_timeout: seconds to wait for the scheduler before a clear error.
        max_in_flight: Dask only: layers whose data are on the cluster at once (``None``: one
            per worker thread), which bounds a worker's memory to about that many layers'
            ``X``, ``Y`` (``max_rows`` rows each) plus their solver workspace.
        max_rows: rows (samples, or sample x output positions for conv) captured per layer, a
            uniform random subset: the paper's :math:`N`. ``None`` keeps all.
        calib_batches: calibration batches run through the model (``None``: the whole loader).
        linear: accept target layers not followed by a ReLU, with the linear variant
            :math:`\|XU + \mathbf{1}b^T - Y\|_F \le \epsilon` (no mask, no inequality).
        asymmetric: solve layers in forward order, capturing :math:`X_\ell` from the model whose
            earlier target layers are already compressed (targets :math:`Y_\ell` from the
            original).
        seed: seed of the row subsampling.
    """

    layers: tuple[str, ...] | None = None
    backend: str = "admm"
    options: Any = None
    n_jobs: int = 1
    parallel: str = "serial"
    scheduler: str | None = None
    scheduler_timeout: float = 10.0
    max_in_flight: int | None = None
    max_rows: int | None = 4096
    calib_batches: int | None = 8
    linear: bool = False
    asymmetric: bool = False
    seed: int = 0

    owner: ClassVar[str] = "layer-wise method"
    rules = MappingProxyType(
        {
            "layers": LAYERS,
            # a backend name, checked against the solver's declared backends in __post_init__
            "backend": rule(check_text, expected="a backend name (str)"),
            "options": rule(_check_options),
            "n_jobs": rule(check_int, min_value=1),
            "parallel": rule(check_choice, choices=_PARALLEL),
            "scheduler": rule(_check_scheduler, optional=True),
            "scheduler_timeout": rule(check_float, min_value=0.0, min_inclusive=False),
            "max_in_flight": rule(check_int, optional=True, min_value=1),
            "max_rows": rule(check_int, optional=True, min_value=1),
            "calib_batches": rule(check_int, optional=True, min_value=1),
            "linear": rule(check_bool),
            "asymmetric": rule(check_bool),
            "seed": SEED,
        }
    )

    #: registry name of the layer solver whose declared backends/options are accepted
    solver_name: ClassVar[str] = "ddlr"

    def __post_init__(self) -> None:
        """The checks on construction: the ``rules``, ``parallel`` against ``asymmetric`` /
        ``cascade``, and ``backend`` / ``options`` against the backends the layer solver
        (``solver_name``) declares."""
        super().__post_init__()
        check_parallel(self)
        solver = LAYER_SOLVERS[self.solver_name]
        backends = solver.capabilities.backends
        if self.backend not in backends:
            raise ConfigError(
                f"The 'backend' parameter of {self.owner} must be one of "
                f"{', '.join(repr(b) for b in backends)} (the backends the "
                f"'{self.solver_name}' layer solver declares). Got {self.backend!r} instead."
            )
        want = solver.backend_table[self.backend].options_type
        if self.options is not None and (want is None or not isinstance(self.options, want)):
            need = "None" if want is None else f"a {want.__name__}"
            raise ConfigError(
                f"The 'options' parameter of {self.owner} must be {need} for "
                f"backend='{self.backend}' (or None). Got {type(self.options).__name__} "
                "instead."
            )


@dataclass(frozen=True)
class LayerwiseConfig(LayerSolveOptions):
    r"""Hyper-parameters shared by DDLR and Net-Trim (with the options of every layer-wise
    method, :class:`LayerSolveOptions`).

    Attributes:
        eps_frac: :math:`\epsilon_\ell = \text{eps\_frac}\cdot\|X_\ell\|_F`, the tolerance
            of the constraint of eq. (4) (paper: values in ``[0.01, 0.6]``); a float > 0, a
            list with one value per layer or a dict layer -> value.
        cascade: the inflation rate :math:`\gamma \ge 1` of cascade Net-Trim (Aghasi et al.,
            sec. 2.2), or ``None`` (default: the parallel scheme). Layers are solved in forward
            order on :math:`\hat X_\ell` from the partly compressed model (as ``asymmetric``);
            the first target layer uses ``eps_frac``, every later one
            :math:`\epsilon_\ell = \gamma\,\|(\hat X_\ell W_0^T + \mathbf{1}b^T - Y_\ell)\circ M\|_F`
            and the inactive bound :math:`(\hat X_\ell U + \mathbf{1}b^T)\circ M' \le
            (\hat X_\ell W_0^T + \mathbf{1}b^T)\circ M'`, so the original weights stay
            feasible (``eps_frac`` is used where that residual is 0). Under a budget target the
            search moves the first layer's ``eps_frac``; the later tolerances follow.
    """

    eps_frac: Any = 0.1
    cascade: float | None = None

    rules = MappingProxyType(
        {
            **LayerSolveOptions.rules,
            "eps_frac": rule(check_per_layer, min_value=0.0, min_inclusive=False),
            "cascade": rule(check_float, optional=True, min_value=1.0),
        }
    )


@dataclass(frozen=True)
class DDLRConfig(LayerwiseConfig):
    r"""DDLR hyper-parameters (see :class:`LayerwiseConfig` for the shared ones).

    Attributes:
        rank: keep exactly this rank :math:`r` in every layer (clipped to ``min(d, n)``)
            instead of the elbow rule; or a dict layer -> rank (layers not in it use the elbow
            rule). A budget target sets this dict.
        energy: keep the smallest :math:`r` with
            :math:`\sum_{i\le r}\sigma_i^2 \ge \text{energy}\sum_i\sigma_i^2`.
        dense_fallback: when :math:`r(d+n) \ge dn` the factorization would be larger than the
            dense layer; store the rank-:math:`r` weight densely instead (``False``: always
            factorize).
        conv: with ``layers=None``, compress the Conv2d layers too (default ``False``: the
            dense layers only, as the paper does, sec. 4).

    With neither ``rank`` nor ``energy`` the paper's elbow rule is used (sec. 4.1).
    """

    rank: Any = None
    energy: float | None = None
    dense_fallback: bool = True
    conv: bool = False

    owner: ClassVar[str] = "DDLR"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            **LayerwiseConfig.rules,
            "rank": rule(
                check_per_layer, optional=True, check=check_int, forms=("one", "dict"), min_value=1
            ),
            "energy": rule(
                check_float, optional=True, min_value=0.0, max_value=1.0, min_inclusive=False
            ),
            "dense_fallback": rule(check_bool),
            "conv": rule(check_bool),
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.energy is not None:
            raise ConfigError("DDLR: pass either 'rank' or 'energy' (or neither: elbow), not both.")


@dataclass(frozen=True)
class NetTrimConfig(LayerwiseConfig):
    """Net-Trim hyper-parameters (see :class:`LayerwiseConfig` for the shared ones).

    Attributes:
        zero_tol: entries with ``|U_ij| <= zero_tol * max|U|`` are set to 0 after solving
            (``None``: 3e-4 for every backend, so the deployed size does not depend on it).
        refit_bias: re-fit the bias with the weights (Aghasi et al.: augmented ones column;
            default ``True``); ``False`` holds the layer's bias fixed.
        conv: with ``layers=None``, compress the Conv2d layers too (default ``False``: the
            dense layers only, like DDLR in the paper it is the baseline of).
    """

    zero_tol: float | None = None
    refit_bias: bool = True
    conv: bool = False

    owner: ClassVar[str] = "Net-Trim"
    solver_name: ClassVar[str] = "net-trim"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            **LayerwiseConfig.rules,
            "zero_tol": rule(check_float, optional=True, min_value=0.0, max_value=1.0),
            "refit_bias": rule(check_bool),
            "conv": rule(check_bool),
        }
    )
