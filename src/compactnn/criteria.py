"""Filter-importance criteria of the baselines (SSR paper sec. IV-A) and top-t selection.

Every criterion maps a layer to one score per output filter/neuron; *higher = more important*.

* ``random``     -- seeded random scores (Random baseline).
* ``l1-norm``    -- ``s_i = ||K(i,:)||_1`` (Li et al., "Pruning filters for efficient ConvNets").
* ``apoz``       -- ``s_i = 1 - APoZ_i``: fraction of non-zero post-ReLU activations of channel i
  (Hu et al.; SSR sec. IV-A item 3). Needs data.
* ``magnitude``  -- ``s_i = ||K(i,:)||_2``: plain filter magnitude (prune + fine-tune, no
  regulariser) -- the unregularised counterpart of SSR-L2,1.
* ``taylor``     -- first-order Taylor estimate of the loss change when filter i is removed
  (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019, eq. (8)):
  ``s_i = mean_b (sum_{k in filter i} g_k w_k)^2`` over labelled training batches ``b``
  (weights and bias of the filter; cross-entropy loss; the model in eval mode, so no running
  statistics move). Needs labelled data.

Coupled layers (a residual add, an SE gate, a following depthwise conv) lose the same channels,
so they are scored as one **coupling group** (:func:`group_scores`, as Torch-Pruning's DepGraph
``GroupMagnitudeImportance`` with its defaults ``normalizer="mean"``, ``group_reduction="mean"``):
every member's scores are divided by their mean over its channels, and the score of channel
``j`` is the mean over the members of the normalised score of the member's channel removed with
``j``. ``random`` draws one score per channel of the group.

References:
    Lin et al. 2019 (SSR), sec. IV-A "Alternative ... Approaches"; Zhou et al. 2016 appendix
    sec. 4 ("top t").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from compactnn._validation import check_int, raise_unknown
from compactnn.errors import ConfigError, UnsupportedLayerError

__all__ = [
    "CRITERIA",
    "filter_scores",
    "group_scores",
    "select_top",
    "apoz_scores",
    "taylor_scores",
]

CRITERIA = ("random", "l1-norm", "apoz", "magnitude", "taylor")
#: criteria that read data: ``apoz`` inputs, ``taylor`` labelled ``(x, y)`` batches
DATA_CRITERIA = ("apoz", "taylor")


def _modules_with(model: nn.Module, layer: str) -> dict[str, nn.Module]:
    """``named_modules`` as a dict; an unknown ``layer`` raises one clear error listing the layers."""
    mods = dict(model.named_modules())
    if layer not in mods:
        raise raise_unknown(
            "layer", layer, [n for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        )
    return mods


def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1)


@torch.no_grad()
def apoz_scores(
    model: nn.Module, layer: str, batches: Iterable[torch.Tensor], *, max_batches: int = 10
) -> torch.Tensor:
    """``1 - APoZ`` per output channel of ``layer``: mean fraction of positive activations.

    The layer's output is passed through ReLU (APoZ is defined on post-ReLU maps; for a
    layer followed by BatchNorm the BN output is used when the BN is the layer's direct
    successor in module order).
    """
    mods = _modules_with(model, layer)
    target = mods[layer]
    # use the BatchNorm that directly follows (module order) if any: APoZ is on post-BN-ReLU maps
    names = list(mods)
    idx = names.index(layer)
    for nxt in names[idx + 1 : idx + 2]:
        if isinstance(mods[nxt], (nn.BatchNorm1d, nn.BatchNorm2d)):
            target = mods[nxt]
    pos = None
    count = 0

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        nonlocal pos, count
        o = out.detach()
        dims = [d for d in range(o.dim()) if d != 1]
        frac = (o > 0).float().mean(dim=dims)
        pos = frac if pos is None else pos + frac
        count += 1

    h = target.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        for i, x in enumerate(batches):
            if i >= max_batches:
                break
            model(x)
    finally:
        h.remove()
        model.train(was)
    if pos is None:
        raise ValueError(f"APoZ of layer '{layer}' needs data: the calibration batches were empty.")
    return pos / count


def taylor_scores(
    model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of every output filter/neuron of each of ``layers``
    (Molchanov et al. 2019, eq. (8)): ``mean_b (sum_{k in filter i} g_k w_k)^2``, with ``g`` the
    gradient of the cross-entropy of batch ``b`` (weights and bias of the filter).

    Every batch given is used (up to ``max_batches``). One forward / backward per batch serves
    every layer. Gradients are taken with
    :func:`torch.autograd.grad` (no ``.grad`` of the model is written) in eval mode (no
    running statistics move); the model's train / eval mode is restored.
    """
    mods = dict(model.named_modules())
    for layer in layers:
        if not isinstance(mods.get(layer), (nn.Conv2d, nn.Linear)):
            _modules_with(model, layer)  # an unknown name: one clear error listing the layers
            raise UnsupportedLayerError(
                f"Layer '{layer}' is a {type(mods[layer]).__name__}; filter criteria apply to "
                "Conv2d/Linear."
            )
    params: list[torch.Tensor] = []
    index: dict[str, tuple[int, int | None]] = {}
    for layer in layers:
        m = mods[layer]
        index[layer] = (
            len(params),
            len(params) + 1 if getattr(m, "bias", None) is not None else None,
        )
        params.append(m.weight)
        if index[layer][1] is not None:
            params.append(m.bias)
    acc: dict[str, torch.Tensor] = {}
    count = 0
    loss_fn = nn.CrossEntropyLoss()
    was = model.training
    model.eval()
    try:
        for i, b in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if not isinstance(b, (tuple, list)) or len(b) < 2:
                raise ValueError(
                    "Criterion 'taylor' needs labelled (x, y) batches to take the loss gradient."
                )
            x, y = b[0], b[1]
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
            for layer in layers:
                wi, bi = index[layer]
                w, g = params[wi].detach(), grads[wi]
                contrib = (
                    (_rows(w) * _rows(g)).sum(dim=1)
                    if g is not None
                    else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
                )
                if bi is not None and grads[bi] is not None:
                    contrib = contrib + params[bi].detach() * grads[bi]
                sq = contrib.double().pow(2)
                acc[layer] = sq if layer not in acc else acc[layer] + sq
            count += 1
    finally:
        model.train(was)
    if not count:
        raise ValueError(
            f"Criterion 'taylor' of layer(s) {list(layers)} needs data: the batches were empty."
        )
    return {layer: (acc[layer] / count).float() for layer in layers}


