"""Pieces shared by the filter-pruning methods (SSR, ADMM-sparse, criteria baselines)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from compactnn import surgery
from compactnn import train as training
from compactnn.capture import _batch_input
from compactnn.errors import ConfigError, PlanError
from compactnn.graph import discover, example_input_for
from compactnn.graph import prunable_layers as _prunable
from compactnn.metrics import _eval_no_grad
from compactnn.plan import CompressionPlan, KeepOutputs
from compactnn.structure import module_device

__all__ = [
    "prunable_layers",
    "per_layer_values",
    "prune_filters",
    "replay_plan",
    "nonzero_filters",
    "kept_filters",
    "finetune_model",
    "admm_w_step",
    "add_gap_head",
]


def prunable_layers(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, coupled: bool = True
) -> list[str]:
    """Default layers whose filters/neurons may be removed, in execution order.

    Every Conv2d/Linear except the classifier (found from the output) and depthwise convs (their
    channels follow their input); see :func:`compactnn.graph.prunable_layers`. With
    ``input_shape`` (per-sample) the layers are found by one forward pass on a zero batch, so
    untraceable models work, and the layers tied by a residual add (or any other coupling:
    :func:`compactnn.surgery.coupling`) are included as **one layer per group**, the group's
    first in execution order: cutting it cuts every member the same way, and the methods score
    and regularise the whole group. A group that surgery cannot cut (e.g. one that includes the
    classifier) is left out with a warning that names it and says why. Without ``input_shape``
    (``torch.fx``, no input to measure a coupling on), or with ``coupled=False`` (the
    fixed-strength paper protocols, whose per-layer penalties see one layer's filters), the
    residual-coupled layers are left out (SSR sec. III-E: only the inner convs of a block).
    """

    x = None if input_shape is None else example_input_for(model, input_shape)
    if input_shape is None or x is None or not coupled:
        return _prunable(model, x)
    g = discover(model, x)
    layers = _prunable(model, x, coupled=True, graph=g)
    if not any(n in g.residual_coupled for n in layers):
        return layers

    meta = {"input_shape": list(input_shape)}
    out: list[str] = []
    seen: set[str] = set()
    left: dict[str, str] = {}
    for n in layers:
        if n in seen:
            continue
        if n not in g.residual_coupled:
            out.append(n)
            continue
        members = surgery.coupling(model, n, meta=meta)
        seen.update(members)
        if g.classifier in members:
            left[n] = f"its channels are tied to the classifier {g.classifier!r}"
            continue
        width = int(model.get_submodule(n).weight.shape[0])
        if width < 2:
            continue
        try:  # one trial cut (surgery's own checks): a group it refuses is named, not skipped
            surgery.apply(
                CompressionPlan([KeepOutputs(n, tuple(range(width - 1)))], meta=meta), model
            )
        except PlanError as exc:
            left[n] = str(exc)
            continue
        out.append(n)
    if left:
        import warnings

        warnings.warn(
            f"{len(left)} residual-coupled group(s) left out of the default layers (pass "
            "layers=[...] to choose): " + "; ".join(f"{k}: {v}" for k, v in left.items()),
            RuntimeWarning,
            stacklevel=2,
        )
    if not out:
        return _prunable(model, x, graph=g)  # raises the error that lists the model's layers
    return out


def per_layer_values(value: Any, layers: Sequence[str], name: str, owner: str) -> dict[str, float]:
    """Broadcast a float, a per-layer list (same length as ``layers``) or a dict to a dict."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {layer: float(value) for layer in layers}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in layers]
        if unknown:
            raise ConfigError(
                f"The '{name}' parameter of {owner} names layer(s) {unknown} that are not pruned; "
                f"pruned layers: {list(layers)}."
            )
        missing = [k for k in layers if k not in value]
        if missing:
            raise ConfigError(
                f"The '{name}' parameter of {owner} has no value for layer(s) {missing}."
            )
        return {k: float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise ConfigError(
                f"The '{name}' parameter of {owner} must have one value per pruned layer "
                f"({len(layers)}: {list(layers)}). Got {len(value)} values: {list(value)}."
            )
        return {layer: float(v) for layer, v in zip(layers, value, strict=True)}
    raise ConfigError(
        f"The '{name}' parameter of {owner} must be a float, a list with one value per layer or "
        f"a dict layer -> value. Got {value!r}."
    )


def prune_filters(
    model: nn.Module,
    keep: dict[str, Sequence[int]],
    input_shape: Sequence[int],
    *,
    check: Any = None,
    couplings: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> tuple[nn.Module, Any]:
    """Physically keep only ``keep[layer]`` output filters/neurons (all couplings follow).

    ``keep`` indexes the filters of ``model`` as given. Layers tied by a coupling group
    (:func:`compactnn.surgery.coupling`: residual partners, SE gates, ...) lose the same
    channels, so the group is cut **once**: a channel of the group goes only when every member
    listed in ``keep`` drops it (their kept sets are united through the measured channel
    correspondence), in one ``KeepOutputs`` on the group's first listed layer. Never two cuts
    of one group with stale indices. ``check``: a batch of the user's inputs for the surgery
    self-check (``CompressionData.check_batch``). ``couplings``: ``{layer:
    surgery.coupling(model, layer)}`` already measured on this ``model`` (callers that cut the
    same model many times; each measurement is a forward probe per member).

    Returns ``(new_model, plan)``; the input model is not modified.
    """

    meta = {"input_shape": list(input_shape)}
    actions = []
    done: set[str] = set()
    for layer, kept in keep.items():
        if layer in done:
            continue
        union = {int(i) for i in kept}
        if len(keep) > 1:
            members = (
                couplings[layer]
                if couplings is not None and layer in couplings
                else surgery.coupling(model, layer, meta=meta)
            )
            for other, phi in members.items():
                if other in keep and other != layer:
                    where = {k: j for j, k in enumerate(phi)}
                    union |= {where[int(k)] for k in keep[other] if int(k) in where}
                    done.add(other)
        actions.append(KeepOutputs(layer=layer, keep=tuple(sorted(union))))
    plan = CompressionPlan(actions=actions, meta=meta)
    return surgery.apply(plan, model, check_inputs=check), plan


def replay_plan(
    structure_plan: Any, final: nn.Module, input_shape: Sequence[int] | None = None
) -> Any:
    """A self-contained plan: the structural actions, then the complete state of ``final``.

    Replayed with :func:`compactnn.surgery.apply` on a fresh, untrained instance of the original
    architecture it gives ``final`` exactly (every parameter and buffer, BN statistics
    included; see :class:`~compactnn.plan.SetState`). ``final`` must be the structure plan's
    result, possibly trained since; the tensors of layers replaced by LowRank / SparseLowRank /
    SetWeights actions are taken from those actions, so ``final`` must not have changed them.
    ``input_shape`` (per sample) is stored in ``meta`` (``None``: keep the plan's).
    """

    if structure_plan is None:
        structure_plan = CompressionPlan()
    meta = dict(structure_plan.meta)
    if input_shape is not None:
        meta["input_shape"] = list(input_shape)
    plan = CompressionPlan(actions=list(structure_plan.actions), meta=meta)
    return plan.with_state(final)


# ------------------------------------------------------------------ shared training pieces
def nonzero_filters(t: Any) -> Any:
    """Boolean vector over the filters / neurons (axis 0) of ``t``: True where a row of the
    lowered weight (or mask) has a non-zero entry."""
    return t.detach().reshape(t.shape[0], -1).ne(0).any(dim=1)


def kept_filters(t: Any, min_keep: int = 1) -> list[int]:
    """Indices of the filters / neurons of ``t`` (a weight, an F or a mask) that are not all
    zero, at least ``min_keep`` of them: with fewer, the ``min_keep`` rows of largest l2 norm
    (ties: lowest index), in increasing order."""
    import torch

    keep = [int(i) for i in torch.nonzero(nonzero_filters(t)).flatten()]
    if len(keep) >= min_keep:
        return keep
    rows = t.detach().reshape(t.shape[0], -1)
    norms = (rows.float() if rows.dtype == torch.bool else rows).norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True).indices
    return sorted(int(i) for i in order[:min_keep])


def finetune_model(
    model: nn.Module,
    loader: Any,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    steps_per_epoch: int | None = None,
    schedule: str = "cosine",
    distill: float = 0.0,
    warmup_steps: int = 0,
    progress: bool = False,
    desc: str = "fine-tune",
    checkpoint: bool = True,
    **train: Any,
) -> None:
    """The methods' training runs: :func:`compactnn.train.train` with their SGD settings (a
    fine-tuning, or an ADMM W-step through :func:`admm_w_step`).

    ``distill`` weighs the distillation from a ``teacher`` (see
    :class:`~compactnn.train.TrainConfig`); ``warmup_steps`` ramps the learning rate up
    linearly over the first steps. With ``checkpoint``, in a resumable run every epoch is
    checkpointed under the key ``"{desc}#{seed}"`` (distinct per fine-tuning of a run).
    ``train``: the other keywords of :func:`~compactnn.train.train` (``masks``: parameter name
    -> bool, holding a zero structure fixed; ``teacher``; ``extra_loss``; ``params``).
    """

    training.train(
        model,
        loader,
        config=training.TrainConfig(
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            schedule=schedule,
            seed=seed,
            max_steps_per_epoch=steps_per_epoch,
            distill_weight=distill,
            warmup_steps=warmup_steps,
        ),
        progress=progress,
        desc=desc,
        checkpoint=f"{desc}#{seed}" if checkpoint else None,
        **train,
    )


def admm_w_step(
    model: nn.Module,
    loader: Any,
    engine: Any,
    *,
    seed: Callable[[int], int],
    params: Any = None,
    masks: Callable[[], Any] | None = None,
    **sgd: Any,
) -> Callable[[int], None]:
    """The W-step ``w_step(k)`` of :func:`compactnn.solvers.training.run_admm` for a method:
    ``epochs`` of constant-lr SGD on the task loss + ``engine.penalty_loss()``.

    Every call is one :func:`finetune_model` run (``sgd``: its ``epochs``, ``lr``,
    ``momentum``, ``weight_decay``, ``steps_per_epoch``; not checkpointed), so it builds a fresh
    optimizer (momentum starts at zero in each outer iteration: the driver's rule) seeded with
    ``seed(k)``. ``params``: the parameters to update (``None``: all); ``masks``: a callable
    returning the masks to hold in this W-step (or ``None``).
    """
    # the keywords checked now (missing or unknown: TypeError), not at the first W-step
    inspect.signature(finetune_model).bind(model, loader, seed=0, **sgd)

    def w_step(k: int) -> None:
        finetune_model(
            model,
            loader,
            seed=seed(k),
            schedule="constant",
            desc="train",
            checkpoint=False,
            extra_loss=engine.penalty_loss,
            params=None if params is None else list(params),
            masks=masks() if masks is not None else None,
            **sgd,
        )

    return w_step


def add_gap_head(
    model: nn.Module,
    original: nn.Module,
    head: Any,
    loader: Any,
    input_shape: Sequence[int],
    *,
    max_samples: int = 2048,
) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the :class:`~compactnn.plan.GapHead` ``head`` (``linear=True``) applied
    and its new classifier fitted by ridge least squares to ``original``'s logits:
    ``W = argmin ||[f 1] W - z||^2 + delta ||W||^2`` (f the pooled features, z the logits,
    delta = 1e-4 x the mean diagonal of the Gram matrix) on up to ``max_samples`` samples of
    ``loader``. Returns the new model (``model`` is not changed) and a record of the fit."""
    import torch

    new = surgery.apply(CompressionPlan([head], meta={"input_shape": list(input_shape)}), model)
    pool = new.get_submodule(head.flatten)
    lin = pool[2]
    feats: list[Any] = []
    logits: list[Any] = []
    hook = pool[1].register_forward_hook(lambda _m, _a, out: feats.append(out.detach()))
    device = module_device(new)
    n = 0
    try:
        with _eval_no_grad(new), _eval_no_grad(original):
            for batch in loader:
                x = _batch_input(batch).to(device)  # a CPU loader feeding a model on a GPU
                new(x)
                logits.append(original(x).detach())
                n += int(x.shape[0])
                if n >= max_samples:
                    break
    finally:
        hook.remove()
    f = torch.cat(feats)[:max_samples].double().cpu()
    z = torch.cat(logits)[:max_samples].double().cpu()
    a = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)
    gram = a.T @ a
    delta = 1e-4 * float(gram.diagonal().mean())
    w = torch.linalg.solve(
        gram + delta * torch.eye(len(gram), dtype=f.dtype, device=f.device), a.T @ z
    )
    with torch.no_grad():
        lin.weight.copy_(w[:-1].T.to(lin.weight))
        lin.bias.copy_(w[-1].to(lin.bias))
    agree = float(((a @ w).argmax(1) == z.argmax(1)).double().mean())
    record = {
        "flatten": head.flatten,
        "classifier_removed": list(head.classifier),
        "features": int(f.shape[1]),
        "fit_samples": int(len(f)),
        "fit_agreement": agree,
    }
    return new, record
