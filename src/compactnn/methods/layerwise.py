r"""DDLR and Net-Trim as registry methods: data-driven, layer-local, convex, **no retraining**.

For every target layer :math:`\ell` with captured input :math:`X \in \mathbb{R}^{N\times d}`
(im2col patches for a conv), original pre-activation :math:`Y = XW_0^T + \mathbf{1}b^T` and masks
:math:`M = [Y > 0]`, :math:`M' = 1 - M`, both methods solve

.. math::

    \hat U = \operatorname*{argmin}_{U \in \mathbb{R}^{d\times n}} f(U) \quad\text{s.t.}\quad
    \|(XU + \mathbf{1}b^T - Y)\circ M\|_F \le \epsilon_\ell,\qquad
    (XU + \mathbf{1}b^T)\circ M' \le 0,

with :math:`\epsilon_\ell = \text{eps\_frac}\cdot\|X\|_F` (the paper's :math:`C=\|Y_{\ell-1}\|_F`),
:math:`f = \|\cdot\|_*` for DDLR and :math:`f = \|\cdot\|_1` for Net-Trim. DDLR then keeps the
rank :math:`r` chosen by the elbow rule and deploys :math:`W \approx B A` as a
:class:`~compactnn.layers.LowRankLinear` / :class:`~compactnn.layers.LowRankConv2d`
(:math:`r(d+n)` weights); Net-Trim deploys :math:`\hat U^T` as a COO
:class:`~compactnn.layers.SparseLinear` / :class:`~compactnn.layers.SparseConv2d`
(:math:`3\,\mathrm{nnz}` stored numbers). Layers are independent (Algorithm 1, sec. 3.2), so they
can be solved in parallel; with ``asymmetric=True`` they are solved in forward order with
inputs captured from the already-compressed model instead (Ma et al. 2019, sec. V-B).

References:
    Papadimitriou & Jain (2021), "Data-Driven Low-Rank Neural Network Compression", eqs. (2)-(4),
    Algorithm 1, sec. 3.2, sec. 4 (elbow rule, eps = frac * C, Net-Trim counted as 3 nnz);
    Aghasi et al. (2017), Net-Trim; Ma et al. (2019), sec. V-B (asymmetric reconstruction).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from compactnn import (
    capture,  # module attribute: looked up at call time (tests patch it)
    surgery,
)
from compactnn.budget import Strength, measure, search
from compactnn.capture import _following_activations, following_activation
from compactnn.errors import ConfigError, UnsupportedLayerError
from compactnn.graph import discover
from compactnn.methods._calibrate import target_record
from compactnn.methods._common import per_layer_values
from compactnn.methods._layerwise_config import (
    DDLRConfig,
    LayerSolveOptions,
    LayerwiseConfig,
    NetTrimConfig,
)
from compactnn.methods._layerwise_solve import _deployed_violation, _solve_one, _stats, _unconverged
from compactnn.methods.base import CompressionData, CompressionResult, Method
from compactnn.plan import CompressionPlan, FoldBatchNorm, LowRank, SetWeights
from compactnn.solvers.layerwise import (
    LayerProblem,
    choose_rank,
    dask_client,
    factorize,
    get_layer_solver,
    solve_layers,
)
from compactnn.structure import module_device

__all__ = ["LayerwiseConfig", "DDLRConfig", "NetTrimConfig", "DDLR", "NetTrim", "default_layers"]


def default_layers(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """Every executed Conv2d/Linear whose output feeds only a ReLU, except the classifier.

    Layers, their order and the classifier come from :func:`compactnn.graph.discover` (one
    forward pass on ``example_input``; ``torch.fx`` only when it is ``None``).

    Raises:
        UnsupportedLayerError: the model has no such layer.
    """

    g = discover(model, example_input)
    mods = dict(model.named_modules())
    names = [n for n in g.order if isinstance(mods[n], (nn.Conv2d, nn.Linear))]
    if not names:
        raise UnsupportedLayerError(f"{type(model).__name__} has no Conv2d/Linear layers.")
    acts = _following_activations(model, names, example_input)
    out = [n for n in names if n != g.classifier and acts[n] == "relu"]
    if not out:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no Conv2d/Linear layer followed by a ReLU (besides the "
            "classifier). Pass layers=[...] explicitly, with linear=True for layers without ReLU."
        )
    return out


#: the config of a layer-wise method: DDLR's, Net-Trim's or SLR's
LC = TypeVar("LC", bound=LayerSolveOptions)


class _Layerwise(Method[LC]):
    """Shared flow: capture -> one LayerProblem per layer -> solve -> plan -> surgery."""

    needs_training_data: ClassVar[bool] = True
    solver_name: ClassVar[str] = ""
    #: the layers a budget search already solved (the same solve), reused by the run
    _presolved: Any = None
    #: the Dask client of a budget search, shared by its trials (closed with the search)
    _dask: Any = None

    # ------------------------------------------------------------------ checks
    def _folded(
        self, model: nn.Module, example: Tensor | None = None
    ) -> tuple[nn.Module, list[Any]]:
        """``model`` with the BatchNorm of every target ``conv/linear -> BN -> ReLU`` folded into
        the layer (a copy; the model itself when there is none) and the
        :class:`~compactnn.plan.FoldBatchNorm` actions that did it: in eval mode the chain is
        one affine map followed by a ReLU, the response eq. (4) (and Ma et al.'s eq. 3)
        reconstruct. The compressed model keeps the BN folded (``nn.Identity``)."""

        cfg = self.config

        def fold(pairs: dict[str, str]) -> tuple[nn.Module, list[Any]]:
            folds = [FoldBatchNorm(k, v) for k, v in pairs.items()]
            return surgery.apply(CompressionPlan(folds), model), folds

        pairs = surgery.foldable_before_relu(model)
        if cfg.layers is not None:
            pairs = {k: v for k, v in pairs.items() if k in cfg.layers}
        if not pairs:
            return model, []
        work, folds = fold(pairs)
        if cfg.layers is None:  # the defaults, found with every BN folded; keep their folds
            chosen = set(self._targets_on(work, example)[0])
            if not chosen >= set(pairs):
                pairs = {k: v for k, v in pairs.items() if k in chosen}
                if not pairs:
                    return model, []
                work, folds = fold(pairs)
        return work, folds

    def _targets_on(
        self, model: nn.Module, example: Tensor | None = None
    ) -> tuple[list[str], dict[str, bool]]:
        """The layers to approximate in ``model`` as given (its BNs folded by :meth:`_folded`)
        and, per layer, whether it is linear (no ReLU after it)."""

        cfg = self.config
        layers = list(cfg.layers) if cfg.layers is not None else default_layers(model, example)
        mods = dict(model.named_modules())
        if cfg.layers is None and not getattr(cfg, "conv", True):
            layers = [n for n in layers if not isinstance(mods[n], nn.Conv2d)]
            if not layers:
                raise UnsupportedLayerError(
                    f"{type(model).__name__} has no dense (Linear) layer followed by a ReLU "
                    f"besides the classifier; {self.name} compresses dense layers by default (as "
                    "the paper). Pass conv=True to compress its Conv2d layers, or layers=[...]."
                )
        self._check_layers(model, layers)
        order = {n: i for i, n in enumerate(mods)}
        layers.sort(key=order.__getitem__)
        linear: dict[str, bool] = {}
        for n in layers:
            m = mods[n]
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                raise UnsupportedLayerError(
                    f"Layer '{n}' is a {type(m).__name__}; {self.name} compresses only Linear and "
                    "Conv2d layers. Remove it from layers=."
                )
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise UnsupportedLayerError(
                    f"Layer '{n}' is a grouped conv (groups={m.groups}); {self.name} needs "
                    "groups=1. Remove it from layers=."
                )
            relu = following_activation(model, n, example) == "relu"
            if not relu and not cfg.linear:
                raise UnsupportedLayerError(
                    f"Layer '{n}' is not followed by a ReLU, so the constraint of eq. (4) does "
                    f"not apply. Remove it from layers= or pass linear=True to {self.name} to use "
                    "the linear variant (||XU + b - Y||_F <= eps)."
                )
            linear[n] = not relu
        return layers, linear

    def _eps(self, layers: list[str]) -> dict[str, float]:
        cfg = self.config
        # a list of eps values follows the user's order of layers=, not the forward order
        order = list(cfg.layers) if cfg.layers is not None else layers
        return per_layer_values(cfg.eps_frac, order, "eps_frac", self.name)

    # ------------------------------------------------------------------ solve
    def _solver(self, eps: dict[str, float]) -> Any:
        """The registry's ``solver_name`` solver as a picklable per-layer callable.

        Config fields named like a solver hyper-parameter are passed to it (e.g. Net-Trim's
        ``zero_tol``); ``eps_frac`` is set per layer from ``eps``.
        """

        cfg = self.config
        per_layer = {n: {"eps_frac": e} for n, e in eps.items()}
        solver = get_layer_solver(self.solver_name)
        shared = {
            k: getattr(cfg, k) for k in solver.params() if k != "eps_frac" and hasattr(cfg, k)
        }
        return functools.partial(
            _solve_one,
            solver=solver.with_params(**shared),
            per_layer=per_layer,
            backend=cfg.backend,
            options=cfg.options,
        )

    def _dask_client(self) -> Any:
        """A context yielding a ``distributed.Client`` for this method's options."""

        cfg = self.config
        return dask_client(
            cfg.scheduler, n_workers=cfg.n_jobs, timeout=cfg.scheduler_timeout, owner=self.name
        )

    @contextlib.contextmanager
    def _cluster(self) -> Iterator[None]:
        """With ``parallel="dask"``: connect to the scheduler (or start the local cluster)
        *before* any capture, so a bad address fails fast; the solves of this run reuse it.
        Nothing is started when a budget search already solved the layers (``_presolved``)."""
        cfg = self.config
        busy = self._dask is not None
        if cfg.parallel != "dask" or busy or self._presolved is not None:
            yield
            return
        with self._dask_client() as client:
            self._dask = client
            try:
                yield
            finally:
                self._dask = None

    def _solve_all(self, problems: dict[str, Any], solver: Any, progress: bool) -> dict[str, Any]:
        cfg = self.config
        if cfg.parallel != "dask":
            return solve_layers(
                problems, solver, n_jobs=cfg.n_jobs, backend=cfg.parallel, progress=progress
            )

        def solve(client: Any) -> dict[str, Any]:
            return solve_layers(
                problems, solver, backend="dask", dask_client=client,
                max_in_flight=cfg.max_in_flight, progress=progress,
            )  # fmt: skip

        client = self._dask
        if client is not None:
            return solve(client)
        with self._dask_client() as client:
            return solve(client)

    # ------------------------------------------------------------------ plan
    def _action(
        self, name: str, module: nn.Module, res: Any, prob: Any
    ) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def _batches(self, data: CompressionData, model: nn.Module) -> list[Tensor]:
        cfg = self.config
        batches = list(data.calib_batches(cfg.calib_batches, device=module_device(model)))
        if not batches:
            raise ConfigError(
                f"{self.name} got no calibration batch: the calibration/training loader is empty."
            )
        return batches

    def _problem(self, module: nn.Module, io: Any, linear: bool) -> Any:
        b = module.bias
        return LayerProblem(X=io.X, Y=io.Y, bias=None if b is None else b.detach(), linear=linear)

    def _sequential(self) -> bool:
        """Layers solved in forward order on the partly compressed model (``asymmetric`` or
        cascade Net-Trim), not independently."""
        return bool(self.config.asymmetric) or self._inflation() is not None

    def _inflation(self) -> float | None:
        """Cascade Net-Trim's inflation rate (``None``: parallel scheme; SLR has no epsilon)."""
        return getattr(self.config, "cascade", None)

    def _cascade(self, module: nn.Module, prob: Any, eps_frac: float) -> tuple[Any, float, float]:
        r"""Cascade Net-Trim's problem for a layer after the first (Aghasi et al., sec. 2.2).

        Returns ``(problem with the inactive bound V = X W0^T + b, eps_frac giving epsilon =
        gamma * ||(V - Y) o M||_F, that residual)``; ``eps_frac`` itself when the residual is 0.
        """
        from dataclasses import replace

        cfg = self.config
        X = prob.X.detach().to(torch.float64)
        Y = prob.Y.detach().to(torch.float64)
        W0 = module.weight.detach().to(X.device, torch.float64).reshape(Y.shape[1], -1)
        V = X @ W0.T
        if prob.bias is not None:
            V = V + prob.bias.detach().to(X.device, torch.float64).reshape(-1)
        mask = torch.ones_like(Y, dtype=torch.bool) if prob.linear else Y > 0
        res = float(torch.linalg.vector_norm(torch.where(mask, V - Y, torch.zeros_like(V))))
        xn = float(torch.linalg.vector_norm(X))
        frac = eps_frac if res == 0.0 or xn == 0.0 else float(cfg.cascade) * res / xn
        return replace(prob, ceiling=None if prob.linear else V), frac, res

    def _problems(
        self, model: nn.Module, layers: list[str], linear: dict[str, bool], batches: list[Tensor]
    ) -> dict[str, Any]:
        """One :class:`LayerProblem` per layer, all captured from the original model."""

        cfg = self.config
        mods = dict(model.named_modules())
        ios = capture.collect(model, layers, batches, max_rows=cfg.max_rows, seed=cfg.seed)
        return {n: self._problem(mods[n], ios[n], linear[n]) for n in layers}

    def solve_layers(
        self, model: nn.Module, data: CompressionData, progress: bool = False
    ) -> dict[str, Any]:
        """Capture + solve every target layer (symmetric): the expensive half of :meth:`run`,
        reused by budget searches (``_presolved``)."""
        batches = self._batches(data, model)
        model, _ = self._folded(model, batches[0])
        layers, linear = self._targets_on(model, batches[0])
        with self._cluster():
            problems = self._problems(model, layers, linear, batches)
            return self._solve_all(problems, self._solver(self._eps(layers)), progress)

    def _symmetric(
        self, model: nn.Module, layers: list[str], linear: dict[str, bool], batches: list[Tensor],
        progress: bool,
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
        problems = self._problems(model, layers, linear, batches)
        presolved = self._presolved  # set by a budget search (same solve)
        if presolved is not None and list(presolved) == layers:
            results = presolved
        else:
            results = self._solve_all(problems, self._solver(self._eps(layers)), progress)
        mods = dict(model.named_modules())
        actions, stats = [], {}
        for n in layers:
            act, stats[n] = self._action(n, mods[n], results[n], problems[n])
            stats[n]["rows"] = int(problems[n].X.shape[0])
            actions.append(act)
        return actions, stats, results, problems

    def _asymmetric(
        self, model: nn.Module, layers: list[str], linear: dict[str, bool], batches: list[Tensor],
        meta: dict[str, Any],
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any], nn.Module]:  # fmt: skip
        """Layers in forward order, X captured from the partly compressed model (Ma et al.)."""

        cfg = self.config
        mods = dict(model.named_modules())
        eps = self._eps(layers)
        solver = self._solver(eps)
        actions: list[Any] = []
        stats: dict[str, Any] = {}
        results: dict[str, Any] = {}
        current = model
        for n in layers:
            io = capture.collect(
                current, [n], batches, max_rows=cfg.max_rows, seed=cfg.seed,
                asymmetric_from=None if current is model else model,
            )[n]  # fmt: skip
            prob = self._problem(mods[n], io, linear[n])
            solve, cascade = solver, None
            if self._inflation() is not None and current is not model:
                prob, frac, res = self._cascade(mods[n], prob, eps[n])
                solve = self._solver({**eps, n: frac})
                cascade = {"eps_frac": frac, "original_residual": res, "inflation": cfg.cascade}
            results[n] = solve_layers({n: prob}, solve, backend="serial", progress=False)[n]
            act, stats[n] = self._action(n, mods[n], results[n], prob)
            stats[n]["rows"] = int(io.X.shape[0])
            if cascade is not None:
                stats[n]["cascade"] = cascade
            actions.append(act)
            current = surgery.apply(CompressionPlan(actions=list(actions), meta=meta), model)
        return actions, stats, results, current

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        batches = self._batches(data, model)
        model, folds = self._folded(model, batches[0])  # conv -> BN -> ReLU: BN folded first
        layers, linear = self._targets_on(model, batches[0])
        meta: dict[str, Any] = {"method": self.name}
        if data.input_shape is not None:
            meta["input_shape"] = list(data.input_shape)
        if not self._sequential():
            with self._cluster():
                actions, stats, results, _ = self._symmetric(
                    model, layers, linear, batches, progress
                )
            new_model = surgery.apply(CompressionPlan(actions=actions, meta=meta), model)
        else:
            actions, stats, results, new_model = self._asymmetric(
                model, layers, linear, batches, meta
            )
        bad = [n for n in layers if not results[n].ok]
        if bad:  # one warning for the run, naming every layer (was one per layer)
            each = ", ".join(f"'{n}' ({_unconverged(results[n])})" for n in bad)
            warnings.warn(
                f"{self.name}: {len(bad)} of {len(layers)} layers finished without converging: "
                f"{each}; increase the solver's max_iter"
                + (" or eps_frac." if hasattr(cfg, "eps_frac") else " (options=)."),
                RuntimeWarning,
                stacklevel=2,
            )
        return CompressionResult(
            model=new_model,
            # self-contained: replays new_model exactly on a fresh instance (SetState)
            plan=CompressionPlan(actions=[*folds, *actions], meta=meta).with_state(new_model),
            method=self.name,
            config=cfg,
            history={
                "layers": stats,
                "eps_frac": self._eps(layers),
                "retrained": False,
                **({"folded_bn": {a.layer: a.bn for a in folds}} if folds else {}),
            },
        )


class DDLR(_Layerwise[DDLRConfig]):
    r"""Data-Driven Low-Rank compression (Papadimitriou & Jain 2021), no retraining.

    Per layer: :math:`\min \|U\|_*` s.t. eq. (4); rank by the elbow rule; the layer becomes
    ``LowRankLinear`` / ``LowRankConv2d`` with :math:`r(d+n)` weights (+ the unchanged bias).

    References:
        Papadimitriou & Jain (2021), eqs. (2)-(4), Algorithm 1, sec. 4.1.
    """

    name = "ddlr"
    Config = DDLRConfig
    solver_name = "ddlr"
    description = "DDLR: convex nuclear-norm layer re-fit + elbow rank, no retraining"

    def _action(
        self, name: str, module: nn.Module, res: Any, prob: Any
    ) -> tuple[Any, dict[str, Any]]:
        cfg = self.config
        U = res.U
        d, n = U.shape
        want = cfg.rank.get(name) if isinstance(cfg.rank, dict) else cfg.rank
        rank = None if want is None else min(want, d, n)
        r = choose_rank(U, rank=rank, energy=cfg.energy)
        first, second = factorize(U, r)
        dtype = module.weight.dtype
        bias = None if module.bias is None else module.bias.detach().clone()
        st = _stats(res)
        st.update(rank=r, full_rank=min(d, n), original_weights=d * n)
        st["deployed_violation"] = _deployed_violation(prob, (second @ first).T, st["eps"])
        if cfg.dense_fallback and r * (d + n) >= d * n:
            w = (second @ first).to(dtype).reshape(module.weight.shape)
            st.update(form="dense", stored_weights=d * n)
            return SetWeights(layer=name, weight=w, bias=bias), st
        st.update(form="lowrank", stored_weights=r * (d + n))
        return LowRank(layer=name, first=first.to(dtype), second=second.to(dtype), bias=bias), st

    # ------------------------------------------------------------------ budget
    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """One convex solve per layer, then the ranks that meet the target.

        The ranks follow one global energy threshold ``1 - s`` (each layer keeps the smallest
        rank holding that share of its squared singular values), ``s`` bisected on the exact
        size of the factorized candidate. The solve is done once and reused by the run.
        """

        if self._sequential():
            raise ConfigError(
                "DDLR: a target is supported with asymmetric=False and cascade=None (the ranks "
                "are chosen from one solve of every layer); set the ranks with rank= for "
                "asymmetric or cascade runs."
            )
        shape = data.require_input_shape(self.name)
        solved = self.solve_layers(model, data, progress)
        base = measure(model, shape, target.keys)

        def ranks_at(s: float) -> dict[str, int]:
            e = min(max(1.0 - float(s), 1e-9), 1.0)
            return {n: choose_rank(r.U, energy=e) for n, r in solved.items()}

        def evaluate(s: float) -> dict[str, float]:
            trial = self.with_options(rank=ranks_at(s), energy=None)
            trial._presolved = solved
            res = trial.run(model, data, progress=False)
            return measure(res.model, shape, target.keys).fractions(base)

        found = search(
            evaluate, target, Strength("1 - energy kept", 1e-3, 0.1, bound_lo=1e-9, bound_hi=1.0)
        )
        if not found.met:
            raise ConfigError(
                f"DDLR cannot reach the target {target.as_dict()}: even rank 1 in every "
                f"compressed layer keeps {found.kept}. Compress more layers (layers=) or relax it."
            )
        chosen = self.with_options(rank=ranks_at(found.strength), energy=None)
        chosen._presolved = solved
        rec = target_record(
            target, found.kept, option="1 - energy kept", strength=found.strength,
            trace=found.trace, seconds=found.seconds,
        )  # fmt: skip
        return chosen, rec


class NetTrim(_Layerwise[NetTrimConfig]):
    r"""Net-Trim (Aghasi et al. 2017), the DDLR paper's baseline, no retraining.

    Per layer: :math:`\min \|U\|_1` s.t. eq. (4); the layer becomes ``SparseLinear`` /
    ``SparseConv2d`` storing :math:`3\,\mathrm{nnz}` numbers (COO, as counted in the paper).

    References:
        Papadimitriou & Jain (2021), sec. 4 (Net-Trim baseline); Aghasi et al. (2017).
    """

    name = "net-trim"
    Config = NetTrimConfig
    solver_name = "net-trim"
    description = "Net-Trim: convex l1 layer re-fit (sparse COO layers), no retraining"

    # ------------------------------------------------------------------ budget
    def strength(self) -> Any:
        """The constraint slack eps_frac (eq. 4, one value for every layer): looser = sparser."""

        return Strength("eps_frac", 0.05, 0.3, bound_lo=1e-4, bound_hi=2.0)

    def at_strength(self, s: float, model: nn.Module, data: CompressionData) -> Method:
        trial = self.with_options(eps_frac=float(s))
        if self._dask is not None:  # a budget search's cluster (calibrate)
            trial._dask = self._dask
        return trial

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """The generic budget search over eps_frac; with ``parallel="dask"`` every trial solves
        on one client (a local cluster started, or the scheduler connected, once for the search
        instead of once per trial)."""
        with self._cluster():
            chosen, rec = super().calibrate(model, data, target, progress=progress)
        chosen._dask = None  # closed with the search
        return chosen, rec

    def _action(
        self, name: str, module: nn.Module, res: Any, prob: Any
    ) -> tuple[Any, dict[str, Any]]:
        U = res.U
        d, n = U.shape
        w = U.T.to(module.weight.dtype).reshape(module.weight.shape).contiguous()
        nnz = int((w != 0).sum())
        st = _stats(res)
        st.update(nnz=nnz, form="sparse", original_weights=d * n, stored_weights=3 * nnz)
        bias = None if module.bias is None else module.bias.detach().clone()
        if bias is not None and "bias" in res.extras:  # re-fit with the weights (Aghasi et al.)
            bias = res.extras["bias"].to(bias.dtype).reshape(bias.shape).clone()
            st["bias_refit"] = True
        st["deployed_violation"] = _deployed_violation(
            prob, w.reshape(n, d).T.to(torch.float64), st["eps"], bias
        )
        return SetWeights(layer=name, weight=w, bias=bias, sparse=True), st
