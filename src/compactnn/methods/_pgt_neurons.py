"""PGT's neurons: the order-3 tensor shape of a layer's neuron, the neuron-level proximal steps
(group, low-rank, top-t), the rescaling of neurons against the next layer, and the step hook
that holds dead neurons at zero (see :mod:`compactnn.methods.pgt`).

References:
    Zhou, Alvarez, Porikli, "Less Is More: Towards Compact CNNs", ECCV 2016, and its
    supplement (sec. 1-4, Tables 2-3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from compactnn.errors import ConfigError
from compactnn.graph import discover, example_input_for
from compactnn.metrics import _eval_no_grad, _run_hooked
from compactnn.prox import group_soft_threshold, lrtc_step, topk_groups

__all__ = ["neuron_shapes", "neuron_prox", "rebalance_neurons"]


def neuron_shapes(
    model: nn.Module, layers: list[str], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, int, int]]:
    """The order-3 tensor shape of one neuron of every layer (supplement sec. 1 and Table 2).

    Conv2d: ``(c_in / groups, kh, kw)``. Linear: the ``(c, h, w)`` of the image its input was
    flattened from (found by one forward pass: the last module output before the layer with
    ``c*h*w = in_features`` elements per sample), ``(in_features, 1, 1)`` when there is none.
    """

    mods = dict(model.named_modules())
    out: dict[str, tuple[int, int, int]] = {}
    linear = [n for n in layers if isinstance(mods[n], nn.Linear)]
    for n in layers:
        m = mods[n]
        if isinstance(m, nn.Conv2d):
            c, kh, kw = m.weight.shape[1:]
            out[n] = (int(c), int(kh), int(kw))
        elif not isinstance(m, nn.Linear):
            raise ConfigError(
                f"PGT constrains Conv2d and Linear layers; layer '{n}' is {type(m).__name__}. "
                "Pass layers= without it."
            )
    if not linear:
        return out
    seen: list[tuple[int, ...]] = []
    found: dict[str, tuple[int, ...]] = {}
    targets = {id(mods[n]): n for n in linear}

    def record(mod: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            seen.append(tuple(output.shape[1:]))

    def before(mod: nn.Module, inputs: Any) -> None:
        n = targets[id(mod)]
        d = mod.in_features
        for shp in reversed(seen):
            if len(shp) == 3 and shp[0] * shp[1] * shp[2] == d:
                found.setdefault(n, shp)
                return
        found.setdefault(n, (d, 1, 1))

    x = example_input_for(model, input_shape)
    handles = []
    for m in model.modules():
        if id(m) in targets:
            handles.append(m.register_forward_pre_hook(before))
        if not list(m.children()):
            handles.append(m.register_forward_hook(record))
    _run_hooked(model, handles, x)
    for n in linear:
        c, kh, kw = found.get(n, (mods[n].in_features, 1, 1))
        out[n] = (int(c), int(kh), int(kw))
    return out


def neuron_prox(
    penalty: str,
    shape: tuple[int, int, int],
    *,
    keep: int | None = None,
    lrtc_iter: int = 1,
    lrtc_tol: float = 0.0,
) -> Any:
    r"""The backward step on a layer's neurons as ``prox(v, t)`` of a joint ProxGroup.

    ``v`` is the ``(n, D + 1)`` matrix of the layer: row j = neuron j's weights (reshaped to
    ``shape`` = (c, h, w), D = c·h·w) followed by its bias (a column of zeros when the layer
    has none is not added: ``v`` is then ``(n, D)``). Returns:

    * ``"group"``: :math:`\arg\min_x t\sum_j\|x_j\|_2 + \tfrac12\|x - v\|^2`, the block soft
      threshold of every row (weights and bias);
    * ``"lowrank"``: the weights of each row by supplement Algorithm 1 with threshold t
      (:func:`compactnn.prox.lrtc_step`, ``n_iter=lrtc_iter``); the bias is kept, and zeroed
      for the neurons whose weights became zero;
    * ``"topk"``: the projection onto at most ``keep`` non-zero rows (t is ignored).
    """

    d = shape[0] * shape[1] * shape[2]

    if penalty == "group":
        return lambda v, t: group_soft_threshold(v, t, (0,))
    if penalty == "topk":
        k = int(keep) if keep is not None else 0
        return lambda v, t: topk_groups(v, k, (0,))

    def lowrank(v: Tensor, t: float) -> Tensor:
        w = v[:, :d].reshape(v.shape[0], *shape)
        new = lrtc_step(w, t, n_iter=lrtc_iter, tol=lrtc_tol, batch_dims=1).reshape(v.shape[0], d)
        if v.shape[1] == d:
            return new
        dead = ~new.ne(0).any(dim=1, keepdim=True)
        bias = torch.where(dead, torch.zeros_like(v[:, d:]), v[:, d:])
        return torch.cat([new, bias], dim=1)

    return lowrank


def _consumer_pairs(
    model: nn.Module, layers: list[str], order: list[str]
) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, layer, consumer)`` for each of ``layers``: the Conv2d / Linear executed next
    (``order``), checked to be one :func:`rebalance_neurons` can rescale against."""
    mods = dict(model.named_modules())
    pairs: list[tuple[str, nn.Module, nn.Module]] = []
    for n in layers:
        m = mods[n]
        if n not in order or order.index(n) + 1 >= len(order):
            raise ConfigError(
                f"The 'finetune_rebalance' option of PGT needs a Conv2d/Linear layer after "
                f"'{n}' that consumes its outputs; there is none. Pass finetune_rebalance=False."
            )
        nxt = order[order.index(n) + 1]
        c = mods[nxt]
        if isinstance(c, nn.Conv2d) and c.groups != 1:
            raise ConfigError(
                f"The 'finetune_rebalance' option of PGT does not handle a grouped convolution "
                f"after '{n}' ('{nxt}'). Pass finetune_rebalance=False."
            )
        if c.weight.shape[1] % m.weight.shape[0]:
            raise ConfigError(
                f"The 'finetune_rebalance' option of PGT: the layer after '{n}' ('{nxt}') has "
                f"{c.weight.shape[1]} inputs, not a multiple of the {m.weight.shape[0]} outputs "
                f"of '{n}'. Pass finetune_rebalance=False."
            )
        pairs.append((n, m, c))
    return pairs


