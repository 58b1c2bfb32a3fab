r"""SLR (Ma et al. 2019): every target layer becomes a column-sparse ``A`` plus a low-rank ``B``.

Per layer (shallow to deep), the :class:`~compactnn.solvers.layerwise.slr.SLRSolver` solves

.. math::

    \min_{A,B}\ \tfrac1N\|Y - r(X(A+B)^T + \mathbf 1 b^T)\|_F^2 + \lambda_1\|A\|_{2,1}
    + \lambda_2\|B\|_*

(eq. 3; ``r = ReLU`` or identity with ``response="linear"``) by Algorithm 1. With
``asymmetric=True`` (default, sec. V-B) ``X`` is captured from the network whose earlier layers
are already approximated and ``Y`` from the original. As in the paper the first conv is not
approximated (``skip_first``) and FC layers are sparse only (``fc_sparse_only``: ``λ2 = ∞``).

Deployment (Fig. 2): the layer becomes two parallel branches summed,
:class:`~compactnn.layers.ColumnSparseConv2d` / ``ColumnSparseLinear`` (kept columns only:
gather + smaller GEMM, dropped input channels, or dense) and
:class:`~compactnn.layers.LowRankConv2d` / ``LowRankLinear`` with ``r`` = the number of non-zero
singular values of ``B̂``, or both in one product
(:class:`~compactnn.layers.FusedSparseLowRankConv2d` / ``FusedSparseLowRankLinear``: one GEMM of
``[Q | A_K]`` over the rank-``r`` maps and the kept im2col rows, or one conv over the kept
channels); the form is chosen per layer by the measured latency of the whole deployed layer at
batch 100 on 1 thread (:func:`fastest_form`). ``B = 0``: the
sparse branch alone; ``A = 0``: the low-rank layer alone; a layer whose two branches would
store more than the dense weight is deployed dense (``A + B``). Zero strength is the identity by
construction: ``lam1 = 0`` removes no column (the solver keeps every column, whatever values
the iterations leave in it), and a layer without penalty (``lam1``, ``lam2`` each 0 or inf)
whose input is the original network's keeps its original weight (it attains ``f1 = 0``, the
minimum of eq. 3 without penalty). Fine-tuning afterwards
(``finetune_epochs``; paper: 5 epochs, small lr) keeps this structure.

Without a budget, ``lam1`` is fixed (``lam2 = lam2_ratio * lam1``, paper: λ2 = 2.5-3 λ1) in the
data scale of the solver (λ as a fraction of the smallest λ1 that zeroes every column); one λ1
then cuts the layers very unevenly (measured on kiaee-cnn: fc1 to 7 % of its columns while the
convs kept most). With ``share`` (or a ``target``, which sets it) every layer gets its own budget
of stored weights and its λ pair is scaled inside the ADMM iterations to fit it; the ratio
``lam2 / lam1`` still splits the budget between the sparse and the low-rank part.

References:
    Ma et al. (2019), eqs. (2)-(15), Algorithm 1, Fig. 2, sec. V (first conv kept, FC sparse
    only, asymmetric reconstruction, 5 epochs of fine-tuning).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from compactnn import metrics  # module attribute: looked up at call time (tests patch it)
from compactnn._validation import (
    check_bool,
    check_choice,
    check_float,
    check_per_layer,
    rule,
)
from compactnn.budget import Strength, measure
from compactnn.errors import ConfigError
from compactnn.graph import discover
from compactnn.layers import (
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    SparsePlusLowRank,
)
from compactnn.methods._calibrate import target_record
from compactnn.methods._common import finetune_model, per_layer_values
from compactnn.methods._layerwise_config import LayerSolveOptions
from compactnn.methods._layerwise_solve import _solve_one
from compactnn.methods._options import FINETUNE_RULES
from compactnn.methods.base import CompressionData, CompressionResult, Method
from compactnn.methods.layerwise import _Layerwise, default_layers
from compactnn.metrics import _run_hooked
from compactnn.plan import CompressionPlan, LowRank, SetWeights, SparseLowRank
from compactnn.solvers.layerwise import get_layer_solver
from compactnn.solvers.layerwise.slr import deployed_rank
from compactnn.structure import module_device
from compactnn.surgery import sparse_lowrank_layer

__all__ = ["SLR", "SLRConfig", "SLR_FORMS", "fastest_form"]

SLR_FORMS: tuple[str, ...] = (
    "auto", "auto-sparse", "gather", "channels", "dense", "fused", "fused-channels", "coo",
)  # fmt: skip


def _check_lam(value: Any, name: str, owner: str, **kw: Any) -> Any:
    """A per-layer λ >= 0 where ``inf`` is allowed (forces that component to zero)."""

    def is_inf(v: Any) -> bool:
        return isinstance(v, float) and math.isinf(v) and v > 0

    if is_inf(value):
        return math.inf
    if isinstance(value, Mapping):
        out = check_per_layer({k: 0.0 if is_inf(v) else v for k, v in value.items()}, name,
                              owner, min_value=0.0, **kw)  # fmt: skip
        return {k: math.inf if is_inf(value[k]) else v for k, v in out.items()}
    if isinstance(value, (list, tuple)):
        out = check_per_layer([0.0 if is_inf(v) else v for v in value], name, owner,
                              min_value=0.0, **kw)  # fmt: skip
        return tuple(math.inf if is_inf(a) else b for a, b in zip(value, out))
    return check_per_layer(value, name, owner, min_value=0.0, **kw)


@dataclass(frozen=True)
class SLRConfig(LayerSolveOptions):
    r"""SLR hyper-parameters (paper symbols in brackets).

    Attributes:
        layers: dotted names of the layers to approximate (default: every Conv2d/Linear
            followed by a ReLU except the classifier, without the model's first conv if
            ``skip_first``).
        lam1: λ1 of eq. (3) (column sparsity), in the solver's ``scale`` (default data scale: a
            fraction of the λ1 that zeroes every column); float, list per layer or dict.
        lam2: λ2 of eq. (3) (nuclear norm); ``None``: ``lam2_ratio * lam1``.
        lam2_ratio: λ2 / λ1 when ``lam2`` is None (paper 2.5-3).
        t: ADMM penalty (``None``: solver default: 1 x curvature, or 1e-3 in absolute scale).
        scale: ``"data"`` or ``"absolute"`` (paper protocol) units of λ and t.
        response: ``"relu"`` (non-linear response, eq. 3) or ``"linear"`` (Fig. 4 baseline).
        skip_first: leave the model's first executed conv unapproximated (paper sec. V-B); a
            first conv that is not in the default list (no ReLU after it) removes nothing.
        fc_sparse_only: FC layers get ``λ2 = ∞`` (sparse component only, paper sec. V-B).
        form: deployed form: ``"auto"`` (fastest measured), ``"auto-sparse"`` (fastest
            measured among the forms that skip the dropped columns, never ``"dense"`` or
            ``"fused-channels"``; what ``"auto"`` becomes under a MACs target), the sparse
            branch's ``"gather"``, ``"channels"``, ``"dense"`` or ``"coo"`` (COO non-zeros)
            beside the low-rank branch, or one fused product: ``"fused"`` (the kept im2col
            rows gathered) or ``"fused-channels"`` (a conv over the kept channels; on "same"
            convs, ``"fused"`` on the other layers).
        backend, options, n_jobs, parallel, max_rows, calib_batches, linear, seed: as for
            :class:`~compactnn.methods.layerwise.LayerwiseConfig` (backend ``"admm"`` or
            ``"cvxpy"``; options :class:`~compactnn.solvers.layerwise.SLRAdmmOptions` /
            ``SLRCvxpyOptions``).
        scheduler, scheduler_timeout, max_in_flight: the Dask options of
            :class:`~compactnn.methods.layerwise.LayerwiseConfig` (with ``parallel="dask"``
            and ``asymmetric=False``).
        asymmetric: X from the partially approximated network (sec. V-B; default True). The
            layers are then solved one after another, so ``parallel`` must be ``"serial"``;
            ``asymmetric=False`` solves them independently (on Dask, joblib or serially).
        finetune_epochs, finetune_lr, finetune_steps_per_epoch: fine-tuning after the
            approximation with the structure fixed (paper: 5 epochs, lr 1e-5 in Caffe).
        share: a per-layer budget (float, list per layer or dict; admm backend): each layer's
            deployed pair stores at most ``share * n * d`` weights (eq. 15 counts), ``lam1`` /
            ``lam2`` then set only the ratio of the two penalties and are scaled inside the ADMM
            iterations to fit (see :class:`~compactnn.solvers.layerwise.SLRSolver`). ``None``:
            fixed ``lam1`` (the paper). A ``target=`` of ``compress`` sets it (one share for
            every approximated layer, from the exact parameter count).
    """

    max_rows: int | None = 2048  # LayerSolveOptions' field, SLR's default
    asymmetric: bool = True  # LayerSolveOptions' field, SLR's default (sec. V-B)
    lam1: Any = 0.02
    lam2: Any = None
    lam2_ratio: float = 2.75
    t: float | None = None
    scale: str = "data"
    response: str = "relu"
    skip_first: bool = True
    fc_sparse_only: bool = True
    form: str = "auto"
    finetune_epochs: int = 0
    finetune_lr: float = 1e-3
    finetune_steps_per_epoch: int | None = None
    share: Any = None

    owner: ClassVar[str] = "SLR"
    solver_name: ClassVar[str] = "slr"
    rules = MappingProxyType(
        {
            **LayerSolveOptions.rules,
            "lam1": rule(_check_lam),
            "lam2": rule(_check_lam, optional=True),
            "lam2_ratio": rule(check_float, min_value=0.0),
            "t": rule(check_float, optional=True, min_value=0.0, min_inclusive=False),
            "scale": rule(check_choice, choices=("data", "absolute")),
            "response": rule(check_choice, choices=("relu", "linear")),
            "skip_first": rule(check_bool),
            "fc_sparse_only": rule(check_bool),
            "form": rule(check_choice, choices=SLR_FORMS),
            **{k: v for k, v in FINETUNE_RULES.items() if k != "finetune_distill"},
            "share": rule(
                check_per_layer, optional=True, min_value=0.0, max_value=1.0, min_inclusive=False
            ),  # fmt: skip
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # rules + backend table
        if self.share is not None and self.backend != "admm":
            raise ConfigError(
                f"SLR: share= (a per-layer budget) needs backend='admm' (got {self.backend!r}); "
                "its lambda scale is set inside the ADMM iterations."
            )


def _lowrank_factors(B: Tensor) -> tuple[Tensor, Tensor, int]:
    """``B = second @ first`` with ``r`` = number of non-zero singular values."""

    r = deployed_rank(B)
    if r == 0:
        return B.new_zeros(0, B.shape[1]), B.new_zeros(B.shape[0], 0), 0
    U, S, Vh = torch.linalg.svd(B, full_matrices=False)
    root = S[:r].sqrt()
    return root[:, None] * Vh[:r], U[:, :r] * root, r


class SLR(_Layerwise[SLRConfig]):
    r"""Unified sparse + low-rank approximation (Ma et al. 2019), see the module docstring.

    References:
        Ma et al. (2019), eqs. (3)-(15), Algorithm 1, Fig. 2, sec. V.
    """

    name = "slr"
    Config = SLRConfig
    solver_name = "slr"
    description = "SLR: column-sparse + low-rank layer approximation by 3-block ADMM (Ma 2019)"
    _changed: bool = False  # a layer before this one was deployed changed (asymmetric run)

    # ------------------------------------------------------------------ targets
    def _targets_on(
        self, model: nn.Module, example: Tensor | None = None
    ) -> tuple[list[str], dict[str, bool]]:
        cfg = self.config
        if cfg.layers is None and cfg.skip_first:
            layers = default_layers(model, example)
            mods = dict(model.named_modules())
            # the model's first executed conv (paper sec. V-B), not the first of the default
            # list: where that conv is not followed by a ReLU it is not in the list at all
            first = next(
                (n for n in discover(model, example).order if isinstance(mods[n], nn.Conv2d)), None
            )
            if first in layers and len(layers) > 1:
                layers = [n for n in layers if n != first]
            trial = copy.copy(self)
            trial.config = _replace_layers(cfg, tuple(layers))
            return _Layerwise._targets_on(trial, model, example)
        return super()._targets_on(model, example)

    def _eps(self, layers: list[str]) -> dict[str, Any]:
        """Per-layer ``{"lam1", "lam2"}`` (the shared flow calls this for its per-layer values)."""

        cfg = self.config
        order = list(cfg.layers) if cfg.layers is not None else layers
        lam1 = per_layer_values(cfg.lam1, order, "lam1", self.name)
        lam2 = None if cfg.lam2 is None else per_layer_values(cfg.lam2, order, "lam2", self.name)
        share = (
            None if cfg.share is None else per_layer_values(cfg.share, order, "share", self.name)
        )
        fc = self._fc
        out: dict[str, Any] = {}
        for n in layers:
            l1 = float(lam1[n])
            l2 = float(lam2[n]) if lam2 is not None else cfg.lam2_ratio * l1
            if cfg.fc_sparse_only and fc.get(n, False):
                l2 = math.inf
            out[n] = {"lam1": l1, "lam2": l2}
            if share is not None:
                out[n]["share"] = float(share[n])
        return out

    def _solver(self, eps: dict[str, Any]) -> Any:
        import functools

        cfg = self.config
        relu = False if cfg.response == "linear" else None
        solver = get_layer_solver("slr", t=cfg.t, scale=cfg.scale, relu=relu)
        return functools.partial(
            _solve_one, solver=solver, per_layer=eps, backend=cfg.backend, options=cfg.options
        )

    # ------------------------------------------------------------------ deployment
    def _action(
        self, name: str, module: nn.Module, res: Any, prob: Any
    ) -> tuple[Any, dict[str, Any]]:
        cfg = self.config
        A = res.extras["A"]
        B = res.extras["B"]
        n, d = A.shape
        dtype = module.weight.dtype
        shape = module.weight.shape
        bias = None if module.bias is None else module.bias.detach().clone()
        kept = int(res.extras["kept_columns"].numel())
        first, second, r = _lowrank_factors(B)
        sparse_params = n * kept
        low_params = r * (n + d)
        st: dict[str, Any] = {
            "status": res.status,
            "objective": float(res.objective),
            "f1": float(res.extras["f1"]),
            "iterations": int(res.iterations),
            "seconds": float(res.seconds),
            "backend": res.backend,
            "lam1": float(res.extras["lam1"]),
            "lam2": float(res.extras["lam2"]),
            "kept_columns": kept,
            "columns": d,
            "rank": r,
            "original_weights": n * d,
            "primal_residual": float(res.extras.get("primal_residual", float("nan"))),
            "dual_residual": float(res.extras.get("dual_residual", float("nan"))),
            # eq. (15): values stored over kept columns for structured A, r(n + d) for B
            "cr_A": sparse_params / (n * d),
            "cr_B": low_params / (n * d),
            "cr_AB": (sparse_params + low_params) / (n * d),
            "nnz_A": int((A != 0).sum()),
            "coo_A": 3 * int((A != 0).sum()),
        }
        W = (A + B).to(dtype)
        st["input_shape"] = self._in_shapes.get(name)
        lams = (st["lam1"], st["lam2"])
        unpenalised = (
            all(v in (0.0, math.inf) for v in lams)
            and lams != (math.inf, math.inf)
            and res.extras.get("share") is None  # a binding budget (share < 1) is a penalty
        )
        if unpenalised and not self._changed:
            # no penalty (lam1, lam2 each 0 or inf, not both inf): eq. (3) is f1 alone, and the
            # layer's input is the original network's (symmetric X, or every earlier layer kept),
            # so the original weight attains f1 = 0, the minimum -- kept as is, by construction
            # (the ADMM's least-squares iterate fits the calibration rows only)
            st.update(form="dense", stored_weights=n * d, kept_columns=d, rank=0, cr_A=1.0,
                      cr_B=0.0, cr_AB=1.0, kept_as_is=True)  # fmt: skip
            return SetWeights(layer=name, weight=module.weight.detach().clone(), bias=bias), st
        self._changed = bool(getattr(self.config, "asymmetric", True))
        if sparse_params + low_params >= n * d:
            st.update(form="dense", stored_weights=n * d)
            return SetWeights(layer=name, weight=W.reshape(shape), bias=bias), st
        if kept == 0 and r > 0:
            st.update(form="lowrank", stored_weights=low_params)
            return LowRank(layer=name, first=first.to(dtype), second=second.to(dtype),
                           bias=bias), st  # fmt: skip
        form = cfg.form
        if form == "fused-channels" and not (
            isinstance(module, nn.Conv2d) and FusedSparseLowRankConv2d.channels_form_fits(module)
        ):
            form = "fused"  # a Linear, a strided or not "same" conv: the gather product
        act = SparseLowRank(
            layer=name,
            sparse=A.to(dtype).reshape(shape),
            first=first.to(dtype) if r else None,
            second=second.to(dtype) if r else None,
            bias=bias,
            form="gather" if form in ("auto", "auto-sparse") else form,
        )
        if form in ("auto", "auto-sparse"):
            form, timings = self._fastest_form(module, act, sparse_only=form == "auto-sparse")
            st["form_ms"] = timings
            act = dataclasses.replace(act, form=form)
        st.update(form=f"sparse+lowrank/{form}" if r else f"sparse/{form}")
        st["stored_weights"] = (3 * st["nnz_A"] if form == "coo" else sparse_params) + low_params
        if form == "fused-channels":  # its conv multiplies the zeros of a (n, r+|C|, kh, kw) kernel
            layer = sparse_lowrank_layer(copy.deepcopy(module).cpu(), _cpu(act))
            st["executed_weights"] = st["stored_weights"] + (
                layer.executed_param_count() - layer.stored_param_count()
            )
        return act, st

    def _fastest_form(
        self, module: nn.Module, act: SparseLowRank, sparse_only: bool = False
    ) -> tuple[str, dict[str, float]]:
        return fastest_form(module, act, self._in_shapes.get(act.layer), sparse_only=sparse_only)

    # ------------------------------------------------------------------ run
    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        t0 = time.perf_counter()

        batches = list(data.calib_batches(1, device=module_device(model)))
        if not batches:
            raise ConfigError("slr got no calibration batch: the loader is empty.")
        mods = dict(model.named_modules())
        self._fc = {n: isinstance(m, nn.Linear) for n, m in mods.items()}
        self._in_shapes = _input_shapes(model, batches[0][:2])
        # asymmetric: once a layer is deployed changed, later layers see another input
        self._changed = False
        res = super().run(model, data, progress=progress)
        res.history["lam"] = res.history.pop("eps_frac")
        res.history["solve_seconds"] = time.perf_counter() - t0
        if cfg.finetune_epochs > 0:
            loader = data.require_train(self.name)
            finetune_model(
                res.model,
                loader,
                epochs=cfg.finetune_epochs,
                lr=cfg.finetune_lr,
                momentum=0.9,
                weight_decay=0.0,
                seed=cfg.seed,
                steps_per_epoch=cfg.finetune_steps_per_epoch,
                progress=progress,
                desc="slr fine-tune",
            )
            res.plan = _refresh_plan(res.plan, res.model)
            res.history["retrained"] = True
        return res

    # ------------------------------------------------------------------ budget
    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """The per-layer ``share`` that meets ``target``.

        A params-only target needs no search: every approximated layer keeps the same share of
        its weights, ``share = (target * P - P_fixed) / W`` with ``P`` the model's parameters,
        ``W`` the weights of the approximated layers and ``P_fixed = P - W`` (the other layers
        and every bias, unchanged); each layer's solve then fits its own budget
        (:class:`~compactnn.solvers.layerwise.SLRSolver` ``share``). Other keys (macs,
        latency): the platform's search over ``1 - share`` with proxy runs.
        """

        if set(target.keys) != {"params"}:
            method: SLR = self
            if self.config.form == "auto" and "macs" in target.keys:
                # the dense form computes every dropped column: a timing that picks it (LeNet's
                # conv2 under load, 2026-12-04) keeps 83 % of the MACs at any strength and the
                # MACs budget becomes unreachable. Under a MACs target the fastest sparse form.
                method = self.with_options(form="auto-sparse")
            return super(SLR, method).calibrate(model, data, target, progress=progress)
        t0 = time.perf_counter()
        shape = data.require_input_shape(self.name)
        batches = self._batches(data, model)
        model, _ = self._folded(model, batches[0])  # the BNs the run folds are not counted
        layers, _ = self._targets_on(model, batches[0])
        mods = dict(model.named_modules())
        total = measure(model, shape, ("params",)).values["params"]
        approx = float(sum(mods[n].weight.numel() for n in layers))
        fixed = total - approx
        share = (float(target.params) * total - fixed) / approx
        if share <= 0.0:
            raise ConfigError(
                f"SLR cannot reach the target {target.as_dict()}: the layers it does not "
                f"approximate and the biases alone keep {fixed / total:.4f} of the parameters "
                f"(approximated: {layers}). Approximate more layers (layers=, skip_first=False) "
                "or relax the target."
            )
        share = min(share, 1.0)
        chosen = self.with_options(share=share)
        kept = {"params": (fixed + share * approx) / total}
        rec = target_record(
            target, kept, option="share", strength=share, trace=[],
            seconds=time.perf_counter() - t0, layers=list(layers),
        )  # fmt: skip
        return chosen, rec

    def strength(self) -> Any:
        """``1 - share`` (the share of every approximated layer's weights removed; larger =
        smaller model), for targets other than params (:meth:`calibrate`)."""

        return Strength("1 - share", 0.5, 0.8, log=False, bound_lo=0.0, bound_hi=0.995)

    def at_strength(self, s: float, model: nn.Module, data: CompressionData) -> Method:
        return self.with_options(share=max(1.0 - float(s), 1e-4))

    def proxy(self) -> Method:
        """Same structure without fine-tuning."""
        return self.with_options(finetune_epochs=0)


def fastest_form(
    module: nn.Module,
    act: SparseLowRank,
    input_shape: tuple[int, ...] | None,
    *,
    sparse_only: bool = False,
) -> tuple[str, dict[str, float]]:
    """The form of ``act`` whose deployed layer runs fastest in place of ``module``.

    Each candidate -- both branches (the sparse one ``"gather"``, ``"channels"`` or
    ``"dense"``), or one product (``"fused"``, and ``"fused-channels"`` for a "same" conv with
    a low-rank part) -- is built as surgery builds it and timed at batch 100 of
    ``input_shape`` (per sample), 1 thread, on the CPU (the median of 7 runs).
    ``sparse_only``: not the forms that multiply the dropped columns' zeros (``"dense"``,
    ``"fused-channels"``). With no ``input_shape``: ``"gather"``, untimed.

    Returns:
        ``(form, {form: median ms})``.
    """
    rank = 0 if act.first is None else int(act.first.shape[0])
    if isinstance(module, nn.Linear):
        forms: tuple[str, ...] = ("gather", "dense", "fused")
    else:
        forms = ("gather", "channels", "dense", "fused")
        if rank and FusedSparseLowRankConv2d.channels_form_fits(module):
            forms += ("fused-channels",)
    if sparse_only:
        forms = tuple(f for f in forms if f not in ("dense", "fused-channels"))
    if input_shape is None:
        return forms[0], {}
    out: dict[str, float] = {}
    # timed on the CPU (the deployment the forms are chosen for), whatever device the model
    # is on: the solver's A may be on the CPU while the layer's bias is on a GPU
    cpu_module, cpu_act = copy.deepcopy(module).cpu(), _cpu(act)
    for f in forms:
        m = sparse_lowrank_layer(cpu_module, dataclasses.replace(cpu_act, form=f))
        lat = metrics.measure_latency(m, input_shape, batch_size=100, threads=1, warmup=2,
                                      repeats=7)  # fmt: skip
        out[f] = float(lat.median_ms)
    return min(out, key=out.__getitem__), out


def _cpu(act: SparseLowRank) -> SparseLowRank:
    """``act`` with its tensors on the CPU."""
    return dataclasses.replace(act, **{k: None if getattr(act, k) is None else
                                       getattr(act, k).detach().cpu()
                                       for k in ("sparse", "first", "second", "bias")})  # fmt: skip


def _replace_layers(cfg: SLRConfig, layers: tuple[str, ...]) -> SLRConfig:
    return dataclasses.replace(cfg, layers=layers)


def _input_shapes(model: nn.Module, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of every Conv2d/Linear (one hooked forward pass)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod: nn.Module, inp: Any, out: Any, n: str = n) -> None:
                shapes[n] = tuple(int(s) for s in inp[0].shape[1:])

            handles.append(m.register_forward_hook(hook))
    _run_hooked(model, handles, x)
    return shapes


def _refresh_plan(plan: Any, model: nn.Module) -> Any:
    """The plan with its layer actions holding the (fine-tuned) tensors of ``model``."""

    mods = dict(model.named_modules())
    actions = []
    for a in plan.actions:
        m = mods.get(getattr(a, "layer", ""), None)
        if isinstance(a, SparseLowRank) and isinstance(
            m, (FusedSparseLowRankConv2d, FusedSparseLowRankLinear)
        ):
            lowrank = a.first is not None and a.second is not None
            a = SparseLowRank(
                layer=a.layer,
                sparse=m.sparse_matrix().detach().reshape(a.sparse.shape),
                first=m.first_matrix().detach().reshape(a.first.shape) if lowrank else None,  # type: ignore[union-attr]
                second=m.second_matrix().detach().reshape(a.second.shape) if lowrank else None,  # type: ignore[union-attr]
                bias=None if m.bias is None else m.bias.detach().clone(),
                form=a.form,
            )
        elif isinstance(a, SparseLowRank) and m is not None:
            sp = m.sparse if isinstance(m, SparsePlusLowRank) else m
            lr = m.lowrank if isinstance(m, SparsePlusLowRank) else None
            dense = sp.dense_matrix().detach().reshape(a.sparse.shape)  # column-sparse or COO
            bias_mod = lr.second if lr is not None else sp
            b = None if bias_mod.bias is None else bias_mod.bias.detach().clone()
            first = None if lr is None else lr.first.weight.detach().reshape(a.first.shape)
            second = None if lr is None else lr.second.weight.detach().reshape(a.second.shape)
            a = SparseLowRank(layer=a.layer, sparse=dense, first=first, second=second, bias=b,
                              form=a.form)  # fmt: skip
        elif isinstance(a, LowRank) and m is not None:
            a = LowRank(
                layer=a.layer,
                first=m.first.weight.detach().reshape(a.first.shape),
                second=m.second.weight.detach().reshape(a.second.shape),
                bias=None if m.second.bias is None else m.second.bias.detach().clone(),
            )
        elif isinstance(a, SetWeights) and m is not None and isinstance(m, nn.Module):
            a = SetWeights(
                layer=a.layer,
                weight=m.weight.detach().clone(),
                bias=None if m.bias is None else m.bias.detach().clone(),
                sparse=a.sparse,
            )
        actions.append(a)
    return CompressionPlan(actions=actions, meta=dict(plan.meta)).with_state(model)
