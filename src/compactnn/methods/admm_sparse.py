"""ADMM sparse CNN (Kiaee et al. 2016): l0 / l1 on filter blocks W_ij along a mu path.

For every mu of an increasing log-spaced path (warm-started from the previous mu), all layers
at once (Algorithm 1)::

    min_W  L_net(W) + mu f(F)   s.t.  W = F ,   f = sum_ij ||F_ij||_F (l1, eq. 9)
                                                 or #{ij : F_ij != 0}   (l0, eq. 10)

W-step: SGD epochs on ``L_net(W) + rho/2 ||W - F + Gamma/rho||^2`` (eq. 7); F-step: block soft
(eq. 9, a = mu/rho) or hard (eq. 10, b = sqrt(2 mu/rho)) thresholding; dual step (eq. 6); stop when
``||W - F||_F`` and ``||F_k - F_{k-1}||_F`` are both <= eps or after xi iterations. Over-pruning
guard (sec. 4.1): if a layer would lose more than 50 % of its blocks, its threshold becomes the
mean block norm, lowered further when needed so that never more than 50 % of its blocks are
pruned (the intent of the rule; l1 keeps soft shrinkage with that threshold). Then the identified
structure is fixed and the network fine-tuned (masked). Epoch schedule (sec. 4):
``min(1 + delta*i, delta*nu)`` epochs for the i-th mu, for the W-step *and* the fine-tuning
("delta nu xi + delta nu epochs" for the nu-th mu).

Blocks: a conv's W_ij (one kh x kw kernel per input/output pair); a Linear layer is one input
map with n one-dimensional filters (sec. 2, footnote 1), so one block per row. Default layers:
the layers of the paper's tables, i.e. the convs with spatial kernels (> 1x1) and the hidden
Linear layers (NIN's 1x1 convs and the classifier are not regularised).

Every point of the path is returned (``history["path"]``, ``history["path_plans"]``): the dense
start (mu = 0, the paper's baseline row) first, then one per mu, each with accuracy on
validation, sparsity, zero blocks per layer and epochs (Kiaee Tables 3-6) and a self-contained
plan that rebuilds that point's model. At every point the filters whose blocks are *all* zero
are physically removed (with their bias and the following BatchNorm's gamma/beta, held at zero
during the fine-tuning so that the removal is exact) and the accuracy is measured on that
removed model; the result model is the last point's.

Deployment of the zero kernels (``deploy_kernels``): after the all-zero filters and the input
channels whose kernels are zero for every filter are removed, each conv still holding zero
kernels W_ij becomes a :class:`~compactnn.layers.KernelSparseConv2d` (only the non-zero kernels
stored) in the form measured fastest on its real input (:func:`choose_kernel_forms`: dense conv,
filters grouped by shared input support into smaller convs + concat + permutation, or im2col +
sparse GEMM; batch 100 and 1, one thread, every candidate's time recorded in
``path[i]["kernel_deploy"]``). With ``measure_speed`` each point records the eager latency of
its model (``latency_ms``, ``latency_ms_b1``) and its speed-up over mu = 0's model, timed
alternately with it so that a shared machine's load cancels (``speedup``, ``speedup_b1``), the
paper's speed-up column measured.

References:
    Kiaee, Gagne, Abbasi, "Alternating Direction Method of Multipliers for Sparse Convolutional
    Neural Networks", 2016: eqs. (1)-(10), Algorithm 1, sec. 4 (lr 1e-3, batch 128, delta = 1,
    nu = 15, xi = 10, 50 % guard).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn import resume
from compactnn._validation import (
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_per_layer,
    rule,
    validate_options,
)
from compactnn.errors import ConfigError, PlanError
from compactnn.methods._common import (
    admm_w_step,
    finetune_model,
    kept_filters,
    nonzero_filters,
    prunable_layers,
    prune_filters,
    replay_plan,
)
from compactnn.methods._engine import (
    ENGINE_RULES,
    EngineOptions,
    EngineSettings,
    budgeted_run,
    engine_calibrate,
)
from compactnn.methods._options import LAYERS, POSITIVE, SEED, SGD_RULES
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.metrics import accuracy
from compactnn.train import apply_masks

__all__ = ["ADMMSparse", "ADMMSparseConfig"]

_GROUP_PENALTY = {"l1": "l21", "l0": "l20"}  # l1 / l0 of the block norms = group penalties


def _check_mus(value: Any, name: str, owner: str) -> tuple[float, ...]:
    """The μ path S: a non-empty increasing sequence of floats >= 0."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a non-empty increasing sequence of "
            f"floats >= 0. Got {value!r} instead."
        )
    mus = tuple(check_float(m, f"{name}[{i}]", owner, min_value=0.0) for i, m in enumerate(value))
    if any(b < a for a, b in zip(mus, mus[1:])):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a non-empty increasing sequence of "
            f"floats >= 0. Got {list(mus)} instead."
        )
    return mus


