"""Budgets: what the user asks for (``Target``), how it is measured, and the calibration search.

A :class:`Target` is a fraction of the original model *kept*: ``Target(macs=0.1)`` asks for a
model with at most 10 % of the original multiply-accumulates ("10x fewer MACs"). Keys:

* ``params``  -- stored parameters (:func:`compactnn.metrics.count_params`: sparse layers count
  their COO storage);
* ``macs``    -- multiply-accumulates per sample (``torch.utils.flop_counter`` / 2);
* ``latency`` -- median wall-clock of a forward pass (batch 100, one thread by default).

Several keys may be given: all must hold. Every measurement is taken on a *physically* compressed
candidate model, never estimated from a mask.

:func:`search` is the one calibration loop: given a monotone map ``strength -> kept fraction``
(a larger strength removes more), it brackets and bisects for the *weakest* strength whose model
meets the target (the largest model within budget), on a log or linear scale. Methods supply the
map (run a cheap proxy of themselves at a strength, measure the candidate); the search never sees
a model and never looks at accuracy, so nothing in it can peek at the test set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compactnn import metrics  # module attribute: looked up at call time (tests patch it)
from compactnn._validation import check_float
from compactnn.errors import ConfigError
from compactnn.metrics import count_flops, count_params

__all__ = [
    "TARGET_KEYS",
    "Target",
    "Measure",
    "measure",
    "measure_kept",
    "latency_ratio",
    "LatencyRatio",
    "Strength",
    "SearchResult",
    "search",
    "aligned_down",
    "aligned_up",
    "fill_aligned",
]

TARGET_KEYS = ("params", "macs", "latency")


@dataclass(frozen=True)
class Target:
    """A budget: fractions of the original model kept (each in ``(0, 1]``).

    Attributes:
        params: fraction of stored parameters kept (``0.1`` = 10x smaller).
        macs: fraction of multiply-accumulates per sample kept.
        latency: fraction of the measured latency kept (batch ``latency_batch_size``,
            ``latency_threads`` threads).
        tolerance: relative slack with which a result still counts as meeting the target
            (``met`` is ``kept <= value * (1 + tolerance)`` for every key). The search itself
            aims at ``kept <= value``.
    """

    params: float | None = None
    macs: float | None = None
    latency: float | None = None
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        given = [k for k in TARGET_KEYS if getattr(self, k) is not None]
        if not given:
            raise ConfigError(
                "A target needs at least one of params=, macs=, latency= (the fraction of the "
                "original kept, e.g. Target(macs=0.1) for 10x fewer MACs)."
            )
        for k in given:
            v = check_float(
                getattr(self, k), k, "Target", min_value=0.0, max_value=1.0, min_inclusive=False
            )
            object.__setattr__(self, k, v)
        check_float(self.tolerance, "tolerance", "Target", min_value=0.0, max_value=1.0)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in TARGET_KEYS if getattr(self, k) is not None)

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.keys}

    @classmethod
    def parse(cls, value: Any) -> Target:
        """A ``Target``, a mapping ``{"macs": 0.1}`` or a string ``"macs=0.1[,params=0.2]"``."""
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            items: dict[str, Any] = {}
            for part in value.replace(";", ",").split(","):
                if not part.strip():
                    continue
                key, sep, raw = part.partition("=")
                if not sep:
                    raise ConfigError(
                        f"Cannot read the target {value!r}: write KEY=FRACTION pairs such as "
                        "'macs=0.1' or 'params=0.2,macs=0.1' (keys: params, macs, latency)."
                    )
                try:
                    items[key.strip()] = float(raw)
                except ValueError:
                    raise ConfigError(
                        f"The target value for '{key.strip()}' must be a number (a fraction "
                        f"kept, e.g. 0.1). Got {raw.strip()!r} instead."
                    ) from None
            value = items
        if not isinstance(value, Mapping):
            raise ConfigError(
                "The 'target' argument must be a compactnn.Target, a mapping such as "
                f"{{'macs': 0.1}} or a string 'macs=0.1'. Got {type(value).__name__} instead."
            )
        unknown = sorted(set(value) - {*TARGET_KEYS, "tolerance"})
        if unknown:
            raise ConfigError(
                f"Unknown target key(s) {unknown}; use params, macs or latency (fractions kept)."
            )
        return cls(**dict(value))

    def slack(self, kept: Mapping[str, float]) -> float:
        """``max_k kept[k] / target[k]``: <= 1 means within budget."""
        return max(kept[k] / getattr(self, k) for k in self.keys)

    def met(self, kept: Mapping[str, float]) -> bool:
        return self.slack(kept) <= 1.0 + self.tolerance + 1e-12


@dataclass(frozen=True)
class Measure:
    """Absolute size of a model under the target's keys (``latency`` in ms)."""

    values: dict[str, float]

    def fractions(self, original: Measure) -> dict[str, float]:
        return {k: self.values[k] / original.values[k] for k in self.values}


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    keys: Sequence[str],
    *,
    latency_batch_size: int = 100,
    latency_threads: int = 1,
) -> Measure:
    """Measure ``model`` under ``keys`` (params, macs, latency) on the model as it is."""

    out: dict[str, float] = {}
    for k in keys:
        if k == "params":
            out[k] = float(count_params(model))
        elif k == "macs":
            out[k] = count_flops(model, input_shape) / 2.0
        elif k == "latency":
            out[k] = metrics.measure_latency(
                model,
                input_shape,
                batch_size=latency_batch_size,
                threads=latency_threads,
                warmup=5,
                repeats=30,
            ).median_ms
        else:  # pragma: no cover - keys come from Target
            raise ConfigError(f"Unknown target key {k!r}.")
    return Measure(out)


