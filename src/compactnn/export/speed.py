"""Per-layer speed: is a compressed layer slower than the dense layer it replaces?

:func:`layer_speed` times every compressed layer against its dense equivalent on its real
input; :func:`prefer_speed` keeps dense the layers that are slower (``--prefer speed``).
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.export.forms import DENSIFIABLE, dense_equivalent, densify
from compactnn.metrics import _run_hooked, _threads
from compactnn.plan import LAYER_STATE_ACTIONS, CompressionPlan, SetState, SetWeights
from compactnn.surgery import apply


def _time(fn: Any, x: Tensor, repeats: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def layer_speed(
    model: nn.Module, inputs: Tensor, *, threads: int = 1, repeats: int = 20, warmup: int = 3
) -> list[dict[str, Any]]:
    """Time every compressed layer against its dense equivalent on its real input.

    The inputs of each layer are captured in one forward pass of ``inputs`` (real samples);
    each layer and its :func:`dense_equivalent` are then timed in eager PyTorch.

    Returns:
        One row per compressed layer: name, type, ``ms``, ``dense_ms``, ``slower`` (bool).
    """
    targets = {n: m for n, m in model.named_modules() if isinstance(m, DENSIFIABLE)}
    # skip the branches of a SparsePlusLowRank (timed as one layer)
    targets = {n: m for n, m in targets.items() if not any(n.startswith(p + ".") for p in targets)}
    seen: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, _n=n: seen.__setitem__(_n, inp[0].detach()))
        for n, m in targets.items()
    ]
    _run_hooked(model, hooks, inputs)
    rows = []
    with _threads(threads):
        for n, m in targets.items():
            dense = dense_equivalent(m)
            if dense is None or n not in seen:
                continue
            x = seen[n]
            ms = _time(m, x, repeats, warmup)
            dms = _time(dense.eval(), x, repeats, warmup)
            rows.append(
                {
                    "name": n,
                    "type": type(m).__name__,
                    "ms": ms,
                    "dense_ms": dms,
                    "slower": bool(ms > dms),
                }
            )
    return rows


def prefer_speed(
    model: nn.Module, plan: Any, original: nn.Module, samples: Tensor, *, threads: int = 1
) -> tuple[nn.Module, Any, list[str]]:
    """Keep dense the compressed layers that are slower than the dense layer they replace.

    The plan is rewritten so the checkpoint still restores: the layer's replacing action becomes
    a dense :class:`~compactnn.plan.SetWeights`. When that plan does not replay on ``original``
    (a later structural action reshaped the layer), nothing is changed.

    Returns:
        ``(model, plan, densified layer names)``.
    """
    slow = [r["name"] for r in layer_speed(model, samples, threads=threads) if r["slower"]]
    if not slow:
        return model, plan, []
    new = densify(model, slow)
    actions = []
    for a in plan.actions:
        if isinstance(a, SetState):
            continue
        if isinstance(a, LAYER_STATE_ACTIONS) and a.layer in slow:
            m = new.get_submodule(a.layer)
            b = None if m.bias is None else m.bias.detach()
            a = SetWeights(a.layer, m.weight.detach(), b, sparse=False)
        actions.append(a)
    new_plan = CompressionPlan(actions=actions, meta=dict(plan.meta)).with_state(new)
    try:
        replay = apply(new_plan, original, example_inputs=samples[:2], allow_output_change=True)
        with torch.no_grad():
            ok = bool(torch.allclose(replay.eval()(samples), new.eval()(samples), atol=1e-4))
    except Exception:  # noqa: BLE001 - any failure: keep the compressed layers
        ok = False
    if not ok:
        warnings.warn(
            f"--prefer speed: could not keep {slow} dense (the plan would not replay); the "
            "compressed layers are kept.",
            RuntimeWarning,
            stacklevel=2,
        )
        return model, plan, []
    return new, new_plan, slow
