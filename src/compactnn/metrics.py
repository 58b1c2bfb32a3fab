"""Honest numbers on the model you actually get back.

Everything here is *measured* on a concrete ``nn.Module``: parameter counts (sparse modules count
their stored COO entries), FLOPs/MACs via :class:`torch.utils.flop_counter.FlopCounterMode`,
fp32 memory, wall-clock latency (fixed thread count, warm-up, median of repeats) and accuracy.

Conventions:
    * ``flops`` = floating point operations of one forward pass of ONE sample as counted by
      ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs, biases/activations not counted).
    * ``macs`` = ``flops / 2``. The papers (SSR Table I, Zhou, Kiaee) report multiply-accumulates
      under the name "FLOPs"; compare paper numbers with ``macs``.
    * ``memory_mb`` = stored parameters x 4 bytes / 2**20 (fp32; COO convention: a sparse
      non-zero counts 3 values, row, column and value).
    * ``memory_bytes`` = the bytes the model really holds: every parameter and buffer
      (``numel x element size``), so the int64 indices of sparse layers count 8 bytes each.
      ``stored_values`` = parameter elements (a sparse non-zero counts once).
    * Latency is measured on real samples when data is given (``latency_inputs="real"``),
      otherwise on N(0, 1) inputs (``"random"``).
    * Compression ratio (Ma et al. eq. 15): ``CR = approximated layer size / original size x 100 %``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compactnn._validation import check_int
from compactnn.errors import ConfigError, InputShapeError
from compactnn.structure import module_device

__all__ = [
    "LatencyResult",
    "LayerRow",
    "Report",
    "accuracy",
    "compression_ratio",
    "count_flops",
    "count_params",
    "layer_table",
    "measure_latency",
    "measure_latency_interleaved",
    "memory_mb",
    "memory_bytes",
    "real_batch",
    "stored_values",
    "report",
    "format_comparison",
    "stored_params",
]

_BYTES_FP32 = 4
_MB = 2**20


def stored_params(module: nn.Module) -> int:
    """Number of stored parameter values of ``module`` itself (not its children).

    A module may define ``stored_param_count()`` (e.g. sparse layers stored in COO format count
    ``3 * nnz``); otherwise it is the number of elements of its own parameters.
    """
    fn = getattr(module, "stored_param_count", None)
    if callable(fn):
        return int(fn())
    return sum(p.numel() for p in module.parameters(recurse=False))


def count_params(model: nn.Module) -> int:
    """Total stored parameters of ``model`` (see :func:`stored_params`).

    Modules that define ``stored_param_count()`` are counted by it and their subtree is skipped.
    """
    total = 0
    stack: list[nn.Module] = [model]
    while stack:
        m = stack.pop()
        if callable(getattr(m, "stored_param_count", None)):
            total += int(m.stored_param_count())
            continue
        total += sum(p.numel() for p in m.parameters(recurse=False))
        stack.extend(m.children())
    return total


def memory_mb(model_or_params: nn.Module | int) -> float:
    """fp32 storage of the parameters in MB (2**20 bytes)."""
    n = count_params(model_or_params) if isinstance(model_or_params, nn.Module) else model_or_params
    return n * _BYTES_FP32 / _MB


def memory_bytes(model: nn.Module) -> int:
    """Bytes held by every parameter and buffer of ``model`` (sparse indices included)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return int(total)


def stored_values(model: nn.Module) -> int:
    """Parameter elements of ``model`` (values only: a sparse non-zero counts once)."""
    return int(sum(p.numel() for p in model.parameters()))


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


def compression_ratio(approximated_size: int, original_size: int) -> float:
    """Ma et al. eq. (15): approximated layer size / original layer size x 100 (%).

    References:
        Ma et al. 2019, "A Unified Approximation Framework ...", eq. (15).
    """
    if original_size <= 0:
        raise ValueError(f"original_size must be > 0. Got {original_size} instead.")
    return 100.0 * approximated_size / original_size


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros((batch_size, *input_shape), device=module_device(model), dtype=dtype)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously), so a timer stopped
    after it measures the forward pass, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _run_checked(model: nn.Module, x: torch.Tensor) -> Any:
    try:
        return model(x)
    except InputShapeError:
        raise
    except RuntimeError as exc:  # shape mismatches surface as RuntimeError in torch
        raise InputShapeError(
            f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)} "
            f"({exc}). Pass the per-sample input shape the model expects, e.g. (1, 28, 28)."
        ) from exc


