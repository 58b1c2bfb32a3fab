"""The budgeted engine's units and costs: coupling groups as rows, the exact cost model.

A coupling group (:class:`_Group`) is the unit of selection of :mod:`compactnn.methods._engine`:
its representative layer's output channels, with every layer cut together with them. Its units
are read as rows of the members' weights (:func:`_rows`). :class:`CostModel` gives the target's
keys (params / MACs / latency) as exact functions of the kept unit counts, fitted on models cut
by surgery (:func:`_cut_first`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from compactnn import surgery
from compactnn.budget import Target, latency_ratio, measure
from compactnn.methods._common import prune_filters
from compactnn.methods._engine_latency import LatencyCost
from compactnn.structure import module_device


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
        latency_model: bool = True,
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
        self.lat_cost: LatencyCost | None = None
        # the table times layers on the CPU: a model elsewhere keeps the fit on the MACs
        self.use_table = self.latency and latency_model and module_device(model).type == "cpu"
        # the keys measured on cut models: latency only where it is fitted on them (no table)
        self.sized = [k for k in self.keys if k != "latency" or not self.use_table]
        if base is not None and not {*self.sized, *self.exact} <= set(base.values):
            base = None  # measured for other keys (a MACs fraction is needed beside latency)
        self.base = base if base is not None else self._measure(model, self.sized)
        self.model = model
        # the original as it is now, for interleaved timings (the engine cuts ``model`` in place)
        self.reference = copy.deepcopy(model).eval() if self.latency else None
        n = {g.rep: g.size for g in groups}
        self.n0 = dict(n)
        full = self._frac(model)
        d = {r: max(1, n[r] // 2) for r in self.reps}
        single, reads, cuts = {}, {}, {}
        for r in self.reps:
            cut = _cut_first(model, {r: n[r] - d[r]}, self.shape)
            single[r] = self._frac(cut)
            reads[r] = _inputs_changed(model, cut)  # the layers that read group r's channels
            cuts[r] = (d[r], cut)
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
        if self.use_table:
            self.lat_cost = LatencyCost(model, n, cuts, self.shape, batch_size=self.lat,
                                        cutter=lambda c: _cut_first(model, c, self.shape))  # fmt: skip
        elif self.latency:  # latency ~ alpha + beta * macs, least squares over the measurements
            xs = torch.tensor([m["macs"] for m in self.samples], dtype=torch.float64)
            ys = torch.tensor([m["latency"] for m in self.samples], dtype=torch.float64)
            a = torch.stack([torch.ones_like(xs), xs], dim=1)
            sol = torch.linalg.lstsq(a, ys.unsqueeze(1)).solution.flatten()
            self.beta = max(float(sol[1]), 0.0)
            self.alpha = float(ys.mean() - self.beta * xs.mean())

    def _measure(self, model: nn.Module, keys: Sequence[str]) -> Any:
        keys = tuple(dict.fromkeys((*keys, *self.exact)))
        return measure(model, self.shape, keys, latency_batch_size=self.lat)

    def _frac(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        """The fractions kept by ``model``; latency only where the fit needs it (no table) or
        for a final check (``final``: timed interleaved with the original)."""
        timed = final and self.use_table
        out = self._measure(model, self.sized).fractions(self.base)
        if timed:
            out["latency"] = self.latency_fraction(model)
        if not self.use_table or not final:
            self.samples.append(out)
        return out

    def latency_fraction(self, model: nn.Module) -> float:
        """``model``'s latency over the original's, the two timed in turns: the larger of the
        ratios of the medians and of the 10th percentiles (a selection must hold however loaded
        the machine is)."""
        return latency_ratio(self.reference, model, self.shape, batch_size=self.lat).upper

    def _at(
        self, model: nn.Module, counts: Mapping[str, int], final: bool = False
    ) -> dict[str, float]:
        return self._frac(_cut_first(model, counts, self.shape), final)

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
        if self.lat_cost is not None:
            out["latency"] = self.lat_cost.fraction(counts)
        elif self.latency:
            out["latency"] = self.alpha + self.beta * out["macs"]
        return {k: out[k] for k in self.keys}

    def marginal(self, counts: Mapping[str, int], r: str) -> dict[str, float]:
        """What one unit of group ``r`` costs at ``counts`` (exact: the model is linear in
        each count alone)."""
        out = {
            k: self.a[r][k] + sum(self._b(r, h, k) * counts[h] for h in self.reps if h != r)
            for k in self.exact
        }
        if self.lat_cost is not None:
            out["latency"] = self.lat_cost.marginal(counts, r)
        elif self.latency:
            out["latency"] = self.beta * out["macs"]
        return {k: out[k] for k in self.keys}

    def measured(self, model: nn.Module, counts: Mapping[str, int]) -> dict[str, float]:
        """The fractions of the original kept when ``model`` (the original or a model cut
        from it, groups named by their ``rep``) keeps the first ``counts[rep]`` of its units,
        measured on the physically cut model."""
        cur = {r: int(model.get_submodule(r).weight.shape[0]) for r in counts}
        cut = {r: c for r, c in counts.items() if c < cur[r]}
        return self._at(model, cut, final=True) if cut else self._frac(model, final=True)

    def snap(self, counts: Mapping[str, int], floors: Mapping[str, int]) -> dict[str, int]:
        """``counts`` snapped off latency cliffs (:meth:`LatencyCost.snap`) when latency is a
        key and the latency model is used; else unchanged."""
        if self.lat_cost is None:
            return dict(counts)
        return self.lat_cost.snap(counts, floors)


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