def rebalance_neurons(
    model: nn.Module,
    layers: list[str],
    inputs: Tensor,
    *,
    rtol: float = 1e-4,
    tol: float = 1e-4,
    max_sweeps: int = 100,
) -> dict[str, list[float]]:
    r"""Rescale the neurons of ``layers`` against the next layer, in place, function unchanged.

    For a layer L (Conv2d or Linear) and the Conv2d / Linear C executed next (its consumer),
    neuron j of L (weights and bias, :math:`w_j`) becomes :math:`\alpha_j w_j` and C's inputs
    fed by output j (:math:`c_j`: C's weight slice of input channel j, or the block of
    ``in_features / out_L`` columns that j's channel is flattened into) become
    :math:`c_j / \alpha_j`, with :math:`\alpha_j = \sqrt{\|c_j\| / \|w_j\|}` so that both
    norms end equal to :math:`\sqrt{\|w_j\|\|c_j\|}` (the least squared norm of the pair
    among the rescalings; zero neurons are left as they are). Rescaling one layer changes the
    norms of its consumer's neurons when that is constrained too, so the layers are swept
    until every factor of a sweep is within ``tol`` of 1 (at most ``max_sweeps`` sweeps). The
    function is unchanged when
    only positively homogeneous operations of degree 1 (ReLU, max / average pooling, flatten,
    dropout in eval) lie between L and C; this is checked on ``inputs`` (the model's output
    must agree within ``rtol`` of its largest magnitude), the model restored and a
    :class:`ConfigError` raised otherwise.

    Returns the overall factor :math:`\alpha_j` of every neuron, per layer.
    """

    order = list(discover(model, inputs).order)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with _eval_no_grad(model):
        ref = model(inputs)
    pairs = _consumer_pairs(model, layers, order)
    total = {
        n: torch.ones(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device)
        for n, m, _ in pairs
    }
    with torch.no_grad():
        # one layer's rescaling changes the norms of its consumer's neurons, so the layers are
        # swept until every factor of a sweep is within tol of 1 (a coordinate descent on the
        # summed squared norms; it converges) or max_sweeps
        for _ in range(max_sweeps):
            worst = 0.0
            for n, m, c in pairs:
                n_out = m.weight.shape[0]
                cw = c.weight.reshape(c.weight.shape[0], n_out, -1)  # a view of C's weight
                norm_w = m.weight.reshape(n_out, -1).pow(2).sum(dim=1)
                if m.bias is not None:
                    norm_w = norm_w + m.bias.pow(2)
                norm_w = norm_w.sqrt()
                norm_c = cw.transpose(0, 1).reshape(n_out, -1).norm(dim=1)
                live = (norm_w > 0) & (norm_c > 0)
                alpha = torch.ones_like(norm_w)
                alpha[live] = (norm_c[live] / norm_w[live]).sqrt()
                m.weight.mul_(alpha.reshape((n_out,) + (1,) * (m.weight.dim() - 1)))
                if m.bias is not None:
                    m.bias.mul_(alpha)
                cw.div_(alpha.reshape(1, n_out, 1))
                total[n] *= alpha
                worst = max(worst, float((alpha - 1).abs().max()))
            if worst <= tol:
                break
    out = {n: [float(a) for a in t] for n, t in total.items()}
    with _eval_no_grad(model):
        new = model(inputs)
    err = float((new - ref).abs().max())
    scale = float(ref.abs().max())
    if not err <= rtol * max(scale, 1e-12):
        model.load_state_dict(state)
        raise ConfigError(
            f"The 'finetune_rebalance' option of PGT changed the model's output (max deviation "
            f"{err:.3g} for outputs up to {scale:.3g}): something between {layers} and the "
            "next layers is not positively homogeneous (a BatchNorm, a bias-adding or "
            "saturating operation, ...). Pass finetune_rebalance=False."
        )
    return out


