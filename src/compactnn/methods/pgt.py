r"""PGT: proximal-gradient training that removes whole neurons (Zhou, Alvarez & Porikli 2016).

The network is trained on

.. math::

    \min_W\; \psi(W) + \sum_l \lambda_l\, g(W_l),

:math:`\psi` the training loss and :math:`g` a neuron-level regulariser of layer :math:`l`, by
forward-backward splitting: every SGD step on :math:`\psi` (the forward step, learning rate
:math:`\eta`) is followed by the backward step :math:`W_l \leftarrow
\operatorname{prox}_{\eta\lambda_l g}(W_l)` per constrained layer
(:class:`~compactnn.solvers.training.ProxGradient` as the ``step_hook`` of
:func:`compactnn.train.train`). A *neuron* is the order-3 tensor of one output of a layer with
its bias (supplement sec. 3): ``(c_in, kh, kw)`` for a convolution, and for a fully connected
layer the ``(c, h, w)`` of its flattened input (supplement Table 2: "fc3 500 filters 4x4"),
``(d, 1, 1)`` when the input was never an image. The backward steps (``penalty``):

* ``"group"``: group soft threshold of every neuron (weights and bias together),
  :math:`w_j \leftarrow (1 - \eta\lambda_l/\|w_j\|_2)_+\, w_j`;
* ``"lowrank"``: the tensor low-rank step of supplement Algorithm 1 (LRTC): the average over
  the three mode unfoldings of their singular value thresholding, iterated ``lrtc_iter``
  times (:func:`compactnn.prox.lrtc_step`); a neuron whose unfoldings all fall under the
  threshold becomes zero, its bias with it (the bias is not penalised otherwise);
* ``"topk"``: the l0 baseline of supplement sec. 4: keep the ``t`` neurons of largest norm,
  zero the others (:func:`compactnn.prox.topk_groups`).

A neuron that reaches zero stays zero (``hold_zeros``; zero is a local minimum under ReLU,
supplement sec. 3). After training the zero neurons are removed physically together with the
next layer's inputs (masked = pruned exactly), and the network is optionally fine-tuned.
Training starts from the given (trained) model or, with ``init="scratch"``, from a fresh
initialisation as in the paper.

References:
    Zhou, Alvarez, Porikli, "Less Is More: Towards Compact CNNs", ECCV 2016, sec. 3-4, and its
    supplement: sec. 1 (parameter accounting), sec. 2 (Algorithm 1, LRTC), sec. 3 (zero neurons
    are local minima), sec. 4 (l0 "top t" comparison), Tables 2-3.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from compactnn._validation import (
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_per_layer,
    rule,
    validate_options,
)
from compactnn.errors import ConfigError
from compactnn.methods._common import (
    finetune_model,
    kept_filters,
    per_layer_values,
    prunable_layers,
    prune_filters,
    replay_plan,
)
from compactnn.methods._engine import (
    ENGINE_RULES,
    EngineOptions,
    EngineSettings,
    budgeted_run,
    engine_calibrate,
)
from compactnn.methods._options import FINETUNE_RULES, LAYERS, SEED, SGD_RULES
from compactnn.methods.base import CompressionData, CompressionResult, Method, MethodConfig

__all__ = ["PGT", "PGTConfig", "neuron_shapes", "neuron_prox", "rebalance_neurons"]

PENALTIES: tuple[str, ...] = ("group", "lowrank", "topk")


@dataclass(frozen=True)
class PGTConfig(MethodConfig, EngineOptions):
    """Hyper-parameters of PGT, validated on construction (``rules``).

    Attributes:
        penalty: the neuron regulariser g: ``"group"`` (group sparsity, l2,1 over neurons),
            ``"lowrank"`` (tensor low rank, supplement Algorithm 1) or ``"topk"`` (the l0
            "top t" baseline, supplement sec. 4).
        lam: λ_l >= 0 of each constrained layer (``group`` / ``lowrank``): the backward step
            thresholds at η·λ_l (η the step's learning rate). One float, one per layer
            (list) or a dict layer -> float.
        keep: t, neurons kept per layer by ``topk`` (ints >= 1: one for all, a list or a
            dict layer -> count); required with ``penalty="topk"``.
        layers: the constrained layers (default: every Conv2d/Linear but the classifier, see
            :func:`~compactnn.methods._common.prunable_layers`).
        epochs: epochs of proximal-gradient training.
        steps_per_epoch: cap on SGD steps per epoch (None = the whole loader).
        lr, momentum, weight_decay: SGD of the forward step (η = lr under ``schedule``).
        schedule: learning-rate schedule of the training (``"cosine"``, ``"step"``,
            ``"constant"``); the backward step uses each step's η.
        init: ``"trained"`` (start from the given model) or ``"scratch"`` (re-initialise every
            layer first, seeded, as the paper trains).
        lrtc_iter: iterations of Algorithm 1's "while not converged" loop per backward step
            (``lowrank``; 1 = the single averaged SVT step).
        lrtc_tol: stop Algorithm 1's loop earlier when the relative change of every neuron is
            <= this (0 = run ``lrtc_iter``).
        hold_zeros: a neuron that became zero stays zero for the rest of the training
            (supplement sec. 3); False lets the forward step revive it.
        min_keep: never keep fewer neurons than this in a layer (the largest ones).
        finetune_epochs, finetune_lr, finetune_steps_per_epoch: fine-tuning of the pruned
            network (structure fixed; cosine schedule).
        finetune_distill: weight α in [0, 1] of distillation from the model before PGT
            during the fine-tuning (0 = cross-entropy only).
        finetune_rebalance: before the fine-tuning, rescale every kept neuron of a constrained
            layer and the next layer's inputs it feeds so that both have the same norm
            (:func:`rebalance_neurons`; the network computes the same function). The group
            threshold leaves the surviving neurons short and the next layer's weights long,
            which makes the fine-tuning's first steps large on them. Not in the paper (it does
            not fine-tune). Default False.
        finetune_warmup: steps of linear learning-rate warm-up at the start of the
            fine-tuning (0 = off): the first full-rate steps on the few surviving neurons can
            push every ReLU of a layer dead (seen on lenet-caffe's fc1 at lr 0.01). Not in the
            paper.
        seed: seeds initialisation, SGD and fine-tuning (int >= 0).
    """

    penalty: str = "group"
    lam: Any = 0.05
    keep: Any = None
    layers: tuple[str, ...] | None = None
    epochs: int = 2
    steps_per_epoch: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    init: str = "trained"
    lrtc_iter: int = 1
    lrtc_tol: float = 0.0
    hold_zeros: bool = True
    min_keep: int = 1
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    finetune_steps_per_epoch: int | None = None
    finetune_distill: float = 0.0
    finetune_rebalance: bool = False
    finetune_warmup: int = 0
    seed: int = 0

    owner: ClassVar[str] = "PGT"
    rules: ClassVar[Mapping[str, Rule]] = MappingProxyType(
        {
            "penalty": rule(check_choice, choices=PENALTIES),
            "lam": rule(check_per_layer, min_value=0.0),
            "keep": rule(check_per_layer, optional=True, check=check_int, min_value=1),
            "layers": LAYERS,
            "epochs": rule(check_int, min_value=1),
            "steps_per_epoch": rule(check_int, optional=True, min_value=1),
            **SGD_RULES,
            "schedule": rule(check_choice, choices=("cosine", "step", "constant")),
            "init": rule(check_choice, choices=("trained", "scratch")),
            "lrtc_iter": rule(check_int, min_value=1),
            "lrtc_tol": rule(check_float, min_value=0.0),
            "hold_zeros": rule(check_bool),
            "min_keep": rule(check_int, min_value=1),
            **FINETUNE_RULES,
            "finetune_rebalance": rule(check_bool),
            "finetune_warmup": rule(check_int, min_value=0),
            "seed": SEED,
            **ENGINE_RULES,
        }
    )

    def __post_init__(self) -> None:
        validate_options(self, self.owner, self.rules)
        if self.penalty == "topk" and self.keep is None:
            raise ConfigError(
                "The 'keep' parameter of PGT must be given with penalty='topk' (t, the neurons "
                "kept per layer: an int, a list or a dict layer -> int). Got None instead."
            )


# ---------------------------------------------------------------------------------- neurons
def neuron_shapes(
    model: nn.Module, layers: list[str], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, int, int]]:
    """The order-3 tensor shape of one neuron of every layer (supplement sec. 1 and Table 2).

    Conv2d: ``(c_in / groups, kh, kw)``. Linear: the ``(c, h, w)`` of the image its input was
    flattened from (found by one forward pass: the last module output before the layer with
    ``c*h*w = in_features`` elements per sample), ``(in_features, 1, 1)`` when there is none.
    """
    from compactnn.graph import example_input_for
    from compactnn.metrics import _eval_no_grad

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

    handles = []
    for m in model.modules():
        if id(m) in targets:
            handles.append(m.register_forward_pre_hook(before))
        if not list(m.children()):
            handles.append(m.register_forward_hook(record))
    try:
        with _eval_no_grad(model):
            model(example_input_for(model, input_shape))
    finally:
        for h in handles:
            h.remove()
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
    from compactnn.prox import group_soft_threshold, lrtc_step, topk_groups

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
    from compactnn.graph import discover
    from compactnn.metrics import _eval_no_grad

    mods = dict(model.named_modules())
    order = list(discover(model, inputs).order)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with _eval_no_grad(model):
        ref = model(inputs)
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


class PGT(Method[PGTConfig]):
    """Forward-backward splitting with group-sparse / tensor low-rank / top-t neuron steps."""

    name = "pgt"
    Config = PGTConfig
    description = (
        "PGT (Zhou et al. 2016): proximal-gradient training, group-sparse or tensor low-rank "
        "neurons (or the l0 top-t baseline), zero neurons removed"
    )

    # ------------------------------------------------------------------ budget
    def engine_settings(self) -> EngineSettings:
        """PGT's neuron penalty and forward step for the budgeted engine (a target is met by
        one joint run, :mod:`compactnn.methods._engine`): ``group`` is the group soft threshold
        (l2,1), ``topk`` the l0 top-t (group hard threshold); ``lowrank`` keeps the paper's
        fixed-λ protocol, as does ``init="scratch"``."""
        cfg = self.config
        if cfg.penalty == "lowrank" or cfg.init != "trained":
            raise ConfigError(
                "PGT meets a target with its budgeted engine, which removes whole neurons of a "
                "trained model: penalty='lowrank' and init='scratch' keep the paper's fixed-λ "
                "protocol. Drop the target and set lam, or use penalty='group' / 'topk'."
            )
        return EngineSettings(
            penalty="l21" if cfg.penalty == "group" else "l20", steps=cfg.engine_steps,
            anneal_steps=cfg.anneal_steps, lr=cfg.engine_lr, momentum=cfg.momentum,
            allocation=cfg.engine_allocation,
            weight_decay=cfg.weight_decay, min_keep=cfg.min_keep, seed=cfg.seed, with_bias=True,
        )  # fmt: skip

    def calibrate(
        self, model: nn.Module, data: CompressionData, target: Any, *, progress: bool = False
    ) -> tuple[Method, dict[str, Any]]:
        """No search: the target becomes the budget of one engine run (:meth:`run`)."""
        return engine_calibrate(self, model, data, target)

    def _layers(self, model: nn.Module, input_shape: Any) -> list[str]:
        cfg = self.config
        if cfg.layers is not None:
            return list(cfg.layers)
        # the engine regularises and cuts whole coupling groups; the fixed-λ run one layer each
        return prunable_layers(model, input_shape, coupled=cfg.budget is not None)

    def total_step(self, data: CompressionData) -> float:
        """Σ_k η_k over the training steps of a run (the schedule's learning rates)."""
        from compactnn.train import TrainConfig, _lr_at

        cfg = self.config
        steps = len(data.require_train(self.name))
        if cfg.steps_per_epoch is not None:
            steps = min(steps, cfg.steps_per_epoch)
        total = steps * cfg.epochs
        tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, schedule=cfg.schedule)
        return float(sum(_lr_at(tc, k, total) for k in range(total)))

    def proxy(self) -> Method:
        """Same training (hence the same neurons), without the fine-tuning."""
        return self.with_options(finetune_epochs=0)

    # ------------------------------------------------------------------ steps
    def _hook(
        self, model: nn.Module, layers: list[str], input_shape: tuple[int, ...]
    ) -> _NeuronStep:
        """The backward step of every constrained layer, as one ``step_hook``."""
        from compactnn.solvers.training import ProxGradient, ProxGroup

        cfg = self.config
        mods = dict(model.named_modules())
        shapes = neuron_shapes(model, layers, input_shape)
        lam = per_layer_values(cfg.lam, layers, "lam", "PGT") if cfg.penalty != "topk" else {}
        keep: dict[str, int] = {}
        if cfg.penalty == "topk":
            keep = {n: int(v) for n, v in per_layer_values(cfg.keep, layers, "keep", "PGT").items()}
        groups = []
        for n in layers:
            m = mods[n]
            params = {f"{n}.weight": m.weight}
            if m.bias is not None:
                params[f"{n}.bias"] = m.bias
            prox = neuron_prox(
                cfg.penalty,
                shapes[n],
                keep=max(keep.get(n, 0), cfg.min_keep),
                lrtc_iter=cfg.lrtc_iter,
                lrtc_tol=cfg.lrtc_tol,
            )
            groups.append(ProxGroup(params, lam=lam.get(n, 0.0), prox=prox, joint=True))
        return _NeuronStep(ProxGradient(groups), {n: mods[n] for n in layers}, cfg.hold_zeros)

    def train_sparse(
        self, model: nn.Module, data: CompressionData, *, progress: bool = False
    ) -> tuple[list[str], dict[str, Any]]:
        """Forward-backward training of ``model`` in place (zero neurons still in place).

        Returns the constrained layers and the training record (neurons left per layer).
        """
        from compactnn import train as training

        cfg = self.config
        loader = data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        self._check_layers(model, layers)
        if cfg.init == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                for m in model.modules():
                    if hasattr(m, "reset_parameters") and m is not model:
                        m.reset_parameters()
        hook = self._hook(model, layers, shape)
        before = hook.counts()
        training.train(
            model,
            loader,
            config=training.TrainConfig(
                epochs=cfg.epochs,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                schedule=cfg.schedule,
                seed=cfg.seed,
                max_steps_per_epoch=cfg.steps_per_epoch,
            ),
            step_hook=hook,
            progress=progress,
            desc=f"PGT ({cfg.penalty})",
            checkpoint="pgt proximal-gradient training",
        )
        record = {
            "neurons_before": before,
            "neurons_after_training": hook.counts(),
            "steps": hook.prox.steps,
        }
        return layers, record

    def remove(
        self,
        model: nn.Module,
        layers: list[str],
        input_shape: tuple[int, ...],
        check: Any = None,
    ) -> tuple[nn.Module, Any, dict[str, tuple[int, ...]]]:
        """Physically remove the zero neurons of ``layers`` (with the next layer's inputs);
        coupled layers are cut group-consistently (:func:`prune_filters`), ``check`` is a batch
        of the user's inputs for the surgery self-check."""
        cfg = self.config
        mods = dict(model.named_modules())
        keep: dict[str, tuple[int, ...]] = {}
        for n in layers:
            m = mods[n]
            rows = [m.weight.detach().reshape(m.weight.shape[0], -1)]
            if m.bias is not None:
                rows.append(m.bias.detach().reshape(-1, 1))
            idx = kept_filters(torch.cat(rows, dim=1), cfg.min_keep)
            if len(idx) < m.weight.shape[0]:
                keep[n] = tuple(idx)
        if not keep:
            return model, None, keep
        pruned, plan = prune_filters(model, keep, input_shape, check=check)
        return pruned, plan, keep

    def _probe(self, model: nn.Module, data: CompressionData) -> Tensor:
        """The batch the rebalancing is checked on: 8 seeded Gaussian inputs and the user's
        check batch (when it is one tensor)."""
        from compactnn.graph import example_input_for

        cfg = self.config
        x = example_input_for(model, data.require_input_shape(self.name))
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn((8, *x.shape[1:]), generator=gen, device="cpu").to(x)  # seeded on CPU
        if isinstance(data.check_batch, Tensor) and data.check_batch.shape[1:] == x.shape[1:]:
            x = torch.cat([x, data.check_batch.to(x)])
        return x

    def finetune(
        self,
        model: nn.Module,
        data: CompressionData,
        layers: list[str],
        *,
        teacher: nn.Module | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """The fine-tuning of :meth:`run` on the pruned ``model`` (in place): the optional
        rebalancing of ``layers``' neurons (``finetune_rebalance``), then
        ``finetune_epochs`` of SGD (cosine from ``finetune_lr``), distilled from ``teacher``
        (the model before PGT) with weight ``finetune_distill``. Returns the record added to
        the history (the rebalancing factors' range per layer)."""
        cfg = self.config
        record: dict[str, Any] = {}
        if cfg.finetune_epochs == 0:
            return record
        if cfg.finetune_distill > 0 and teacher is None:
            raise ConfigError(
                "PGT.finetune with finetune_distill > 0 needs the teacher (the model before "
                "PGT). Pass teacher= or finetune_distill=0."
            )
        if cfg.finetune_rebalance:
            alphas = rebalance_neurons(model, layers, self._probe(model, data))
            record["rebalance"] = {
                n: {"min": min(a), "max": max(a)} for n, a in alphas.items() if a
            }
        finetune_model(
            model,
            data.require_train(self.name),
            epochs=cfg.finetune_epochs,
            lr=cfg.finetune_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed + 7,
            steps_per_epoch=cfg.finetune_steps_per_epoch,
            distill=cfg.finetune_distill,
            teacher=teacher,
            progress=progress,
            desc="PGT fine-tune",
            warmup_steps=cfg.finetune_warmup,
        )
        return record

    def run(
        self, model: nn.Module, data: CompressionData, *, progress: bool = True
    ) -> CompressionResult:
        cfg = self.config
        data.require_train(self.name)
        shape = data.require_input_shape(self.name)
        layers = self._layers(model, shape)
        self._check_layers(model, layers)
        if cfg.budget is not None:
            teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None
            return budgeted_run(
                self, model, data, layers, progress=progress,
                finetune=lambda m: self.finetune(m, data, layers, teacher=teacher,
                                                 progress=progress),
            )  # fmt: skip
        if cfg.penalty != "topk":
            per_layer_values(cfg.lam, layers, "lam", "PGT")  # lengths checked before training
        else:
            per_layer_values(cfg.keep, layers, "keep", "PGT")
        if cfg.finetune_rebalance and cfg.finetune_epochs > 0:  # its errors before training
            rebalance_neurons(copy.deepcopy(model), layers, self._probe(model, data))
        teacher = copy.deepcopy(model).eval() if cfg.finetune_distill > 0 else None
        layers, history = self.train_sparse(model, data, progress=progress)
        current, plan, keep = self.remove(model, layers, shape, data.check_batch)
        mods = dict(current.named_modules())
        history.update(
            penalty=cfg.penalty,
            neurons={n: int(mods[n].weight.shape[0]) for n in layers},
        )
        if data.val is not None:  # validation only, never test
            from compactnn.metrics import accuracy

            history["val_top1_before_finetune"] = accuracy(current, data.val, topk=(1,))["top1"]
        history.update(self.finetune(current, data, layers, teacher=teacher, progress=progress))
        return CompressionResult(
            model=current,
            plan=replay_plan(plan, current, shape),
            method=self.name,
            config=cfg,
            history=history,
        )
