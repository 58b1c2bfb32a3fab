"""The budget search shared by every method: strength -> proxy run -> physical measurement."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from compactnn import _progress, surgery
from compactnn.budget import Measure, Strength, Target, aligned_down, fill_aligned, measure, search
from compactnn.errors import ConfigError
from compactnn.methods._common import prune_filters
from compactnn.methods._engine_cost import CostModel, _groups

__all__ = [
    "fill_counts",
    "layer_scales",
    "layer_units",
    "search_strength",
    "target_record",
    "uniform_counts",
]


def layer_scales(
    model: nn.Module, layers: Sequence[str], *, stat: str = "median_row_norm"
) -> dict[str, float]:
    """Per-layer normalisers so that one global strength acts alike on every layer.

    ``median_row_norm``: the median l2 norm of a layer's filters/neurons (rows of the lowered
    weight). A group soft/hard threshold of ``s * scale`` then removes about the same share of
    every layer at the start, whatever the layer's fan-in and initialisation.
    """
    mods = dict(model.named_modules())
    out: dict[str, float] = {}
    for n in layers:
        w = mods[n].weight.detach()
        rows = w.reshape(w.shape[0], -1).norm(dim=1)
        if stat == "median_row_norm":
            v = float(rows.median())
        elif stat == "rms_row_norm":
            v = float(rows.pow(2).mean().sqrt())
        else:  # pragma: no cover - internal
            raise ConfigError(f"Unknown layer statistic {stat!r}.")
        if not math.isfinite(v) or v <= 0:
            raise ConfigError(
                f"Layer '{n}' has all-zero or non-finite weights (median filter norm {v}); a "
                "budget search cannot normalise its strength. Exclude it with layers=."
            )
        out[n] = v
    return out


def uniform_counts(
    model: nn.Module,
    layers: Sequence[str],
    target: Target,
    input_shape: Sequence[int],
    *,
    fill: bool = True,
    progress: str | None = None,
    info: dict[str, Any] | None = None,
    round_to: int = 1,
) -> tuple[dict[str, int], dict[str, float]]:
    """Per-layer unit counts that meet ``target`` when every layer keeps the same share, then
    (``fill``) grown into the budget that share leaves unused (:func:`fill_counts`).

    The share is bisected on the exact size of the candidates (which filters are kept does not
    change params / MACs): from the engine's cost model, fitted on small cuts, for params / MACs
    with one layer per coupling group, else measured on candidates cut by surgery; couplings
    (next layers' inputs, BN) are counted either way. A latency target is sized on the measured
    latency model (:class:`~compactnn.methods._engine_latency.LatencyCost`) where the cost model
    applies, and the filled counts are then snapped off latency cliffs (never more units).
    Returns the counts and the fractions kept at them. ``progress``: a label; the log then
    gets a line at most every max(10 s, the progress interval) while candidates are measured.
    ``info``: a dict that receives the latency model's description and snaps (``"latency_model"``)
    and the cost model (``"cost_model"``: passed back in the same dict, a later call on the same
    model, layers and keys reuses it, and the latency model's calibration with it).
    ``round_to``: every count aligned (:func:`~compactnn.budget.aligned_down`: a multiple of
    it, fewer than it, or the whole layer), the share and the filling in aligned steps.
    """

    sizer = _CountSizer(model, layers, target, input_shape, progress=progress,
                        cost_model=(info or {}).get("cost_model"))  # fmt: skip

    def counts(s: float) -> dict[str, int]:
        return {n: max(1, aligned_down(math.ceil((1.0 - s) * u), u, round_to))
                for n, u in sizer.units.items()}  # fmt: skip

    found = search(
        lambda s: sizer.kept(counts(s)),
        target,
        Strength("pruned share", 0.5, 0.9, log=False, bound_hi=0.999),
    )
    if not found.met:
        raise ConfigError(
            f"The target {target.as_dict()} cannot be reached by pruning {list(layers)}: one "
            f"unit in each still keeps {found.kept}. Relax the target or prune more layers."
        )
    if not fill:
        return counts(found.strength), found.kept
    got, kept = (_fill(sizer, counts(found.strength)) if round_to <= 1
                 else _fill_aligned(sizer, counts(found.strength), round_to))  # fmt: skip
    cm = sizer._cost_model()
    if cm and cm.lat_cost is not None:
        got = cm.snap(got, dict.fromkeys(got, 1))
        got = {n: max(1, aligned_down(c, sizer.units[n], round_to)) for n, c in got.items()}
        kept = sizer.kept(got)
        if info is not None:
            info["latency_model"] = cm.lat_cost.info()
            info["cost_model"] = cm  # the next call on the same model and keys reuses its fit
    return got, kept


class _CountSizer:
    """Fractions of ``model`` kept (under ``target``'s keys) when each of ``layers`` keeps its
    first ``counts[layer]`` units, measured on the candidate cut by surgery; memoised per
    counts (which units are kept does not change the sizes)."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        target: Target,
        input_shape: Sequence[int],
        *,
        progress: str | None = None,
        cost_model: Any = None,
    ) -> None:
        import time

        self.progress, self._t0 = progress, time.perf_counter()
        self._last = self._t0
        mods = dict(model.named_modules())
        self.model, self.layers, self.target, self.shape = model, list(layers), target, input_shape
        self.units = {n: int(mods[n].weight.shape[0]) for n in self.layers}
        self._base: Measure | None = None  # measured when a candidate is (not with the table)
        self._memo: dict[tuple[int, ...], dict[str, float]] = {}
        self._couplings: dict[str, Any] | None = None  # measured once, on the first cut
        self._cm: Any = cost_model  # the engine's cost model, where it applies (None: not yet)

    def _cost_model(self) -> Any:
        """The engine's :class:`~compactnn.methods._engine_cost.CostModel` of these layers when it
        applies (one layer per coupling group; params / MACs exact, latency from the measured
        latency model), else ``False``: fitted once on 1 + G + (adjacent pairs) small cuts, it
        then sizes any counts without cutting a model (a net of 35 groups took minutes of
        whole-model cuts per split)."""
        if self._cm is None:
            self._cm = False
            if len(self.layers) > 1:
                groups = _groups(self.model, self.layers, {"input_shape": list(self.shape)})
                if [g.rep for g in groups] == self.layers:
                    self._cm = CostModel(self.model, groups, self.target, self.shape,
                                         base=self._base)  # fmt: skip
        return self._cm

    def kept(self, counts: dict[str, int]) -> dict[str, float]:
        key = tuple(counts[n] for n in self.layers)
        if key not in self._memo and self._cost_model():
            self._memo[key] = self._cm.cost({n: int(counts[n]) for n in self.layers})
            self._log(self._memo[key])
        if key not in self._memo:
            keep = {n: list(range(k)) for n, k in counts.items() if k < self.units[n]}
            if len(keep) > 1 and self._couplings is None:
                meta = {"input_shape": list(self.shape)}
                self._couplings = {n: surgery.coupling(self.model, n, meta=meta)
                                   for n in self.layers}  # fmt: skip
            cand = (prune_filters(self.model, keep, self.shape, couplings=self._couplings)[0]
                    if keep else self.model)  # fmt: skip
            if self._base is None:
                self._base = measure(self.model, self.shape, self.target.keys)
            self._memo[key] = measure(cand, self.shape, self.target.keys).fractions(self._base)
            self._log(self._memo[key])
        return self._memo[key]

    def _log(self, kept: dict[str, float]) -> None:
        import time

        now = time.perf_counter()
        if self.progress is None or now - self._last < max(10.0, _progress.interval()):
            return
        self._last = now
        _progress.log(
            f"{self.progress}: budget split over {len(self.layers)} layers, "
            f"{len(self._memo)} candidate models cut and measured (last kept "
            + ", ".join(f"{k} {100 * v:.2f} %" for k, v in kept.items())
            + f"), elapsed {_progress.duration(now - self._t0)}"
        )

    def fits(self, counts: dict[str, int]) -> bool:
        """Within the target exactly (no tolerance)."""
        return self.target.slack(self.kept(counts)) <= 1.0 + 1e-12


def fill_counts(
    model: nn.Module,
    layers: Sequence[str],
    counts: dict[str, int],
    target: Target,
    input_shape: Sequence[int],
) -> tuple[dict[str, int], dict[str, float]]:
    """Grow ``counts`` into the budget the uniform share leaves unused (water-filling).

    One share for every layer is coarse: a layer of 20 filters moves in steps of 5 %, so the
    best uniform share can leave a tenth of the budget unused (LeNet at 5 % of the MACs:
    3-8-75 uses 4.01 %). Here the layer with the smallest kept share (ties: the earlier layer)
    grows, up to the next layer's share, as far as the target still holds *exactly*
    (``kept <= value``, no tolerance, sizes measured on candidates cut by surgery); a layer
    whose next unit does not fit is frozen (sizes only grow, so it never fits later). Ends when
    every layer is frozen or whole: no single unit can be added within the budget.

    Returns the grown counts and the fractions kept at them.
    """
    return _fill(_CountSizer(model, layers, target, input_shape), counts)


def _fill(sizer: _CountSizer, counts: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """:func:`fill_counts` on ``sizer``'s model, layers and target."""
    layers, units = sizer.layers, sizer.units
    cur = {n: int(counts[n]) for n in layers}
    if not sizer.fits(cur):  # the uniform search met the target only within its tolerance
        return cur, sizer.kept(cur)
    frozen = {n for n in layers if cur[n] >= units[n]}
    while len(frozen) < len(layers):
        open_ = [n for n in layers if n not in frozen]
        # the smallest kept share grows (ties: the earlier layer; min keeps the first)
        low = min(open_, key=lambda n: cur[n] / units[n])
        others = [cur[n] / units[n] for n in open_ if n != low]
        level = min(others) if others else 1.0
        hi = min(units[low], max(cur[low] + 1, math.ceil(level * units[low] - 1e-9)))
        if sizer.fits({**cur, low: hi}):
            ok = hi
        else:  # bisect the largest count in (cur, hi) that fits
            ok, bad = cur[low], hi
            while bad - ok > 1:
                mid = (ok + bad) // 2
                if sizer.fits({**cur, low: mid}):
                    ok = mid
                else:
                    bad = mid
        if ok == cur[low]:
            frozen.add(low)
            continue
        cur[low] = ok
        if ok >= units[low] or ok < hi:
            frozen.add(low)
    return cur, sizer.kept(cur)


def _fill_aligned(
    sizer: _CountSizer, counts: dict[str, int], round_to: int
) -> tuple[dict[str, int], dict[str, float]]:
    """:func:`_fill` in aligned steps (:func:`~compactnn.budget.fill_aligned`): the layer of
    smallest kept share grows to its next aligned count while the target still holds exactly
    (ties: the earlier layer); a layer whose next step does not fit is done."""
    cur = {n: int(counts[n]) for n in sizer.layers}
    if not sizer.fits(cur):  # the uniform search met the target only within its tolerance
        return cur, sizer.kept(cur)
    cur = fill_aligned(cur, sizer.units, round_to, sizer.fits)
    return cur, sizer.kept(cur)


def layer_units(model: nn.Module) -> dict[str, int]:
    """Output units (filters / neurons / rank of factorized layers) of every layer."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[n] = int(m.weight.shape[0])
    return out


def target_record(
    target: Target,
    kept: dict[str, float],
    *,
    option: str | None = None,
    strength: float | None = None,
    trace: list[dict[str, Any]] | None = None,
    seconds: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    """The ``CompressionResult.target`` record."""
    rec = {
        "target": target.as_dict(),
        "tolerance": target.tolerance,
        "kept": dict(kept),
        "met": target.met(kept),
        "option": option,
        "strength": strength,
        "trace": list(trace or []),
        "seconds": float(seconds),
    }
    rec.update(extra)
    return rec


def search_strength(
    method: Any,
    model: nn.Module,
    data: Any,
    target: Target,
    *,
    progress: bool = False,
    max_evals: int = 12,
) -> tuple[Any, dict[str, Any]]:
    """Bracket + bisect the method's strength with proxy runs on copies of ``model``.

    Each trial runs ``method.at_strength(s, model, data).proxy()`` on a deep copy of ``model``
    (global RNG state restored afterwards) and measures the returned, physically compressed
    model. The chosen method is the one at the weakest strength that meets the target.

    Raises:
        ConfigError: the method has no budget strength, or the target cannot be reached.
    """
    strength = method.strength()
    if strength is None:
        raise ConfigError(
            f"Method '{method.name}' does not take a target; set its options directly."
        )
    shape = data.require_input_shape(method.name)
    base: Measure = measure(model, shape, target.keys)
    units: dict[float, dict[str, int]] = {}

    def evaluate(s: float) -> dict[str, float]:
        trial = method.at_strength(s, model, data).proxy()
        with torch.random.fork_rng(devices=[]):
            res = trial.run(copy.deepcopy(model), data, progress=False)
        units[s] = layer_units(res.model)
        kept = measure(res.model, shape, target.keys).fractions(base)
        if progress:
            txt = ", ".join(f"{k} {100 * v:.2f} %" for k, v in kept.items())
            print(f"  {method.name} {strength.option} = {s:.4g}: kept {txt}", flush=True)
        return kept

    found = search(evaluate, target, strength, max_evals=max_evals)
    for t in found.trace:
        t["units"] = units.get(t["strength"])
    if not found.met:
        raise ConfigError(
            f"Method '{method.name}' cannot reach the target {target.as_dict()}: at the "
            f"strongest {strength.option} tried ({found.strength:.4g}) it keeps "
            f"{ {k: round(v, 4) for k, v in found.kept.items()} }. Relax the target, or prune "
            "more layers (layers=)."
        )
    chosen = method.at_strength(found.strength, model, data)
    rec = target_record(
        target,
        found.kept,
        option=strength.option,
        strength=found.strength,
        trace=found.trace,
        seconds=found.seconds,
    )
    return chosen, rec