@dataclass(frozen=True)
class ADMMSparseConfig(MethodConfig, EngineOptions):
    """Hyper-parameters of ADMM-sparse, validated on construction (``rules``).

    Attributes:
        penalty: the sparsity function f: ``"l0"`` (hard threshold b = sqrt(2μ/ρ), eq. 10) or
            ``"l1"`` (soft threshold a = μ/ρ, eq. 9).
        structure: sparsity block: ``"kernels"`` (W_ij, the paper's choice), ``"filters"``
            or ``"elements"``; ``None`` (default) = ``"kernels"``, or ``"filters"`` when a
            budget target is given (only removed filters shrink the stored model).
        mus: the μ path S of Algorithm 1 (μ of eq. 1, increasing floats >= 0). Default:
            ``n_mu`` log-spaced values in ``[mu_min, mu_max]``.
        mu_min, mu_max, n_mu: the default log-spaced path (0 < mu_min <= mu_max, n_mu >= 1).
        rho: ρ > 0 of the augmented Lagrangian, eq. (3).
        eps: ε > 0, the stopping threshold on ||W - F||_F and ||F_k - F_{k-1}||_F (Algorithm 1
            line 10).
        xi: ξ, at most this many ADMM iterations per μ (paper: 10).
        delta, nu: δ and ν of the epoch schedule: epochs per W-step = min(1 + δ i, δ ν) for
            the i-th μ (sec. 4; paper: 1, 15).
        steps_per_epoch: cap on SGD steps per "epoch" (CPU-scale runs; None = whole loader).
        lr, momentum, weight_decay: SGD of the W-step (eq. 7) and of the fine-tuning (paper lr
            1e-3).
        finetune_epochs: masked fine-tuning epochs after each μ (Algorithm 1 line 11); ``None``
            (default, the paper's) = the W-step schedule ``min(1 + δ i, δ ν)`` (sec. 4).
        overprune_guard: apply the 50 % guard of sec. 4.1.
        layers: regularised layers (default: the paper's, i.e. every prunable Conv2d with a
            spatial kernel larger than 1x1 and every hidden Linear; see
            :func:`kiaee_layers`).
        eval_batches: validation batches used for the accuracy of each μ (None = all).
        seed: seeds SGD (int >= 0).
        mu_scale: per-layer multipliers of μ (dict layer -> float > 0; None = 1 everywhere).
            A budget search sets them from each layer's median block norm so that one global
            μ acts alike on every layer.
        deploy_kernels: deploy the zero kernels W_ij left after filter and input-channel
            removal: each kernel-sparse conv becomes a
            :class:`~compactnn.layers.KernelSparseConv2d` (zero kernels not stored) in the
            form measured fastest on its real input (:func:`choose_kernel_forms`); False keeps
            them as zeros inside dense convs.
        measure_speed: time every path point's model (batch 100 and 1, one thread, real
            validation samples) and record its speed-up over the dense start (mu = 0).
    """

    penalty: str = "l0"
    structure: str | None = None
    mus: tuple[float, ...] | None = None
    mu_min: float = 1e-3
    mu_max: float = 1e-1
    n_mu: int = 5
    rho: float = 1.0
    eps: float = 1e-3
    xi: int = 10
    delta: int = 1
    nu: int = 15
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    finetune_epochs: int | None = None
    overprune_guard: bool = True
    layers: tuple[str, ...] | None = None
    eval_batches: int | None = None
    seed: int = 0
    mu_scale: Any = None
    deploy_kernels: bool = True
    measure_speed: bool = True

    owner: ClassVar[str] = "ADMM-sparse"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            "penalty": rule(check_choice, choices=tuple(_GROUP_PENALTY)),
            "structure": rule(
                check_choice, optional=True, choices=("kernels", "filters", "elements")
            ),
            "mus": rule(_check_mus, optional=True),
            "mu_min": rule(check_float, **POSITIVE),
            "mu_max": rule(check_float, **POSITIVE),
            "n_mu": rule(check_int, min_value=1),
            "rho": rule(check_float, **POSITIVE),
            "eps": rule(check_float, **POSITIVE),
            "xi": rule(check_int, min_value=1),
            "delta": rule(check_int, min_value=1),
            "nu": rule(check_int, min_value=1),
            "steps_per_epoch": rule(check_int, optional=True, min_value=1),
            **SGD_RULES,
            "finetune_epochs": rule(check_int, optional=True, min_value=0),
            "overprune_guard": rule(check_bool),
            "layers": LAYERS,
            "eval_batches": rule(check_int, optional=True, min_value=1),
            "seed": SEED,
            "mu_scale": rule(check_per_layer, optional=True, forms=("dict",), **POSITIVE),
            "deploy_kernels": rule(check_bool),
            "measure_speed": rule(check_bool),
            **ENGINE_RULES,
        }
    )

    def __post_init__(self) -> None:
        validate_options(self, self.owner, self.rules)
        if self.mu_max < self.mu_min:
            raise ConfigError(
                f"The 'mu_max' parameter of ADMM-sparse must be a finite float >= mu_min "
                f"({self.mu_min}). Got {self.mu_max!r} instead."
            )

    def mu_path(self) -> tuple[float, ...]:
        from compactnn.solvers.training.schedule import log_schedule

        return (
            self.mus if self.mus is not None else log_schedule(self.mu_min, self.mu_max, self.n_mu)
        )


