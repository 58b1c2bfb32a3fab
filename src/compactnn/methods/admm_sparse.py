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

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from compactnn import distributed, resume, surgery
from compactnn.errors import ConfigError, PlanError
from compactnn.graph import example_input_for
from compactnn.methods._admm_sparse_config import _GROUP_PENALTY, ADMMSparseConfig
from compactnn.methods._calibrate import _CountSizer
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
    EngineMethod,
    EngineSettings,
    engine_settings_of,
)
from compactnn.methods._kernel_forms import (
    _kernel_sparse_convs,
    _samples,
    _timed,
    choose_kernel_forms,
)
from compactnn.methods.base import CompressionData, CompressionResult, Method
from compactnn.metrics import _run_hooked, accuracy
from compactnn.plan import CompressionPlan, KeepInputs
from compactnn.prox import group_norms
from compactnn.solvers import training  # module attribute: looked up at call time (tests patch it)
from compactnn.solvers.training import ADMMConfig, ADMMEngine, ADMMState, kiaee_epochs
from compactnn.structure import group_dims
from compactnn.train import apply_masks

__all__ = ["ADMMSparse", "ADMMSparseConfig"]


def guarded_threshold(v: torch.Tensor, gd: tuple[int, ...], soft: bool) -> torch.Tensor:
    """Kiaee sec. 4.1's F-step for an over-pruned layer, as the paper means it.

    The threshold becomes the mean block norm t of V (the paper's rule); when even t would
    prune more than half of the blocks, it is lowered so that exactly the ``floor(N/2)``
    smallest blocks (ties: lowest index) are pruned: never more than 50 % of the layer's
    blocks. Hard threshold (l0, eq. 10) keeps the other blocks as they are; soft (l1, eq. 9)
    shrinks them by the threshold (``(1 - t/||V_ij||) V_ij``).
    """

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

    mods = dict(model.named_modules())
    norms = {n: m for n, m in mods.items() if isinstance(m, nn.modules.batchnorm._NormBase)}
    outs: dict[int, tuple[torch.Tensor, str]] = {}  # the tensor is kept alive: ids stay unique
    found: dict[str, list[str]] = {n: [] for n in layers}
    x = example_input_for(model, input_shape)
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
    _run_hooked(model, handles, x)
    return found


class ADMMSparse(EngineMethod[ADMMSparseConfig]):
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
        return engine_settings_of(
            cfg,
            "l20" if cfg.penalty == "l0" else "l21",
            min_keep_fraction=0.5 if cfg.overprune_guard else 0.0,
        )

    def proxy(self) -> Method:
        return self.with_options(finetune_epochs=0, measure_speed=False)

    def default_layers(self, model: nn.Module, shape: Any, *, coupled: bool) -> list[str]:
        """The paper's regularised layers (:func:`kiaee_layers`)."""
        return kiaee_layers(model, shape, coupled=coupled)

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """No search: the target becomes the budget of one engine run (:meth:`run`), after an
        up-front check: with the over-pruning guard (sec. 4.1) no layer loses more than half of its filters, so a
        target under the size of the model cut to ``ceil(n / 2)`` filters per regularised
        layer is refused before any training, with what to do."""
        cfg = self.config
        if cfg.overprune_guard and cfg.structure in (None, "filters"):
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
        return super().calibrate(model, data, target, progress=progress)

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
            **cfg.sgd(),
            seed=lambda k: cfg.seed + 97 * i + k,
            steps_per_epoch=cfg.steps_per_epoch,
        )
        fired: dict[str, bool] = {}
        guard = _overprune_guard(fired) if cfg.overprune_guard else None
        training.run_admm(engine, w_step, warm_start=previous, after_f_step=guard)
        return engine, fired

    def _epochs(self, i: int) -> int:
        """W-step epochs for the ``i``-th mu: ``min(1 + delta i, delta nu)`` (sec. 4)."""

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

    def engine_finetune(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> Callable[[nn.Module], None]:
        cfg = self.config
        loader = data.require_train(self.name)

        def finetune(m: nn.Module) -> None:
            ft = cfg.finetune_epochs or 0
            if ft > 0:
                finetune_model(m, loader, epochs=ft, seed=cfg.seed + 50_000,
                               steps_per_epoch=cfg.steps_per_epoch, **cfg.sgd())  # fmt: skip

        return finetune

    def run_paper(
        self, model: nn.Module, data: CompressionData, layers: list[str], *, progress: bool
    ) -> CompressionResult:
        """Algorithm 1 along the μ path: ADMM at each μ, the masked fine-tuning, every point
        deployed (and timed); the last point is the result."""
        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
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
                    **cfg.sgd(),
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
