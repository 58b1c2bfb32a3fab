"""A measured latency model: the wall-clock time of a model predicted from its layers' widths.

Every Conv2d / Linear layer of a model is a *site* (:class:`LayerSite`): the layer at its real
per-sample input shape, with the layers that follow it channel by channel folded in (BatchNorm,
activations, pooling, dropout: their cost follows the layer's output width). A site is timed
alone, one thread, on a grid of (input width, output width) pairs (:func:`width_grid`: 1, a
quarter, a half, three quarters and all of each width that can change), for a runtime (``eager``:
NCHW; ``channels_last``: the layer and its input in NHWC) and a batch size; widths between grid
points are interpolated bilinearly. What the sites do not cover (the input's conversion,
Flatten, functional ops, Python dispatch) is one measured constant: :meth:`LatencyModel.calibrate`
fits it, with a common scale, on models timed whole (the full model, and cut ones where a caller
can cut: layers timed alone do not add up to the model they were cut from).

Timings are cached on disk (:class:`LatencyTable`), one JSON file per (CPU model, torch version,
runtime, batch size, threads) under ``$COMPACTNN_CACHE/latency`` (default
``~/.cache/compactnn/latency``), keyed by the site's signature (type, per-sample spatial shape,
kernel, stride, padding, dilation, groups, bias, folded layers) and the widths: a second process
on the same machine measures nothing again.

:func:`snap_count` is the pure rule that keeps widths off latency cliffs: given the predicted
time of every width up to a count, the largest width that is not measured slower than a smaller
one beyond the table's own per-unit trend.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn.errors import ConfigError
from compactnn.metrics._run import _run_hooked
from compactnn.metrics.latency import _timed_runs, interleave

__all__ = [
    "RUNTIMES",
    "LayerSite",
    "LatencyTable",
    "LatencyModel",
    "cpu_model",
    "find_sites",
    "snap_count",
    "width_grid",
]

#: the runtimes a latency table is measured for
RUNTIMES = ("eager", "channels_last")

#: layers whose cost follows the width of the layer they read (folded into its site)
_FOLLOWERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.LocalResponseNorm,
)  # fmt: skip
#: cache file format version (bump when the timing protocol changes)
_VERSION = 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("COMPACTNN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "compactnn") / "latency"


# ---------------------------------------------------------------------------------- sites
@dataclass
class LayerSite:
    """One Conv2d / Linear layer as the latency model times it.

    Attributes:
        name: the layer's dotted path in the model.
        module: a copy of the layer (its geometry; the weights are not used).
        in_shape: its per-sample input shape in the model (``(C, H, W)`` or ``(F,)``).
        followers: copies of the layers folded in (applied to its output, in order).
    """

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    followers: list[nn.Module] = field(default_factory=list)

    @property
    def in_width(self) -> int:
        return int(self.in_shape[0])

    @property
    def out_width(self) -> int:
        m = self.module
        return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)

    @property
    def depthwise(self) -> bool:
        m = self.module
        return isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels

    def signature(self) -> str:
        """Everything that changes the time of a width pair, except the widths."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            geo = (m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode,
                   "dw" if self.depthwise else m.groups)  # fmt: skip
            head = f"conv2d{geo}bias={m.bias is not None}hw={tuple(self.in_shape[1:])}"
        else:
            head = f"linear bias={m.bias is not None} rest={tuple(self.in_shape[1:])}"
        tail = "|".join(_follower_key(f) for f in self.followers)
        return f"{head}|{tail}"

    def build(self, cin: int, cout: int) -> nn.Module:
        """The site at ``cin`` input and ``cout`` output units, its followers after it, in eval
        mode (random weights: dense time does not depend on their values)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            groups = cin if self.depthwise else m.groups
            if self.depthwise:
                cout = cin * (m.out_channels // m.in_channels)
            layer: nn.Module = nn.Conv2d(
                cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups,  # type: ignore[arg-type]
                m.bias is not None, m.padding_mode,
            )  # fmt: skip
        else:
            layer = nn.Linear(cin, cout, bias=m.bias is not None)
        mods = [layer]
        for f in self.followers:
            if isinstance(f, nn.BatchNorm2d):
                mods.append(nn.BatchNorm2d(cout))
            elif isinstance(f, nn.BatchNorm1d):
                mods.append(nn.BatchNorm1d(cout))
            else:
                mods.append(copy.deepcopy(f))
        return nn.Sequential(*mods).eval()


def _follower_key(m: nn.Module) -> str:
    return type(m).__name__ if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) else repr(m)


def find_sites(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSite]:
    """The Conv2d / Linear layers of ``model`` in execution order, each with its per-sample
    input shape and the channel-wise layers that read its output directly (one hooked forward
    pass of a zero batch of 2; the model's mode and the global RNG are left as they were)."""
    order: list[tuple[str, nn.Module, Any, Any]] = []
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or isinstance(mod, _FOLLOWERS):

            def hook(m: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                order.append((name, m, inp[0] if inp else None, out))

            handles.append(mod.register_forward_hook(hook))
    p = next(model.parameters(), None)
    x = torch.zeros((2, *input_shape), dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else None)  # fmt: skip
    _run_hooked(model, handles, x)
    sites: list[LayerSite] = []
    last_out = None
    for name, m, inp, out in order:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            sites.append(LayerSite(name, copy.deepcopy(m).cpu(), tuple(inp.shape[1:])))
            last_out = out
        elif sites and inp is last_out and last_out is not None:
            sites[-1].followers.append(copy.deepcopy(m).cpu())
            last_out = out
        else:
            last_out = None
    return sites


def width_grid(n: int, *, varies: bool = True, multiple: int = 1) -> list[int]:
    """The widths a site is timed at along one axis of full width ``n``: 1, a quarter, a half,
    three quarters and ``n`` (multiples of ``multiple``, for grouped convs); ``[n]`` when the
    width never changes."""
    if not varies or n <= 1:
        return [n]
    pts = {n, multiple}
    for q in (0.25, 0.5, 0.75):
        pts.add(max(multiple, int(round(q * n / multiple)) * multiple))
    return sorted(p for p in pts if 1 <= p <= n)


# ---------------------------------------------------------------------------------- table
class LatencyTable:
    """Measured times of sites at width pairs, cached on disk per machine and runtime.

    Args:
        runtime: ``"eager"`` (NCHW) or ``"channels_last"`` (the layer and its input in NHWC).
        batch_size: samples per timed forward pass.
        threads: torch threads while timing.
        cache_dir: the directory of the cache files (default ``$COMPACTNN_CACHE/latency``);
            ``False``: no disk cache.
        warmup, repeats: untimed and timed passes per width pair (the median is kept); the
            pairs missing from the cache are timed together, in three rounds.
    """

    def __init__(
        self,
        runtime: str = "eager",
        *,
        batch_size: int = 100,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | None | bool = None,
        warmup: int = 2,
        repeats: int = 9,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ConfigError(
                f"The latency model's runtime must be one of {list(RUNTIMES)}. Got {runtime!r}."
            )
        self.runtime, self.batch_size, self.threads = runtime, int(batch_size), int(threads)
        self.warmup, self.repeats = int(warmup), int(repeats)
        self.key = {"cpu": cpu_model(), "torch": torch.__version__, "runtime": runtime,
                    "batch_size": self.batch_size, "threads": self.threads,
                    "version": _VERSION}  # fmt: skip
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        root = None if isinstance(cache_dir, bool) else cache_dir  # True: the default place
        self.path = None if cache_dir is False else _cache_root(root) / f"{digest}.json"
        self.entries: dict[str, dict[str, float]] = self._read()
        self.measured = 0  # width pairs timed by this object (not read from the cache)
        self.seconds = 0.0  # the time spent timing them

    def _read(self) -> dict[str, dict[str, float]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache is measured again
        return dict(doc.get("entries", {})) if doc.get("key") == self.key else {}

    def save(self) -> None:
        """Write the entries (merged with what another process wrote meanwhile), atomically;
        an unwritable cache directory only costs the measurements next time."""
        if self.path is None:
            return
        merged = self._read()
        for sig, pts in self.entries.items():
            merged.setdefault(sig, {}).update(pts)
        self.entries = merged
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, "entries": merged}, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass

    def has(self, site: LayerSite, cin: int, cout: int) -> bool:
        return f"{cin},{cout}" in self.entries.get(site.signature(), {})

    def time(self, site: LayerSite, cin: int, cout: int) -> float:
        """Milliseconds of the site at ``cin`` x ``cout`` (measured once, then cached)."""
        got = self.entries.get(site.signature(), {}).get(f"{int(cin)},{int(cout)}")
        if got is None:
            self.ensure([(site, cin, cout)])
            got = self.entries[site.signature()][f"{int(cin)},{int(cout)}"]
        return float(got)

    def ensure(self, pairs: Iterable[tuple[LayerSite, int, int]]) -> None:
        """Measure every (site, cin, cout) not cached yet (:meth:`_measure_all`), then save."""
        todo = {(s.signature(), int(a), int(b)): (s, int(a), int(b)) for s, a, b in pairs
                if not self.has(s, a, b)}  # fmt: skip
        if todo:
            self._store(list(todo.values()), self._measure_all(list(todo.values())), keep_min=False)

    def retime(self, pairs: Iterable[tuple[LayerSite, int, int]]) -> None:
        """Time the pairs again and keep, per pair, the lower of the two medians (load only
        adds time)."""
        items = list(
            {(s.signature(), int(a), int(b)): (s, int(a), int(b)) for s, a, b in pairs}.values()
        )
        if items:
            self._store(items, self._measure_all(items), keep_min=True)

    def _store(
        self, items: list[tuple[LayerSite, int, int]], ms: list[float], keep_min: bool
    ) -> None:
        for (site, a, b), t in zip(items, ms, strict=True):
            row = self.entries.setdefault(site.signature(), {})
            pt = f"{a},{b}"
            row[pt] = min(float(row.get(pt, t)), t) if keep_min else t
        self.save()

    def _measure_all(self, items: list[tuple[LayerSite, int, int]], rounds: int = 3) -> list[float]:
        """The median milliseconds of every item, timed in ``rounds`` rounds over all of them
        (the order reversed every other round), so that the load of a shared machine changing
        while they are timed is spread over every item alike (as
        :func:`~compactnn.metrics.measure_latency_interleaved` does for whole models)."""
        t0 = time.perf_counter()
        per_round = max(1, -(-self.repeats // rounds))
        started: set[int] = set()

        def timer(i: int) -> Callable[[], list[float]]:
            def one_round() -> list[float]:  # the full warm-up before an item's first round only
                warmup = 1 if i in started else self.warmup
                started.add(i)
                return self._runs(*items[i], per_round, warmup)

            return one_round

        # each round builds the layer and its batch again: one item's tensors live at a time
        times = interleave(rounds, {str(i): timer(i) for i in range(len(items))})
        self.measured += len(items)
        self.seconds += time.perf_counter() - t0
        return [float(statistics.median(times[str(i)])) for i in range(len(items))]

    def _runs(self, site: LayerSite, cin: int, cout: int, repeats: int, warmup: int) -> list[float]:
        """Milliseconds of ``repeats`` timed passes of the site at ``cin`` x ``cout``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            mod = site.build(cin, cout)
            x = torch.randn(self.batch_size, cin, *site.in_shape[1:], device="cpu")  # CPU timings
        if self.runtime == "channels_last" and x.dim() == 4:
            mod = mod.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return _timed_runs(mod, x, self.threads, warmup, repeats, 0.0)


# ---------------------------------------------------------------------------------- model
def _interp(xs: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and the weight of the upper one (linear
    extrapolation from the last two outside the grid)."""
    if len(xs) == 1:
        return 0, 0, 0.0
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    return i, i + 1, (x - xs[i]) / (xs[i + 1] - xs[i])


class LatencyModel:
    """Predicted latency (ms) of ``model`` at other layer widths: the sum of its sites'
    interpolated times plus a calibrated constant.

    Args:
        model: the model (not modified; its sites are copied).
        input_shape: per-sample input shape.
        table: the timings (default: an eager NCHW :class:`LatencyTable`, batch 100).
        varies: per site name, whether its (input, output) widths can change; default: the
            input of every site but the first, the output of every site but the last.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        table: LatencyTable | None = None,
        *,
        varies: Mapping[str, tuple[bool, bool]] | None = None,
    ) -> None:
        self.table = table if table is not None else LatencyTable()
        self.sites = find_sites(model, input_shape)
        if not self.sites:
            raise ConfigError(
                "The latency model needs at least one Conv2d or Linear layer; the model has none."
            )
        last = len(self.sites) - 1
        self.varies = {s.name: (i > 0, i < last) for i, s in enumerate(self.sites)}
        self.varies.update(dict(varies or {}))
        self.grids: dict[str, tuple[list[int], list[int]]] = {}
        for s in self.sites:
            vin, vout = self.varies[s.name]
            mult = s.module.groups if isinstance(s.module, nn.Conv2d) and not s.depthwise else 1
            gin = width_grid(s.in_width, varies=vin, multiple=mult)
            gout = width_grid(s.out_width, varies=vout, multiple=mult)
            if s.depthwise:  # one axis: (c, c x depth multiplier)
                gin = width_grid(s.in_width, varies=vin or vout)
                gout = [g * (s.out_width // s.in_width) for g in gin]
            self.grids[s.name] = (gin, gout)
        self.full = {s.name: (s.in_width, s.out_width) for s in self.sites}
        self.table.ensure(self._grid_pairs())
        self.residual = 0.0
        self.scale = 1.0

    def _grid_pairs(self) -> list[tuple[LayerSite, int, int]]:
        out = []
        for s in self.sites:
            gin, gout = self.grids[s.name]
            if s.depthwise:
                out += [(s, a, b) for a, b in zip(gin, gout, strict=True)]
            else:
                out += [(s, a, b) for a in gin for b in gout]
        return out

    def site_ms(self, site: LayerSite, cin: float, cout: float) -> float:
        """The site's time at ``cin`` x ``cout``: measured if that pair is in the table, else
        bilinear between the grid points around it."""
        if site.depthwise:  # one input channel per group: the output follows the input
            cout = cin * (site.out_width // site.in_width)
        if float(cin).is_integer() and float(cout).is_integer():
            if self.table.has(site, int(cin), int(cout)):
                return self.table.time(site, int(cin), int(cout))
        gin, gout = self.grids[site.name]
        t = self.table.time
        i0, i1, wi = _interp(gin, cin)
        if site.depthwise:
            return max(0.0, (1 - wi) * t(site, gin[i0], gout[i0]) + wi * t(site, gin[i1], gout[i1]))
        o0, o1, wo = _interp(gout, cout)
        low = (1 - wo) * t(site, gin[i0], gout[o0]) + wo * t(site, gin[i0], gout[o1])
        high = (1 - wo) * t(site, gin[i1], gout[o0]) + wo * t(site, gin[i1], gout[o1])
        return max(0.0, (1 - wi) * low + wi * high)

    def raw(self, widths: Mapping[str, tuple[float, float]] | None = None) -> float:
        """The sum of the sites' times at ``widths`` (site -> (in, out); missing: full)."""
        widths = widths or {}
        return sum(self.site_ms(s, *widths.get(s.name, self.full[s.name])) for s in self.sites)

    def calibrate(self, points: float | Sequence[tuple[Mapping[str, Any] | None, float]]) -> None:
        """Fit ``measured ~ residual + scale x sum of the sites`` on measured models.

        ``points``: ``(widths, ms)`` pairs (``widths`` as :meth:`predict` takes them, None for
        the full model), or the full model's measured milliseconds alone. Layers timed alone do
        not add up to the model (timed in a chain, a cut LeNet took 8.2 ms where its layers
        alone took 4.3; the full one matched): with two or more models, the least-squares line
        with ``residual >= 0`` and ``scale > 0`` (else the line through the origin); with one,
        the difference to the full model is a constant when the sites sum to less, else a
        common scale."""
        pts = [(None, float(points))] if isinstance(points, (int, float)) else list(points)
        xs = [self.raw(w) for w, _ in pts]
        ys = [float(ms) for _, ms in pts]
        if len(pts) >= 2 and max(xs) - min(xs) > 1e-9 * max(xs):
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            var = sum((x - mx) ** 2 for x in xs)
            scale = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
            if scale > 0 and my - scale * mx >= 0:
                self.scale, self.residual = scale, my - scale * mx
            else:  # through the origin: the sites are the latency, up to a common scale
                self.scale = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(
                    x * x for x in xs
                )
                self.residual = 0.0
            return
        full, ms = xs[0], ys[0]
        self.residual, self.scale = (ms - full, 1.0) if ms >= full else (
            0.0, ms / max(full, 1e-12))  # fmt: skip

    def predict(self, widths: Mapping[str, tuple[float, float]] | None = None) -> float:
        """Predicted milliseconds at ``widths`` (site -> (in, out) widths; missing: full)."""
        return self.scale * self.raw(widths) + self.residual

    def fraction(self, widths: Mapping[str, tuple[float, float]] | None = None) -> float:
        """``predict(widths) / predict()``: the fraction of the full model's latency kept."""
        return self.predict(widths) / max(self.predict(), 1e-12)

    def widths_of(self, model: nn.Module) -> dict[str, tuple[int, int]] | None:
        """The (in, out) widths of every site in ``model`` (a model cut from the original, its
        layers under the same names), or None where a site is missing or was replaced."""
        mods = dict(model.named_modules())
        out = {}
        for s in self.sites:
            m = mods.get(s.name)
            if type(m) is not type(s.module):
                return None
            if isinstance(m, nn.Conv2d):
                cin = m.in_channels
                out[s.name] = (cin, m.out_channels)
            else:
                assert isinstance(m, nn.Linear)
                out[s.name] = (m.in_features, m.out_features)
        return out

    def info(self) -> dict[str, Any]:
        """What the table is and what it cost: for reports."""
        t = self.table
        return {"runtime": t.runtime, "batch_size": t.batch_size, "threads": t.threads,
                "cpu": t.key["cpu"], "sites": len(self.sites),
                "grid_points": sum(len(a) * len(b) for a, b in self.grids.values()),
                "timed_now": t.measured, "timing_seconds": round(t.seconds, 3),
                "residual_ms": self.residual, "scale": self.scale,
                "cache": None if t.path is None else str(t.path)}  # fmt: skip


# ---------------------------------------------------------------------------------- snapping
def snap_count(times: Mapping[int, float], count: int, *, rel_tol: float = 0.02) -> int:
    """The largest width ``c <= count`` of ``times`` (width -> predicted ms) that is not
    measured slower than a smaller width beyond the table's own per-unit trend.

    The trend ``s`` is the larger of the Theil-Sen slope of the table (the median of the
    pairwise slopes between widths ``<= count``: robust to a cliff) and its secant (first to last
    width: a staircase's median slope is 0), at least 0. Width ``c`` is slower than a smaller
    ``c'`` when ``t(c) > t(c') + s (c - c') + rel_tol t(c')``. A cliff (96 channels 1.4x slower
    than 95) is then never kept: the count snaps below it; a table that grows with the width
    as its trend keeps ``count``; a staircase (flat within blocks of 8, a step at each block)
    snaps to the end of the last whole block.

    Raises:
        ConfigError: no width ``<= count`` in ``times``.
    """
    pts = sorted((int(c), float(t)) for c, t in times.items() if int(c) <= count)
    if not pts:
        raise ConfigError(f"snap_count: the table has no width at or under {count}.")
    slopes = [(tb - ta) / (cb - ca) for i, (ca, ta) in enumerate(pts) for cb, tb in pts[i + 1 :]]
    s = 0.0
    if slopes:  # the larger of the median slope and the secant: a staircase's median is 0
        s = max(0.0, statistics.median(slopes), slopes[len(pts) - 2])
    best = pts[0][0]
    for j, (c, t) in enumerate(pts):
        if all(t <= tp + s * (c - cp) + rel_tol * tp for cp, tp in pts[:j]):
            best = c
    return best