@dataclass(frozen=True)
class LatencyRatio:
    """A model's latency against the original's, the two timed in turns (ms).

    Attributes:
        ratio: the model's median over the original's (the ``latency`` a target keeps).
        quiet: the same of the 10th percentiles: the machine at its least loaded. On a shared
            machine the two can differ by a third (LeNet's original, memory-bound, slowed from
            25 to 38 ms under other jobs' load while a cut model held 8.4-8.9 ms).
    """

    ratio: float
    quiet: float
    original_ms: float
    model_ms: float

    @property
    def upper(self) -> float:
        """The larger of the two: what a choice that must hold under any load looks at."""
        return max(self.ratio, self.quiet)


def latency_ratio(
    original: nn.Module,
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 100,
    threads: int = 1,
    rounds: int = 15,
    repeats: int = 3,
) -> LatencyRatio:
    """``model``'s latency against ``original``'s, the two timed in turns
    (:func:`~compactnn.metrics.measure_latency_interleaved`, ``rounds`` short rounds of
    ``repeats`` runs each, so that the load of the machine changing falls on both alike)."""
    got = metrics.measure_latency_interleaved(
        {"original": original, "model": model}, input_shape, rounds=rounds,
        batch_size=batch_size, threads=threads, warmup=1, repeats=repeats,
    )  # fmt: skip
    a, b = got["original"], got["model"]
    return LatencyRatio(b.median_ms / a.median_ms, b.p10_ms / a.p10_ms, a.median_ms, b.median_ms)


def measure_kept(
    original: nn.Module,
    model: nn.Module,
    input_shape: Sequence[int],
    keys: Sequence[str],
    *,
    latency_batch_size: int = 100,
    latency_threads: int = 1,
    upper: bool = False,
) -> dict[str, float]:
    """The fractions of ``original`` that ``model`` keeps under ``keys``: params / MACs
    measured on each, latency timed interleaved (:func:`latency_ratio`: the ratio of the
    medians, or with ``upper`` the larger of it and the ratio of the 10th percentiles)."""
    exact = [k for k in keys if k != "latency"]
    out = measure(model, input_shape, exact).fractions(measure(original, input_shape, exact))
    if "latency" in keys:
        r = latency_ratio(original, model, input_shape, batch_size=latency_batch_size,
                          threads=latency_threads)  # fmt: skip
        out["latency"] = r.upper if upper else r.ratio
    return {k: out[k] for k in keys}


@dataclass(frozen=True)
class Strength:
    """The scalar a method's budget search moves (larger = smaller model).

    Attributes:
        option: what the scalar means for the method (for logs), e.g. ``"lam scale"``.
        lo, hi: the initial bracket (the search widens it when the target lies outside).
        log: bisect on a log scale (regularisation weights) or a linear one (ratios).
        bound_lo, bound_hi: hard limits of the scalar (the bracket never crosses them).
    """

    option: str
    lo: float
    hi: float
    log: bool = True
    bound_lo: float = 0.0
    bound_hi: float = math.inf


@dataclass
class SearchResult:
    """Outcome of :func:`search`.

    Attributes:
        strength: the weakest strength found whose candidate meets the target (or the strongest
            tried, with ``met=False``, when the target cannot be reached).
        kept: fractions kept at ``strength``.
        met: whether ``kept`` is within the target (``slack <= 1``).
        trace: every evaluation ``{"strength", "kept", "slack", "seconds"}`` in order.
    """

    strength: float
    kept: dict[str, float]
    met: bool
    trace: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _mid(a: float, b: float, log: bool) -> float:
    return math.sqrt(a * b) if log and a > 0 else 0.5 * (a + b)


