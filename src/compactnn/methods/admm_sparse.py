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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn._validation import check_choice, check_float, check_int
from compactnn.errors import ConfigError
from compactnn.methods._common import prunable_layers, prune_filters, replay_plan
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig
from compactnn.metrics import accuracy
from compactnn.train import TrainConfig, apply_masks, train

__all__ = ["ADMMSparse", "ADMMSparseConfig"]

_GROUP_PENALTY = {"l1": "l21", "l0": "l20"}  # l1 / l0 of the block norms = group penalties


@dataclass(frozen=True)
class ADMMSparseConfig(MethodConfig):
    """Hyper-parameters of ADMM-sparse.

    Attributes:
        penalty: ``"l0"`` (hard threshold, eq. 10) or ``"l1"`` (soft threshold, eq. 9).
        structure: sparsity block: ``"kernels"`` (W_ij, the paper's choice), ``"filters"``
            or ``"elements"``.
        mus: the mu path (increasing). Default: ``n_mu`` log-spaced values in
            ``[mu_min, mu_max]``.
        mu_min, mu_max, n_mu: the default log-spaced path.
        rho: rho of the augmented Lagrangian.
        eps: stopping threshold on ||W - F||_F and ||F_k - F_{k-1}||_F.
        xi: at most this many ADMM iterations per mu.
        delta, nu: epoch schedule (epochs per W-step = min(1 + delta*i, delta*nu)).
        steps_per_epoch: cap on SGD steps per "epoch" (CPU-scale runs; None = whole loader).
        lr, momentum, weight_decay: SGD of the W-step and of the fine-tuning (paper lr 1e-3).
        finetune_epochs: masked fine-tuning epochs after each mu.
        overprune_guard: apply the 50 % guard.
        layers: regularised layers (default: all Conv2d/Linear but the classifier).
        eval_batches: test batches used for the accuracy of each mu (None = all).
        seed: seeds SGD.
    """

    penalty: str = "l0"
    structure: str = "kernels"
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

    def __post_init__(self) -> None:
        check_choice(self.penalty, "penalty", "ADMM-sparse", tuple(_GROUP_PENALTY))
        check_choice(self.structure, "structure", "ADMM-sparse", ("kernels", "filters", "elements"))
        check_float(self.rho, "rho", "ADMM-sparse", min_value=0.0, min_inclusive=False)
        check_float(self.eps, "eps", "ADMM-sparse", min_value=0.0, min_inclusive=False)
        check_int(self.xi, "xi", "ADMM-sparse", min_value=1)
        check_int(self.delta, "delta", "ADMM-sparse", min_value=1)
        check_int(self.nu, "nu", "ADMM-sparse", min_value=1)
        check_int(self.finetune_epochs, "finetune_epochs", "ADMM-sparse", min_value=0)
        if self.steps_per_epoch is not None:
            check_int(self.steps_per_epoch, "steps_per_epoch", "ADMM-sparse", min_value=1)
        if self.mus is None:
            check_float(self.mu_min, "mu_min", "ADMM-sparse", min_value=0.0, min_inclusive=False)
            check_float(self.mu_max, "mu_max", "ADMM-sparse", min_value=self.mu_min)
            check_int(self.n_mu, "n_mu", "ADMM-sparse", min_value=1)
        else:
            mus = tuple(float(m) for m in self.mus)
            for i, m in enumerate(mus):
                check_float(m, f"mus[{i}]", "ADMM-sparse", min_value=0.0)
            if not mus or any(b < a for a, b in zip(mus, mus[1:])):
                raise ConfigError(
                    "The 'mus' parameter of ADMM-sparse must be a non-empty increasing sequence "
                    f"of floats >= 0. Got {list(mus)} instead."
                )
            object.__setattr__(self, "mus", mus)

    def mu_path(self) -> tuple[float, ...]:
        from compactnn.solvers.training.schedule import log_schedule

        return (
            self.mus if self.mus is not None else log_schedule(self.mu_min, self.mu_max, self.n_mu)
        )


def _guard(engine: Any, rho: float) -> dict[str, bool]:
    """Kiaee sec. 4.1: > 50 % of a layer's blocks pruned -> threshold at the mean block norm."""
    from compactnn.prox import group_norms

    st = engine.state
    fired: dict[str, bool] = {}
    for n, p in engine.params.items():
        gd = engine.group_dims[n]
        fn = group_norms(st.F[n], gd)
        if float((fn == 0).float().mean()) <= 0.5:
            fired[n] = False
            continue
        v = p.detach() + st.Y_hat[n] / rho
        vn = group_norms(v, gd)
        keep = (vn > vn.mean()).to(v.dtype)
        shape = [v.shape[d] if d in gd else 1 for d in range(v.dim())]
        f_new = v * keep.reshape(shape)
        st.F[n] = f_new
        st.F_hat[n] = f_new
        fired[n] = True
    return fired