def _sparse_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of modules that declare them (sparse layers the flop counter cannot see)."""
    extra: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        fn = getattr(m, "flops_per_sample", None)
        if callable(fn):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, inp, out, _n=name, _f=fn: extra.__setitem__(_n, int(_f(inp[0])))
                )
            )
    try:
        _run_checked(model, x)
    finally:
        for h in hooks:
            h.remove()
    return extra


def _flop_counts(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, dict[str, int]]:
    x = _example_input(model, input_shape, 1)
    with _eval_no_grad(model):
        with FlopCounterMode(display=False) as fc:
            _run_checked(model, x)
        extra = _sparse_flops(model, x)
    root = type(model).__name__
    per: dict[str, int] = {}
    for key, ops in fc.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            continue
        if key.startswith(root + "."):
            per[key[len(root) + 1 :]] = sum(ops.values())
    total = fc.get_total_flops() + sum(extra.values())
    for k, v in extra.items():
        per[k] = per.get(k, 0) + v
    return int(total), per


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample of shape ``input_shape`` (2 per multiply-add)."""
    return _flop_counts(model, input_shape)[0]


@dataclass(frozen=True)
class LayerRow:
    """One row of the per-layer table (Conv2d / Linear / compactnn factorized layers)."""

    name: str
    type: str
    units: int  # filters (conv out channels) or neurons (linear out features)
    shape: str
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


def _is_leaf_layer(m: nn.Module) -> bool:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return True
    return callable(getattr(m, "stored_param_count", None)) or getattr(
        m, "is_compactnn_layer", False
    )


def _units(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return 0


def _shape_str(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = "x".join(str(s) for s in m.kernel_size)
        g = f" g{m.groups}" if m.groups > 1 else ""
        return f"{m.in_channels}->{m.out_channels} {k}{g}"
    if isinstance(m, nn.Linear):
        return f"{m.in_features}->{m.out_features}"
    rank = getattr(m, "rank", None)
    return f"rank {rank}" if rank is not None else ""


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[LayerRow]:
    """Per-layer table: filters/neurons, stored params and FLOPs of every compute layer.

    Compute layers are ``Conv2d``, ``Linear`` and compactnn's deployable layers (low-rank,
    sparse, sparse + low-rank); the children of the latter are not listed separately.
    """
    _, per = _flop_counts(model, input_shape)
    rows: list[LayerRow] = []
    skip_prefixes: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p) for p in skip_prefixes):
            continue
        if not _is_leaf_layer(m):
            continue
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            skip_prefixes.append(name + ".")
        rows.append(
            LayerRow(
                name=name,
                type=type(m).__name__,
                units=_units(m),
                shape=_shape_str(m),
                params=count_params(m),
                flops=per.get(name, 0),
            )
        )
    return rows


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
    times: list[float] = []
    with _threads(threads), _eval_no_grad(model):
        for _ in range(warmup):
            _run_checked(model, x)
        _sync(x.device)
        spent = 0.0
        while len(times) < repeats or spent < min_time_s:
            t0 = time.perf_counter()
            model(x)
            _sync(x.device)
            dt = time.perf_counter() - t0
            times.append(dt * 1e3)
            spent += dt
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
    times: dict[str, list[float]] = {k: [] for k in models}
    items = list(models.items())
    for rnd in range(rounds):
        for key, model in items if rnd % 2 == 0 else items[::-1]:
            times[key] += _timed_runs(model, xs[key], threads, warmup, repeats, 0.0)
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