def guarded_threshold(v: torch.Tensor, gd: tuple[int, ...], soft: bool) -> torch.Tensor:
    """Kiaee sec. 4.1's F-step for an over-pruned layer, as the paper means it.

    The threshold becomes the mean block norm t of V (the paper's rule); when even t would
    prune more than half of the blocks, it is lowered so that exactly the ``floor(N/2)``
    smallest blocks (ties: lowest index) are pruned: never more than 50 % of the layer's
    blocks. Hard threshold (l0, eq. 10) keeps the other blocks as they are; soft (l1, eq. 9)
    shrinks them by the threshold (``(1 - t/||V_ij||) V_ij``).
    """
    from compactnn.prox import group_norms

    vn = group_norms(v, gd)
    flat = vn.reshape(-1)
    t = flat.mean()
    pruned = flat <= t
    if int(pruned.sum()) > flat.numel() // 2:
        k = flat.numel() // 2
        pruned = torch.zeros_like(pruned)
        pruned[torch.sort(flat, stable=True).indices[:k]] = True
        t = flat[pruned].max() if k > 0 else flat.new_zeros(())
    if soft:
        safe = torch.where(flat > 0, flat, torch.ones_like(flat))
        scale = torch.where(flat > t, 1 - t / safe, torch.ones_like(flat))  # ties: kept as is
    else:
        scale = torch.ones_like(flat)
    scale = torch.where(pruned, torch.zeros_like(flat), scale)
    shape = [v.shape[d] if d in gd else 1 for d in range(v.dim())]
    return v * scale.reshape(shape).to(v.dtype)


def _overprune_guard(fired: dict[str, bool]) -> Callable[[Any], None]:
    """Kiaee sec. 4.1 as an ``after_f_step`` hook of the driver: when the F-step zeroes more
    than 50 % of a layer's blocks, that layer's F is instead :func:`guarded_threshold` of
    V = W + Y/rho (mean-norm threshold, never more than 50 % pruned, soft shrinkage kept for
    l1). ``fired[layer weight]`` records each decision."""
    from compactnn.prox import group_norms

    def guard(engine: Any) -> None:
        soft = engine.config.penalty in ("l1", "l21")
        for n in engine.params:
            gd = engine.group_dims[n]
            if float((group_norms(engine.state.F[n], gd) == 0).float().mean()) <= 0.5:
                fired[n] = False
                continue
            engine.set_f(n, guarded_threshold(engine.prox_input(n), gd, soft))
            fired[n] = True

    return guard


def _samples(data: CompressionData, shape: Any, n: int = 100) -> torch.Tensor:
    """``n`` real samples (validation, else training data) for the timings; N(0, 1) when the
    loaders yield no tensors. Never the test split."""
    from compactnn.metrics import real_batch

    for loader in (data.val, data.train):
        if loader is not None:
            x = real_batch(loader, n)
            if x is not None and tuple(x.shape[1:]) == tuple(shape):
                return x
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0), device="cpu")


def _timed(
    model: nn.Module, samples: torch.Tensor, reference: nn.Module | None = None, rounds: int = 2
) -> dict[str, float]:
    """Eager latency of ``model`` at batch ``len(samples)`` and 1, one thread (median ms), and
    with ``reference`` (the dense start) timed alternately with it in the same window, the
    speed-up over it (``speedup``, ``speedup_b1``): a shared machine's load then cancels."""
    from compactnn.metrics import measure_latency

    shape = tuple(samples.shape[1:])
    pair = {"m": model} if reference is None else {"m": model, "r": reference}
    times: dict[str, list[float]] = {f"{k}{b}": [] for k in pair for b in ("", "1")}
    for _ in range(rounds):
        for k, m in pair.items():
            big = measure_latency(
                m, shape, batch_size=len(samples), threads=1, warmup=1, repeats=3, inputs=samples
            )
            one = measure_latency(
                m, shape, batch_size=1, threads=1, warmup=2, repeats=8, inputs=samples
            )
            times[k].append(big.median_ms)
            times[f"{k}1"].append(one.median_ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"latency_ms": med["m"], "latency_ms_b1": med["m1"]}
    if reference is not None:
        out.update(speedup=med["r"] / med["m"], speedup_b1=med["r1"] / med["m1"])
    return out


def kiaee_layers(model: nn.Module, input_shape: Any = None, *, coupled: bool = False) -> list[str]:
    """The layers Kiaee et al. regularise: the prunable convs whose kernel is larger than 1x1
    and the hidden Linear layers (Table 3: NIN's conv1/4/5/8, the CNN's conv1-4 and fc1); with
    ``coupled`` one layer per residual-coupled group as well (the budgeted engine's default)."""
    mods = dict(model.named_modules())
    return [
        n
        for n in prunable_layers(model, input_shape, coupled=coupled)
        if not (isinstance(mods[n], nn.Conv2d) and tuple(mods[n].kernel_size) == (1, 1))
    ]