class ADMMSparse(Method):
    """Kiaee et al.'s ADMM sparse CNN along an increasing mu path."""

    name = "admm-sparse"
    Config = ADMMSparseConfig
    description = "ADMM sparse CNN (Kiaee et al. 2016): l0/l1 on filter blocks W_ij, mu path"

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        from compactnn.solvers.training import ADMMConfig, ADMMEngine
        from compactnn.structure import group_dims

        cfg: ADMMSparseConfig = self.config  # type: ignore[assignment]
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = list(cfg.layers) if cfg.layers is not None else prunable_layers(model, shape)
        self._check_layers(model, layers)
        mods = dict(model.named_modules())
        params = {f"{n}.weight": mods[n].weight for n in layers}
        penalty = _GROUP_PENALTY[cfg.penalty]
        if cfg.structure == "elements":
            penalty = cfg.penalty
        path: list[dict[str, Any]] = []
        masks: dict[str, torch.Tensor] = {}
        engine = None
        for i, mu in enumerate(
            tqdm(cfg.mu_path(), desc="ADMM-sparse mu path", disable=not progress)
        ):
            t0 = time.perf_counter()
            acfg = ADMMConfig(
                rho=cfg.rho,
                penalty=penalty,
                lam=mu,
                structure=cfg.structure,
                eps=cfg.eps,
                stop_rule="both",
                max_outer=cfg.xi,
            )
            new = ADMMEngine(params, acfg)
            if engine is not None:  # warm start: keep F and the duals of the previous mu
                new.state.F, new.state.F_hat = dict(engine.state.F), dict(engine.state.F)
                new.state.Y, new.state.Y_hat = dict(engine.state.Y), dict(engine.state.Y)
            engine = new
            epochs = min(1 + cfg.delta * i, cfg.delta * cfg.nu)
            guard_fired: dict[str, bool] = {}
            for k in range(cfg.xi):
                train(
                    model,
                    loader,
                    config=TrainConfig(
                        epochs=epochs,
                        lr=cfg.lr,
                        momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay,
                        schedule="constant",
                        seed=cfg.seed + 97 * i + k,
                        max_steps_per_epoch=cfg.steps_per_epoch,
                    ),
                    extra_loss=engine.penalty_loss,
                    progress=False,
                )
                engine.f_step()
                if cfg.overprune_guard:
                    guard_fired = _guard(engine, cfg.rho)
                engine.dual_step()
                if engine.converged():
                    break
            # fix the identified structure: W <- F on zero blocks, masks held during fine-tuning
            masks = dict(engine.masks())
            # a filter whose blocks are all zero must also lose its bias: otherwise it outputs a
            # constant channel and removing it (below) would change the function
            for layer in layers:
                m = masks[f"{layer}.weight"]
                rows = m.reshape(m.shape[0], -1).any(dim=1)
                if mods[layer].bias is not None and not bool(rows.all()):
                    masks[f"{layer}.bias"] = rows.clone()
            named = dict(model.named_parameters())
            apply_masks(model, masks)
            if cfg.finetune_epochs > 0:
                train(
                    model,
                    loader,
                    config=TrainConfig(
                        epochs=cfg.finetune_epochs,
                        lr=cfg.lr,
                        momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay,
                        schedule="constant",
                        seed=cfg.seed + 97 * i + 50_000,  # distinct from the W-step seeds
                        max_steps_per_epoch=cfg.steps_per_epoch,
                    ),
                    masks=masks,
                    progress=False,
                )
            entry: dict[str, Any] = {
                "mu": mu,
                "admm_iterations": engine.state.k,
                "epochs": epochs * engine.state.k + cfg.finetune_epochs,
                "guard": {k: v for k, v in guard_fired.items() if v},
                "seconds": time.perf_counter() - t0,
                "zero_blocks": {},
                "blocks": {},
            }
            total_w = zero_w = 0
            for n, m in masks.items():
                if not n.endswith(".weight"):
                    continue
                w = named[n]
                gd = group_dims(cfg.structure, w)
                other = tuple(d for d in range(w.dim()) if d not in gd)
                g = m.any(dim=other) if other else m
                entry["zero_blocks"][n[: -len(".weight")]] = int((~g).sum())
                entry["blocks"][n[: -len(".weight")]] = int(g.numel())
                total_w += w.numel()
                zero_w += int((~m).sum())
            entry["sparsity_percent"] = 100.0 * zero_w / max(total_w, 1)
            if data.test is not None:
                entry["top1"] = accuracy(model, data.test, topk=(1,), max_batches=cfg.eval_batches)[
                    "top1"
                ]
            path.append(entry)
        # physical removal of filters whose blocks are all zero; the rest stays masked (dense)
        keep: dict[str, list[int]] = {}
        for layer in layers:
            m = masks[f"{layer}.weight"]
            rows = m.reshape(m.shape[0], -1).any(dim=1)
            if not bool(rows.all()):
                idx = [int(j) for j in torch.nonzero(rows).flatten()]
                keep[layer] = idx or [0]
        plan = None
        result_model = model
        if keep:
            result_model, plan = prune_filters(model, keep, data.input_shape)
        nonzero = sum(int((p != 0).sum()) for p in result_model.parameters())
        return CompressionResult(
            model=result_model,
            plan=replay_plan(plan, result_model, data.input_shape),
            method=self.name,
            config=cfg,
            history={
                "path": path,
                "nonzero_params": nonzero,
                "removed_filters": {
                    k: len(dict(model.named_modules())[k].weight) - len(v) for k, v in keep.items()
                },
                "mu_path": list(cfg.mu_path()),
            },
        )