def search(
    evaluate: Callable[[float], Mapping[str, float]],
    target: Target,
    strength: Strength,
    *,
    max_evals: int = 12,
    rel_tol: float = 0.02,
) -> SearchResult:
    """Weakest strength ``s`` with ``target.slack(evaluate(s)) <= 1``, by bracketing + bisection.

    ``evaluate(s)`` returns the fractions kept by the method at strength ``s``; it is assumed
    non-increasing in ``s`` (more strength, smaller model), which the trace lets one check.
    The bracket ``[strength.lo, strength.hi]`` is widened (x4 on a log scale, towards the bounds
    on a linear one) until it straddles the target, then bisected until the two ends are within
    ``rel_tol`` of each other or ``max_evals`` evaluations were spent.

    Raises:
        ConfigError: ``max_evals`` < 2.
    """
    if max_evals < 2:
        raise ConfigError(f"search needs max_evals >= 2. Got {max_evals} instead.")
    t0 = time.perf_counter()
    trace: list[dict[str, Any]] = []
    cache: dict[float, dict[str, float]] = {}

    def ev(s: float) -> float:
        if s not in cache:
            t = time.perf_counter()
            cache[s] = dict(evaluate(s))
            trace.append(
                {
                    "strength": s,
                    "kept": cache[s],
                    "slack": target.slack(cache[s]),
                    "seconds": time.perf_counter() - t,
                }
            )
        return target.slack(cache[s])

    def widen(s: float, up: bool) -> float:
        if strength.log:
            s = s * 4.0 if up else s / 4.0
        else:
            s = s + (strength.hi - strength.lo) if up else s - (strength.hi - strength.lo)
        return min(max(s, strength.bound_lo), strength.bound_hi)

    lo, hi = strength.lo, strength.hi
    # widen the bracket until hi meets the target and lo does not
    while ev(hi) > 1.0 and len(trace) < max_evals:
        nxt = widen(hi, up=True)
        if nxt == hi:
            break
        lo, hi = hi, nxt
    if ev(hi) > 1.0:  # cannot reach the target
        return SearchResult(hi, cache[hi], False, trace, time.perf_counter() - t0)
    while ev(lo) <= 1.0 and len(trace) < max_evals:
        nxt = widen(lo, up=False)
        if nxt == lo:
            break
        lo, hi = nxt, lo
    if ev(lo) <= 1.0:  # even the weakest strength meets it
        return SearchResult(lo, cache[lo], True, trace, time.perf_counter() - t0)
    while len(trace) < max_evals:
        width = (hi / lo - 1.0) if strength.log and lo > 0 else (hi - lo) / max(abs(hi), 1e-12)
        if width <= rel_tol:
            break
        mid = _mid(lo, hi, strength.log)
        if ev(mid) <= 1.0:
            hi = mid
        else:
            lo = mid
    return SearchResult(hi, cache[hi], True, trace, time.perf_counter() - t0)


# ------------------------------------------------------------------------- channel alignment
def aligned_down(count: int, units: int, round_to: int) -> int:
    """The largest count <= ``count`` that a layer of ``units`` units may keep under
    ``round_to``: all its units, a multiple of ``round_to``, or fewer than ``round_to`` units
    (a budget too small for one block still gets a layer). ``round_to`` 1: ``count`` itself.

    Runtimes compute channels in blocks (onnxruntime's NCHWc and oneDNN's blocked layouts: 8
    floats with AVX2, 16 with AVX-512): a conv whose input channels are not a multiple of the
    block falls back to a slower path, and its output is padded to the block. LeNet-Caffe at
    25 % MACs, onnxruntime at batch 100, timed idle: 2.0-2.6x faster than the original as
    9-24-248 / 9-23-297, 4.5-5.2x as 8-24-376 (``benchmarks/results/round_to``).
    """
    count = min(int(count), int(units))
    if round_to <= 1 or count >= units or count < round_to:
        return count
    return count - count % round_to


def aligned_up(count: int, units: int, round_to: int) -> int:
    """The smallest count > ``count`` allowed by :func:`aligned_down` (``units`` at most)."""
    nxt = int(count) + 1
    if round_to <= 1 or nxt >= units or nxt < round_to:
        return min(nxt, int(units))
    return min(int(units), -(-nxt // round_to) * round_to)


def fill_aligned(
    counts: Mapping[str, int],
    widths: Mapping[str, int],
    round_to: int,
    fits: Callable[[dict[str, int]], bool],
    limit: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """``counts`` grown into a budget in aligned steps (water-filling): the key of smallest
    kept share ``counts[k] / widths[k]`` (ties: the earlier key) grows to its next allowed
    count (:func:`aligned_up` of ``widths[k]``, never past ``limit[k]``, default ``widths[k]``)
    while ``fits`` of the grown counts holds; a key whose next step does not fit is done (costs
    only grow with the counts), as is one at its limit."""
    cur = {k: int(c) for k, c in counts.items()}
    cap = dict(limit) if limit is not None else dict(widths)
    done: set[str] = set()
    while True:
        open_ = [k for k in cur if k not in done and cur[k] < cap[k]]
        if not open_:
            return cur
        k = min(open_, key=lambda k: cur[k] / max(widths[k], 1))
        up = aligned_up(cur[k], widths[k], round_to)
        step = {**cur, k: up}
        if up <= cap[k] and fits(step):
            cur = step
        else:
            done.add(k)