def following_norms(model: nn.Module, layers: list[str], input_shape: Any) -> dict[str, list[str]]:
    """Per layer, the per-channel norm modules (BatchNorm/InstanceNorm) that read its output
    directly (one forward pass on a zero batch, in eval mode; the model is left as it was)."""
    from compactnn.graph import example_input_for
    from compactnn.metrics import _eval_no_grad

    mods = dict(model.named_modules())
    norms = {n: m for n, m in mods.items() if isinstance(m, nn.modules.batchnorm._NormBase)}
    outs: dict[int, tuple[torch.Tensor, str]] = {}  # the tensor is kept alive: ids stay unique
    found: dict[str, list[str]] = {n: [] for n in layers}
    handles = []
    for n in layers:
        handles.append(
            mods[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(id(o), (o, n)))
        )
    for bn_name, bn in norms.items():

        def pre(_m: nn.Module, inp: Any, bn_name: str = bn_name) -> None:
            hit = outs.get(id(inp[0])) if inp else None
            if hit is not None and hit[0] is inp[0] and bn_name not in found[hit[1]]:
                found[hit[1]].append(bn_name)

        handles.append(bn.register_forward_pre_hook(pre))
    try:
        with _eval_no_grad(model):
            model(example_input_for(model, input_shape))
    finally:
        for h in handles:
            h.remove()
    return found


#: the candidates of :func:`choose_kernel_forms`: (form, max_groups of the grouped form)
KERNEL_CANDIDATES: tuple[tuple[str, int | None], ...] = (
    ("dense", None),
    ("grouped", 2),
    ("grouped", 4),
    ("grouped", 8),
    ("sparse", None),
)


#: a candidate is timed only when its multiply-adds are at most this fraction of the dense
#: conv's: the grouped convs cost what they compute; the COO GEMM (with its im2col) was slower
#: than the dense conv even at 80 % zero kernels on this project's CPU (MKL-DNN dense conv)
_MAX_MACS_FRACTION = {"dense": 1.0, "grouped": 0.9, "sparse": 0.5}


def _macs_fraction(layer: Any, support: torch.Tensor) -> float:
    """Multiply-adds of a :class:`~compactnn.layers.KernelSparseConv2d` form / the dense
    conv's: grouped ``sum_g |F_g| |U_g|``, sparse the non-zero kernels, dense 1."""
    n, c = support.shape
    if layer.form == "dense":
        return 1.0
    if layer.form == "sparse":
        return float(support.sum()) / (n * c)
    used = sum(len(g) * int(support[list(g)].any(0).sum()) for g in layer.filter_groups)
    return used / (n * c)


def _kernel_sparse_convs(model: nn.Module, layers: list[str]) -> list[str]:
    """The convs among ``layers`` (groups = 1, numeric zero padding) with a zero kernel W_ij."""
    mods = dict(model.named_modules())
    out = []
    for n in layers:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d) or m.groups != 1 or m.padding_mode != "zeros":
            continue
        if isinstance(m.padding, str):
            continue
        w = m.weight.detach()
        if bool(w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2).all()):
            continue
        out.append(n)
    return out


