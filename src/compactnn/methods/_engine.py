r"""The budgeted optimization engine: one joint run of a training-based method to an exact budget.

``ssr``, ``admm-sparse`` and ``pgt`` given a target (``params`` / ``macs`` / ``latency``) run
here instead of a strength search that reruns the method. All prunable layers are optimised at
once; the unit of selection is a coupling group's output channel (a filter / neuron, with the
channels of every layer cut together with it, :func:`compactnn.surgery.coupling`).

The structure (which units are kept) is projected, every ``project_every`` optimizer steps, onto
the budget set

.. math::

    \mathcal{C}_t = \{\text{kept units } S : \operatorname{cost}_k(S) \le b_{t,k}\ \forall k\},

by a greedy knapsack over all layers at once (:func:`knapsack`): the kept unit of least *value
per unit cost* is dropped until the cost fits, costs re-evaluated after each drop (a unit's cost
depends on how many units its neighbours keep). The value is the unit's share of its layer's
penalty (``score="penalty"``, default: the l2 norm of its row over the layer's, so the greedy
maximises the sum over layers of the log of the penalty kept and no layer is emptied for cheap
units elsewhere) or a first-order Taylor estimate of the loss it protects, accumulated from the
run's own gradients (``score="taylor"``). The cost is the exact multilinear model of the target's
keys in the kept counts, fitted on models cut by surgery and measured like the final report
(:class:`CostModel`). The budget :math:`b_t` anneals from the full model to the target over
``anneal_steps`` (cubic, Zhu & Gupta 2017, after a tenth of the steps without drops).

The method's own penalty shrinks the dropped units: after every SGD step (the forward step) their
rows take its proximal step (the backward step; group soft threshold for l2,1, hard for l2,0),
with a strength :math:`s_t` (in units of the layer's median row norm) that follows the
constraint by dual ascent: it grows while the units the prox leaves non-zero cost more than
:math:`b_t`, and shrinks otherwise. Never a rerun of the method. This is forward-backward
splitting restricted to the complement of :math:`S` for every method (PGT's own solver; for SSR
and Kiaee a different solver than the papers' AULM / ADMM, which stay in their fixed-strength
protocol).

**Cut while training:** every ``cut_every`` steps the dropped units whose structure row is
exactly zero are removed physically (surgery), so later steps run on the smaller network. At
the end of the annealing the final projection is made exact on models measured physically
(drop while over the target, add back while a unit still fits) and everything outside it is cut.
A settling phase then trains the fixed structure with a decaying learning rate until validation
top-1 stops improving (``patience`` evaluations) or ``steps`` is reached; the best validation
state is returned. Every schedule is in optimizer steps, never epochs.

References:
    Lin et al. 2019 (SSR, eqs. (14)-(15): the group proxes); Kiaee et al. 2016 (eqs. (9)-(10));
    Zhou et al. 2016 (PGT, forward-backward splitting); ADMM-NN / StructADMM (projection onto
    the constraint set); Zhu & Gupta 2017 (cubic schedule); Molchanov et al. 2019 (Taylor
    importance); HALP / MorphNet (cost-weighted selection).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from compactnn import _progress
from compactnn.budget import Target, measure
from compactnn.errors import ConfigError
from compactnn.methods._common import prune_filters
from compactnn.metrics import accuracy

__all__ = ["EngineSettings", "CostModel", "EngineRun", "run_engine", "knapsack"]

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
        for name in ("steps", "anneal_steps", "project_every", "cut_every", "eval_every"):
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


# ---------------------------------------------------------------------------------- groups
@dataclass
class _Group:
    """One coupling group: ``rep`` (the layer a ``KeepOutputs`` names), every member's channel
    for each of ``rep``'s channels (``phi``), the original indices of ``rep``'s channels left."""

    rep: str
    members: dict[str, tuple[int, ...]]
    orig: list[int]
    scale: float = 1.0
    mass: float = 1.0

    @property
    def size(self) -> int:
        return len(self.orig)


def _groups(model: nn.Module, layers: Sequence[str], meta: dict[str, Any]) -> list[_Group]:
    from compactnn import surgery

    out: list[_Group] = []
    seen: set[str] = set()
    for layer in layers:
        if layer in seen:
            continue
        members = surgery.coupling(model, layer, meta=meta)
        seen.update(members)
        n = int(model.get_submodule(layer).weight.shape[0])
        out.append(_Group(layer, dict(members), list(range(n))))
    return out


def _rows(model: nn.Module, g: _Group, bias: bool = False) -> Tensor:
    """The group's units as rows: every member's lowered weight (and, with ``bias``, its bias as
    one more column), rows aligned by ``phi``, concatenated along dim 1."""
    parts = []
    for m, phi in g.members.items():
        mod = model.get_submodule(m)
        w = mod.weight.detach()
        parts.append(w.reshape(w.shape[0], -1)[list(phi)])
        b = getattr(mod, "bias", None)
        if bias and isinstance(b, torch.Tensor):
            parts.append(b.detach()[list(phi)].reshape(-1, 1))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------- costs
class CostModel:
    """The target's keys as exact functions of the kept unit counts of every group.

    Params and MACs of a network of Conv2d / Linear / BatchNorm are multilinear of degree two in
    the channel counts (a layer's MACs are its input count times its output count times a
    constant), so ``cost(c) = a0 + sum_g a_g c_g + sum_{g<h} b_gh c_g c_h`` is *fitted exactly*
    from models cut by surgery: the full model, each group at about half, and each pair at
    about half where a layer reads one group and writes the other (read off the single cuts:
    the layers whose input width changed). Other pairs have no cross term, so ``1 + G + P``
    measurements for P adjacent pairs (at most ``G (G - 1) / 2``; a chain: ``G - 1``).
    Latency is not multilinear (and noisy on small models): it is modelled as
    ``alpha + beta x`` the exact MACs fraction, fitted by least squares on the same
    measurements (``beta >= 0``); a model whose latency does not follow its MACs then says so
    (the target is refused as unreachable). The final selection is always checked on a
    physically cut model.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[_Group],
        target: Target,
        input_shape: Sequence[int],
        *,
        base: Any = None,
        latency_batch_size: int = 100,
    ) -> None:
        self.keys = target.keys
        self.latency = "latency" in self.keys
        self.exact = tuple(k for k in self.keys if k != "latency")
        if self.latency and "macs" not in self.exact:
            self.exact = (*self.exact, "macs")
        self.samples: list[dict[str, float]] = []
        self.shape = list(input_shape)
        self.reps = [g.rep for g in groups]
        self.lat = latency_batch_size
        self.base = base if base is not None else self._measure(model)
        self.model = model
        n = {g.rep: g.size for g in groups}
        self.n0 = dict(n)
        full = self._frac(model)
        d = {r: max(1, n[r] // 2) for r in self.reps}
        single, reads = {}, {}
        for r in self.reps:
            cut = _cut_first(model, {r: n[r] - d[r]}, self.shape)
            single[r] = self._frac(cut)
            reads[r] = _inputs_changed(model, cut)  # the layers that read group r's channels
        members = {g.rep: set(g.members) for g in groups}
        slope = {r: {k: (full[k] - single[r][k]) / d[r] for k in self.exact} for r in self.reps}
        self.b: dict[tuple[str, str], dict[str, float]] = {}
        reps = self.reps
        pairs = 0
        for i, r in enumerate(reps):
            for h in reps[i + 1 :]:
                # a cross term c_r c_h needs a layer that reads one group and writes the other
                # (its params / MACs are its input count times its output count): none, no term
                if not (reads[r] & members[h]) and not (reads[h] & members[r]):
                    continue
                pairs += 1
                both = self._at(model, {r: n[r] - d[r], h: n[h] - d[h]})
                bb = {
                    k: (full[k] - single[r][k] - single[h][k] + both[k]) / (d[r] * d[h])
                    for k in self.exact
                }
                if any(abs(v) > 1e-15 for v in bb.values()):
                    self.b[(r, h)] = bb
        # a_g = slope_g - sum_h b_gh n_h ; a0 = full - sum a_g n_g - sum b_gh n_g n_h
        self.a = {
            r: {
                k: slope[r][k] - sum(self._b(r, h, k) * n[h] for h in reps if h != r)
                for k in self.exact
            }
            for r in reps
        }
        self.a0 = {
            k: full[k]
            - sum(self.a[r][k] * n[r] for r in reps)
            - sum(v[k] * n[r] * n[h] for (r, h), v in self.b.items())
            for k in self.exact
        }
        self.measurements = 1 + len(reps) + pairs
        self.alpha, self.beta = 0.0, 1.0
        if self.latency:  # latency ~ alpha + beta * macs, least squares over the measurements
            xs = torch.tensor([m["macs"] for m in self.samples], dtype=torch.float64)
            ys = torch.tensor([m["latency"] for m in self.samples], dtype=torch.float64)
            a = torch.stack([torch.ones_like(xs), xs], dim=1)
            sol = torch.linalg.lstsq(a, ys.unsqueeze(1)).solution.flatten()
            self.beta = max(float(sol[1]), 0.0)
            self.alpha = float(ys.mean() - self.beta * xs.mean())

    def _measure(self, model: nn.Module) -> Any:
        keys = tuple(dict.fromkeys((*self.keys, *self.exact)))
        return measure(model, self.shape, keys, latency_batch_size=self.lat)

    def _frac(self, model: nn.Module) -> dict[str, float]:
        out = self._measure(model).fractions(self.base)
        self.samples.append(out)
        return out

    def _at(self, model: nn.Module, counts: Mapping[str, int]) -> dict[str, float]:
        return self._frac(_cut_first(model, counts, self.shape))

    def _b(self, r: str, h: str, k: str) -> float:
        v = self.b.get((r, h)) or self.b.get((h, r))
        return 0.0 if v is None else v[k]

    def cost(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Fractions of the original kept at ``counts`` (rep -> units kept)."""
        out = {}
        for k in self.exact:
            v = self.a0[k] + sum(self.a[r][k] * counts[r] for r in self.reps)
            v += sum(b[k] * counts[r] * counts[h] for (r, h), b in self.b.items())
            out[k] = v
        if self.latency:
            out["latency"] = self.alpha + self.beta * out["macs"]
        return {k: out[k] for k in self.keys}

    def marginal(self, counts: Mapping[str, int], r: str) -> dict[str, float]:
        """What one unit of group ``r`` costs at ``counts`` (exact: the model is linear in
        each count alone)."""
        out = {
            k: self.a[r][k] + sum(self._b(r, h, k) * counts[h] for h in self.reps if h != r)
            for k in self.exact
        }
        if self.latency:
            out["latency"] = self.beta * out["macs"]
        return {k: out[k] for k in self.keys}

    def measured(self, model: nn.Module, counts: Mapping[str, int]) -> dict[str, float]:
        """The fractions of the original kept when ``model`` (the original or a model cut
        from it, groups named by their ``rep``) keeps the first ``counts[rep]`` of its units,
        measured on the physically cut model."""
        cur = {r: int(model.get_submodule(r).weight.shape[0]) for r in counts}
        cut = {r: c for r, c in counts.items() if c < cur[r]}
        return self._at(model, cut) if cut else self._frac(model)


def knapsack(
    scores: Mapping[str, Tensor],
    alive: Mapping[str, Tensor],
    cost: Callable[[Mapping[str, int]], dict[str, float]],
    marginal: Callable[[Mapping[str, int], str], dict[str, float]],
    budget: Mapping[str, float],
    *,
    min_keep: int | Mapping[str, int] = 1,
    relative: bool = False,
) -> tuple[dict[str, Tensor], bool]:
    """Greedy knapsack: drop, one at a time, the kept unit of smallest *value per unit cost*
    until ``cost(counts) <= budget`` for every key.

    A unit's value is its score (additive: e.g. a first-order estimate of the loss it
    protects). With ``relative`` it is its score's share of its group's kept scores (``s_i / sum_{j kept}
    s_j``): the greedy then maximises ``sum_g log(sum_{i kept in g} s_i)``, so a group's last
    units grow dear as it thins and no layer is emptied for the sake of another (additive
    scores would trade a conv layer's last filters for hundreds of cheap neurons). A unit's cost
    is the sum over the keys still over budget of its marginal cost divided by the key's budget.
    Within a group the unit of smallest score goes first (ties: the lower index). Returns the
    kept masks (group -> bool over its units) and whether the budget was reached (``False``:
    every group at ``min_keep``).
    """
    counts = {r: int(a.sum()) for r, a in alive.items()}
    floor = min_keep if isinstance(min_keep, Mapping) else dict.fromkeys(alive, int(min_keep))
    order = {}
    total = {}
    for r, s in scores.items():
        idx = torch.nonzero(alive[r]).flatten()
        srt = torch.sort(s[idx], stable=True).indices
        order[r] = [int(i) for i in idx[srt]]
        total[r] = float(s[idx].sum())
    ptr = dict.fromkeys(scores, 0)
    keep = {r: a.clone() for r, a in alive.items()}
    while True:
        c = cost(counts)
        over = [k for k in budget if c[k] > budget[k] * (1 + 1e-12)]
        if not over:
            return keep, True
        best, best_ratio = None, math.inf
        for r in scores:
            if counts[r] <= floor[r]:
                continue
            m = marginal(counts, r)
            # a unit dearer than the excess is credited with the excess only (no overshoot)
            unit = sum(min(max(m[k], 0.0), c[k] - budget[k]) / budget[k] for k in over)
            if unit <= 0:
                continue
            si = float(scores[r][order[r][ptr[r]]])
            ratio = (si / max(total[r], 1e-30) if relative else si) / unit
            if ratio < best_ratio:
                best, best_ratio = r, ratio
        if best is None:
            return keep, False
        i = order[best][ptr[best]]
        keep[best][i] = False
        total[best] -= float(scores[best][i])
        ptr[best] += 1
        counts[best] -= 1


# ---------------------------------------------------------------------------------- the run
def uniform_allocation(
    scores: Mapping[str, Tensor],
    alive: Mapping[str, Tensor],
    cost: Callable[[Mapping[str, int]], dict[str, float]],
    marginal: Callable[[Mapping[str, int], str], dict[str, float]],
    budget: Mapping[str, float],
    *,
    min_keep: int | Mapping[str, int] = 1,
    relative: bool = False,
) -> tuple[dict[str, Tensor], bool]:
    """:func:`knapsack`'s interface with the counts of a *uniform* kept fraction: the largest
    fraction ``x`` such that every group keeping ``ceil(x n_g)`` of its ``n_g`` alive units
    (at least its floor) fits the budget (bisection: costs grow with the counts), then the
    group with the smallest kept fraction grows by one unit while that still fits (ties: the
    earlier group). Inside a group the units of highest score are kept. ``marginal`` and
    ``relative`` are unused (the same signature as :func:`knapsack`). Returns the kept masks and
    whether the budget was reached (``False``: the floors alone are over it)."""
    del marginal, relative
    n = {r: int(a.sum()) for r, a in alive.items()}
    floor = min_keep if isinstance(min_keep, Mapping) else dict.fromkeys(alive, int(min_keep))

    def counts(x: float) -> dict[str, int]:
        return {r: max(min(floor[r], n[r]), min(n[r], math.ceil(x * n[r] - 1e-12))) for r in n}

    def fits(c: Mapping[str, int]) -> bool:
        v = cost(c)
        return all(v[k] <= budget[k] * (1 + 1e-12) for k in budget)

    if fits(counts(1.0)):
        c = counts(1.0)
    else:
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(counts(mid)) else (lo, mid)
        c = counts(lo)
        grown = True
        while grown:
            grown = False
            for r in sorted(n, key=lambda r: c[r] / max(n[r], 1)):  # stable: earlier first
                if c[r] < n[r] and fits({**c, r: c[r] + 1}):
                    c[r] += 1
                    grown = True
                    break
    keep: dict[str, Tensor] = {}
    for r, a in alive.items():
        idx = torch.nonzero(a).flatten()
        top = idx[torch.argsort(scores[r][idx], descending=True, stable=True)[: c[r]]]
        m = torch.zeros_like(a)
        m[top] = True
        keep[r] = m
    return keep, fits(c)


#: the engine's allocation rules (:class:`EngineSettings` ``allocation``)
ALLOCATIONS = ("knapsack", "uniform")
_ALLOCATE = {"knapsack": knapsack, "uniform": uniform_allocation}


@dataclass
class EngineRun:
    """What :func:`run_engine` returns: the trained, physically cut model, the original indices
    kept per group (``keep``, on the *input* model), and the trajectory."""

    model: nn.Module
    keep: dict[str, list[int]]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _batches(loader: Any, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    from compactnn.train import _seeded

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
    from compactnn.prox import group_hard_threshold, group_soft_threshold
    from compactnn.structure import module_device

    st = settings
    t_start = time.perf_counter()
    meta = {"input_shape": list(input_shape)}
    device = module_device(model)
    groups = _groups(model, layers, meta)
    costs = CostModel(model, groups, target, input_shape)
    floors = {
        g.rep: min(g.size, max(st.min_keep, math.ceil(st.min_keep_fraction * g.size - 1e-9)))
        for g in groups
    }
    floor = costs.cost(floors)  # the least any selection keeps (costs grow with the counts)
    if any(floor[k] > v * (1 + 1e-12) for k, v in target.as_dict().items()):
        raise ConfigError(
            f"{label}: the target {target.as_dict()} cannot be reached by pruning {list(layers)}: "
            f"with the fewest units allowed left in each ({floors}) the model still keeps "
            f"{_fmt(floor)}. "
            "Relax the target or prune more layers (layers=)."
        )
    for g in groups:
        rows = _rows(model, g, st.with_bias).norm(dim=1)
        med = float(rows.median())
        g.scale = med if math.isfinite(med) and med > 0 else float(rows.mean().clamp_min(1e-12))
        g.mass = float(rows.sum().clamp_min(1e-12))
    # the first val_batches validation batches, on the model's device once for the whole run
    val = [(b[0].to(device), b[1].to(device)) for b in islice(val_loader or (), st.val_batches)]
    top1_0 = accuracy(model, val, topk=(1,))["top1"] if val else float("nan")
    keep_mask = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in groups}
    imp = {g.rep: torch.zeros(g.size) for g in groups}
    s = 0.05  # shrinkage strength of the dropped units, in units of a layer's median row norm
    history: list[dict[str, Any]] = []
    cuts: list[dict[str, Any]] = []

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), lr=st.lr, momentum=st.momentum, weight_decay=st.weight_decay
        )

    opt = optimizer()
    loss_fn = nn.CrossEntropyLoss()
    teacher = copy.deepcopy(model).eval() if st.distill > 0 else None
    stream = _batches(train_loader, st.seed)
    model.train()
    last_print = time.perf_counter()
    ema: float | None = None
    step = 0
    best: tuple[float, dict[str, Tensor]] | None = None
    bad_evals = 0
    phase = "anneal"
    step_time = 0.0

    def counts() -> dict[str, int]:
        return {g.rep: g.size for g in groups}

    def unit_scores() -> dict[str, Tensor]:
        if st.score == "penalty":
            return {g.rep: _rows(model, g, st.with_bias).norm(dim=1).cpu() / g.mass for g in groups}
        return {g.rep: imp[g.rep].clone() for g in groups}

    def accumulate_taylor() -> None:
        """EMA over steps of ``(sum_k g_k w_k)^2`` per unit (Molchanov et al. 2019, eq. 8)."""
        for g in groups:
            contrib = None
            for m, phi in g.members.items():
                mod = model.get_submodule(m)
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
                imp[g.rep].mul_(0.98).add_(0.02 * contrib.detach().float().pow(2).cpu())

    def prox(rows: Tensor, thr: Tensor) -> Tensor:
        if st.penalty == "l21":
            return group_soft_threshold(rows, thr, (0,))
        return group_hard_threshold(rows, thr * thr / 2, (0,))

    def write_rows(g: _Group, rows: Tensor) -> None:
        """Scatter a group's rows back into its members' weights (and biases, with_bias)."""
        off = 0
        for m, phi in g.members.items():
            mod = model.get_submodule(m)
            w = mod.weight
            d = int(w[0].numel())
            flat = w.data.view(w.shape[0], -1)
            flat[list(phi)] = rows[:, off : off + d].to(flat.dtype)
            off += d
            b = getattr(mod, "bias", None)
            if st.with_bias and isinstance(b, torch.Tensor):
                b.data[list(phi)] = rows[:, off].to(b.dtype)
                off += 1

    def backward_step() -> None:
        """The prox of the penalty on every unit: threshold ``s`` on the dropped ones,
        ``share * s`` on the kept ones (in units of the layer's median row norm, scaled with
        the current learning rate)."""
        lr_scale = opt.param_groups[0]["lr"] / st.lr
        for g in groups:
            drop = ~keep_mask[g.rep]
            if st.share == 0 and not bool(drop.any()):
                continue
            thr = torch.full((g.size,), st.share * s * g.scale * lr_scale)
            thr[drop] = s * g.scale * lr_scale
            rows = _rows(model, g, st.with_bias)
            write_rows(g, prox(rows, thr.to(rows)))

    def project(t: int) -> dict[str, Any]:
        """The kept set at the budget of step ``t`` (knapsack), then the dual ascent of ``s``:
        it grows while the units the prox leaves non-zero cost more than the budget."""
        nonlocal s
        budget = _budget_at(target, t, st.anneal_steps)
        alive = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in groups}
        keep, _ = _ALLOCATE[st.allocation](unit_scores(), alive, costs.cost, costs.marginal,
                                           budget, min_keep=floors,
                                           relative=st.score == "penalty")  # fmt: skip
        support = {}
        for g in groups:
            keep_mask[g.rep] = keep[g.rep]
            support[g.rep] = int(_rows(model, g, st.with_bias).norm(dim=1).gt(0).sum())
        cost_support = costs.cost(support)
        viol = max(cost_support[k] / budget[k] - 1.0 for k in budget)
        s = float(min(max(s * math.exp(st.dual_rate * max(-1.0, min(1.0, viol))), 1e-6), 1e3))
        return {"budget": budget, "selected": costs.cost({r: int(keep[r].sum()) for r in keep}),
                "support": cost_support}  # fmt: skip

    def cut(keep_local: dict[str, list[int]], why: str) -> None:
        """Remove every unit not in ``keep_local`` (rep -> current indices kept)."""
        nonlocal model, opt
        size = counts()
        todo = {r: k for r, k in keep_local.items() if len(k) < size[r]}
        if not todo:
            return
        model, _ = prune_filters(model, todo, input_shape, check=check_batch)
        model.train()
        for g in groups:
            if g.rep in todo:
                kl = todo[g.rep]
                g.orig = [g.orig[i] for i in kl]
                sel = torch.tensor(kl, dtype=torch.long)
                keep_mask[g.rep] = keep_mask[g.rep][sel]
                imp[g.rep] = imp[g.rep][sel]
        fresh = _groups(model, [g.rep for g in groups], meta)
        for g, f in zip(groups, fresh, strict=True):
            g.members = f.members
        opt = optimizer()
        cuts.append({"step": step, "why": why, "counts": counts()})

    n_params_full = sum(p.numel() for p in model.parameters())
    if progress:
        _progress.log(
            f"{label} engine: {len(groups)} group(s) {counts()}, target {_fmt(target.as_dict())}, "
            f"at most {st.steps} steps (budget annealed over {st.anneal_steps}); cost model "
            f"fitted on {costs.measurements} cut models in {time.perf_counter() - t_start:.1f} s"
        )
    bar = _progress.Progress(st.steps, f"{label} engine", enabled=progress)
    try:
        while step < st.steps:
            t0 = time.perf_counter()
            x, y = next(stream)
            x, y = x.to(device), y.to(device)
            if phase == "settle":
                frac = (step - st.anneal_steps) / max(1, st.steps - st.anneal_steps)
                for pg in opt.param_groups:
                    pg["lr"] = st.lr * 0.5 * (1 + math.cos(math.pi * frac))
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            total = loss
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.softmax(teacher(x), dim=1)
                kd = torch.nn.functional.kl_div(
                    torch.log_softmax(out, dim=1), soft, reduction="batchmean"
                )
                total = (1 - st.distill) * loss + st.distill * kd
            total.backward()
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"{label}: the training loss became {float(loss)} at engine step {step}: lower "
                    f"the learning rate (lr={st.lr:g})."
                )
            if phase == "anneal":
                with torch.no_grad():
                    accumulate_taylor()
            opt.step()
            step += 1
            lv = float(loss.detach())
            ema = lv if ema is None else 0.98 * ema + 0.02 * lv
            bar.step(loss=ema, phase=phase)
            rec: dict[str, Any] | None = None
            if phase == "anneal":
                with torch.no_grad():
                    backward_step()
                    if step % st.project_every == 0 or step == st.anneal_steps:
                        rec = project(step)
                    late = any(rec is not None and rec["budget"][k] < 2.0 * v
                               for k, v in target.as_dict().items())  # fmt: skip
                    if rec is not None and step % st.cut_every == 0 and not late:
                        # units the prox zeroed go now; none in the last stretch of the annealing,
                        # so that the final projection can still add units back
                        dead = {g.rep: (~keep_mask[g.rep]) & _rows(model, g, st.with_bias).norm(dim=1).eq(0).cpu()
                                for g in groups}  # fmt: skip
                        cut({r: [i for i in range(len(d)) if not bool(d[i])] for r, d in dead.items()},
                            "zero rows")  # fmt: skip
                    if step == st.anneal_steps:
                        final = _final_selection(groups, model, unit_scores(), costs, target,
                                                 floors, relative=st.score == "penalty",
                                                 allocation=st.allocation)  # fmt: skip
                        cut(final, "final projection")
                        phase = "settle"
                        opt = optimizer()
            step_time += time.perf_counter() - t0
            if step % st.eval_every == 0 or step == st.steps or step == st.anneal_steps:
                top1 = accuracy(model, val, topk=(1,))["top1"] if val else float("nan")
                kept_now = costs.cost(counts())
                entry = {
                    "step": step,
                    "phase": phase,
                    "budget": _budget_at(target, step, st.anneal_steps),
                    "kept": kept_now,
                    "val_top1": top1,
                    "loss": ema,
                    "strength": s,
                    "params": sum(p.numel() for p in model.parameters()) / n_params_full,
                    "seconds": time.perf_counter() - t_start,
                    "units": counts(),
                }
                history.append(entry)
                if phase == "settle" and val:
                    if best is None or top1 > best[0] + 1e-9:
                        best = (top1, copy.deepcopy(model.state_dict()))
                        bad_evals = 0
                    else:
                        bad_evals += 1
                if progress and (
                    time.perf_counter() - last_print >= max(10.0, _progress.interval())
                    or step == st.anneal_steps
                ):
                    last_print = time.perf_counter()
                    eta = step_time / step * (st.steps - step)
                    _progress.log(
                        f"{label} engine step {step}/{st.steps} [{phase}]: budget "
                        f"{_fmt(entry['budget'])}, kept {_fmt(kept_now)}, val top-1 {top1:.2f} %, "
                        f"loss {ema:.3f}, elapsed {_progress.duration(entry['seconds'])}, "
                        f"ETA <= {_progress.duration(eta)}"
                    )
                if phase == "settle" and bad_evals >= st.patience:
                    break
    finally:
        bar.close()
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    info = {
        "steps": step,
        "anneal_steps": st.anneal_steps,
        "seconds": time.perf_counter() - t_start,
        "cost_model_measurements": costs.measurements,
        "cuts": cuts,
        "val_top1_start": top1_0,
        "val_top1_best": None if best is None else best[0],
        "strength_final": s,
        "stopped_early": step < st.steps,
    }
    keep = {g.rep: sorted(g.orig) for g in groups}
    return EngineRun(model=model, keep=keep, history=history, info=info)


def _final_selection(
    groups: Sequence[_Group],
    model: nn.Module,
    scores: Mapping[str, Tensor],
    costs: CostModel,
    target: Target,
    min_keep: Mapping[str, int],
    *,
    relative: bool = False,
    allocation: str = "knapsack",
) -> dict[str, list[int]]:
    """The kept units at the target, exact on physically measured models: the knapsack on the
    cost model, then units dropped while the measured model is over the target and added back
    (best score per cost first) while one still fits."""
    budget = target.as_dict()
    alive = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in groups}
    keep, _ = _ALLOCATE[allocation](scores, alive, costs.cost, costs.marginal, budget,
                                    min_keep=min_keep, relative=relative)  # fmt: skip

    def n_of(k: Mapping[str, Tensor]) -> dict[str, int]:
        return {g.rep: int(k[g.rep].sum()) for g in groups}

    def predicted_over(k: Mapping[str, Tensor]) -> bool:
        """Over the target on a key the cost model gives exactly (params, MACs)."""
        c = costs.cost(n_of(k))
        return any(c[key] > budget[key] * (1 + 1e-9) for key in costs.exact if key in budget)

    def measured(k: Mapping[str, Tensor]) -> dict[str, float]:
        return costs.measured(model, {g.rep: int(k[g.rep].sum()) for g in groups})

    # drop while the measured model is over the target
    got = measured(keep)
    while any(got[k] > budget[k] * (1 + 1e-12) for k in budget):
        cur = n_of(keep)
        over = [k for k in budget if got[k] > budget[k]]
        cand = None
        for g in groups:
            if cur[g.rep] <= min_keep[g.rep]:
                continue
            m = costs.marginal(cur, g.rep)
            unit = sum(min(max(m[k], 0.0), got[k] - budget[k]) / budget[k] for k in over) or 1e-12
            idx = torch.nonzero(keep[g.rep]).flatten()
            i = int(idx[torch.argmin(scores[g.rep][idx])])
            share = (float(scores[g.rep][idx].sum()) or 1e-30) if relative else 1.0
            ratio = float(scores[g.rep][i]) / share / unit
            if cand is None or ratio < cand[0]:
                cand = (ratio, g.rep, i)
        if cand is None:
            break
        keep[cand[1]][cand[2]] = False
        got = measured(keep)
    # add back while a unit still fits
    while True:
        cur = n_of(keep)
        cands = []
        for g in groups:
            idx = torch.nonzero(~keep[g.rep]).flatten()
            if len(idx) == 0:
                continue
            m = costs.marginal(cur, g.rep)
            unit = sum(max(m[k], 0.0) / budget[k] for k in budget) or 1e-12
            i = int(idx[torch.argmax(scores[g.rep][idx])])
            share = (
                (float(scores[g.rep][i] + scores[g.rep][keep[g.rep]].sum()) or 1e-30)
                if relative
                else 1.0
            )
            cands.append((float(scores[g.rep][i]) / share / unit, g.rep, i))
        added = False
        for _, r, i in sorted(cands, reverse=True):
            keep[r][i] = True
            if predicted_over(keep):  # exact keys: no need to cut and measure to know
                keep[r][i] = False
                continue
            got2 = measured(keep)
            if all(got2[k] <= budget[k] * (1 + 1e-12) for k in budget):
                added = True
                break
            keep[r][i] = False
        if not added:
            break
    return {g.rep: [int(i) for i in torch.nonzero(keep[g.rep]).flatten()] for g in groups}


def _inputs_changed(model: nn.Module, cut: nn.Module) -> set[str]:
    """The Conv2d / Linear layers of ``model`` whose input width differs in ``cut`` (the same
    architecture with some output channels removed): the consumers of what was cut."""
    mods = dict(cut.named_modules())
    out = set()
    for name, m in model.named_modules():
        c = mods.get(name)
        if isinstance(m, nn.Conv2d) and isinstance(c, nn.Conv2d):
            if c.in_channels != m.in_channels:
                out.add(name)
        elif isinstance(m, nn.Linear) and isinstance(c, nn.Linear):
            if c.in_features != m.in_features:
                out.add(name)
        elif type(m) is not type(c) and not isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            out.add(name)  # replaced by surgery (e.g. an input selection): assume it reads it
    return out


def _cut_first(model: nn.Module, counts: Mapping[str, int], shape: Sequence[int]) -> nn.Module:
    """``model`` with each group ``rep`` cut to its first ``counts[rep]`` units (for sizes:
    which units are kept does not change params / MACs). The reps are of distinct groups, so
    no two cuts need uniting: no coupling is measured again."""
    keep = {r: list(range(int(c))) for r, c in counts.items()}
    alone = {r: {r: tuple(range(int(model.get_submodule(r).weight.shape[0])))} for r in keep}
    return prune_filters(model, keep, shape, couplings=alone)[0] if keep else model


# ---------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class EngineOptions:
    """The budgeted engine's options, shared by the configs of ``ssr``, ``pgt`` and
    ``admm-sparse`` (validated by their ``rules``, :data:`ENGINE_RULES`).

    Attributes:
        budget: a target (``{"macs": 0.1}``: fractions kept of params / macs / latency) met
            by the budgeted engine (:mod:`compactnn.methods._engine`) in one joint run of all
            layers; set by ``compress(target=...)``. ``None``: the paper's fixed-λ protocol.
        engine_steps: at most this many optimizer steps of the engine (annealing, then
            settling until validation top-1 stops improving).
        anneal_steps: engine steps over which the budget goes from the full model to the
            target.
        engine_lr: SGD learning rate of the engine (momentum and weight decay as the method's
            own; not a paper value: the engine trains the whole network while it shrinks, and
            settles with a cosine decay from it).
        engine_allocation: how many units each coupling group keeps at each budget:
            ``"knapsack"`` (greedy value per unit cost over all units) or ``"uniform"`` (one
            kept fraction for every group, grown into the budget it leaves); the method's
            penalty picks the units inside each group either way.
    """

    budget: Any = None
    engine_steps: int = 1500
    anneal_steps: int = 800
    engine_lr: float = 0.01
    engine_allocation: str = "knapsack"


def check_budget(value: Any, name: str, owner: str) -> dict[str, float]:
    """A method's ``budget`` option: a target as :meth:`Target.parse` reads it, as a dict."""
    try:
        t = Target.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"The '{name}' parameter of {owner}: {exc}") from None
    return {**t.as_dict(), "tolerance": t.tolerance}


def _rules() -> Mapping[str, Any]:
    from types import MappingProxyType

    from compactnn._validation import check_choice, check_float, check_int, rule

    return MappingProxyType(
        {
            "budget": rule(check_budget, optional=True),
            "engine_steps": rule(check_int, min_value=1),
            "anneal_steps": rule(check_int, min_value=1),
            "engine_lr": rule(check_float, min_value=0.0, min_inclusive=False),
            "engine_allocation": rule(check_choice, choices=ALLOCATIONS),
        }
    )


#: the validation rules of :class:`EngineOptions` (merged into each engine method's ``rules``)
ENGINE_RULES = _rules()


def engine_calibrate(
    method: Any, model: nn.Module, data: Any, target: Target
) -> tuple[Any, dict[str, Any]]:
    """``Method.calibrate`` of an engine method: no search, the target becomes the method's
    ``budget`` option (checked up front: the method's settings must be engine-able)."""
    method.engine_settings()  # raises ConfigError for a penalty / structure it cannot budget
    data.require_input_shape(method.name)
    data.require_train(method.name)
    chosen = method.with_options(budget={**target.as_dict(), "tolerance": target.tolerance})
    rec = {
        "target": target.as_dict(),
        "tolerance": target.tolerance,
        "kept": {},
        "met": False,
        "option": "budgeted engine (joint, one run)",
        "strength": None,
        "trace": [],
        "seconds": 0.0,
    }
    return chosen, rec


def budgeted_run(
    method: Any,
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    *,
    finetune: Callable[[nn.Module], None] | None,
    progress: bool,
) -> Any:
    """A method's ``run`` with ``budget`` set: the engine on a copy of ``model``, the
    structure plan on ``model`` (original indices), the method's own fine-tuning, one result."""
    from compactnn.methods._common import replay_plan
    from compactnn.methods.base import CompressionResult

    cfg = method.config
    shape = data.require_input_shape(method.name)
    target = Target.parse(cfg.budget)
    settings = method.engine_settings()
    if data.val is None:
        raise ConfigError(
            f"{method.name}: the budgeted engine stops and keeps its best state on a validation "
            "split: pass data=(train, val, test) or let compress carve one (val_fraction > 0)."
        )
    run = run_engine(
        copy.deepcopy(model), layers, data.require_train(method.name), data.val, target,
        shape, settings, check_batch=data.check_batch, progress=progress, label=method.name,
    )  # fmt: skip
    keep = {r: k for r, k in run.keep.items() if len(k) < model.get_submodule(r).weight.shape[0]}
    if keep:
        _, plan = prune_filters(model, keep, shape, check=data.check_batch)
    else:
        from compactnn.plan import CompressionPlan

        plan = CompressionPlan(meta={"input_shape": list(shape)})
    final = run.model
    before_ft = accuracy(final, data.val, topk=(1,), max_batches=settings.val_batches)["top1"]
    if finetune is not None:
        finetune(final)
    final.eval()
    widths = {n: int(final.get_submodule(n).weight.shape[0]) for n in layers}
    return CompressionResult(
        model=final,
        plan=replay_plan(plan, final, shape),
        method=method.name,
        config=cfg,
        history={
            "engine": run.history,
            "engine_info": {**run.info, "val_top1_engine": before_ft},
            "keep": widths,
        },
    )
