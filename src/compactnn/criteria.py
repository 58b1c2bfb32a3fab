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

Each criterion is an :class:`Importance` object in :data:`IMPORTANCES` (its name, the data it
reads, its scores); a new criterion is one such object, and one line in the method registry
(:mod:`compactnn.methods`) makes it a pruning method of its own name.

References:
    Lin et al. 2019 (SSR), sec. IV-A "Alternative ... Approaches"; Zhou et al. 2016 appendix
    sec. 4 ("top t").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from compactnn._validation import check_int, raise_unknown
from compactnn.errors import ConfigError, UnsupportedLayerError

__all__ = [
    "CRITERIA",
    "IMPORTANCES",
    "Importance",
    "importance",
    "filter_scores",
    "group_scores",
    "select_top",
    "apoz_scores",
    "random_scores",
    "taylor_scores",
]


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


def random_scores(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded random score per output filter/neuron of ``weight``, on its device."""
    g = torch.Generator().manual_seed(seed)
    # a CPU generator: the same scores on any device
    return torch.rand(weight.shape[0], generator=g).to(weight.device)


class Importance:
    """A filter-importance criterion: one score per output filter/neuron, higher = more
    important.

    Attributes:
        name: the criterion's name (and the name of its pruning method).
        data: what it reads: ``None`` (the weights only), ``"inputs"`` (input batches) or
            ``"labelled"`` (``(x, y)`` batches).
        draws: the scores are seeded draws, one per channel of a coupling group (not
            aggregated over its members).
    """

    name: ClassVar[str] = ""
    data: ClassVar[str | None] = None
    draws: ClassVar[bool] = False

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        """Scores of the outputs of ``module``, the Conv2d/Linear ``layer`` of ``model``
        (``batches``: the data it reads; ``seed``: seeds draws)."""
        raise NotImplementedError

    def joint_scores(
        self, model: nn.Module, layers: Sequence[str], batches: Any
    ) -> dict[str, torch.Tensor]:
        """Scores of several layers at once where one pass over the data serves them all
        (empty: each layer is scored alone)."""
        return {}


class _Random(Importance):
    """Seeded random scores (the Random baseline)."""

    name = "random"
    draws = True

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        return random_scores(module.weight, seed)


class _L1Norm(Importance):
    """``||K(i,:)||_1`` (Li et al. 2017)."""

    name = "l1-norm"

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        return _rows(module.weight).abs().sum(dim=1)


class _APoZ(Importance):
    """``1 - APoZ``: the fraction of positive post-ReLU activations (:func:`apoz_scores`)."""

    name = "apoz"
    data = "inputs"

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        return apoz_scores(model, layer, batches)


class _Magnitude(Importance):
    """``||K(i,:)||_2``: plain filter magnitude."""

    name = "magnitude"

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        return _rows(module.weight).norm(dim=1)


class _Taylor(Importance):
    """First-order Taylor estimate of the loss change (:func:`taylor_scores`)."""

    name = "taylor"
    data = "labelled"

    def scores(
        self, model: nn.Module, layer: str, module: nn.Module, batches: Any, seed: int
    ) -> torch.Tensor:
        return taylor_scores(model, [layer], batches)[layer]

    def joint_scores(
        self, model: nn.Module, layers: Sequence[str], batches: Any
    ) -> dict[str, torch.Tensor]:
        # one forward / backward per batch serves every layer
        return taylor_scores(model, layers, batches)


#: the criteria by name
IMPORTANCES: dict[str, Importance] = {
    i.name: i for i in (_Random(), _L1Norm(), _APoZ(), _Magnitude(), _Taylor())
}
CRITERIA = tuple(IMPORTANCES)
#: criteria that read data: ``apoz`` inputs, ``taylor`` labelled ``(x, y)`` batches
DATA_CRITERIA = tuple(n for n, i in IMPORTANCES.items() if i.data is not None)


def importance(criterion: str) -> Importance:
    """The :class:`Importance` named ``criterion`` (an unknown name lists the known ones)."""
    if criterion not in IMPORTANCES:
        raise raise_unknown("criterion", criterion, CRITERIA)
    return IMPORTANCES[criterion]


def filter_scores(
    criterion: str,
    model: nn.Module,
    layer: str,
    *,
    batches: Iterable[torch.Tensor] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Importance of every output filter/neuron of ``layer`` under ``criterion``."""
    imp = importance(criterion)
    mods = _modules_with(model, layer)
    m = mods[layer]
    if not isinstance(m, (nn.Conv2d, nn.Linear)):
        raise UnsupportedLayerError(
            f"Layer '{layer}' is a {type(m).__name__}; filter criteria apply to Conv2d/Linear."
        )
    if imp.data is not None and batches is None:
        raise ValueError(f"Criterion '{criterion}' for layer '{layer}' needs data (batches=...).")
    return imp.scores(model, layer, m, batches, seed)


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
    imp = importance(criterion)
    if imp.draws or len(names) == 1:
        return filter_scores(criterion, model, names[0], batches=batches, seed=seed)
    data = list(batches) if batches is not None else None
    raw = imp.joint_scores(model, names, data) if data is not None else {}
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
