"""Wall-clock latency: :func:`measure_latency` (fixed thread count, warm-up, median of repeats),
:func:`measure_latency_interleaved` (several models timed in turns) and :func:`real_batch` (real
samples to time on); the result is a :class:`LatencyResult`. :func:`interleave` is the turn
taking itself, over timers of any runtime (:func:`eager_timer`; onnxruntime's is in
:mod:`compactnn.export.onnx`), :func:`timed_calls` the one timing loop."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compactnn._validation import check_int
from compactnn.errors import ConfigError, InputShapeError
from compactnn.metrics._run import _eval_no_grad, _example_input, _run_checked, _sync


def real_batch(data: Iterable[Any], batch_size: int) -> torch.Tensor | None:
    """The first ``batch_size`` inputs of ``(x, y)`` batches (cycled if there are fewer)."""
    parts: list[torch.Tensor] = []
    n = 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            return None
        parts.append(x)
        n += int(x.shape[0])
        if n >= batch_size:
            break
    if not parts:
        return None
    x = torch.cat(parts)
    if x.shape[0] < batch_size:
        x = x.repeat((batch_size + x.shape[0] - 1) // x.shape[0], *([1] * (x.dim() - 1)))
    return x[:batch_size]


@dataclass(frozen=True)
class LatencyResult:
    """Measured wall-clock latency of one forward pass of a batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    batch_size: int
    threads: int
    repeats: int
    warmup: int

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size

    @classmethod
    def from_times(
        cls, times_ms: Sequence[float], *, batch_size: int, threads: int, warmup: int
    ) -> LatencyResult:
        """Median and 10th / 90th percentiles of timed runs (milliseconds)."""
        times = sorted(times_ms)
        # inclusive: percentiles stay within the measured range (the default extrapolates)
        q = (
            statistics.quantiles(times, n=10, method="inclusive")
            if len(times) >= 2
            else [times[0]] * 9
        )
        return cls(
            median_ms=statistics.median(times),
            p10_ms=q[0],
            p90_ms=q[-1],
            batch_size=batch_size,
            threads=threads,
            repeats=len(times),
            warmup=warmup,
        )


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    inputs: torch.Tensor | None = None,
) -> LatencyResult:
    """Median wall-clock time of ``model(x)`` for a batch, in eval mode without autograd.

    Args:
        model: the model to time (its mode is restored afterwards).
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        batch_size: samples per forward pass.
        threads: ``torch.set_num_threads`` during the measurement (restored afterwards).
        warmup: untimed forward passes first.
        repeats: timed forward passes; the median is reported.
        min_time_s: keep repeating until at least this much time was measured.
        inputs: real samples to time on (their first ``batch_size`` rows, cycled if fewer);
            default: a N(0, 1) batch.

    Returns:
        LatencyResult with median / 10th / 90th percentile in milliseconds.
    """
    _check_latency_args("measure_latency", batch_size, threads, warmup, repeats)
    x = _latency_input(model, input_shape, batch_size, inputs, "measure_latency")
    times = _timed_runs(model, x, threads, warmup, repeats, min_time_s)
    return LatencyResult.from_times(times, batch_size=batch_size, threads=threads, warmup=warmup)


def _check_latency_args(fn: str, batch_size: int, threads: int, warmup: int, repeats: int) -> None:
    check_int(batch_size, "batch_size", fn, min_value=1)
    check_int(threads, "threads", fn, min_value=1)
    check_int(warmup, "warmup", fn, min_value=0)
    check_int(repeats, "repeats", fn, min_value=1)


def _latency_input(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    inputs: torch.Tensor | None,
    fn: str,
) -> torch.Tensor:
    """The batch a latency is measured on: real samples when given, else N(0, 1)."""
    x = _example_input(model, input_shape, batch_size)
    if inputs is None:
        return x.normal_()
    real = real_batch([inputs], batch_size)
    if real is None or tuple(real.shape) != tuple(x.shape):
        raise InputShapeError(
            f"{fn}: 'inputs' must be a batch of samples of shape "
            f"{tuple(input_shape)}. Got {None if real is None else tuple(real.shape[1:])}."
        )
    return x.copy_(real)