class _NeuronStep:
    """``step_hook(lr)``: the proximal step, then dead neurons held at zero (weights + bias)."""

    def __init__(self, prox: Any, layers: dict[str, nn.Module], hold: bool) -> None:
        self.prox = prox
        self.layers = layers
        self.hold = hold
        self.alive = {
            n: torch.ones(m.weight.shape[0], dtype=torch.bool, device=m.weight.device)
            for n, m in layers.items()
        }

    @staticmethod
    def rows_nonzero(m: nn.Module) -> Tensor:
        nz = m.weight.detach().reshape(m.weight.shape[0], -1).ne(0).any(dim=1)
        if m.bias is not None:
            nz = nz | m.bias.detach().ne(0)
        return nz

    @torch.no_grad()
    def __call__(self, lr: float) -> None:
        self.prox(lr)
        for n, m in self.layers.items():
            nz = self.rows_nonzero(m)
            if not self.hold:
                self.alive[n] = nz
                continue
            self.alive[n] &= nz
            dead = ~self.alive[n]
            if bool(dead.any()):
                m.weight[dead] = 0
                if m.bias is not None:
                    m.bias[dead] = 0

    def counts(self) -> dict[str, int]:
        return {n: int(self.rows_nonzero(m).sum()) for n, m in self.layers.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """The neurons still alive and the steps taken (a resumed run holds the same zeros)."""
        out = {f"alive.{n}": a for n, a in self.alive.items()}
        out["steps"] = torch.tensor(self.prox.steps)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for n in self.alive:
            self.alive[n] = state[f"alive.{n}"].to(self.alive[n].device)
        self.prox.steps = int(state["steps"])