def accuracy(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    topk: Sequence[int] = (1, 5),
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-k accuracy (in %) of ``model`` over ``(x, y)`` batches, in eval mode.

    Returns a dict ``{"top1": ..., "top5": ..., "n": samples}``; a k larger than the number of
    classes is clipped to it.
    """
    correct = dict.fromkeys(topk, 0)
    n = 0
    with _eval_no_grad(model):
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ConfigError(
                    f"accuracy(): batch {i} of the evaluation data holds NaN or Inf inputs; "
                    "clean or impute the data (an accuracy measured on them is meaningless)."
                )
            x, y = x.to(device), y.to(device)
            out = _run_checked(model, x)
            for k in topk:
                kk = min(k, out.shape[1])
                pred = out.topk(kk, dim=1).indices
                correct[k] += int((pred == y[:, None]).any(dim=1).sum())
            n += int(y.numel())
    if n == 0:
        raise ConfigError(
            "accuracy() got no samples: the data loader is empty; pass one with at least one batch."
        )
    res: dict[str, float] = {f"top{k}": 100.0 * c / n for k, c in correct.items()}
    res["n"] = float(n)
    return res


@dataclass
class Report:
    """Everything measured on one model (see module docstring for conventions)."""

    params: int
    flops: int
    memory_mb: float
    input_shape: tuple[int, ...]
    layers: list[LayerRow] = field(default_factory=list)
    latency: LatencyResult | None = None
    accuracy: dict[str, float] | None = None
    memory_bytes: int = 0
    stored_values: int = 0
    latency_inputs: str = "random"

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs"] = self.macs
        return d

    def format(self, title: str = "model") -> str:
        """Human-readable per-layer table plus totals."""
        lines = [f"== {title} =="]
        hdr = f"{'layer':<28}{'type':<20}{'units':>8}{'params':>12}{'MACs':>14}  shape"
        lines += [hdr, "-" * len(hdr)]
        for r in self.layers:
            lines.append(
                f"{r.name:<28}{r.type:<20}{r.units:>8}{r.params:>12,}{r.macs:>14,}  {r.shape}"
            )
        lines.append("-" * len(hdr))
        lines.append(
            f"total params {self.params:,}  |  {self.memory_mb:.3f} MB (fp32)  |  "
            f"MACs {self.macs:,} (FLOPs {self.flops:,}) per sample"
        )
        if self.memory_bytes:
            lines.append(
                f"in memory {self.memory_bytes / 1024:.1f} KiB (parameters + buffers, sparse "
                f"indices included)  |  {self.stored_values:,} stored values"
            )
        if self.latency is not None:
            lat = self.latency
            lines.append(
                f"latency {lat.median_ms:.3f} ms median (p10 {lat.p10_ms:.3f}, p90 {lat.p90_ms:.3f}) "
                f"at batch {lat.batch_size}, {lat.threads} thread(s), {lat.repeats} repeats, "
                f"{self.latency_inputs} inputs"
            )
        if self.accuracy is not None:
            acc = ", ".join(f"{k} {v:.2f} %" for k, v in self.accuracy.items() if k != "n")
            lines.append(f"accuracy {acc} on {int(self.accuracy.get('n', 0))} samples")
        return "\n".join(lines)


def report(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    data: Iterable[Any] | None = None,
    latency: bool = True,
    batch_size: int = 1,
    threads: int = 1,
    repeats: int = 50,
    warmup: int = 10,
    topk: Sequence[int] = (1, 5),
) -> Report:
    """Measure params, FLOPs, memory, per-layer table, latency and (with ``data``) accuracy."""
    shape = tuple(int(s) for s in input_shape)
    total, _ = _flop_counts(model, shape)
    rep = Report(
        params=count_params(model),
        flops=total,
        memory_mb=memory_mb(model),
        input_shape=shape,
        layers=layer_table(model, shape),
        memory_bytes=memory_bytes(model),
        stored_values=stored_values(model),
    )
    if latency:
        real = real_batch(data, batch_size) if data is not None else None
        rep.latency = measure_latency(
            model,
            shape,
            batch_size=batch_size,
            threads=threads,
            repeats=repeats,
            warmup=warmup,
            inputs=real,
        )
        rep.latency_inputs = "random" if real is None else "real"
    if data is not None:
        rep.accuracy = accuracy(model, data, topk=topk)
    return rep


def format_comparison(before: Report, after: Report) -> str:
    """Before/after summary: per-layer units and params, totals, speed-up and accuracy change."""
    lines = []
    hdr = f"{'layer':<28}{'units before':>14}{'units after':>13}{'params before':>15}{'params after':>14}"
    lines += [hdr, "-" * len(hdr)]
    after_rows = {r.name: r for r in after.layers}
    for r in before.layers:
        a = after_rows.get(r.name)
        ua = str(a.units) if a else "-"
        pa = f"{a.params:,}" if a else "-"
        lines.append(f"{r.name:<28}{r.units:>14}{ua:>13}{r.params:>15,}{pa:>14}")
    for name, a in after_rows.items():
        if all(r.name != name for r in before.layers):
            lines.append(f"{name:<28}{'-':>14}{a.units:>13}{'-':>15}{a.params:>14,}")
    lines.append("-" * len(hdr))

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a"

    lines.append(
        f"params   {before.params:>14,} -> {after.params:>12,}   ({ratio(before.params, after.params)} smaller, "
        f"{100.0 * after.params / max(before.params, 1):.2f} % kept)"
    )
    lines.append(
        f"MACs     {before.macs:>14,} -> {after.macs:>12,}   ({ratio(before.macs, after.macs)} fewer)"
    )
    lines.append(f"memory   {before.memory_mb:>12.3f}MB -> {after.memory_mb:>10.3f}MB")
    if before.memory_bytes and after.memory_bytes:
        lines.append(
            f"in RAM   {before.memory_bytes / 1024:>11.1f}KiB -> {after.memory_bytes / 1024:>9.1f}KiB"
            "   (parameters + buffers, sparse indices included)"
        )
    if before.latency and after.latency:
        lines.append(
            f"latency  {before.latency.median_ms:>12.3f}ms -> {after.latency.median_ms:>10.3f}ms   "
            f"({ratio(before.latency.median_ms, after.latency.median_ms)} measured speed-up, batch "
            f"{after.latency.batch_size}, {after.latency.threads} thread(s), "
            f"{after.latency_inputs} inputs)"
        )
    if before.accuracy and after.accuracy:
        b1, a1 = before.accuracy["top1"], after.accuracy["top1"]
        lines.append(
            f"top-1    {b1:>13.2f}% -> {a1:>10.2f}%   (error {100 - b1:.2f}% -> {100 - a1:.2f}%, "
            f"{(100 - a1) - (100 - b1):+.2f} points)"
        )
    return "\n".join(lines)
