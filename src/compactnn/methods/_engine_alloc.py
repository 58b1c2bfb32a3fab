"""The budgeted engine's allocation: which units each coupling group keeps at a budget.

:func:`knapsack` (greedy value per unit cost over all units) and :func:`uniform_allocation`
(one kept fraction for every group) choose the kept units on the cost model
(:class:`~compactnn.methods._engine_cost.CostModel`); :func:`_final_selection` makes the choice
at the target exact on physically cut, measured models. See :mod:`compactnn.methods._engine`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compactnn.budget import Target, aligned_down, aligned_up, fill_aligned
from compactnn.methods._engine_cost import CostModel, _Group


@dataclass(frozen=True)
class Allocation:
    """One allocation problem of the engine: the units each coupling group keeps at a budget,
    what :func:`knapsack` and :func:`uniform_allocation` solve.

    Attributes:
        scores: group -> one score per unit (higher: more worth keeping).
        alive: group -> bool mask of its units still there (only those can be kept).
        cost: the cost per key of the kept counts (group -> count), e.g.
            :meth:`CostModel.cost <compactnn.methods._engine_cost.CostModel.cost>`.
        marginal: the cost per key of one more unit of a group at the counts (the
            knapsack's; e.g. :meth:`CostModel.marginal`).
        budget: key -> its budget (the cost of the original being 1).
        min_keep: the fewest units a group keeps: one floor for all, or per group.
        relative: the knapsack values a unit by its share of its group's kept scores.
        round_to: the uniform allocation keeps counts :func:`~compactnn.budget.aligned_down`
            allows (multiples of ``round_to``, fewer than it, or the whole group); the
            knapsack ignores it (the final selection aligns its counts).
        full: with ``round_to`` > 1, each group's width in the input model: the allowed counts
            and the uniform fraction are taken of it, not of the units still alive (a group cut
            to 35 of 50 during the run keeps 32, not 35).
    """

    scores: Mapping[str, Tensor]
    alive: Mapping[str, Tensor]
    cost: Callable[[Mapping[str, int]], dict[str, float]]
    marginal: Callable[[Mapping[str, int], str], dict[str, float]]
    budget: Mapping[str, float]
    min_keep: int | Mapping[str, int] = 1
    relative: bool = False
    round_to: int = 1
    full: Mapping[str, int] | None = None

    def floors(self) -> dict[str, int]:
        """Group -> the fewest units it keeps."""
        if isinstance(self.min_keep, Mapping):
            return dict(self.min_keep)
        return dict.fromkeys(self.alive, int(self.min_keep))

    def over(self, cost: Mapping[str, float]) -> list[str]:
        """The keys of the budget that ``cost`` (per key) exceeds."""
        return [k for k in self.budget if cost[k] > self.budget[k] * (1 + 1e-12)]


def knapsack(p: Allocation) -> tuple[dict[str, Tensor], bool]:
    """Greedy knapsack: drop, one at a time, the kept unit of smallest *value per unit cost*
    until ``p.cost(counts) <= p.budget`` for every key.

    A unit's value is its score (additive: e.g. a first-order estimate of the loss it
    protects). With ``p.relative`` it is its score's share of its group's kept scores (``s_i / sum_{j kept}
    s_j``): the greedy then maximises ``sum_g log(sum_{i kept in g} s_i)``, so a group's last
    units grow dear as it thins and no layer is emptied for the sake of another (additive
    scores would trade a conv layer's last filters for hundreds of cheap neurons). A unit's cost
    is the sum over the keys still over budget of its marginal cost divided by the key's budget.
    Within a group the unit of smallest score goes first (ties: the lower index). Returns the
    kept masks (group -> bool over its units) and whether the budget was reached (``False``:
    every group at ``min_keep``).
    """
    scores, alive, budget, relative = p.scores, p.alive, p.budget, p.relative
    counts = {r: int(a.sum()) for r, a in alive.items()}
    floor = p.floors()
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
        c = p.cost(counts)
        over = p.over(c)
        if not over:
            return keep, True
        best, best_ratio = None, math.inf
        for r in scores:
            if counts[r] <= floor[r]:
                continue
            m = p.marginal(counts, r)
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


def uniform_allocation(p: Allocation) -> tuple[dict[str, Tensor], bool]:
    """The counts of a *uniform* kept fraction: the largest
    fraction ``x`` such that every group keeping ``ceil(x n_g)`` of its ``n_g`` alive units
    (at least its floor) fits the budget (bisection: costs grow with the counts), then the
    group with the smallest kept fraction grows by one unit while that still fits (ties: the
    earlier group). Inside a group the units of highest score are kept (``p.marginal`` and
    ``p.relative`` are the knapsack's). Returns the kept masks and whether the budget was reached
    (``False``: the floors alone are over it)."""
    scores, alive = p.scores, p.alive
    n = {r: int(a.sum()) for r, a in alive.items()}
    floor = p.floors()

    rt = p.round_to
    big = dict(p.full) if p.full is not None and rt > 1 else n  # the widths counts align to
    top = {r: aligned_down(n[r], big[r], rt) for r in n}  # the most a group can keep

    def counts(x: float) -> dict[str, int]:
        return {r: max(min(floor[r], n[r]),
                       min(top[r], aligned_down(math.ceil(x * big[r] - 1e-12), big[r], rt)))
                for r in n}  # fmt: skip

    def fits(c: Mapping[str, int]) -> bool:
        return not p.over(p.cost(c))

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
            for r in sorted(n, key=lambda r: c[r] / max(big[r], 1)):  # stable: earlier first
                up = aligned_up(c[r], big[r], rt)
                if c[r] < top[r] and up <= n[r] and fits({**c, r: up}):
                    c[r] = up
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
    round_to: int = 1,
    full: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """The kept units at the target, exact on physically measured models: the knapsack on the
    cost model, then units dropped while the measured model is over the target and added back
    (best score per cost first) while one still fits. A latency target of the latency model:
    over it, the allocation again at the budget scaled by the measured error (:func:`_allot_again`)
    before units go one by one; a unit added back only where the prediction times the last
    measured error fits; the counts then snapped off latency cliffs (:meth:`CostModel.snap`)
    and, with ``round_to`` > 1, aligned (:func:`_aligned`; ``full``: each group's width in
    the input model, default its width now)."""
    budget = target.as_dict()
    alive = {g.rep: torch.ones(g.size, dtype=torch.bool) for g in groups}

    def allot(b: Mapping[str, float]) -> dict[str, Tensor]:
        problem = Allocation(scores, alive, costs.cost, costs.marginal, b, min_keep, relative,
                             round_to, full)  # fmt: skip
        return _ALLOCATE[allocation](problem)[0]

    keep = allot(budget)
    lat = costs.lat_cost is not None and "latency" in budget
    err = {"latency": 1.0}  # measured / predicted latency at the last measurement

    def n_of(k: Mapping[str, Tensor]) -> dict[str, int]:
        return {g.rep: int(k[g.rep].sum()) for g in groups}

    def predicted_over(k: Mapping[str, Tensor]) -> bool:
        """Over the target on a key the cost model gives exactly (params, MACs), or on the
        latency model's prediction corrected by the last measured error."""
        c = costs.cost(n_of(k))
        keys = [*costs.exact, "latency"] if lat else costs.exact
        c["latency"] = c.get("latency", 0.0) * err["latency"]
        return any(c[key] > budget[key] * (1 + 1e-9) for key in keys if key in budget)

    def measured(k: Mapping[str, Tensor]) -> dict[str, float]:
        got = costs.measured(model, n_of(k))
        if lat:
            err["latency"] = got["latency"] / max(costs.cost(n_of(k))["latency"], 1e-12)
        return got

    got = measured(keep)
    if lat:  # one measurement per try, not one per unit dropped
        keep, got = _allot_again(allot, measured, budget, keep, got)
    # drop while the measured model is over the target
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
    kept = _snapped(keep, costs.snap(n_of(keep), min_keep), scores)
    if round_to <= 1:
        return kept

    def fits(k: Mapping[str, Tensor]) -> bool:
        if predicted_over(k):
            return False
        got = measured(k)
        return all(got[key] <= budget[key] * (1 + 1e-12) for key in budget)

    full = full or {g.rep: g.size for g in groups}
    return _aligned(kept, groups, scores, min_keep, round_to, fits, full)


def _aligned(
    kept: Mapping[str, list[int]],
    groups: Sequence[_Group],
    scores: Mapping[str, Tensor],
    min_keep: Mapping[str, int],
    round_to: int,
    fits: Callable[[Mapping[str, Tensor]], bool],
    full: Mapping[str, int],
) -> dict[str, list[int]]:
    """``kept`` with every group's count aligned (:func:`~compactnn.budget.aligned_down` of its
    ``full`` width, never under its floor): first each count down (its units of least score go;
    costs only fall), then grown in aligned steps while ``fits``
    (:func:`~compactnn.budget.fill_aligned`; a group grows by its best units not kept, no
    further than the units it has now)."""
    base: dict[str, Tensor] = {}
    for g in groups:
        dev = scores[g.rep].device  # the masks live with the scores (the CPU in the engine)
        m = torch.zeros(g.size, dtype=torch.bool, device=dev)
        idx = torch.tensor(kept[g.rep], dtype=torch.long, device=dev)
        c = max(min(min_keep[g.rep], g.size), aligned_down(len(idx), full[g.rep], round_to))
        m[idx[torch.argsort(scores[g.rep][idx], descending=True, stable=True)[:c]]] = True
        base[g.rep] = m

    def masks(counts: Mapping[str, int]) -> dict[str, Tensor]:
        """The base masks, each grown to its count by its best units not in it."""
        out = {}
        for r, m in base.items():
            extra = counts[r] - int(m.sum())
            out[r] = m
            if extra > 0:
                rest = torch.nonzero(~m).flatten()
                best = rest[torch.argsort(scores[r][rest], descending=True, stable=True)]
                out[r] = m.clone()
                out[r][best[:extra]] = True
        return out

    start = {g.rep: int(base[g.rep].sum()) for g in groups}
    counts = fill_aligned(start, full, round_to, lambda c: fits(masks(c)),
                          limit={g.rep: g.size for g in groups})  # fmt: skip
    return {r: sorted(int(i) for i in torch.nonzero(m).flatten()) for r, m in masks(counts).items()}


def _allot_again(
    allot: Callable[[Mapping[str, float]], dict[str, Tensor]],
    measured: Callable[[Mapping[str, Tensor]], dict[str, float]],
    budget: Mapping[str, float],
    keep: dict[str, Tensor],
    got: dict[str, float],
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """While the measured latency is over the budget (three times at most): the allocation
    again at the latency budget scaled by the measured error. Returns the last kept masks and
    their measured fractions."""
    scaled = dict(budget)
    for _ in range(3):
        if got["latency"] <= budget["latency"] * (1 + 1e-12):
            break
        scaled["latency"] *= budget["latency"] / got["latency"]
        keep = allot(scaled)
        got = measured(keep)
    return keep, got


def _snapped(
    keep: Mapping[str, Tensor], counts: Mapping[str, int], scores: Mapping[str, Tensor]
) -> dict[str, list[int]]:
    """The kept indices of every group once its count is ``counts[rep]`` (never more than
    kept): the kept units of least score go."""
    out = {}
    for r, k in keep.items():
        idx = torch.nonzero(k).flatten()
        top = idx[torch.argsort(scores[r][idx], descending=True, stable=True)[: counts[r]]]
        out[r] = sorted(int(i) for i in top)
    return out
