"""ADMM sparse CNN (Kiaee et al. 2016): l0 / l1 on filter blocks W_ij along a mu path.

For every mu of an increasing log-spaced path (warm-started from the previous mu), all layers
at once (Algorithm 1)::

    min_W  L_net(W) + mu f(F)   s.t.  W = F ,   f = sum_ij ||F_ij||_F (l1, eq. 9)
                                                 or #{ij : F_ij != 0}   (l0, eq. 10)

W-step: SGD epochs on ``L_net(W) + rho/2 ||W - F + Gamma/rho||^2`` (eq. 7); F-step: block soft
(eq. 9, a = mu/rho) or hard (eq. 10, b = sqrt(2 mu/rho)) thresholding; dual step (eq. 6); stop when
``||W - F||_F`` and ``||F_k - F_{k-1}||_F`` are both <= eps or after xi iterations. Over-pruning
guard (sec. 4.1): if a layer would lose more than 50 % of its blocks, its threshold becomes the
mean block norm. Then the identified structure is fixed and the network fine-tuned (masked).
Epoch schedule (sec. 4): ``min(1 + delta*i, delta*nu)`` W-step epochs for the i-th mu.

The result model is the one at the last mu, with filters whose blocks are *all* zero physically
removed and the remaining zero blocks held at zero; ``history["path"]`` holds, for every mu,
accuracy, sparsity, zero blocks per layer and epochs (Kiaee Tables 3-6).

References:
    Kiaee, Gagne, Abbasi, "Alternating Direction Method of Multipliers for Sparse Convolutional
    Neural Networks", 2016: eqs. (1)-(10), Algorithm 1, sec. 4 (lr 1e-3, batch 128, delta = 1,
    nu = 15, xi = 10, 50 % guard).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn._validation import (
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_names,
    check_per_layer,
    rule,
    validate_options,
)
from compactnn.budget import Strength
from compactnn.errors import ConfigError
from compactnn.methods._common import (
    admm_w_step,
    finetune_model,
    kept_filters,
    nonzero_filters,
    prunable_layers,
    prune_filters,
    replay_plan,
)
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


_POSITIVE = {"min_value": 0.0, "min_inclusive": False}


@dataclass(frozen=True)
class ADMMSparseConfig(MethodConfig):
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
        finetune_epochs: masked fine-tuning epochs after each μ (Algorithm 1 line 11).
        overprune_guard: apply the 50 % guard of sec. 4.1.
        layers: regularised layers (default: all Conv2d/Linear but the classifier).
        eval_batches: validation batches used for the accuracy of each μ (None = all).
        seed: seeds SGD (int >= 0).
        mu_scale: per-layer multipliers of μ (dict layer -> float > 0; None = 1 everywhere).
            A budget search sets them from each layer's median block norm so that one global
            μ acts alike on every layer.
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
    finetune_epochs: int = 1
    overprune_guard: bool = True
    layers: tuple[str, ...] | None = None
    eval_batches: int | None = None
    seed: int = 0
    mu_scale: Any = None

    owner: ClassVar[str] = "ADMM-sparse"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            "penalty": rule(check_choice, choices=tuple(_GROUP_PENALTY)),
            "structure": rule(
                check_choice, optional=True, choices=("kernels", "filters", "elements")
            ),
            "mus": rule(_check_mus, optional=True),
            "mu_min": rule(check_float, **_POSITIVE),
            "mu_max": rule(check_float, **_POSITIVE),
            "n_mu": rule(check_int, min_value=1),
            "rho": rule(check_float, **_POSITIVE),
            "eps": rule(check_float, **_POSITIVE),
            "xi": rule(check_int, min_value=1),
            "delta": rule(check_int, min_value=1),
            "nu": rule(check_int, min_value=1),
            "steps_per_epoch": rule(check_int, optional=True, min_value=1),
            "lr": rule(check_float, **_POSITIVE),
            "momentum": rule(check_float, min_value=0.0, max_value=1.0),
            "weight_decay": rule(check_float, min_value=0.0),
            "finetune_epochs": rule(check_int, min_value=0),
            "overprune_guard": rule(check_bool),
            "layers": rule(check_names, optional=True),
            "eval_batches": rule(check_int, optional=True, min_value=1),
            "seed": rule(check_int, min_value=0),
            "mu_scale": rule(check_per_layer, optional=True, forms=("dict",), **_POSITIVE),
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


def _overprune_guard(fired: dict[str, bool]) -> Callable[[Any], None]:
    """Kiaee sec. 4.1 as an ``after_f_step`` hook of the driver: when the F-step zeroes more
    than 50 % of a layer's blocks, that layer's F keeps instead the blocks of V = W + Y/rho
    whose norm is above the mean block norm. ``fired[layer weight]`` records each decision."""
    from compactnn.prox import group_norms

    def guard(engine: Any) -> None:
        for n in engine.params:
            gd = engine.group_dims[n]
            if float((group_norms(engine.state.F[n], gd) == 0).float().mean()) <= 0.5:
                fired[n] = False
                continue
            v = engine.prox_input(n)
            vn = group_norms(v, gd)
            keep = (vn > vn.mean()).to(v.dtype)
            shape = [v.shape[d] if d in gd else 1 for d in range(v.dim())]
            engine.set_f(n, v * keep.reshape(shape))
            fired[n] = True

    return guard


class ADMMSparse(Method):
    """Kiaee et al.'s ADMM sparse CNN along an increasing mu path."""

    name = "admm-sparse"
    Config = ADMMSparseConfig
    description = "ADMM sparse CNN (Kiaee et al. 2016): l0/l1 on filter blocks W_ij, mu path"

    # ------------------------------------------------------------------ budget
    def strength(self) -> Strength:
        """Global s: the F-step threshold is ``s x`` the layer's median block norm.

        l0 (eq. 10) zeroes blocks below ``b = sqrt(2 mu / rho)``, so ``mu_l = rho/2 (s m_l)^2``;
        l1 (eq. 9) shrinks by ``a = mu / rho``, so ``mu_l = rho s m_l`` (``m_l``: median norm).
        Under a params / MACs target the blocks are whole filters (``structure="filters"``):
        zero kernels W_ij are stored densely, so only removed filters make the model smaller.
        """
        return Strength("mu scale (threshold / median block norm)", 0.5, 1.5, bound_lo=1e-3)

    def at_strength(self, s: float, model: nn.Module, data: CompressionData) -> Method:
        from compactnn.methods._calibrate import layer_scales

        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
        if cfg.structure not in (None, "filters"):
            raise ConfigError(
                f"ADMM-sparse with structure='{cfg.structure}' keeps its zero blocks stored "
                "densely, so a params/MACs target cannot be met by it: pass "
                "structure='filters' with target=, or set mus= without a target."
            )
        layers = (
            list(cfg.layers) if cfg.layers is not None else prunable_layers(model, data.input_shape)
        )
        m = layer_scales(model, layers)
        if cfg.penalty == "l0":
            scale = {n: 0.5 * cfg.rho * (float(s) * m[n]) ** 2 for n in layers}
        else:
            scale = {n: cfg.rho * float(s) * m[n] for n in layers}
        return self.with_options(
            mus=(1.0,), mu_scale=scale, layers=tuple(layers), structure="filters"
        )

    def proxy(self) -> Method:
        return self.with_options(finetune_epochs=0)

    def _structure(self) -> tuple[str, str]:
        """The sparsity blocks and the engine's penalty (l1 / l0 of the block norms)."""
        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
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

        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
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

        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
        return kiaee_epochs(i, delta=cfg.delta, nu=cfg.nu)

    @staticmethod
    def _fix_structure(model: nn.Module, engine: Any, layers: list[str]) -> dict[str, Any]:
        """Masks of F's non-zero blocks (W <- F on the zero ones, Algorithm 1 line 11), with
        the bias of every all-zero filter masked too: otherwise it outputs a constant channel
        and removing it would change the function."""
        mods = dict(model.named_modules())
        masks = dict(engine.masks())
        for layer in layers:
            rows = nonzero_filters(masks[f"{layer}.weight"])
            if mods[layer].bias is not None and not bool(rows.all()):
                masks[f"{layer}.bias"] = rows.clone()
        apply_masks(model, masks)
        return masks

    def _path_entry(
        self, model: nn.Module, masks: dict[str, Any], data: CompressionData, **entry: Any
    ) -> dict[str, Any]:
        """The record of one mu (Kiaee Tables 3-6): zero blocks per layer, sparsity, accuracy
        on the validation split (never on test)."""
        from compactnn.structure import group_dims

        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
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
        if data.val is not None:
            entry["val_top1"] = accuracy(model, data.val, topk=(1,), max_batches=cfg.eval_batches)[
                "top1"
            ]
        return entry

    def _result(
        self,
        model: nn.Module,
        layers: list[str],
        masks: dict[str, Any],
        path: list[dict[str, Any]],
        data: CompressionData,
    ) -> CompressionResult:
        """Filters whose blocks are all zero physically removed; the rest stays masked."""
        keep = {
            layer: kept_filters(masks[f"{layer}.weight"])
            for layer in layers
            if not bool(nonzero_filters(masks[f"{layer}.weight"]).all())
        }
        plan = None
        result_model = model
        if keep:
            result_model, plan = prune_filters(model, keep, data.input_shape)
        mods = dict(model.named_modules())
        return CompressionResult(
            model=result_model,
            plan=replay_plan(plan, result_model, data.input_shape),
            method=self.name,
            config=self.config,
            history={
                "path": path,
                "nonzero_params": sum(int((p != 0).sum()) for p in result_model.parameters()),
                "removed_filters": {k: len(mods[k].weight) - len(v) for k, v in keep.items()},
                "mu_path": list(self.config.mu_path()),  # type: ignore[attr-defined]
            },
        )

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = list(cfg.layers) if cfg.layers is not None else prunable_layers(model, shape)
        self._check_layers(model, layers)
        mods = dict(model.named_modules())
        params = {f"{n}.weight": mods[n].weight for n in layers}
        path: list[dict[str, Any]] = []
        masks: dict[str, Any] = {}
        engine = None
        mus = cfg.mu_path()
        for i, mu in enumerate(tqdm(mus, desc="ADMM-sparse mu path", disable=not progress)):
            t0 = time.perf_counter()
            engine, fired = self._solve_mu(model, loader, params, mu, i, engine)
            masks = self._fix_structure(model, engine, layers)
            if cfg.finetune_epochs > 0:
                finetune_model(
                    model,
                    loader,
                    epochs=cfg.finetune_epochs,
                    lr=cfg.lr,
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                    seed=cfg.seed + 97 * i + 50_000,  # distinct from the W-step seeds
                    steps_per_epoch=cfg.steps_per_epoch,
                    schedule="constant",
                    masks=masks,
                )
            k = engine.state.k
            entry = dict(mu=mu, admm_iterations=k, epochs=self._epochs(i) * k + cfg.finetune_epochs)
            entry["guard"] = {n: True for n, v in fired.items() if v}
            entry["seconds"] = time.perf_counter() - t0
            path.append(self._path_entry(model, masks, data, **entry))
        return self._result(model, layers, masks, path, data)
