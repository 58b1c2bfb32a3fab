"""The budgeted engine's run: :func:`run_engine` and its settings (:class:`EngineSettings`).

One joint run of all layers to an exact budget, as named steps of :class:`_Run`: the setup (groups,
cost model, reachability check, scales), then per optimizer step the forward step
(:meth:`_Run.train_step`), during the annealing the backward step, projection and cuts
(:meth:`_Run.anneal_step`), the evaluations and the settling stop test (:meth:`_Run.evaluate`),
and the result (:meth:`_Run.finish`). The method is described in :mod:`compactnn.methods._engine`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from compactnn import _progress
from compactnn.budget import Target
from compactnn.errors import ConfigError
from compactnn.methods._common import prune_filters
from compactnn.methods._engine_alloc import _ALLOCATE, ALLOCATIONS, Allocation, _final_selection
from compactnn.methods._engine_cost import CostModel, _Group, _groups, _rows
from compactnn.metrics import accuracy
from compactnn.prox import group_hard_threshold, group_soft_threshold
from compactnn.structure import module_device
from compactnn.train import _seeded

_PENALTIES = ("l21", "l20")


@dataclass(frozen=True)
class EngineSettings:
    """What a method hands the engine (its own options mapped; see the module docstring).

    Attributes:
        penalty: the method's structured penalty on a unit's row: ``"l21"`` (group soft
            threshold) or ``"l20"`` (group hard threshold).
        steps: at most this many optimizer steps in all (annealing + settling).
        anneal_steps: steps over which the budget goes from the full model to the target.
        project_every: steps between two projections (F-steps).
        cut_every: steps between two physical cuts of units whose structure row is zero.
        eval_every: steps between two validation evaluations (progress, settling test).
        patience: settling ends after this many evaluations without a better validation top-1.
        lr, momentum, weight_decay: SGD of the W-step.
        share: the kept units take the prox too, at ``share`` times the dropped units'
            strength (0: only the dropped units are shrunk).
        with_bias: a unit's row holds its bias too (PGT's neuron: weights and bias, supplement
            sec. 3); otherwise weights only (SSR's filter, Kiaee's blocks).
        score: a unit's value in the knapsack: ``"penalty"`` (its share of its layer's l2
            penalty) or ``"taylor"`` (first-order Taylor, from the run's own gradients).
        allocation: how many units each group keeps at a budget: ``"knapsack"`` (greedy over
            all units by value per unit cost, :func:`knapsack`) or ``"uniform"`` (the same kept
            fraction in every group, grown into what it leaves of the budget,
            :func:`uniform_allocation`); either way the units kept inside a group are the ones
            of highest score.
        dual_rate: step of the dual ascent of the shrinkage strength (log scale, per projection).
        min_keep: never keep fewer units than this in a group.
        min_keep_fraction: nor fewer than this fraction of its units (rounded up; e.g. 0.5 for
            Kiaee's over-pruning guard).
        val_batches: validation batches per evaluation (the first ones, always the same).
        distill: weight α in [0, 1] of distillation from the input model during the run:
            loss = (1 - α) CE + α KL(teacher || student) (temperature 1); 0 = cross-entropy.
        round_to: every group keeps a multiple of this many units, fewer than it, or all of
            its units (:func:`compactnn.budget.aligned_down`); 1: any count.
        seed: seeds the batch order.
    """

    penalty: str = "l21"
    steps: int = 1500
    anneal_steps: int = 800
    project_every: int = 10
    cut_every: int = 50
    eval_every: int = 50
    patience: int = 3
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dual_rate: float = 0.3
    share: float = 0.0
    score: str = "penalty"
    allocation: str = "knapsack"
    with_bias: bool = False
    min_keep: int = 1
    min_keep_fraction: float = 0.0
    val_batches: int = 20
    distill: float = 0.0
    round_to: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(
                f"The engine's allocation must be one of {ALLOCATIONS}. Got "
                f"{self.allocation!r} instead."
            )
        if self.score not in ("penalty", "taylor"):
            raise ConfigError(
                f"The engine's score must be 'penalty' or 'taylor'. Got {self.score!r} instead."
            )
        if self.penalty not in _PENALTIES:
            raise ConfigError(
                f"The budgeted engine takes a structured penalty {_PENALTIES}; got "
                f"{self.penalty!r}. Unstructured penalties (l1) keep the λ protocol: pass the "
                "method's strength options instead of a target."
            )
        for name in ("steps", "anneal_steps", "project_every", "cut_every", "eval_every",
                     "round_to"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(
                    f"The engine option '{name}' must be an int >= 1. Got {v!r} instead."
                )
        if self.anneal_steps > self.steps:
            raise ConfigError(
                f"The engine's anneal_steps ({self.anneal_steps}) must not exceed its steps "
                f"({self.steps}): the budget must reach the target within the run."
            )


@dataclass
class EngineRun:
    """What :func:`run_engine` returns: the trained, physically cut model, the original indices
    kept per group (``keep``, on the *input* model), and the trajectory."""

    model: nn.Module
    keep: dict[str, list[int]]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _batches(loader: Any, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    epoch = 0
    while True:
        got = False
        for b in _seeded(loader, seed + epoch):
            got = True
            yield b[0], b[1]
        if not got:
            raise ConfigError("The training loader yielded no batch: the engine needs data.")
        epoch += 1


def _budget_at(target: Target, t: int, anneal: int) -> dict[str, float]:
    warm = anneal // 10  # the first tenth: scores accumulate, nothing is dropped
    frac = min(1.0, max(0, t - warm) / max(1, anneal - warm))
    return {k: v + (1.0 - v) * (1.0 - frac) ** 3 for k, v in target.as_dict().items()}


def _fmt(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.2f} %" for k, v in d.items())


class _Run:
    """One engine run's state and its named steps: the model (trained and cut in place), its
    coupling groups and cost model, the kept masks, Taylor scores and shrinkage strength, the
    optimizer, the evaluations and the trajectory."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        train_loader: Any,
        val_loader: Any,
        target: Target,
        input_shape: Sequence[int],
        settings: EngineSettings,
        *,
        check_batch: Any,
        progress: bool,
        label: str,
    ) -> None:
        """The setup: groups, cost model (the target checked reachable on it before any
        training), row scales, validation batches, optimizer, teacher and batch stream."""
        st = self.st = settings
        self.t_start = time.perf_counter()
        self.target, self.input_shape, self.check_batch = target, input_shape, check_batch
        self.progress, self.label = progress, label
        self.model = model
        self.meta = {"input_shape": list(input_shape)}
        self.device = module_device(model)
        self.groups = _groups(model, layers, self.meta)
        self.full = {g.rep: g.size for g in self.groups}  # widths in the input model
        self.costs = CostModel(model, self.groups, target, input_shape)
        self.floors = {
            g.rep: min(g.size, max(st.min_keep, math.ceil(st.min_keep_fraction * g.size - 1e-9)))
            for g in self.groups
        }
        self._check_reachable(layers)
        for g in self.groups:
            rows = _rows(model, g, st.with_bias).norm(dim=1)
            med = float(rows.median())
            g.scale = med if math.isfinite(med) and med > 0 else float(rows.mean().clamp_min(1e-12))
            g.mass = float(rows.sum().clamp_min(1e-12))
        # the first val_batches validation batches, on the model's device once for the whole run
        self.val = [(b[0].to(self.device), b[1].to(self.device))
                    for b in islice(val_loader or (), st.val_batches)]  # fmt: skip
        self.top1_0 = accuracy(model, self.val, topk=(1,))["top1"] if self.val else float("nan")
        self.keep_mask = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
        self.imp = {g.rep: torch.zeros(g.size) for g in self.groups}
        self.s = (
            0.05  # shrinkage strength of the dropped units, in units of a layer's median row norm
        )
        self.history: list[dict[str, Any]] = []
        self.cuts: list[dict[str, Any]] = []
        self.opt = self.optimizer()
        self.loss_fn = nn.CrossEntropyLoss()
        self.teacher = copy.deepcopy(model).eval() if st.distill > 0 else None
        self.stream = _batches(train_loader, st.seed)
        model.train()
        self.last_print = time.perf_counter()
        self.ema: float | None = None
        self.step = 0
        self.best: tuple[float, dict[str, Tensor]] | None = None
        self.bad_evals = 0
        self.phase = "anneal"
        self.step_time = 0.0
        self.n_params_full = sum(p.numel() for p in model.parameters())

    def _check_reachable(self, layers: Sequence[str]) -> None:
        """Refuse a target the floors alone are over (costs grow with the counts)."""
        target = self.target
        floor = self.costs.cost(self.floors)  # the least any selection keeps
        if any(floor[k] > v * (1 + 1e-12) for k, v in target.as_dict().items()):
            raise ConfigError(
                f"{self.label}: the target {target.as_dict()} cannot be reached by pruning "
                f"{list(layers)}: with the fewest units allowed left in each ({self.floors}) the "
                f"model still keeps {_fmt(floor)}. "
                "Relax the target or prune more layers (layers=)."
            )

    def optimizer(self) -> torch.optim.Optimizer:
        st = self.st
        return torch.optim.SGD(
            self.model.parameters(), lr=st.lr, momentum=st.momentum, weight_decay=st.weight_decay
        )

    def counts(self) -> dict[str, int]:
        return {g.rep: g.size for g in self.groups}

    def unit_scores(self) -> dict[str, Tensor]:
        st = self.st
        if st.score == "penalty":
            return {g.rep: _rows(self.model, g, st.with_bias).norm(dim=1).cpu() / g.mass
                    for g in self.groups}  # fmt: skip
        return {g.rep: self.imp[g.rep].clone() for g in self.groups}

    def accumulate_taylor(self) -> None:
        """EMA over steps of ``(sum_k g_k w_k)^2`` per unit (Molchanov et al. 2019, eq. 8)."""
        for g in self.groups:
            contrib = None
            for m, phi in g.members.items():
                mod = self.model.get_submodule(m)
                w = mod.weight
                if w.grad is None:
                    continue
                c = (w.grad * w.detach()).reshape(w.shape[0], -1).sum(dim=1)
                b = getattr(mod, "bias", None)
                if isinstance(b, torch.Tensor) and b.grad is not None:
                    c = c + b.grad * b.detach()
                c = c[list(phi)]
                contrib = c if contrib is None else contrib + c
            if contrib is not None:
                self.imp[g.rep].mul_(0.98).add_(0.02 * contrib.detach().float().pow(2).cpu())

    def prox(self, rows: Tensor, thr: Tensor) -> Tensor:
        if self.st.penalty == "l21":
            return group_soft_threshold(rows, thr, (0,))
        return group_hard_threshold(rows, thr * thr / 2, (0,))

    def write_rows(self, g: _Group, rows: Tensor) -> None:
        """Scatter a group's rows back into its members' weights (and biases, with_bias)."""
        off = 0
        for m, phi in g.members.items():
            mod = self.model.get_submodule(m)
            w = mod.weight
            d = int(w[0].numel())
            flat = w.data.view(w.shape[0], -1)
            flat[list(phi)] = rows[:, off : off + d].to(flat.dtype)
            off += d
            b = getattr(mod, "bias", None)
            if self.st.with_bias and isinstance(b, torch.Tensor):
                b.data[list(phi)] = rows[:, off].to(b.dtype)
                off += 1

    def backward_step(self) -> None:
        """The prox of the penalty on every unit: threshold ``s`` on the dropped ones,
        ``share * s`` on the kept ones (in units of the layer's median row norm, scaled with
        the current learning rate)."""
        st, s = self.st, self.s
        lr_scale = self.opt.param_groups[0]["lr"] / st.lr
        for g in self.groups:
            drop = ~self.keep_mask[g.rep]
            if st.share == 0 and not bool(drop.any()):
                continue
            thr = torch.full((g.size,), st.share * s * g.scale * lr_scale)
            thr[drop] = s * g.scale * lr_scale
            rows = _rows(self.model, g, st.with_bias)
            self.write_rows(g, self.prox(rows, thr.to(rows)))

    def project(self, t: int) -> dict[str, Any]:
        """The kept set at the budget of step ``t`` (knapsack), then the dual ascent of ``s``:
        it grows while the units the prox leaves non-zero cost more than the budget."""
        st, costs = self.st, self.costs
        budget = _budget_at(self.target, t, st.anneal_steps)
        alive = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
        relative = st.score == "penalty"
        problem = Allocation(self.unit_scores(), alive, costs.cost, costs.marginal, budget,
                             self.floors, relative, st.round_to, self.full)  # fmt: skip
        keep, _ = _ALLOCATE[st.allocation](problem)
        support = {}
        for g in self.groups:
            self.keep_mask[g.rep] = keep[g.rep]
            support[g.rep] = int(_rows(self.model, g, st.with_bias).norm(dim=1).gt(0).sum())
        cost_support = costs.cost(support)
        viol = max(cost_support[k] / budget[k] - 1.0 for k in budget)
        s = self.s
        self.s = float(min(max(s * math.exp(st.dual_rate * max(-1.0, min(1.0, viol))), 1e-6), 1e3))
        return {"budget": budget, "selected": costs.cost({r: int(keep[r].sum()) for r in keep}),
                "support": cost_support}  # fmt: skip

    def cut(self, keep_local: dict[str, list[int]], why: str) -> None:
        """Remove every unit not in ``keep_local`` (rep -> current indices kept)."""
        size = self.counts()
        todo = {r: k for r, k in keep_local.items() if len(k) < size[r]}
        if not todo:
            return
        self.model, _ = prune_filters(self.model, todo, self.input_shape, check=self.check_batch)
        self.model.train()
        for g in self.groups:
            if g.rep in todo:
                kl = todo[g.rep]
                g.orig = [g.orig[i] for i in kl]
                sel = torch.tensor(kl, dtype=torch.long)
                self.keep_mask[g.rep] = self.keep_mask[g.rep][sel]
                self.imp[g.rep] = self.imp[g.rep][sel]
        fresh = _groups(self.model, [g.rep for g in self.groups], self.meta)
        for g, f in zip(self.groups, fresh, strict=True):
            g.members = f.members
        self.opt = self.optimizer()
        self.cuts.append({"step": self.step, "why": why, "counts": self.counts()})

    def train_step(self, bar: _progress.Progress) -> None:
        """The forward step: one SGD step on the next batch (cosine learning rate while
        settling; distillation from the input model with ``distill``), Taylor scores while
        annealing, the loss's moving average."""
        st = self.st
        x, y = next(self.stream)
        x, y = x.to(self.device), y.to(self.device)
        if self.phase == "settle":
            frac = (self.step - st.anneal_steps) / max(1, st.steps - st.anneal_steps)
            for pg in self.opt.param_groups:
                pg["lr"] = st.lr * 0.5 * (1 + math.cos(math.pi * frac))
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = self.loss_fn(out, y)
        total = loss
        if self.teacher is not None:
            with torch.no_grad():
                soft = torch.softmax(self.teacher(x), dim=1)
            kd = torch.nn.functional.kl_div(
                torch.log_softmax(out, dim=1), soft, reduction="batchmean"
            )
            total = (1 - st.distill) * loss + st.distill * kd
        total.backward()
        if not torch.isfinite(loss):
            raise ConfigError(
                f"{self.label}: the training loss became {float(loss)} at engine step "
                f"{self.step}: lower the learning rate (lr={st.lr:g})."
            )
        if self.phase == "anneal":
            with torch.no_grad():
                self.accumulate_taylor()
        self.opt.step()
        self.step += 1
        lv = float(loss.detach())
        self.ema = lv if self.ema is None else 0.98 * self.ema + 0.02 * lv
        bar.step(loss=self.ema, phase=self.phase)

    @torch.no_grad()
    def anneal_step(self) -> None:
        """The backward step, the projection every ``project_every`` steps, the cut of the
        units the prox zeroed every ``cut_every`` steps and, at the end of the annealing, the
        final projection (exact on measured models) and the switch to settling."""
        st, step = self.st, self.step
        self.backward_step()
        rec: dict[str, Any] | None = None
        if step % st.project_every == 0 or step == st.anneal_steps:
            rec = self.project(step)
        late = any(rec is not None and rec["budget"][k] < 2.0 * v
                   for k, v in self.target.as_dict().items())  # fmt: skip
        if rec is not None and step % st.cut_every == 0 and not late:
            # units the prox zeroed go now; none in the last stretch of the annealing,
            # so that the final projection can still add units back
            dead = {g.rep: (~self.keep_mask[g.rep]) & _rows(self.model, g, st.with_bias).norm(dim=1).eq(0).cpu()
                    for g in self.groups}  # fmt: skip
            self.cut({r: [i for i in range(len(d)) if not bool(d[i])] for r, d in dead.items()},
                     "zero rows")  # fmt: skip
        if step == st.anneal_steps:
            final = _final_selection(self.groups, self.model, self.unit_scores(), self.costs,
                                     self.target, self.floors, relative=st.score == "penalty",
                                     allocation=st.allocation, round_to=st.round_to,
                                     full=self.full)  # fmt: skip
            self.cut(final, "final projection")
            self.phase = "settle"
            self.opt = self.optimizer()

    def evaluate(self) -> bool:
        """Validation top-1 and an entry of the trajectory; while settling, the best state so
        far and the patience count; a progress line now and then. True: settling stops."""
        st, step = self.st, self.step
        top1 = accuracy(self.model, self.val, topk=(1,))["top1"] if self.val else float("nan")
        kept_now = self.costs.cost(self.counts())
        entry = {
            "step": step,
            "phase": self.phase,
            "budget": _budget_at(self.target, step, st.anneal_steps),
            "kept": kept_now,
            "val_top1": top1,
            "loss": self.ema,
            "strength": self.s,
            "params": sum(p.numel() for p in self.model.parameters()) / self.n_params_full,
            "seconds": time.perf_counter() - self.t_start,
            "units": self.counts(),
        }
        self.history.append(entry)
        if self.phase == "settle" and self.val:
            if self.best is None or top1 > self.best[0] + 1e-9:
                self.best = (top1, copy.deepcopy(self.model.state_dict()))
                self.bad_evals = 0
            else:
                self.bad_evals += 1
        if self.progress and (
            time.perf_counter() - self.last_print >= max(10.0, _progress.interval())
            or step == st.anneal_steps
        ):
            self.last_print = time.perf_counter()
            eta = self.step_time / step * (st.steps - step)
            _progress.log(
                f"{self.label} engine step {step}/{st.steps} [{self.phase}]: budget "
                f"{_fmt(entry['budget'])}, kept {_fmt(kept_now)}, val top-1 {top1:.2f} %, "
                f"loss {self.ema:.3f}, elapsed {_progress.duration(entry['seconds'])}, "
                f"ETA <= {_progress.duration(eta)}"
            )
        return self.phase == "settle" and self.bad_evals >= st.patience

    def run(self) -> EngineRun:
        """The loop: forward step, annealing steps, evaluations, until ``steps`` or the
        settling stops; then the result."""
        st = self.st
        if self.progress:
            _progress.log(
                f"{self.label} engine: {len(self.groups)} group(s) {self.counts()}, target "
                f"{_fmt(self.target.as_dict())}, at most {st.steps} steps (budget annealed over "
                f"{st.anneal_steps}); cost model fitted on {self.costs.measurements} cut models "
                f"in {time.perf_counter() - self.t_start:.1f} s"
            )
        bar = _progress.Progress(st.steps, f"{self.label} engine", enabled=self.progress)
        try:
            while self.step < st.steps:
                t0 = time.perf_counter()
                self.train_step(bar)
                if self.phase == "anneal":
                    self.anneal_step()
                self.step_time += time.perf_counter() - t0
                step = self.step
                if step % st.eval_every == 0 or step == st.steps or step == st.anneal_steps:
                    if self.evaluate():
                        break
        finally:
            bar.close()
        return self.finish()

    def finish(self) -> EngineRun:
        """The best validation state (while settling), the model in eval mode, the summary."""
        model, best = self.model, self.best
        if best is not None:
            model.load_state_dict(best[1])
        model.eval()
        info = {
            "steps": self.step,
            "anneal_steps": self.st.anneal_steps,
            "seconds": time.perf_counter() - self.t_start,
            "cost_model_measurements": self.costs.measurements,
            "cuts": self.cuts,
            "val_top1_start": self.top1_0,
            "val_top1_best": None if best is None else best[0],
            "strength_final": self.s,
            "stopped_early": self.step < self.st.steps,
        }
        lat = self.costs.lat_cost
        if lat is not None:  # the latency model's cost and the counts it snapped off cliffs
            info["latency_model"] = lat.info()
        keep = {g.rep: sorted(g.orig) for g in self.groups}
        return EngineRun(model=model, keep=keep, history=self.history, info=info)


def run_engine(
    model: nn.Module,
    layers: Sequence[str],
    train_loader: Any,
    val_loader: Any,
    target: Target,
    input_shape: Sequence[int],
    settings: EngineSettings,
    *,
    check_batch: Any = None,
    progress: bool = False,
    label: str = "engine",
) -> EngineRun:
    """Run the budgeted engine on ``model`` (modified in place: pass a copy) to ``target``.

    Raises:
        ConfigError: the target cannot be reached by pruning ``layers`` (every group at
            ``min_keep``), checked on the cost model before any training.
    """
    return _Run(model, layers, train_loader, val_loader, target, input_shape, settings,
                check_batch=check_batch, progress=progress, label=label).run()  # fmt: skip