def _timed_runs(
    model: nn.Module, x: torch.Tensor, threads: int, warmup: int, repeats: int, min_time_s: float
) -> list[float]:
    """Milliseconds of ``repeats`` (at least) timed forward passes after ``warmup`` untimed ones."""
    with _threads(threads), _eval_no_grad(model):
        for _ in range(warmup):
            _run_checked(model, x)
        _sync(x.device)
        return timed_calls(lambda: (model(x), _sync(x.device)), 0, repeats, min_time_s)


def eager_timer(
    model: nn.Module, x: torch.Tensor, *, threads: int, warmup: int, repeats: int
) -> Callable[[], list[float]]:
    """One round of ``model(x)`` in eager PyTorch (``threads`` torch threads, eval mode without
    autograd, ``warmup`` untimed runs, then ``repeats`` timed ones) as a timer of
    :func:`interleave`."""
    return functools.partial(_timed_runs, model, x, threads, warmup, repeats, 0.0)


def timed_calls(
    fn: Callable[[], Any], warmup: int, repeats: int, min_time_s: float = 0.0
) -> list[float]:
    """Milliseconds of ``repeats`` (at least, and at least ``min_time_s`` in all) timed calls of
    ``fn`` after ``warmup`` untimed ones: the one timing loop of eager PyTorch and onnxruntime."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or spent < min_time_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt * 1e3)
        spent += dt
    return times


def interleave(
    rounds: int, timers: Mapping[str, Callable[[], list[float]]]
) -> dict[str, list[float]]:
    """The times of ``timers`` (each times one round of one model and returns its milliseconds)
    called in turns for ``rounds`` rounds, the order reversed every other round so that no model
    always runs first; each key's times pooled over the rounds."""
    times: dict[str, list[float]] = {k: [] for k in timers}
    items = list(timers.items())
    for rnd in range(rounds):
        for key, timer in items if rnd % 2 == 0 else items[::-1]:
            times[key] += timer()
    return times


def measure_latency_interleaved(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    rounds: int = 3,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 2,
    repeats: int = 10,
    inputs: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
) -> dict[str, LatencyResult]:
    """Latencies of several models timed in turn, so that a ratio of two of them (a speed-up)
    is not the load of the machine changing between two measurements.

    Each of ``rounds`` rounds times every model (``measure_latency`` with ``warmup`` and
    ``repeats``), the order reversed every other round so that no model always runs first; a
    model's result pools its timed runs of all rounds. With no ``inputs`` every model is timed on
    the same N(0, 1) batch (one per distinct input shape).

    Args:
        input_shape: the per-sample shape, or one per key of ``models`` (models whose inputs
            differ, e.g. the stages of two networks of different widths).
        inputs: a batch for every model, or one per key of ``models``; ``None``: N(0, 1).

    Returns:
        one LatencyResult per key of ``models``.
    """
    fn = "measure_latency_interleaved"
    check_int(rounds, "rounds", fn, min_value=1)
    _check_latency_args(fn, batch_size, threads, warmup, repeats)
    if not models:
        raise ConfigError(f"{fn}: 'models' is empty; give at least one model to time.")
    shapes = _per_model(input_shape, models, "input_shape", fn)
    given = _per_model(inputs, models, "inputs", fn)
    xs: dict[str, torch.Tensor] = {}
    random: dict[tuple[int, ...], torch.Tensor] = {}  # one random batch per input shape
    for k, m in models.items():
        shape = tuple(int(d) for d in shapes[k])
        if given[k] is None:
            if shape not in random:
                random[shape] = _latency_input(m, shape, batch_size, None, fn)
            xs[k] = random[shape]
        else:
            xs[k] = _latency_input(m, shape, batch_size, given[k], fn)
    times = interleave(
        rounds,
        {
            k: eager_timer(m, xs[k], threads=threads, warmup=warmup, repeats=repeats)
            for k, m in models.items()
        },
    )
    return {
        k: LatencyResult.from_times(t, batch_size=batch_size, threads=threads, warmup=warmup)
        for k, t in times.items()
    }


def _per_model(value: Any, models: Mapping[str, nn.Module], name: str, fn: str) -> dict[str, Any]:
    """``value`` for every key of ``models``: itself, or its entry when it is a mapping (whose
    keys must be those of ``models``)."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(models, value)
    if set(value) != set(models):
        raise ConfigError(
            f"{fn}: '{name}' given per model must have the keys of 'models' "
            f"{sorted(models)}; got {sorted(value)}."
        )
    return {k: value[k] for k in models}
