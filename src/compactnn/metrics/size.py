"""Parameter counts and memory: :func:`stored_params`, :func:`count_params` (sparse modules
count their stored COO entries), :func:`memory_mb` (fp32), :func:`memory_bytes` (every parameter
and buffer), :func:`stored_values` and Ma et al.'s :func:`compression_ratio`."""

from __future__ import annotations

from torch import nn

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


def compression_ratio(approximated_size: int, original_size: int) -> float:
    """Ma et al. eq. (15): approximated layer size / original layer size x 100 (%).

    References:
        Ma et al. 2019, "A Unified Approximation Framework ...", eq. (15).
    """
    if original_size <= 0:
        raise ValueError(f"original_size must be > 0. Got {original_size} instead.")
    return 100.0 * approximated_size / original_size
