"""Latency as a cost of the coupling groups' kept counts, from the measured latency model.

:class:`LatencyCost` maps the kept count of every group (the engine's and the criteria's unit
of selection) to the widths of every Conv2d / Linear layer (read off models cut by surgery: a
layer's input or output width moves by a fixed number of channels / features per unit of a
group), and those widths to a predicted latency with
:class:`~compactnn.metrics.latency_model.LatencyModel` (per-layer timings on this machine, cached
per CPU model, calibrated to the full model's measured latency). :meth:`LatencyCost.snap` keeps
the final counts off latency cliffs (:func:`~compactnn.metrics.latency_model.snap_count` on the
predicted latency of every count in a window under the chosen one, the layers involved timed at
each count of the window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from compactnn.metrics import LatencyModel, LatencyTable, measure_latency_interleaved, snap_count

__all__ = ["LatencyCost", "layer_widths"]


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) width of every Conv2d / Linear layer of ``model``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (int(m.in_channels), int(m.out_channels))
        elif isinstance(m, nn.Linear):
            out[name] = (int(m.in_features), int(m.out_features))
    return out


class LatencyCost:
    """The predicted fraction of the original latency kept at the groups' kept counts.

    Args:
        model: the original model.
        sizes: group rep -> its number of units in ``model``.
        cuts: group rep -> (units removed, ``model`` with only that group cut): how many
            channels / features each layer's input and output lose per unit of the group.
        input_shape: per-sample input shape.
        cutter: ``model`` with each group ``r`` cut to its first ``counts[r]`` units (the
            calibration cuts every group to a half and to a quarter; the three models are timed
            whole, in turns, and the latency model fitted to them).
        batch_size, threads: the latency protocol (the target's).
        table: the timings (default: eager NCHW on this machine, cached on disk).
    """

    def __init__(
        self,
        model: nn.Module,
        sizes: Mapping[str, int],
        cuts: Mapping[str, tuple[int, nn.Module]],
        input_shape: Sequence[int],
        *,
        cutter: Callable[[Mapping[str, int]], nn.Module],
        batch_size: int = 100,
        threads: int = 1,
        table: LatencyTable | None = None,
    ) -> None:
        self.n0 = dict(sizes)
        self.full = layer_widths(model)
        self.coef: dict[str, dict[str, tuple[float, float]]] = {n: {} for n in self.full}
        for r, (d, cut) in cuts.items():
            got = layer_widths(cut)
            for n, (i0, o0) in self.full.items():
                i1, o1 = got.get(n, (i0, o0))
                if (i0, o0) != (i1, o1):
                    self.coef[n][r] = ((i0 - i1) / d, (o0 - o1) / d)
        varies = {n: (any(a for a, _ in c.values()), any(b for _, b in c.values()))
                  for n, c in self.coef.items()}  # fmt: skip
        table = table or LatencyTable("eager", batch_size=batch_size, threads=threads)
        self.model = LatencyModel(model, input_shape, table, varies=varies)
        models, widths = {"1": model}, {"1": None}
        for q in (0.5, 0.25):
            cand = cutter({r: max(1, round(q * n)) for r, n in self.n0.items()})
            models[str(q)], widths[str(q)] = cand, layer_widths(cand)
        got = measure_latency_interleaved(models, input_shape, rounds=3, batch_size=batch_size,
                                          threads=threads, warmup=2, repeats=8)  # fmt: skip
        self.calibration = {q: got[q].median_ms for q in models}
        self.model.calibrate([(widths[q], got[q].median_ms) for q in models])
        self.snaps: dict[str, dict[str, Any]] = {}

    def widths(self, counts: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """Every layer's (input, output) width when group ``r`` keeps ``counts[r]`` units."""
        out = {}
        for n, (i0, o0) in self.full.items():
            di = sum(
                a * (self.n0[r] - counts.get(r, self.n0[r])) for r, (a, _) in self.coef[n].items()
            )
            do = sum(
                b * (self.n0[r] - counts.get(r, self.n0[r])) for r, (_, b) in self.coef[n].items()
            )
            out[n] = (max(1.0, round(i0 - di, 6)), max(1.0, round(o0 - do, 6)))
        return out

    def fraction(self, counts: Mapping[str, float]) -> float:
        return self.model.fraction(self.widths(counts))

    def marginal(self, counts: Mapping[str, int], r: str) -> float:
        """What the last kept unit of group ``r`` costs (the next one when it keeps one)."""
        c = int(counts[r])
        if c <= 1:
            return self.fraction({**counts, r: c + 1}) - self.fraction(counts)
        return self.fraction(counts) - self.fraction({**counts, r: c - 1})

    def _window_pairs(self, counts: Mapping[str, int], r: str, lo: int) -> list[Any]:
        """(site, in, out) of the layers that follow group ``r``, at each count of ``[lo, c]``."""
        sites = [s for s in self.model.sites if r in self.coef.get(s.name, {})]
        pairs = []
        for c in range(lo, int(counts[r]) + 1):
            w = self.widths({**counts, r: c})
            pairs += [(s, int(round(w[s.name][0])), int(round(w[s.name][1]))) for s in sites]
        return pairs

    def snap(
        self, counts: Mapping[str, int], floors: Mapping[str, int], *, window: int = 8
    ) -> dict[str, int]:
        """``counts`` with each group, in turn, snapped down to the largest count of a window
        under it that is not predicted slower than a smaller count beyond the trend
        (:func:`~compactnn.metrics.latency_model.snap_count`). The layers a group changes are
        timed at every count of the window (``max(window, 10 %)`` units); a snap is confirmed by
        timing the counts it skips again (the lower of two medians: load only adds time).
        Never raises a count; this call's moves are in ``self.snaps``."""
        cur = {r: int(c) for r, c in counts.items()}
        table = self.model.table
        self.snaps = {}  # this call's moves only
        for r in list(cur):
            c = cur[r]
            lo = max(int(floors.get(r, 1)), 1, c - max(window, math.ceil(0.1 * c)))
            if c <= lo:
                continue
            pairs = self._window_pairs(cur, r, lo)
            table.ensure(pairs)  # the window's counts, timed together
            new = self._snap_one(cur, r, lo)
            if new < c:  # confirm: the skipped counts timed again, the lower median kept
                table.retime(self._window_pairs({**cur, r: c}, r, new + 1))
                new = self._snap_one(cur, r, lo)
            if new < c:
                self.snaps[r] = {"from": c, "to": new,
                                 "predicted_ms": {"from": self._ms(cur, r, c),
                                                  "to": self._ms(cur, r, new)}}  # fmt: skip
                cur[r] = new
        table.save()
        return cur

    def _ms(self, cur: Mapping[str, int], r: str, c: int) -> float:
        return self.model.predict(self.widths({**cur, r: c}))

    def _snap_one(self, cur: Mapping[str, int], r: str, lo: int) -> int:
        times = {c: self._ms(cur, r, c) for c in range(lo, cur[r] + 1)}
        return snap_count(times, cur[r])

    def report(self, model: nn.Module) -> dict[str, Any] | None:
        """The predicted milliseconds and fraction of a model cut from the original (its layers
        under the same names), with the table's description; None where a layer was replaced."""
        w = self.model.widths_of(model)
        if w is None:
            return None
        return {"predicted_ms": self.model.predict(w), "predicted_fraction": self.model.fraction(w),
                **self.info()}  # fmt: skip

    def info(self) -> dict[str, Any]:
        """The table's description, the calibration timings (ms per uniform kept fraction) and
        the snaps made."""
        return {**self.model.info(), "calibration_ms": self.calibration, "snaps": self.snaps}