def choose_kernel_forms(
    model: nn.Module,
    layers: list[str],
    samples: torch.Tensor,
    *,
    threads: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    candidates: tuple[tuple[str, int | None], ...] = KERNEL_CANDIDATES,
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The fastest deployment of every kernel-sparse conv of ``layers`` in ``model``.

    Each conv with zero kernels W_ij is timed (median of ``repeats`` eager forward passes after
    ``warmup``, ``threads`` torch threads) on its real input, captured in one forward pass of
    ``samples`` (the batch-100 timing; batch 1 is the first sample), as the original dense
    ``nn.Conv2d`` (reference) and as every :data:`KERNEL_CANDIDATES` form of
    :class:`~compactnn.layers.KernelSparseConv2d`: ``dense`` (dense conv of the rebuilt
    weight), ``grouped`` (filters grouped by shared input support into at most 2 / 4 / 8
    smaller convs, concat and a permutation back to the original output order) and ``sparse``
    (im2col + COO GEMM of the non-zero kernels' entries). The fastest at the batch of
    ``samples`` is chosen; a candidate whose first timed call is over 3x the best so far is not
    timed further (``stopped``), one whose multiply-adds exceed :data:`_MAX_MACS_FRACTION` of
    the dense conv's is not timed (``skipped``, with its ``macs_fraction``).

    Returns:
        The :class:`~compactnn.plan.KernelSparse` actions (one per conv) and per conv the
        record: zero / total kernels, the candidates' times at both batch sizes, the choice.
    """
    from compactnn.layers import KernelSparseConv2d
    from compactnn.metrics import _eval_no_grad, measure_latency
    from compactnn.plan import KernelSparse

    targets = _kernel_sparse_convs(model, layers)
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mods[n].register_forward_pre_hook(
            lambda _m, inp, _n=n: seen.__setitem__(_n, inp[0].detach().clone())
        )
        for n in targets
    ]
    try:
        with _eval_no_grad(model):
            model(samples)
    finally:
        for h in hooks:
            h.remove()

    def ms(layer: nn.Module, x: torch.Tensor, reps: int, warm: int) -> float:
        kw = dict(batch_size=int(x.shape[0]), threads=threads, warmup=warm, repeats=reps)
        return measure_latency(layer, tuple(x.shape[1:]), inputs=x, **kw).median_ms

    actions, records = [], {}
    for n in targets:
        conv, x = mods[n], seen[n]
        w = conv.weight.detach()
        support = w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2)
        rec: dict[str, Any] = {
            "kernels": int(support.numel()),
            "zero_kernels": int((~support).sum()),
            "batch": int(x.shape[0]),
            "conv_ms": ms(conv, x, repeats, warmup),
            "conv_ms_b1": ms(conv, x[:1], repeats, warmup),
            "candidates": [],
        }
        best: tuple[float, Any] | None = None
        seen_groups: set[Any] = set()
        for form, g in candidates:
            layer = KernelSparseConv2d.from_conv(conv, form=form, max_groups=g or 4).eval()
            if form == "grouped":
                if len(layer.filter_groups) <= 1 or layer.filter_groups in seen_groups:
                    continue  # one group = the dense form; the same partition: timed already
                seen_groups.add(layer.filter_groups)
            cand: dict[str, Any] = {"form": form}
            if form == "grouped":
                cand["groups"] = len(layer.filter_groups)
            cand["macs_fraction"] = _macs_fraction(layer, support)
            if cand["macs_fraction"] > _MAX_MACS_FRACTION[form]:
                cand["skipped"] = True  # cannot beat the dense conv: not timed
                rec["candidates"].append(cand)
                continue
            first = ms(layer, x, 1, warmup)
            if best is not None and first > 3 * best[0]:
                cand.update(ms=first, stopped=True)
            else:
                cand.update(ms=ms(layer, x, repeats, 0), ms_b1=ms(layer, x[:1], repeats, warmup))
                if best is None or cand["ms"] < best[0]:
                    best = (cand["ms"], (layer, cand))
            rec["candidates"].append(cand)
        assert best is not None
        layer, cand = best[1]
        rec["chosen"] = {k: v for k, v in cand.items() if k not in ("stopped", "skipped")}
        rec["stored_values"] = layer.stored_param_count()
        rec["coo_count"] = layer.coo_param_count()
        groups = layer.filter_groups if layer.form == "grouped" else ()
        bias = None if conv.bias is None else conv.bias.detach()
        actions.append(
            KernelSparse(layer=n, weight=w, bias=bias, form=layer.form, filter_groups=groups)
        )
        records[n] = rec
    return actions, records


class ADMMSparse(Method[ADMMSparseConfig]):
    """Kiaee et al.'s ADMM sparse CNN along an increasing mu path."""

    name = "admm-sparse"
    Config = ADMMSparseConfig
    description = "ADMM sparse CNN (Kiaee et al. 2016): l0/l1 on filter blocks W_ij, mu path"

    # ------------------------------------------------------------------ budget
    def engine_settings(self) -> EngineSettings:
        """Kiaee's filter penalty for the budgeted engine (a target is met by one joint run,
        :mod:`compactnn.methods._engine`): l0 is the group hard threshold, l1 the group soft
        threshold of whole filters (W_ij blocks stored densely would not make the model
        smaller); the over-pruning guard (sec. 4.1) keeps at least half of every layer."""
        cfg = self.config
        if cfg.structure not in (None, "filters"):
            raise ConfigError(
                f"ADMM-sparse with structure='{cfg.structure}' keeps its zero blocks stored "
                "densely, so a params/MACs target cannot be met by it: pass "
                "structure='filters' with target=, or set mus= without a target."
            )
        return EngineSettings(
            penalty="l20" if cfg.penalty == "l0" else "l21", steps=cfg.engine_steps,
            anneal_steps=cfg.anneal_steps, lr=cfg.engine_lr, momentum=cfg.momentum,
            allocation=cfg.engine_allocation,
            weight_decay=cfg.weight_decay, seed=cfg.seed,
            min_keep_fraction=0.5 if cfg.overprune_guard else 0.0,
        )  # fmt: skip

    def proxy(self) -> Method:
        return self.with_options(finetune_epochs=0, measure_speed=False)

    def _layers(self, model: nn.Module, input_shape: Any) -> list[str]:
        """The regularised layers: ``layers`` or the paper's defaults (:func:`kiaee_layers`),
        checked to exist."""
        cfg = self.config
        layers = (
            list(cfg.layers)
            if cfg.layers is not None
            else kiaee_layers(model, input_shape, coupled=cfg.budget is not None)
        )
        self._check_layers(model, layers)
        return layers

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """No search: the target becomes the budget of one engine run (:meth:`run`), after an
        up-front check: with the over-pruning guard (sec. 4.1) no layer loses more than half of its filters, so a
        target under the size of the model cut to ``ceil(n / 2)`` filters per regularised
        layer is refused before any training, with what to do."""
        cfg = self.config
        if cfg.overprune_guard and cfg.structure in (None, "filters"):
            from compactnn.methods._calibrate import _CountSizer

            shape = data.require_input_shape(self.name)
            layers = self._layers(model, shape)
            try:
                sizer = _CountSizer(model, layers, target, shape)
                floor = sizer.kept({n: -(-u // 2) for n, u in sizer.units.items()})
            except (ConfigError, PlanError):  # a cut surgery refuses: the search will say
                floor = None
            # the search's own test (exact: a result within the tolerance but over the target
            # is not what it aims at, and it would refuse it only after every trial)
            if floor is not None and target.slack(floor) > 1.0 + 1e-12:
                raise ConfigError(
                    f"Method '{self.name}' cannot reach the target {target.as_dict()} with its "
                    "over-pruning guard (Kiaee sec. 4.1: never more than half of a layer's "
                    f"filters pruned): half of every regularised layer keeps "
                    f"{ {k: round(v, 4) for k, v in floor.items()} }. Pass "
                    "overprune_guard=False to prune further, or relax the target."
                )
        return engine_calibrate(self, model, data, target)

    def _structure(self) -> tuple[str, str]:
        """The sparsity blocks and the engine's penalty (l1 / l0 of the block norms)."""
        cfg = self.config
        structure = cfg.structure or "kernels"
        penalty = cfg.penalty if structure == "elements" else _GROUP_PENALTY[cfg.penalty]
        return structure, penalty

    def _solve_mu(
        self,
        model: nn.Module,
        loader: Any,
        params: dict[str, torch.Tensor],
        mu: float,
        i: int,
        previous: Any,
    ) -> tuple[Any, dict[str, bool]]:
        """Algorithm 1 lines 5-10 for the ``i``-th mu, warm-started from the previous engine;
        returns the engine and the guard's last decision per layer."""
        from compactnn.solvers.training import ADMMConfig, ADMMEngine, run_admm

        cfg = self.config
        structure, penalty = self._structure()
        lam: Any = mu
        if cfg.mu_scale is not None:
            lam = {p: mu * float(cfg.mu_scale.get(p[: -len(".weight")], 1.0)) for p in params}
        engine = ADMMEngine(
            params,
            ADMMConfig(
                rho=cfg.rho,
                penalty=penalty,
                lam=lam,
                structure=structure,
                eps=cfg.eps,
                stop_rule="both",
                max_outer=cfg.xi,
            ),
        )
        w_step = admm_w_step(
            model,
            loader,
            engine,
            epochs=self._epochs(i),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            seed=lambda k: cfg.seed + 97 * i + k,
            steps_per_epoch=cfg.steps_per_epoch,
        )
        fired: dict[str, bool] = {}
        guard = _overprune_guard(fired) if cfg.overprune_guard else None
        run_admm(engine, w_step, warm_start=previous, after_f_step=guard)
        return engine, fired

    def _epochs(self, i: int) -> int:
        """W-step epochs for the ``i``-th mu: ``min(1 + delta i, delta nu)`` (sec. 4)."""
        from compactnn.solvers.training import kiaee_epochs

        cfg = self.config
        return kiaee_epochs(i, delta=cfg.delta, nu=cfg.nu)

    @staticmethod
    def _fix_structure(
        model: nn.Module, engine: Any, layers: list[str], norms: dict[str, list[str]]
    ) -> dict[str, Any]:
        """Masks of F's non-zero blocks (W <- F on the zero ones, Algorithm 1 line 11). For every
        all-zero filter its bias and the gamma/beta of the BatchNorm reading it are masked too:
        the channel is then exactly 0 (not a constant), so removing it changes nothing."""
        mods = dict(model.named_modules())
        masks = dict(engine.masks())
        for layer in layers:
            rows = nonzero_filters(masks[f"{layer}.weight"])
            if bool(rows.all()):
                continue
            if mods[layer].bias is not None:
                masks[f"{layer}.bias"] = rows.clone()
            for bn in norms.get(layer, []):
                for p in ("weight", "bias"):
                    if getattr(mods[bn], p, None) is not None:
                        masks[f"{bn}.{p}"] = rows.clone()
        apply_masks(model, masks)
        return masks

    def _path_entry(
        self,
        model: nn.Module,
        masks: dict[str, Any],
        data: CompressionData,
        deployed: nn.Module,
        samples: torch.Tensor | None = None,
        reference: nn.Module | None = None,
        **entry: Any,
    ) -> dict[str, Any]:
        """The record of one mu (Kiaee Tables 3-6): zero blocks per layer, sparsity (of the
        masked model), accuracy on the validation split (never on test) of ``deployed``, the
        model this point returns (all-zero filters and dead inputs removed, zero kernels
        deployed), and with ``measure_speed`` its latency at batch 100 and 1 (one thread, on
        ``samples``: ``latency_ms``, ``latency_ms_b1``) and its speed-up over ``reference``
        (the dense start, timed alternately with it: ``speedup``, ``speedup_b1``)."""
        from compactnn.structure import group_dims

        cfg = self.config
        named = dict(model.named_parameters())
        entry.update(zero_blocks={}, blocks={})
        total_w = zero_w = 0
        for n, m in masks.items():
            if not n.endswith(".weight"):
                continue
            w = named[n]
            gd = group_dims(self._structure()[0], w)
            other = tuple(d for d in range(w.dim()) if d not in gd)
            g = m.any(dim=other) if other else m
            entry["zero_blocks"][n[: -len(".weight")]] = int((~g).sum())
            entry["blocks"][n[: -len(".weight")]] = int(g.numel())
            total_w += w.numel()
            zero_w += int((~m).sum())
        entry["sparsity_percent"] = 100.0 * zero_w / max(total_w, 1)
        if cfg.measure_speed and samples is not None:
            entry.update(_timed(deployed, samples, reference))
            entry.setdefault("speedup", 1.0)
            entry.setdefault("speedup_b1", 1.0)
        if data.val is not None:
            entry["val_top1"] = accuracy(
                deployed, data.val, topk=(1,), max_batches=cfg.eval_batches
            )["top1"]
        return entry

    def _deploy(
        self,
        model: nn.Module,
        layers: list[str],
        masks: dict[str, Any],
        data: CompressionData,
        samples: torch.Tensor | None = None,
    ) -> tuple[nn.Module, Any, dict[str, list[int]], dict[str, Any]]:
        """This point's model, with its self-contained plan, the kept filters per layer and the
        kernel deployment record.

        1. Filters whose blocks are all zero are physically removed (``KeepOutputs``).
        2. Input channels whose kernels W_ij are zero for *every* filter of a conv are removed
           (``KeepInputs``; their producers' channels go too when they feed only that conv).
        3. ``deploy_kernels``: every conv still holding zero kernels becomes a
           :class:`~compactnn.layers.KernelSparseConv2d` in the form measured fastest on its
           real input (``samples``; :func:`choose_kernel_forms`), a ``KernelSparse`` action.
        """
        import copy

        from compactnn import surgery
        from compactnn.plan import CompressionPlan, KeepInputs

        keep = {
            layer: kept_filters(masks[f"{layer}.weight"])
            for layer in layers
            if not bool(nonzero_filters(masks[f"{layer}.weight"]).all())
        }
        plan = None
        deployed = copy.deepcopy(model)
        if keep:
            deployed, plan = prune_filters(model, keep, data.input_shape, check=data.check_batch)
        mods = dict(deployed.named_modules())
        dead_in = []
        for layer in layers:
            m = mods[layer]
            if not isinstance(m, nn.Conv2d) or m.groups != 1:
                continue
            used = m.weight.detach().ne(0).any(dim=(0, 2, 3))
            if 0 < int(used.sum()) < used.numel():
                dead_in.append(KeepInputs(layer=layer, keep=tuple(int(i) for i in used.nonzero())))
        meta = {"input_shape": list(data.input_shape)}
        if dead_in:
            deployed = surgery.apply(
                CompressionPlan(actions=dead_in, meta=meta), deployed, check_inputs=data.check_batch
            )
            base = plan.actions if plan is not None else []
            plan = CompressionPlan(actions=[*base, *dead_in], meta=meta)
        kernel_record: dict[str, Any] = {}
        cfg = self.config
        if cfg.deploy_kernels and samples is not None and _kernel_sparse_convs(deployed, layers):
            from compactnn import distributed

            # timed on each rank: every rank deploys rank 0's choice (same forms, same plan)
            actions, kernel_record = distributed.broadcast_object(
                choose_kernel_forms(deployed, layers, samples)
            )
            deployed = surgery.apply(CompressionPlan(actions=actions, meta=meta), deployed)
            base = plan.actions if plan is not None else []
            plan = CompressionPlan(actions=[*base, *actions], meta=meta)
        return deployed, replay_plan(plan, deployed, data.input_shape), keep, kernel_record

    def _result(
        self,
        model: nn.Module,
        deployed: nn.Module,
        plan: Any,
        keep: dict[str, list[int]],
        path: list[dict[str, Any]],
        plans: list[Any],
    ) -> CompressionResult:
        mods = dict(model.named_modules())
        return CompressionResult(
            model=deployed,
            plan=plan,
            method=self.name,
            config=self.config,
            history={
                "path": path,
                "path_plans": plans,
                "nonzero_params": sum(int((p != 0).sum()) for p in deployed.parameters()),
                "removed_filters": {k: len(mods[k].weight) - len(v) for k, v in keep.items()},
                "mu_path": list(self.config.mu_path()),
            },
        )

    def _finetune_epochs(self, i: int) -> int:
        """Fine-tuning epochs after the ``i``-th mu: ``finetune_epochs``, or the W-step
        schedule ``min(1 + delta i, delta nu)`` when it is ``None`` (sec. 4)."""
        cfg = self.config
        return self._epochs(i) if cfg.finetune_epochs is None else cfg.finetune_epochs

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        if cfg.budget is not None:

            def finetune(m: nn.Module) -> None:
                ft = cfg.finetune_epochs or 0
                if ft > 0:
                    finetune_model(m, loader, epochs=ft, lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, seed=cfg.seed + 50_000,
                                   steps_per_epoch=cfg.steps_per_epoch)  # fmt: skip

            return budgeted_run(self, model, data, layers, finetune=finetune, progress=progress)
        mods = dict(model.named_modules())
        params = {f"{n}.weight": mods[n].weight for n in layers}
        norms = following_norms(model, layers, shape)
        samples = _samples(data, shape)
        # the path's first point: the dense start, mu = 0 (the paper's baseline row)
        masks: dict[str, Any] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        deployed, plan, keep, kd = self._deploy(model, layers, masks, data, samples)
        start = dict(mu=0.0, admm_iterations=0, epochs=0, guard={}, seconds=0.0, kernel_deploy=kd)
        path = [self._path_entry(model, masks, data, deployed, samples, **start)]
        plans = [plan]
        reference = deployed  # the dense start: every point is timed against it
        engine: Any = None
        store, start = resume.current(), 0
        if store is not None and (ckpt := store.load("admm-sparse mu path")) is not None:
            engine, masks, path, done_plans, start = self._restore(model, store, ckpt)
            plans = plans[:1] + done_plans  # the dense start is recomputed, the rest loaded
            deployed, plan, keep, _ = self._deploy(model, layers, masks, data, samples)
        for i, mu in enumerate(
            tqdm(cfg.mu_path(), desc="ADMM-sparse mu path", disable=not progress)
        ):
            if i < start:
                continue
            t0 = time.perf_counter()
            engine, fired = self._solve_mu(model, loader, params, mu, i, engine)
            masks = self._fix_structure(model, engine, layers, norms)
            ft = self._finetune_epochs(i)
            if ft > 0:
                finetune_model(
                    model,
                    loader,
                    epochs=ft,
                    lr=cfg.lr,
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                    seed=cfg.seed + 97 * i + 50_000,  # distinct from the W-step seeds
                    steps_per_epoch=cfg.steps_per_epoch,
                    schedule="constant",
                    masks=masks,
                )
            deployed, plan, keep, kd = self._deploy(model, layers, masks, data, samples)
            k = engine.state.k
            entry = dict(mu=mu, admm_iterations=k, epochs=self._epochs(i) * k + ft)
            entry["guard"] = {n: True for n, v in fired.items() if v}
            entry["seconds"] = time.perf_counter() - t0
            entry["kernel_deploy"] = kd
            path.append(self._path_entry(model, masks, data, deployed, samples, reference, **entry))
            plans.append(plan)
            if store is not None:
                self._checkpoint(store, model, engine, masks, path, plans, i + 1)
        return self._result(model, deployed, plan, keep, path, plans)

    @staticmethod
    def _checkpoint(
        store: Any, model: nn.Module, engine: Any, masks: dict[str, Any], path: list[Any],
        plans: list[Any], done: int,
    ) -> None:  # fmt: skip
        """After the ``done``-th mu: the weights, F and Y (the next mu's warm start), the
        masks, the path records and this point's plan (its own files, written first)."""
        plan_key = f"admm-sparse plan {done}"
        store.save_plan(plan_key, plans[-1])
        tensors = {**resume.model_state(model), **resume.rng_state()[0]}
        tensors.update({f"F.{n}": t for n, t in engine.state.F.items()})
        tensors.update({f"Y.{n}": t for n, t in engine.state.Y.items()})
        tensors.update({f"masks.{n}": m for n, m in masks.items()})
        meta = {"next": done, "path": path, "rng": resume.rng_state()[1]}
        store.save("admm-sparse mu path", tensors, meta)

    @staticmethod
    def _restore(model: nn.Module, store: Any, ckpt: Any) -> tuple[Any, ...]:
        """What :meth:`_checkpoint` saved: ``(warm start, masks, path, plans, next mu)``."""
        from compactnn.solvers.training import ADMMState

        tensors, meta = ckpt
        resume.load_model_state(model, tensors)
        resume.set_rng_state(tensors, meta["rng"])

        def part(prefix: str) -> dict[str, Any]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        f, y = part("F."), part("Y.")
        state = ADMMState(F=f, Y=y, F_hat=dict(f), Y_hat=dict(y), F_prev=dict(f), Y_prev=dict(y))
        done = int(meta["next"])
        plans = [store.load_plan(f"admm-sparse plan {i}") for i in range(1, done + 1)]
        return state, part("masks."), meta["path"], plans, done