def filter_scores(
    criterion: str,
    model: nn.Module,
    layer: str,
    *,
    batches: Iterable[torch.Tensor] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Importance of every output filter/neuron of ``layer`` under ``criterion``."""
    if criterion not in CRITERIA:
        raise raise_unknown("criterion", criterion, CRITERIA)
    mods = _modules_with(model, layer)
    m = mods[layer]
    if not isinstance(m, (nn.Conv2d, nn.Linear)):
        raise UnsupportedLayerError(
            f"Layer '{layer}' is a {type(m).__name__}; filter criteria apply to Conv2d/Linear."
        )
    w = m.weight
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(w.shape[0], generator=g).to(w.device)  # CPU generator: same on any device
    if criterion == "l1-norm":
        return _rows(w).abs().sum(dim=1)
    if criterion == "magnitude":
        return _rows(w).norm(dim=1)
    if batches is None:
        raise ValueError(f"Criterion '{criterion}' for layer '{layer}' needs data (batches=...).")
    if criterion == "taylor":
        return taylor_scores(model, [layer], batches)[layer]
    return apoz_scores(model, layer, batches)


def group_scores(
    criterion: str,
    model: nn.Module,
    members: Mapping[str, Sequence[int]],
    *,
    batches: Iterable[torch.Tensor] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """One importance per channel of a coupling group (see the module docstring).

    Args:
        criterion: one of :data:`CRITERIA`.
        model: the model the members belong to.
        members: ``{layer: phi}`` with ``phi[j]`` the layer's output channel removed together
            with channel ``j`` of the group (the first member is the root, ``phi`` = identity);
            e.g. :func:`compactnn.surgery.coupling`.
        batches: data for ``apoz`` (reused for every member).
        seed: seeds ``random``.

    Returns:
        ``s[j] = mean_m  s_m[phi_m[j]] / mean_i s_m[i]`` (a member with all-zero scores
        contributes zeros); for a single member its raw scores; ``random``: ``n`` seeded draws.
    """
    if not members:
        raise ConfigError("group_scores needs at least one member layer.")
    names = list(members)
    n = len(members[names[0]])
    if criterion == "random" or len(names) == 1:
        return filter_scores(criterion, model, names[0], batches=batches, seed=seed)
    data = list(batches) if batches is not None else None
    # taylor: one forward / backward per batch serves every member
    raw = taylor_scores(model, names, data) if criterion == "taylor" and data is not None else {}
    parts = []
    for name in names:
        phi = torch.as_tensor(list(members[name]), dtype=torch.long)
        if phi.numel() != n:
            raise ConfigError(
                f"group_scores: member '{name}' maps {phi.numel()} channels, the group has {n}."
            )
        # reduced on CPU (select_top reads them there), whatever the model's device
        s = (
            raw[name]
            if name in raw
            else filter_scores(criterion, model, name, batches=data, seed=seed)
        )
        s = s.detach().double().cpu()
        mean = float(s.mean())
        parts.append((s / mean if mean > 0 else torch.zeros_like(s))[phi])
    return torch.stack(parts).mean(dim=0).float()


def select_top(scores: torch.Tensor, n_keep: int) -> tuple[int, ...]:
    """Indices (ascending) of the ``n_keep`` highest scores; ties broken by lower index."""
    n = int(scores.numel())
    check_int(n_keep, "n_keep", "select_top", min_value=1, max_value=n)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return tuple(sorted(order[:n_keep]))
