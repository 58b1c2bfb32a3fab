"""compactnn against the peers at equal budgets: Torch-Pruning, Only-Train-Once, torch-kirigami.

Every method starts from the same trained baseline, is given the same MACs budget (a fraction of
the baseline's multiply-accumulates, measured on the returned model), and every returned model
gets the SAME fine-tuning afterwards, run here by the harness (each method's own fine-tuning is
switched off): ``--ft-epochs`` epochs of SGD (lr 0.01, momentum 0.9, weight decay 5e-4, cosine
schedule, no distillation) on the training split, seeded by the row's seed (``--ft-recipes
plain,kd`` adds a second row per compression, ``METHOD+kd``: the same fine-tuning distilled from
the baseline, :data:`FT_RECIPES`, open to every method alike). Every automatic
choice (each method's strength for the budget) uses the training split only; a method whose
selection needs training (``pgt``, ``ssr``, ``admm-sparse``, OTO's HESSO, kirigami's group-lasso
regulariser) trains on the training split; the validation split (10 % of the training images,
seeded) is reported; the test set is read once per row, for the report.

How each method meets a MACs budget:

* compactnn methods: ``compactnn.compress(model, method, (train, val, test), target={"macs": b})``
  (its own budget search, documented in docs/budgets.md), called generically through the public API,
  so improvements to the methods on main are picked up;
* Torch-Pruning 1.6.1 (``tp-l1``, ``tp-taylor``, ``tp-bn-scale``, ``tp-group-norm``): its
  ``MetaPruner`` with the importance named, ``iterative_steps=5`` (its iterative pruner; Taylor
  gradients recomputed before each step on ``CALIB_BATCHES`` training batches), the classifier
  ignored, the same ratio for every layer (its default ``global_pruning=False``); the
  ``pruning_ratio`` is bisected on measured MACs with :func:`compactnn.budget.search`;
* torch-kirigami 0.2.1 (``kirigami-magnitude``, ``kirigami-taylor``, ``kirigami-grouplasso``):
  ``Pruner.prune(discover_candidates(), budget=ChannelRatio(r), strategy=Greedy(metric))`` with
  ``GroupMagnitude(p=2)`` or ``WeightTaylor()``; ``grouplasso`` first trains
  ``--select-epochs`` epochs with ``GroupLasso`` on every candidate group (strength
  ``KIRIGAMI_ALPHA``) and then prunes by magnitude; ``r`` bisected on measured MACs;
* Only-Train-Once 3.0.1 (``oto-hesso``): ``OTO(model).hesso(target_group_sparsity=s)`` trained
  ``--select-epochs`` epochs (its pruning spread over the first half), then ``construct_subnet``;
  ``s`` is bisected on the MACs of the subnet a short HESSO run (``OTO_PROXY_STEPS`` steps,
  pruning at once) constructs, the full run then uses that ``s``.

OTO needs three runtime shims on torch 2.13 CPU, applied by :func:`oto_shims` (site-packages is
never edited): (1) ``torch.onnx._globals`` (removed module; OTO imports ``GLOBALS`` from it) is
aliased to ``torch.onnx._internal.torchscript_exporter._globals``; (2)
``torch.onnx._optimize_graph`` (removed) is aliased to the same function in
``torch.onnx._internal.torchscript_exporter.utils``; (3) ``HESSO.identify_redundant_groups``
calls ``torch.zeros(...).cuda()``; it is wrapped so that ``Tensor.cuda`` returns the tensor
itself for the duration of that call when CUDA is unavailable. OTO also needs the Python packages
onnx, pydot and graphviz (requirements/peers.txt).

Columns: params, MACs (compactnn.metrics, measured on the returned model), latency eager and
onnxruntime (batch 100 of real test images, one thread, median; each row's ``latency`` table has
eager NCHW, eager channels_last and onnxruntime at batch 1 and 100, the model timed interleaved
with its baseline, speed-ups in the same runtime: :func:`measure_row`), validation and test top-1 after
the shared fine-tuning, wall time of the compression (selection + search, without fine-tuning),
of the fine-tuning. A row that cannot run carries the exception / reason it failed.

    .venv/bin/pip install --no-deps -r requirements/peers.txt      # or: make peers
    .venv/bin/python benchmarks/bench_peers.py --models lenet-caffe --budgets 0.05 --seeds 0
    .venv/bin/python benchmarks/bench_peers.py --quick                 # tiny smoke run
    .venv/bin/python benchmarks/bench_peers.py --models resnet20 --time-epoch 100  # epoch time
    .venv/bin/python benchmarks/bench_peers.py --report-only           # rebuild the report

Every (model, budget, method) cell of the issue's grid (:data:`GRID_MODELS` x :data:`BUDGETS`
x every method) without a measured row gets a "not run" row whose reason is computed from
measured times (:func:`not_run_rows`).

Rows are appended to benchmarks/results/peers_rows.jsonl as they finish (each with date, machine,
load and command); peers.json / peers.md / peers_<model>.png are rebuilt from all rows there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import _lib
import compactnn
from compactnn import budget, export, metrics, models, resume
from compactnn import data as cdata
from compactnn.api import split_loader
from compactnn.errors import ConfigError, SolverError
from compactnn.structure import module_device
from compactnn.train import TrainConfig, finetune, load_checkpoint, save_checkpoint

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: every model of the issue: dataset, dataset transforms, baseline training if not cached
MODELS: dict[str, dict[str, Any]] = {
    "lenet-caffe": {"dataset": "mnist", "data": {}, "train_epochs": 6},
    "lenet5": {"dataset": "mnist", "data": {}, "train_epochs": 6},  # small: quick / tests
    "kiaee-cnn": {"dataset": "fashion-mnist", "data": {"pad_to": 32, "channels": 3},
                  "train_epochs": 10},
    "resnet20": {"dataset": "fashion-mnist", "data": {"pad_to": 32, "channels": 3},
                 "train_epochs": 10},
}  # fmt: skip
BUDGETS = (0.5, 0.25, 0.05)
#: the models of the issue's grid (every (model, budget, method) cell gets a row: measured, or
#: "not run" with a reason computed from measured timings, see :func:`not_run_rows`)
GRID_MODELS = ("lenet-caffe", "kiaee-cnn", "resnet20")
#: epoch timings of :func:`time_epoch` (one json line per measurement, in the results directory)
TIMING_FILE = "peers_timing.jsonl"
#: seeds every cell asks for
SEEDS = (0, 1, 2)
#: the shared fine-tuning of every returned model (the issue's protocol: 8 epochs SGD, no KD)
FT = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}
#: relative slack within which a measured MACs fraction still meets its budget (compactnn's)
TOLERANCE = budget.Target(macs=1.0).tolerance
#: batches of the training split used by gradient-based selection criteria (Taylor)
CALIB_BATCHES = 10
#: size-search evaluations for every method's strength (compactnn's search uses its own default)
SEARCH_EVALS = 12
#: torch-kirigami's group-lasso strength (no documented default; per-group norms summed)
KIRIGAMI_ALPHA = 1e-4
#: steps of OTO's cheap proxy run of the size search
OTO_PROXY_STEPS = 2
#: a compactnn selection training that diverges is rerun once at lr / LR_BACKOFF
LR_BACKOFF = 10.0

#: each compactnn method's own fine-tuning switched off (the harness fine-tunes every row alike)
NO_FT: dict[str, dict[str, Any]] = {
    "ssr": {"finetune_epochs": 0},
    "pgt": {"finetune_epochs": 0},
    "slr": {"finetune_epochs": 0},
    "admm-sparse": {"finetune_epochs": 0},
    **{m: {"finetune_epochs": 0} for m in ("random", "l1-norm", "apoz", "magnitude", "taylor")},
}
#: non-default options of compactnn methods (the project's own budget recipes, fine-tune removed)
CNN_OPTS: dict[str, dict[str, Any]] = {
    # since 2026-12-07 (issue 33) ssr / pgt / admm-sparse meet a target with the budgeted
    # engine (one joint run, its own defaults); the AULM / mu-path options of the older rows
    # (max_outer 10, w_steps 100, xi 5, lr 0.01) no longer apply to a target
    "ssr": {"penalty": "l21"},
}
#: compactnn rows that run a method with other engine options (a row of its own, picked on
#: validation like any other): name -> (method, options)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # one kept fraction for every coupling group instead of the knapsack's value per unit cost
    # (the engine's default since session 18 (2026-12-07); the rows named ssr / pgt / admm-sparse
    # of the results before it ran the knapsack, rerun them as X-knapsack)
    "ssr-uniform": ("ssr", {"penalty": "l21", "engine_allocation": "uniform"}),
    "pgt-uniform": ("pgt", {"engine_allocation": "uniform"}),
    "admm-sparse-uniform": ("admm-sparse", {"engine_allocation": "uniform"}),
    # the greedy value-per-unit-cost allocation, the engine's default before then
    "ssr-knapsack": ("ssr", {"penalty": "l21", "engine_allocation": "knapsack"}),
    "pgt-knapsack": ("pgt", {"engine_allocation": "knapsack"}),
    "admm-sparse-knapsack": ("admm-sparse", {"engine_allocation": "knapsack"}),
    # channel counts in whole blocks of 8 (round_to: onnxruntime's NCHWc / oneDNN blocks on AVX2)
    **{f"{m}-r8": (m, {"round_to": 8}) for m in ("ssr", "pgt", "admm-sparse", "l1-norm", "taylor")},
}
#: compactnn methods whose target runs the budgeted engine: under --total-epochs E their shared
#: fine-tuning is E minus their compression's cost in dense epochs (the peers and the criteria
#: spend all of E fine-tuning, whatever their selection cost)
ENGINE_METHODS = ("ssr", "pgt", "admm-sparse",
                  *(v for v, (m, _) in VARIANTS.items() if m in ("ssr", "pgt", "admm-sparse")))
_EPOCH_S: dict[str, float] = {}


# ------------------------------------------------------------------------------------- helpers


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence a peer's prints (OTO prints its graph construction)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def classifier_of(model: nn.Module) -> nn.Module:
    """The last Linear / Conv layer in registration order (the output layer)."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if last is None:
        raise ValueError("model has no Linear / Conv2d layer")
    return last


def units(model: nn.Module) -> str:
    """Output width of every layer in registration order, nested modules included
    ("6-16-500-10"; resnet20: its 21 convs and fc): each ``nn.Conv2d`` / ``nn.Linear`` (or any
    layer with ``out_channels`` / ``out_features``, e.g. a sparse one), a low-rank layer as its
    rank ``rN`` (its factors not listed again); a run of 3 or more equal widths is written
    ``16x7``."""
    parts: list[str] = []
    done: list[str] = []  # layers whose sub-modules are not listed again
    for n, m in model.named_modules():
        if not n or any(n.startswith(d + ".") for d in done):
            continue
        width = getattr(m, "out_channels", getattr(m, "out_features", None))
        if isinstance(getattr(m, "rank", None), int):
            parts.append(f"r{m.rank}")
        elif isinstance(width, int):  # nn.Conv2d / nn.Linear and compactnn's sparse layers
            parts.append(str(width))
        else:
            continue
        done.append(n)
    runs: list[list[Any]] = []  # [width, count]
    for p in parts:
        if runs and runs[-1][0] == p:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
    return "-".join(f"{p}x{c}" if c >= 3 else "-".join([p] * c) for p, c in runs)


def macs_of(model: nn.Module, shape: tuple[int, ...]) -> float:
    return metrics.count_flops(model, shape) / 2.0


def _train_batches(loader: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) >= n:
            break
    return out


def _loss_grads(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Accumulate the mean cross-entropy gradient of ``batches`` into ``.grad``."""
    model.zero_grad(set_to_none=True)
    model.train()
    dev = module_device(model)
    for x, y in batches:
        x, y = x.to(dev), y.to(dev)
        (nn.functional.cross_entropy(model(x), y) / len(batches)).backward()
    model.eval()


def size_search(
    select: Callable[[float], nn.Module],
    frac: float,
    shape: tuple[int, ...],
    base_macs: float,
    strength: budget.Strength,
) -> tuple[float, dict[str, Any]]:
    """Bisect ``select``'s strength for the largest model within ``frac`` of the MACs
    (:func:`compactnn.budget.search`: the same loop compactnn's methods use)."""

    def evaluate(s: float) -> dict[str, float]:
        return {"macs": macs_of(select(s), shape) / base_macs}

    res = budget.search(evaluate, budget.Target(macs=frac), strength, max_evals=SEARCH_EVALS)
    info = {"strength": res.strength, "met": res.met, "kept": res.kept, "trials": len(res.trace)}
    if not res.met:
        raise BudgetUnreachable(
            f"{strength.option}: the strongest setting tried ({res.strength:.4g}) keeps "
            f"{100 * res.kept['macs']:.2f} % of the MACs > budget {100 * frac:.1f} %"
        )
    return res.strength, info


class BudgetUnreachable(RuntimeError):
    """The method's knob cannot reach the MACs budget (measured)."""


# ----------------------------------------------------------------------------------- OTO shims

_OTO_SHIMMED = False


def oto_shims() -> list[str]:
    """Apply (once) the runtime shims Only-Train-Once 3.0.1 needs on torch 2.13 CPU; returns
    their descriptions. Nothing in site-packages is edited."""
    global _OTO_SHIMMED
    done = [
        "torch.onnx._globals -> torch.onnx._internal.torchscript_exporter._globals",
        "torch.onnx._optimize_graph -> torch.onnx._internal.torchscript_exporter.utils",
        "HESSO.identify_redundant_groups: Tensor.cuda() is the identity without CUDA",
    ]
    if _OTO_SHIMMED:
        return done
    import torch.onnx
    from torch.onnx._internal.torchscript_exporter import _globals, utils

    sys.modules.setdefault("torch.onnx._globals", _globals)
    if not hasattr(torch.onnx, "_optimize_graph"):
        torch.onnx._optimize_graph = utils._optimize_graph  # type: ignore[attr-defined]
    from only_train_once.optimizer import hesso

    original = hesso.HESSO.identify_redundant_groups

    def identify_redundant_groups(self: Any) -> Any:
        if torch.cuda.is_available():
            return original(self)
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t  # type: ignore[method-assign]
        try:
            return original(self)
        finally:
            torch.Tensor.cuda = cuda  # type: ignore[method-assign]

    hesso.HESSO.identify_redundant_groups = identify_redundant_groups
    _OTO_SHIMMED = True
    return done


# --------------------------------------------------------------------------------- the methods


class Case:
    """What an adapter gets: the baseline, the splits, the budget, the seed, the protocol."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    model: nn.Module
    train: Any
    val: Any
    test: Any
    shape: tuple[int, ...]
    base_macs: float
    frac: float
    seed: int
    select_epochs: int
    max_steps: int | None


def run_compactnn(method: str) -> Callable[[Case], tuple[nn.Module, dict[str, Any]]]:
    name = method
    method, extra = VARIANTS.get(name, (name, {}))

    def adapter(c: Case) -> tuple[nn.Module, dict[str, Any]]:
        opts = {**CNN_OPTS.get(method, {}), **extra, **NO_FT.get(method, {})}
        if c.max_steps is not None and method == "ssr":
            opts.update(max_outer=2, w_steps=c.max_steps)
        diverged: list[float] = []
        while True:
            try:
                res = compactnn.compress(
                    c.model, method, (c.train, c.val, c.test), target={"macs": c.frac},
                    seed=c.seed, measure=False, on_drop="warn", progress=False, **opts,
                )  # fmt: skip
                break
            except SolverError as e:
                # a selection training that diverges (loss NaN / inf) is rerun once at a tenth of
                # the learning rate (for admm-sparse: the paper's 1e-3); the row records it
                if "lr" not in opts or diverged or "Training loss became" not in str(e):
                    raise
                diverged.append(opts["lr"])
                opts = {**opts, "lr": opts["lr"] / LR_BACKOFF}
            except ConfigError as e:
                # admm-sparse's over-pruning guard (Kiaee sec. 4.1) keeps half of every layer:
                # a budget under that floor is refused up front; it is rerun without the guard
                # (the row's options say so)
                if "overprune_guard=False" not in str(e) or opts.get("overprune_guard") is False:
                    raise
                opts = {**opts, "overprune_guard": False}
        chosen = {k: v for k, v in (res.chosen or {}).items() if v is not None}
        tgt = res.target or {}
        return res.model, {
            "options": opts,
            **({"diverged_at_lr": diverged} if diverged else {}),
            "chosen": chosen,
            "strength": tgt.get("strength"),
            "trials": len(tgt.get("trace") or []),
            # how the budget was split over the layers (e.g. "uniform share, filled") and the
            # per-layer counts allotted, where the method searches counts
            "budget_split": tgt.get("option"),
            "allotted": tgt.get("allotted"),
        }

    return adapter


TP_IMPORTANCE = {
    "tp-l1": ("MagnitudeImportance", {"p": 1}),
    "tp-taylor": ("TaylorImportance", {}),
    "tp-bn-scale": ("BNScaleImportance", {}),
    "tp-group-norm": ("GroupMagnitudeImportance", {"p": 2}),
}
TP_STEPS = 5


def run_tp(name: str) -> Callable[[Case], tuple[nn.Module, dict[str, Any]]]:
    def adapter(c: Case) -> tuple[nn.Module, dict[str, Any]]:
        import torch_pruning as tp

        imp_name, imp_kw = TP_IMPORTANCE[name]
        calib = _train_batches(c.train, CALIB_BATCHES)
        taylor = "Taylor" in imp_name

        def select(ratio: float) -> nn.Module:
            m = copy.deepcopy(c.model).eval()
            imp = getattr(tp.importance, imp_name)(**imp_kw)
            pruner = tp.pruner.MetaPruner(
                m, torch.randn(1, *c.shape, device=module_device(m)), importance=imp, pruning_ratio=ratio,
                iterative_steps=TP_STEPS, ignored_layers=[classifier_of(m)],
            )  # fmt: skip
            for _ in range(TP_STEPS):
                if taylor:
                    _loss_grads(m, calib)
                pruner.step()
            m.zero_grad(set_to_none=True)
            return m

        strength = budget.Strength("pruning_ratio", 0.3, 0.9, log=False, bound_hi=0.99)
        ratio, info = size_search(select, c.frac, c.shape, c.base_macs, strength)
        return select(ratio), {
            "options": {"importance": f"{imp_name}({imp_kw})", "iterative_steps": TP_STEPS,
                        "global_pruning": False, "calib_batches": CALIB_BATCHES if taylor else 0},
            **info,
        }  # fmt: skip

    return adapter


def _kirigami_prune(model: nn.Module, shape: tuple[int, ...], ratio: float, metric: Any) -> Any:
    from torch_kirigami import DependencyGraph
    from torch_kirigami.pruning import ChannelRatio, Greedy, Pruner

    graph = DependencyGraph.build(
        model, args=(torch.randn(2, *shape, device=module_device(model)),)
    )
    pruner = Pruner(model, graph=graph)
    space = pruner.discover_candidates()
    model, _ = pruner.prune(
        space, budget=ChannelRatio(round(ratio, 4), scope="local"), strategy=Greedy(metric)
    )
    return model


def _kirigami_widths(model: nn.Module, shape: tuple[int, ...]) -> Callable[[float], nn.Module]:
    """``ratio -> model`` with the widths ``ChannelRatio(ratio, "local")`` resolves to in
    torch-kirigami (its own ``channel_targets``), the first channels kept (size proxy only)."""
    from torch_kirigami import DependencyGraph
    from torch_kirigami.pruning import ChannelRatio, Pruner
    from torch_kirigami.pruning.budget import channel_targets

    from compactnn.methods.blocks import prune_filters

    graph = DependencyGraph.build(
        model, args=(torch.randn(2, *shape, device=module_device(model)),)
    )
    axes = Pruner(model, graph=graph).discover_candidates().channel_axes
    widths = tuple(a.tensor.shape[a.dim] for a in axes)
    names = [a.tensor.paths[0].rsplit(".", 1)[0] for a in axes]

    def select(ratio: float) -> nn.Module:
        kept = channel_targets(ChannelRatio(round(ratio, 4), scope="local"), widths)
        keep = {n: list(range(max(k, 1))) for n, k in zip(names, kept, strict=True)}
        return prune_filters(model, keep, shape)[0]

    return select


def _sgd_epochs(
    model: nn.Module,
    c: Case,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    epochs: int,
) -> None:
    """Plain training loop for the peers' sparse-training phases (seeded batch order)."""
    gen = torch.Generator().manual_seed(c.seed)
    ds = c.train.dataset
    dev = module_device(model)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ds), generator=gen)
        bs = c.train.batch_size
        for i, k in enumerate(range(0, len(ds), bs)):
            if c.max_steps is not None and i >= c.max_steps:
                break
            xs, ys = zip(*(ds[int(j)] for j in order[k : k + bs]), strict=True)
            x, y = torch.stack(xs), torch.stack([torch.as_tensor(v) for v in ys])
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad(set_to_none=True)
            step(x, y).backward()
            opt.step()
    model.eval()


def run_kirigami(name: str) -> Callable[[Case], tuple[nn.Module, dict[str, Any]]]:
    def adapter(c: Case) -> tuple[nn.Module, dict[str, Any]]:
        from torch_kirigami import DependencyGraph
        from torch_kirigami.pruning import GroupMagnitude, Pruner, WeightTaylor, unique_groups
        from torch_kirigami.sparsity import GroupLasso

        base = copy.deepcopy(c.model).eval()
        opts: dict[str, Any] = {"budget": "ChannelRatio(local)", "strategy": "Greedy"}
        if name == "kirigami-grouplasso":
            base.train()  # the graph records the mode; the regulariser is read in training
            graph = DependencyGraph.build(
                base, args=(torch.randn(2, *c.shape, device=module_device(base)),)
            )
            pruner = Pruner(base, graph=graph)
            groups = unique_groups(pruner.parameter_groups(pruner.discover_candidates().candidates))
            reg = GroupLasso(groups)
            opt = torch.optim.SGD(base.parameters(), lr=FT["lr"], momentum=FT["momentum"])

            def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return nn.functional.cross_entropy(base(x), y) + KIRIGAMI_ALPHA * reg()

            _sgd_epochs(base, c, step, opt, c.select_epochs)
            opts.update(alpha=KIRIGAMI_ALPHA, reg_epochs=c.select_epochs, groups=len(groups))
        taylor = name == "kirigami-taylor"
        calib = _train_batches(c.train, CALIB_BATCHES) if taylor else []

        def select(ratio: float) -> nn.Module:
            m = copy.deepcopy(base).eval()
            if taylor:
                _loss_grads(m, calib)
            metric = WeightTaylor() if taylor else GroupMagnitude(p=2)
            m = _kirigami_prune(m, c.shape, ratio, metric)
            m.zero_grad(set_to_none=True)
            return m

        strength = budget.Strength("channel ratio", 0.3, 0.9, log=False, bound_hi=0.99)
        # A local ChannelRatio fixes every width by itself (not the scores), and kirigami's
        # planning is slow (~80 s per plan on LeNet), so the search measures the exact widths
        # kirigami's budget resolves to on a model cut by compactnn's surgery (same MACs).
        ratio, info = size_search(_kirigami_widths(base, c.shape), c.frac, c.shape,
                                  c.base_macs, strength)  # fmt: skip
        opts["metric"] = "WeightTaylor" if taylor else "GroupMagnitude(p=2)"
        return select(ratio), {"options": opts, **info}

    return adapter


def _oto_subnet(model: nn.Module, c: Case, sparsity: float, steps: int, full: bool) -> nn.Module:
    from only_train_once import OTO

    m = copy.deepcopy(model)
    with _quiet():
        oto = OTO(model=m, dummy_input=torch.randn(1, *c.shape, device=module_device(m)))
        n_batches = len(c.train) if c.max_steps is None else min(c.max_steps, len(c.train))
        total = steps if not full else max(1, c.select_epochs * n_batches)
        prune_steps = 1 if not full else max(1, total // 2)
        periods = 1 if not full else min(10, prune_steps)
        opt = oto.hesso(
            variant="sgd", lr=FT["lr"], first_momentum=FT["momentum"],
            weight_decay=FT["weight_decay"], target_group_sparsity=sparsity,
            start_pruning_step=0 if not full else total // 10,
            pruning_periods=periods, pruning_steps=prune_steps,
        )  # fmt: skip
        if full:

            def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return nn.functional.cross_entropy(m(x), y)

            _sgd_epochs(m, c, step, opt, c.select_epochs)
        else:
            m.train()
            dev = module_device(m)
            for x, y in _train_batches(c.train, steps):
                x, y = x.to(dev), y.to(dev)
                opt.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
        with tempfile.TemporaryDirectory() as d:
            oto.construct_subnet(out_dir=d)
            sub = torch.load(oto.compressed_model_path, weights_only=False)
    return sub.eval()


def run_oto(c: Case) -> tuple[nn.Module, dict[str, Any]]:
    shims = oto_shims()

    def select(s: float) -> nn.Module:
        return _oto_subnet(c.model, c, s, OTO_PROXY_STEPS, full=False)

    strength = budget.Strength("target_group_sparsity", 0.5, 0.9, log=False, bound_hi=0.99)
    s, info = size_search(select, c.frac, c.shape, c.base_macs, strength)
    model = _oto_subnet(c.model, c, s, 0, full=True)
    return model, {
        "options": {"optimizer": "HESSO sgd", "target_group_sparsity": s,
                    "select_epochs": c.select_epochs, "pruning_periods": "min(10, steps/2)", "shims": shims},
        **info,
    }  # fmt: skip


PEERS: dict[str, tuple[str, Callable[[Case], tuple[nn.Module, dict[str, Any]]]]] = {
    **{n: ("torch-pruning", run_tp(n)) for n in TP_IMPORTANCE},
    **{n: ("torch-kirigami", run_kirigami(n))
       for n in ("kirigami-magnitude", "kirigami-taylor", "kirigami-grouplasso")},
    "oto-hesso": ("only-train-once", run_oto),
}  # fmt: skip
#: the import each peer needs (a peer that does not import is skipped with its reason)
PEER_IMPORT = {"torch-pruning": "torch_pruning", "torch-kirigami": "torch_kirigami",
               "only-train-once": "only_train_once"}  # fmt: skip


def all_methods() -> list[str]:
    return [*compactnn.methods.list_methods(), *VARIANTS, *PEERS]


def library_of(method: str) -> str:
    method = split_recipe(method)[0]
    return PEERS[method][0] if method in PEERS else "compactnn"


def peer_missing(method: str) -> str | None:
    """Why a peer cannot be imported (None when it can)."""
    lib = library_of(method)
    if lib == "compactnn":
        return None
    try:
        if lib == "only-train-once":
            oto_shims()  # OTO does not import on torch 2.13 without them
        __import__(PEER_IMPORT[lib])
    except Exception as e:  # noqa: BLE001 - any import failure is the row's reason
        return f"{type(e).__name__}: {e}"
    return None


# ------------------------------------------------------------------------------------ one row


def baseline(
    model_name: str, quick: bool, device: str = "cpu", trained_on: str | None = None
) -> tuple[nn.Module, str]:
    """The trained baseline (on the CPU) and where it came from: the cached checkpoint, else
    trained here (on ``device``) and cached. The cache name names the device a baseline was
    trained on when it is not the CPU: a GPU-trained one is another baseline. ``trained_on``
    (e.g. ``"cuda"``): use the cached baseline trained on that device (never train one), so
    that rows run here pool with the rows run there."""
    spec = MODELS[model_name]
    shape = models.default_input_shape(model_name)
    info = cdata.dataset_info(spec["dataset"])
    fresh = models.create(model_name, in_channels=shape[0], num_classes=info.num_classes, seed=0)
    if quick:
        return fresh, "untrained (quick smoke run)"
    if model_name == "lenet-caffe":
        from compactnn.demo import demo_baseline

        model, _, ckpt = demo_baseline(progress=False)
        return model, str(ckpt)
    from compactnn.demo import cache_dir, train_model

    tag = "32x3" if spec["data"] else ""
    where = torch.device(trained_on or device).type
    if where != "cpu":
        tag += f"-{where}"
    name = f"peers-{model_name}-{spec['dataset']}{tag}-seed0.safetensors"
    ckpt = cache_dir() / "checkpoints" / name
    if not ckpt.is_file() and (RESULTS / "checkpoints" / name).is_file():
        ckpt = RESULTS / "checkpoints" / name  # committed with the rows it was used for
    if ckpt.is_file():
        model, _ = load_checkpoint(ckpt, fresh)
        return model, str(ckpt)
    if trained_on is not None:
        raise SystemExit(
            f"--baseline-trained-on {trained_on}: no cached baseline {name} in "
            f"{cache_dir() / 'checkpoints'} or {RESULTS / 'checkpoints'}; copy the one the "
            "other machine trained there (or drop the option to train one here)."
        )
    # a killed training resumes after its last finished epoch (epoch checkpoints in runs/)
    recipe = {
        "model": model_name,
        "dataset": spec["dataset"],
        "epochs": spec["train_epochs"],
        "lr": 0.01,
        "batch_size": 128,
        "seed": 0,
        "data": spec["data"],
        "device": where,
    }
    store = resume.RunStore(cache_dir() / "runs" / Path(name).stem, recipe)
    t0 = time.perf_counter()
    with resume.activate(store):
        model, hist, _, test = train_model(
            model_name, spec["dataset"], epochs=spec["train_epochs"], lr=0.01, batch_size=128,
            seed=0, progress=True, device=device, checkpoint="baseline", **spec["data"],
        )  # fmt: skip
    model = model.cpu()
    save_checkpoint(model, ckpt, model=model_name, dataset=spec["dataset"], seed=0)
    record = {**recipe, "file": name, "sha": _lib.state_sha(model),
              "test_top1": metrics.accuracy(model, test, topk=(1,))["top1"],
              "train_top1_last_epoch": hist.train_acc[-1] if hist.train_acc else None,
              "wall_s_this_process": round(time.perf_counter() - t0, 1),
              "threads": torch.get_num_threads(), "machine": platform.processor() or
              platform.machine(), "date": dt.date.today().isoformat()}  # fmt: skip
    ckpt.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return model, str(ckpt)


def loaders(model_name: str, seed: int, quick: bool) -> tuple[Any, Any, Any]:
    spec = MODELS[model_name]
    kw = dict(spec["data"])
    if quick:
        kw["limit"] = 400
    train_full, test = cdata.get_loaders(spec["dataset"], batch_size=64, seed=seed, **kw)
    split = split_loader(train_full, 0.1, seed)
    assert split is not None
    return split[0], split[1], test


#: the latency protocol of every row (issues 35 / 36): the row's model and its baseline timed
#: in turns (export.speedup_table) in eager NCHW, eager channels_last and onnxruntime
LATENCY = {"batch_sizes": (1, 100), "rounds": 5, "warmup": 2, "repeats": 10, "threads": 1}
#: the batch size of the rows' flat latency / speed-up keys (the markdown's main table)
FLAT_BATCH = "batch 100"


def measure_row(
    model: nn.Module, base: nn.Module, x: torch.Tensor, macs_kept: float | None
) -> dict[str, Any]:
    """The row's ``latency`` table: ``model`` and its baseline ``base`` timed interleaved
    (:data:`LATENCY`) on the real batch ``x`` in every runtime, runtime -> batch ->
    {base_ms, model_ms, speedup (same runtime), ratio = speed-up / MACs reduction}, a runtime
    that failed -> {error}; and the flat keys of batch 100 (``latency_eager_ms``,
    ``speedup_eager``, ``latency_ort_ms``, ``speedup_ort``, ``ort_error``)."""
    red = 1.0 / macs_kept if macs_kept else None
    table = export.speedup_table(model, base, x, macs_reduction=red, **LATENCY)
    out: dict[str, Any] = {"latency": table, "latency_protocol": dict(LATENCY, interleaved=True)}
    for rt, key in (("eager", "eager"), ("onnxruntime", "ort")):
        e = table.get(rt, {}).get(FLAT_BATCH)
        out[f"latency_{key}_ms"] = e["model_ms"] if e else None
        out[f"speedup_{key}"] = e["speedup"] if e else None
    if "error" in table.get("onnxruntime", {}):
        out["ort_error"] = table["onnxruntime"]["error"]
    return out


def split_recipe(name: str) -> tuple[str, str]:
    """``"ssr-uniform+kd"`` -> ``("ssr-uniform", "kd")``; a name without ``+`` is ``"plain"``."""
    method, _, recipe = name.partition("+")
    return method, recipe or "plain"


def run_row(method: str, model_name: str, frac: float, seed: int, args: Any,
            base: nn.Module, base_meas: dict[str, Any],
            keep: dict[str, nn.Module] | None = None) -> dict[str, Any]:  # fmt: skip
    """One row: compress ``base`` with ``method`` to ``frac`` of its MACs, fine-tune it the
    shared way, measure it. ``keep`` (optional) receives the compressed model under "model"
    before fine-tuning and "finetuned" after it."""
    return run_rows(method, model_name, frac, seed, args, base, base_meas, ("plain",), keep)[0]


def run_rows(method: str, model_name: str, frac: float, seed: int, args: Any,
             base: nn.Module, base_meas: dict[str, Any], recipes: Sequence[str] = ("plain",),
             keep: dict[str, nn.Module] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One compression of ``base`` with ``method`` to ``frac`` of its MACs, then one row per
    shared fine-tuning recipe (:data:`FT_RECIPES`; a recipe other than "plain" names its row
    ``method+recipe``), each fine-tuning its own copy of the compressed model. ``keep`` receives
    the compressed model under "model" and the first recipe's fine-tuned one under
    "finetuned"."""
    shape = tuple(models.default_input_shape(model_name))
    train, val, test = loaders(model_name, seed, args.quick)
    row: dict[str, Any] = {
        "model": model_name, "dataset": MODELS[model_name]["dataset"], "budget_macs": frac,
        "method": method, "library": library_of(method),
        "version": _version(library_of(method)), "seed": seed,
        "finetune": {"epochs": args.ft_epochs, **FT, "distill": 0.0,
                     "max_steps_per_epoch": args.max_steps},
    }  # fmt: skip
    missing = peer_missing(method)
    if missing:
        return [{**row, "status": "not installed", "reason": missing}]
    device = getattr(args, "device", "cpu")
    c = Case(model=copy.deepcopy(base).to(device), train=train, val=val, test=test, shape=shape,
             base_macs=base_meas["macs"], frac=frac, seed=seed,
             select_epochs=args.select_epochs, max_steps=args.max_steps)  # fmt: skip
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        if method in PEERS:
            small, info = PEERS[method][1](c)
        else:
            small, info = run_compactnn(method)(c)
    except Exception as e:  # noqa: BLE001 - a row that cannot run carries the reason
        return [{
            **row, "status": "budget not reachable" if isinstance(e, BudgetUnreachable)
            else "failed", "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=4)[-1500:],
            "compress_s": time.perf_counter() - t0,
        }]  # fmt: skip
    row["compress_s"] = time.perf_counter() - t0
    row["compress_cpu_s"] = time.process_time() - c0  # one thread: unaffected by other jobs
    row.update(info)
    small.eval()
    if keep is not None:
        keep["model"] = copy.deepcopy(small)
    row["structure"] = units(small)
    row["params"] = metrics.count_params(small)
    row["macs"] = macs_of(small, shape)
    row["params_kept"] = row["params"] / base_meas["params"]
    row["macs_kept"] = row["macs"] / base_meas["macs"]
    row["met"] = row["macs_kept"] <= frac * (1 + TOLERANCE) + 1e-12
    row["val_top1_before_ft"] = metrics.accuracy(small, val, topk=(1,))["top1"]
    rows = []
    for i, recipe in enumerate(recipes):
        one = copy.deepcopy(small) if i < len(recipes) - 1 else small
        r = finish_row({**row, "finetune": dict(row["finetune"])}, one, recipe, args, base,
                       base_meas, (train, val, test), shape)  # fmt: skip
        rows.append(r)
        if keep is not None and i == 0:
            keep["finetuned"] = one
    return rows


#: the shared fine-tuning's recipes (``--ft-recipes``): "plain" is the issue's protocol (no
#: distillation); "kd" adds knowledge distillation from the row's baseline (Hinton et al. 2015,
#: alpha 0.5, T 4, :class:`compactnn.train.TrainConfig`), the same for every method. Each
#: library's row is picked on validation among its method x recipe rows, as among methods.
FT_RECIPES: dict[str, dict[str, float]] = {
    "plain": {},
    "kd": {"distill_weight": 0.5, "distill_temperature": 4.0},
}


def finish_row(row: dict[str, Any], small: nn.Module, recipe: str, args: Any, base: nn.Module,
               base_meas: dict[str, Any], data: tuple[Any, Any, Any],
               shape: tuple[int, ...]) -> dict[str, Any]:  # fmt: skip
    """The shared fine-tuning of ``small`` with ``recipe`` (E minus the compression's cost for
    the engine methods under ``--total-epochs``) and the row's measurements after it."""
    train, val, test = data
    method, model_name, seed = row["method"], row["model"], row["seed"]
    kd = FT_RECIPES[recipe]
    if recipe != "plain":
        row["method"] = f"{method}+{recipe}"
        row["finetune"].update(distill=kd["distill_weight"], recipe=recipe, **kd)
    t1 = time.perf_counter()
    c1 = time.process_time()
    cfg = TrainConfig(epochs=args.ft_epochs, seed=seed, max_steps_per_epoch=args.max_steps,
                      **FT, **kd)  # fmt: skip
    total = getattr(args, "total_epochs", None)
    if total is not None and method in ENGINE_METHODS:
        # equal total compute: compression (in dense epochs of this model, timed here) + FT = E
        # CPU seconds on both sides (one torch thread): a shared machine's load does not move
        # the ratio as it moves wall times
        if model_name not in _EPOCH_S:
            _EPOCH_S[model_name] = time_epoch(model_name, 50, args.quick)["epoch_cpu_s"]
        cost = row["compress_cpu_s"] / _EPOCH_S[model_name]
        ft = max(0.0, total - cost)
        n = len(train) if args.max_steps is None else min(args.max_steps, len(train))
        epochs = max(1, math.ceil(ft - 1e-9))
        per = max(0, round(ft * n / epochs))
        row["finetune"].update(epochs=ft, total_epochs=total, compress_dense_epochs=cost,
                               epoch_s=_EPOCH_S[model_name], steps=per * epochs)  # fmt: skip
        cfg = (TrainConfig(epochs=epochs, seed=seed, max_steps_per_epoch=per, **FT, **kd)
               if per else None)  # fmt: skip
    elif total is not None:  # args.ft_epochs is E already
        row["finetune"].update(total_epochs=total)
    if cfg is not None and cfg.epochs > 0:
        teacher = copy.deepcopy(base).to(module_device(small)).eval() if kd else None
        finetune(small, train, config=cfg, progress=False, teacher=teacher)
    row["finetune_s"] = time.perf_counter() - t1
    row["finetune_cpu_s"] = time.process_time() - c1  # the teacher's forwards included
    small.eval()
    row["val_top1"] = metrics.accuracy(small, val, topk=(1,))["top1"]
    row["test_top1"] = metrics.accuracy(small, test, topk=(1,))["top1"]
    small = small.cpu()  # latency is measured on the CPU, whatever the device of the run
    row["baseline_test_top1"] = base_meas["test_top1"]
    row["test_err_increase"] = base_meas["test_top1"] - row["test_top1"]
    row.update(measure_row(small, base, metrics.real_batch(test, 100), row["macs_kept"]))
    row["status"] = "ok" if row["met"] else "budget missed"
    return row


#: the keys of a row that hold its latencies (replaced when it is re-timed)
LATENCY_KEYS = ("latency_eager_ms", "latency_ort_ms", "speedup_eager", "speedup_ort", "ort_error",
                "latency", "latency_protocol")  # fmt: skip


def retime(
    rows: list[dict[str, Any]],
    models_dir: Path,
    inputs: Callable[[str], torch.Tensor],
    where: str,
) -> list[dict[str, Any]]:
    """Re-time rows from the models ``--save-models`` kept, on this machine's CPU, under the
    current protocol (:func:`measure_row`: the row's model and its baseline timed in turns in
    every runtime, one thread) on ``inputs(model_name)`` (a batch of real test images): rows of
    a ``--device cuda`` run elsewhere (whose host CPU was shared by parallel lanes), or this
    results' own rows timed under an older protocol. Accuracies, sizes and wall times are kept;
    the latencies the row had first (where it ran) move to ``latency_elsewhere`` (kept from the
    first re-timing on). A row whose model file is missing (a failed row has none) is returned
    unchanged (the same object)."""
    bases: dict[tuple[str, str], nn.Module] = {}
    out = []
    for r in rows:
        bm = r.get("baseline_measure") or {}
        f, bf = r.get("model_file"), bm.get("model_file")
        if not f or not bf or not (models_dir / f).is_file() or not (models_dir / bf).is_file():
            out.append(r)
            continue
        if (r["model"], bf) not in bases:
            bases[(r["model"], bf)] = torch.load(models_dir / bf, weights_only=False).eval()
        small = torch.load(models_dir / f, weights_only=False).eval()
        new = {k: v for k, v in r.items() if k not in LATENCY_KEYS}
        new["latency_elsewhere"] = r.get("latency_elsewhere") or {
            k: r[k] for k in LATENCY_KEYS if k in r
        }
        new.update(measure_row(small, bases[(r["model"], bf)], inputs(r["model"]),
                               r.get("macs_kept")))  # fmt: skip
        flat = {rt: new["latency"].get(rt, {}).get(FLAT_BATCH) or {}
                for rt in ("eager", "onnxruntime")}  # fmt: skip
        new["baseline_measure"] = {
            **bm, "latency_eager_ms": flat["eager"].get("base_ms"),
            "latency_ort_ms": flat["onnxruntime"].get("base_ms"),
            "latency_elsewhere": bm.get("latency_elsewhere")
            or {k: bm.get(k) for k in ("latency_eager_ms", "latency_ort_ms")},
        }  # fmt: skip
        new["latency_measured"] = f"{where}; re-timed from the saved model (interleaved with " \
            "the baseline in every runtime)"  # fmt: skip
        new["retimed"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        out.append(new)
    return out


# ----------------------------------------------------------------- timings and rows not run


def time_epoch(model_name: str, steps: int, quick: bool = False) -> dict[str, Any]:
    """Measure the seconds of one shared fine-tuning epoch of ``model_name`` on this machine:
    :func:`compactnn.train.finetune` with the protocol's optimiser (:data:`FT`) on the bench's
    training split, timed for ``steps`` batches after a warm-up, extrapolated to the split's
    batches per epoch. The weights do not matter for the time: a freshly initialised model."""
    if steps < 1:
        raise ValueError(f"--time-epoch: steps must be >= 1, got {steps}")
    spec = MODELS[model_name]
    shape = models.default_input_shape(model_name)
    info = cdata.dataset_info(spec["dataset"])
    model = models.create(model_name, in_channels=shape[0], num_classes=info.num_classes, seed=0)
    train, _, _ = loaders(model_name, 0, quick)
    warm = min(5, steps)

    def timed(n: int) -> tuple[float, float]:
        cfg = TrainConfig(epochs=1, seed=0, max_steps_per_epoch=n, **FT)
        with _lib.Stopwatch() as sw:
            finetune(model, train, config=cfg, progress=False)
        return sw.wall, sw.cpu

    t_warm, c_warm = timed(warm)
    t_all, c_all = timed(warm + steps)
    s_step = max(t_all - t_warm, 1e-9) / steps  # the fixed cost of a call cancels
    cpu_step = max(c_all - c_warm, 1e-9) / steps
    return {
        "model": model_name, "dataset": spec["dataset"], "steps_timed": steps,
        "batch_size": train.batch_size, "s_per_step": s_step, "steps_per_epoch": len(train),
        "epoch_s": s_step * len(train), "epoch_cpu_s": cpu_step * len(train),
        "train_epochs": spec["train_epochs"],
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def _latest_timing(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            t = json.loads(line)
            out[t["model"]] = t  # the latest measurement of a model wins
    return out


def _lenet_costs(rows: list[dict[str, Any]]) -> dict[tuple[str, float | None], dict[str, Any]]:
    """Seconds per seed (compression + shared fine-tuning) of each method's measured lenet-caffe
    rows: median per (method, budget) and per (method, None) over all budgets. Only rows that
    ran ("ok": a failed row's time is the cost of failing) and whose clock was not disturbed
    (``timing_note``) count."""
    lenet = [r for r in rows if r["model"] == "lenet-caffe" and r.get("compress_s") is not None
             and r["status"] == "ok" and not r.get("timing_note")]  # fmt: skip
    by: dict[tuple[str, float | None], list[float]] = {}
    for r in lenet:
        cost = r["compress_s"] + (r.get("finetune_s") or 0.0)
        by.setdefault((r["method"], r["budget_macs"]), []).append(cost)
        by.setdefault((r["method"], None), []).append(cost)
    return {k: {"seed_s": statistics.median(v), "n_rows": len(v)} for k, v in by.items()}


def _hours(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} CPU-hours"
    return f"{s / 60:.0f} CPU-min" if s >= 120 else f"{s:.0f} CPU-s"


def not_run_rows(
    rows: list[dict[str, Any]],
    timing: dict[str, dict[str, Any]],
    grid: tuple[tuple[str, ...], tuple[float, ...], list[str]],
    n_seeds: int = len(SEEDS),
) -> list[dict[str, Any]]:
    """A "not run" row for every (model, budget, method) of ``grid`` without any row, its
    reason computed from measurements: the method's measured lenet-caffe seconds per seed
    (compression + shared fine-tuning; at that budget when measured there, else the median over
    its budgets), for another model scaled by the ratio of the two models' measured seconds per
    dense training epoch (:func:`time_epoch`), times ``n_seeds``, plus the baseline's training
    once (its epochs at the measured epoch time)."""
    have = {(r["model"], r["budget_macs"], r["method"]) for r in rows}
    costs = _lenet_costs(rows)
    ref = timing.get("lenet-caffe")
    models_, budgets, methods = grid
    out = []
    for model_name in models_:
        t = timing.get(model_name)
        cells = [(b, m) for b in budgets for m in methods if (model_name, b, m) not in have]
        if not cells:
            continue
        scale = t["epoch_s"] / ref["epoch_s"] if t is not None and ref is not None else None
        base_s = t["train_epochs"] * t["epoch_s"] / 0.9 if t is not None else 0.0  # all images

        def cost(b: float, m: str) -> dict[str, Any] | None:
            return costs.get((m, b)) or costs.get((m, None))

        per = {(b, m): cost(b, m) for b, m in cells}
        total = None
        if scale is not None:
            total = base_s + sum(n_seeds * c["seed_s"] * scale for c in per.values() if c)
        for b, m in cells:
            c = per[(b, m)]
            row = {"model": model_name, "dataset": MODELS[model_name]["dataset"],
                   "budget_macs": b, "method": m, "library": library_of(m),
                   "version": _version(library_of(m)), "seed": None, "status": "not run",
                   "estimated": True}  # fmt: skip
            if c is None:
                reason = "no measured lenet-caffe row of this method to extrapolate a cost from"
                out.append({**row, "reason": reason})
                continue
            src = (f"median of its {c['n_rows']} measured lenet-caffe row(s) at "
                   + (f"{100 * b:g} %" if (m, b) in costs else "other budgets"))  # fmt: skip
            if model_name == "lenet-caffe":
                reason = (f"estimated {_hours(n_seeds * c['seed_s'])} for {n_seeds} seeds "
                          f"({_hours(c['seed_s'])} per seed, {src}); not reached in the "
                          "session's time")  # fmt: skip
            elif scale is None:
                reason = (f"no epoch time of {model_name} and lenet-caffe measured "
                          "(bench_peers.py --time-epoch)")  # fmt: skip
            else:
                assert t is not None and ref is not None and total is not None
                per_seed = c["seed_s"] * scale
                reason = (
                    f"estimated {_hours(n_seeds * per_seed)} for {n_seeds} seeds: "
                    f"{_hours(c['seed_s'])} per seed on lenet-caffe (compression + "
                    f"fine-tuning, {src}) x {scale:.1f}, the ratio of dense training-epoch "
                    f"times measured on this CPU ({t['epoch_s']:.0f} s vs {ref['epoch_s']:.0f} s, "
                    f"{t['steps_timed']} steps timed, {t['torch_threads']} thread), plus "
                    f"{_hours(base_s)} to train the baseline once; this model's {len(cells)} "
                    f"cells need ~{_hours(total)} in all"
                )  # fmt: skip
                row.update(est_seed_s=per_seed, est_model_s=total, epoch_s=t["epoch_s"])
            out.append({**row, "reason": reason})
    return out


# ---------------------------------------------------------------------------------- reporting


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r.get(key) for r in rows]
    return statistics.median(vals) if vals and None not in vals else None


def _rerun_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per learning rate at which some seeds' selection training diverged, and one
    for the seeds run without admm-sparse's over-pruning guard."""
    seeds: dict[float, list[int]] = {}
    for r in rows:
        for lr in r.get("diverged_at_lr") or []:
            seeds.setdefault(lr, []).append(r["seed"])
    notes = [
        f"seed(s) {','.join(map(str, sorted(ss)))}: selection training diverged at lr {lr:g}, "
        f"rerun at lr {lr / LR_BACKOFF:g}"
        for lr, ss in sorted(seeds.items())
    ]
    lifted = sorted(
        r["seed"] for r in rows if (r.get("options") or {}).get("overprune_guard") is False
    )
    if lifted:
        notes.append(
            f"seed(s) {','.join(map(str, lifted))}: run with overprune_guard=False (the paper's "
            "50 % guard cannot reach this budget)"
        )
    return notes


def _ort_speedup(row: dict[str, Any]) -> float | None:
    """The row's onnxruntime speed-up: the baseline's onnxruntime time over the row's. A row
    timed before the latency table (no ``latency``) stored the baseline's EAGER time over the
    row's onnxruntime time; its speed-up is recomputed from the two onnxruntime times it has
    (timed apart, not interleaved)."""
    if row.get("latency"):
        return row.get("speedup_ort")
    b, m = (row.get("baseline_measure") or {}).get("latency_ort_ms"), row.get("latency_ort_ms")
    return b / m if b and m else None


def latency_medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """runtime -> batch -> {speedup, ratio, n}: medians over ``rows`` (seeds) of their latency
    tables (:func:`measure_row`); rows without one (older protocol) are left out."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    tables = [r["latency"] for r in rows if r.get("latency")]
    for t in tables:
        for rt, per in t.items():
            for b in per:
                if b.startswith("batch "):  # not a failed runtime's "error"
                    out.setdefault(rt, {}).setdefault(b, {})
    for rt, per in out.items():
        for b in per:
            got = [t[rt][b] for t in tables if b in t.get(rt, {})]
            ratios = [g["ratio"] for g in got if g.get("ratio") is not None]
            per[b] = {"speedup": statistics.median(g["speedup"] for g in got),
                      "ratio": statistics.median(ratios) if len(ratios) == len(got) else None,
                      "n": len(got)}  # fmt: skip
    return out


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, baseline, budget, method): mean / sd over seeds, medians of sizes
    (rows measured on different trained baselines are never pooled, see :func:`base_label`)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["model"], base_label(r), r["budget_macs"], r["method"])
        groups.setdefault(key, []).append(r)
    out = []
    for (model, blabel, frac, method), rs in groups.items():
        ok = [r for r in rs if r.get("test_top1") is not None]
        timed = [r for r in ok if not r.get("timing_note")]
        out.append({
            "model": model, "baseline": blabel, "budget_macs": frac, "method": method,
            "library": rs[0]["library"],
            "seeds": sorted(r["seed"] for r in rs if r.get("seed") is not None),
            "n_ok": len(ok), "test_top1": [r["test_top1"] for r in ok],
            # validation top-1 after the shared fine-tuning: what picks a library's row per cell
            "val_top1": [r["val_top1"] for r in ok if r.get("val_top1") is not None],
            "test_mean": statistics.mean(r["test_top1"] for r in ok) if ok else None,
            # the returned model before the shared fine-tuning (validation split)
            "val_before_ft": [r["val_top1_before_ft"] for r in ok
                              if r.get("val_top1_before_ft") is not None],
            "err_increase_mean": statistics.mean(r["test_err_increase"] for r in ok) if ok else None,
            "structure": ok[0]["structure"] if ok else None,
            **{k: _median(ok, k) for k in ("params", "macs", "macs_kept", "latency_eager_ms",
                                    "latency_ort_ms", "speedup_eager")},
            "speedup_ort": _median([{"s": _ort_speedup(r)} for r in ok], "s"),
            "latency": latency_medians(ok),
            "latency_where": sorted({r.get("latency_measured") or r.get("machine") or "?"
                                     for r in ok if r.get("latency")}),
            # wall times only from rows whose clock was not disturbed (see "timing_note")
            **{k: _median(timed, k) for k in ("compress_s", "finetune_s")},
            "timing_notes": sorted({r["timing_note"] for r in rs if r.get("timing_note")})
            + _rerun_notes(ok),
            "met": all(r.get("met") for r in ok) if ok else False,
            "reasons": sorted({r["reason"][:300] for r in rs if r.get("reason")}),
            "status": sorted({r["status"] for r in rs}),
            "seed_s": statistics.mean(r["compress_s"] + r["finetune_s"] for r in timed)
            if timed else None,
            "est_seed_s": rs[0].get("est_seed_s"), "est_model_s": rs[0].get("est_model_s"),
        })  # fmt: skip
    out.sort(key=lambda a: (a["model"], -a["budget_macs"], a["baseline"] or "",
                            a["library"] != "compactnn", -(a["test_mean"] or -1)))  # fmt: skip
    return out


def _cell_label(agg: list[dict[str, Any]], key: tuple[str, float, str | None]) -> str:
    """ "model @ B % MACs" of the cell ``(model, budget, baseline)``, naming the baseline when
    the model's rows were measured on more than one."""
    where = f"{key[0]} @ {100 * key[1]:g} % MACs"
    if len({a["baseline"] for a in agg if a["model"] == key[0] and a["baseline"]}) > 1:
        where += f" (baseline {key[2]})"
    return where


def _pick_by_val(cell: list[dict[str, Any]]) -> dict[str, Any]:
    """The row a user would pick among ``cell``: highest mean validation top-1 after the
    shared fine-tuning (ties: more seeds, then the method name); never the test set."""
    return max(
        cell,
        key=lambda a: (
            statistics.mean(a["val_top1"]) if a.get("val_top1") else -1.0,
            len(a["val_top1"] or []),
            a["method"],
        ),
    )


def verdicts(agg: list[dict[str, Any]]) -> list[str]:
    """Each library's row picked on validation (:func:`_pick_by_val`) at each (model, budget,
    baseline), both within budget, compared on test top-1."""
    lines = []
    words: dict[str, list[str]] = {}
    for model_name in sorted({a["model"] for a in agg}):
        mine = [a for a in agg if a["model"] == model_name]
        if not any(a["n_ok"] for a in mine):
            est = [a["est_model_s"] for a in mine if a.get("est_model_s")]
            tot = (
                f" (estimated ~{_hours(max(est))} for its baseline and all its cells x "
                f"{len(SEEDS)} seeds at its measured epoch time; see the table)"
                if est
                else ""
            )
            lines.append(f"- {model_name}: **not run** at any budget{tot}.")
    keys = {(a["model"], a["budget_macs"], a["baseline"]) for a in agg if a["n_ok"]}
    for key in sorted(keys, key=lambda k: (k[0], -k[1], k[2])):
        cell = [a for a in agg if (a["model"], a["budget_macs"], a["baseline"]) == key
                and a["met"] and a["n_ok"]]  # fmt: skip
        where = _cell_label(agg, key)
        ours = [a for a in cell if a["library"] == "compactnn"]
        peers = [a for a in cell if a["library"] != "compactnn"]
        if not ours or not peers:
            lines.append(f"- {where}: no comparison (compactnn rows within budget: "
                         f"{len(ours)}, peer rows: {len(peers)}).")  # fmt: skip
            continue
        # each library's row is the one a user would pick: the best validation top-1 (after
        # the shared fine-tuning, mean over seeds); its test top-1 is then read once
        o, p = _pick_by_val(ours), _pick_by_val(peers)
        d = o["test_mean"] - p["test_mean"]
        sds = [statistics.stdev(a["test_top1"]) for a in (o, p) if len(a["test_top1"]) > 1]
        noise = max(sds) if sds else None
        n = min(len(o["test_top1"]), len(p["test_top1"]))
        if noise is not None and abs(d) <= noise:
            word = "tie (within one sd)"
        elif noise is None and abs(d) < 0.1:
            word = "tie (< 0.1 point, one seed)"
        else:
            word = "win" if d > 0 else "lose"
        words.setdefault(word.split()[0], []).append(where)
        lines.append(
            f"- {where}: **{word}** by {d:+.2f} points of test top-1 "
            f"({n} seed(s)): compactnn's best on validation `{o['method']}` "
            f"{o['test_mean']:.2f} % "
            f"({o['structure']}, {100 * o['macs_kept']:.2f} % MACs, {o['speedup_eager']:.2f}x "
            f"eager) vs the peers' best on validation `{p['method']}` ({p['library']}) "
            f"{p['test_mean']:.2f} % "
            f"({p['structure']}, {100 * p['macs_kept']:.2f} % MACs, {p['speedup_eager']:.2f}x)."
        )
    n = sum(len(v) for v in words.values())
    if n:
        parts = [f"{w} {len(words.get(w, []))}" for w in ("win", "tie", "lose")]
        lines.insert(0, f"- Over the {n} (model, budget, baseline) cell(s) measured, "
                        "compactnn vs the peers, each library's row picked by its mean "
                        "validation top-1 (after the shared fine-tuning), compared on test: "
                        f"{', '.join(parts)} (ties: difference within one seed sd, or "
                        "< 0.1 point with one seed).")  # fmt: skip
    return lines


def before_ft_verdicts(agg: list[dict[str, Any]]) -> list[str]:
    """Best compactnn row vs best peer row at each (model, budget, baseline) by the validation
    top-1 of the returned model *before* the shared fine-tuning (what a user with no
    fine-tuning budget gets). Same cells and rules as :func:`verdicts`; nothing here is a
    choice, so reading the validation split is fine."""
    lines: list[str] = []
    keys = {(a["model"], a["budget_macs"], a["baseline"]) for a in agg if a["n_ok"]}
    for key in sorted(keys, key=lambda k: (k[0], -k[1], k[2] or "")):
        cell = [a for a in agg if (a["model"], a["budget_macs"], a["baseline"]) == key
                and a["met"] and a.get("val_before_ft")]  # fmt: skip
        ours = [a for a in cell if a["library"] == "compactnn"]
        peers = [a for a in cell if a["library"] != "compactnn"]
        if not ours or not peers:
            continue

        def mean(a: dict[str, Any]) -> float:
            return statistics.mean(a["val_before_ft"])

        o, p = max(ours, key=mean), max(peers, key=mean)
        lines.append(
            f"- {_cell_label(agg, key)}: best compactnn `{o['method']}` {_lib.pm_values(o['val_before_ft'])} vs best "
            f"peer `{p['method']}` {_lib.pm_values(p['val_before_ft'])} "
            f"({mean(o) - mean(p):+.2f} points)."
        )
    return lines


NOTES = [
    "- Hyper-parameters: every method runs at its library's documented defaults (compactnn: "
    "the project's budget recipes, own fine-tuning off); the only automatic choice is each "
    "method's strength for the budget, by a size search (<= 12 evaluations for the peers, "
    "compactnn's own search for its methods) on training data. No accuracy-driven search on "
    "validation is made for anyone yet (the issue asks for one with an equal budget).",
    "- Selection training: compactnn's training methods (ssr, pgt, admm-sparse) use their own "
    "schedules; OTO's HESSO and kirigami's group-lasso regulariser train `--select-epochs` "
    "(default 2) epochs; their cost is in the compress column, not in the fine-tuning.",
    "- torch-kirigami's search measures the exact widths its `ChannelRatio` resolves to (its "
    "`channel_targets`) on a model cut by compactnn's surgery, since a kirigami plan takes "
    "~80 s on LeNet; the returned model is kirigami's own plan at the chosen ratio.",
    "- OTO's search runs HESSO for 2 steps with pruning at once per evaluation; the full run "
    "prunes progressively during training, so its final MACs can differ from the search's "
    "(the met column says whether it stayed within budget).",
    "- Rows not run carry an estimate computed from measurements (bench_peers.py "
    "`not_run_rows`): the method's measured lenet-caffe seconds per seed (compression + "
    "shared fine-tuning, median, at that budget when measured there); for another model "
    "scaled by the ratio of the two models' measured seconds per dense training epoch "
    "(`--time-epoch STEPS`: STEPS batches of the shared fine-tuning timed after a warm-up on "
    "the freshly initialised dense model, extrapolated to the epoch, in peers_timing.jsonl), "
    "plus the baseline's training (its epochs at that epoch time). Scaling a whole method's "
    "cost by the dense epoch-time ratio is an approximation (search evaluations and graph "
    "planning need not scale with training FLOPs), and whether the method applies to that "
    "model was not tried.",
    "- The cached LeNet baseline was trained on all 60,000 MNIST training images: validation "
    "accuracies (in peers.json) are optimistic; the verdict uses test accuracy, read once per "
    "row and never for a choice.",
]


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def machines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: where each model's measured rows ran, and where their latency was timed
    (a row re-timed by ``--retime`` names this machine's CPU)."""
    seen: dict[str, dict[tuple[str, str], int]] = {}
    for r in rows:
        if r.get("estimated") or not r.get("machine"):
            continue
        timed = r.get("latency_measured") or "same machine"
        per = seen.setdefault(r["model"], {})
        per[(r["machine"], timed)] = per.get((r["machine"], timed), 0) + 1
    out = ["Where the rows ran:", ""]
    for model in sorted(seen):
        for (machine, timed), n in sorted(seen[model].items()):
            out.append(f"- {model}: {n} row(s) on {machine}; latency: {timed}")
    return [*out, ""] if seen else []


def latency_tables(agg: list[dict[str, Any]]) -> list[str]:
    """Markdown: per (model, budget, baseline) cell, each method's speed-up in every runtime
    and batch size (median over seeds) and, in brackets, speed-up / MACs reduction; the rows'
    model and baseline were timed in turns in one run (:data:`LATENCY`)."""
    cols: list[tuple[str, str]] = []
    for a in agg:
        for rt, per in (a.get("latency") or {}).items():
            cols += [(rt, b) for b in per if (rt, b) not in cols]
    if not cols:
        return []
    p = LATENCY
    lines = [
        "## Latency: each row's model and its baseline timed interleaved, in the same runtime",
        "",
        f"Speed-up = the baseline's median / the model's median in the SAME runtime, the two "
        f"timed in turns in one run ({p['rounds']} rounds of {p['warmup']} warm-up + "
        f"{p['repeats']} timed runs each, the order reversed every other round), "
        f"{p['threads']} thread (torch and onnxruntime), real test images; channels_last: the "
        "models and the batch converted once. In brackets: speed-up / MACs reduction (1.00: "
        "the latency fell as much as the MACs). Median over seeds. Rows timed before this "
        "protocol have no entry here.",
        "",
    ]
    keys = sorted({(a["model"], a["budget_macs"], a["baseline"]) for a in agg
                   if a.get("latency")}, key=lambda k: (k[0], -k[1], k[2] or ""))  # fmt: skip
    for key in keys:
        cell = [a for a in agg if (a["model"], a["budget_macs"], a["baseline"]) == key
                and a.get("latency")]  # fmt: skip
        where = sorted({w for a in cell for w in a.get("latency_where") or []})
        lines += [f"### {_cell_label(agg, key)}", "", f"Timed on: {'; '.join(where)}.", "",
                  "| method | library | MACs kept | "
                  + " | ".join(f"{rt} b{b.split()[-1]}" for rt, b in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]  # fmt: skip
        for a in cell:
            vals = []
            for rt, b in cols:
                e = (a["latency"].get(rt) or {}).get(b)
                vals.append("–" if e is None else f"{e['speedup']:.2f}x"
                            + ("" if e["ratio"] is None else f" ({e['ratio']:.2f})"))  # fmt: skip
            lines.append(f"| {a['method']} | {a['library']} | "
                         f"{_f(a['macs_kept'] and 100 * a['macs_kept'], '.2f')} % | "
                         + " | ".join(vals) + " |")  # fmt: skip
        lines.append("")
    return lines


def markdown(rows: list[dict[str, Any]], agg: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# compactnn against the peers at equal MACs budgets",
        "",
        f"Rebuilt {meta['date']} from {meta['n_rows']} rows of `peers_rows.jsonl` · "
        f"{meta['machine']} · torch {meta['torch']} · peers: {meta['peers']}. Each row's own "
        "date, command and load average are in peers.json.",
        "",
        "Protocol: same trained baseline; every method gets the MACs budget (fraction of the "
        "baseline's MACs, met within 10 %, measured on the returned model); each method's own "
        "fine-tuning off, then the SAME fine-tuning for every returned model (epochs below, SGD "
        "lr 0.01 momentum 0.9 wd 5e-4 cosine, no distillation; rows named METHOD+kd: the same "
        "fine-tuning of the same compressed model distilled from the baseline, alpha 0.5, T 4, "
        "open to every method alike and picked on validation like any row). Under --total-epochs "
        "E the engine rows (ssr / pgt / admm-sparse with a target) fine-tune E minus their "
        "compression cost (CPU seconds over one dense epoch's), every other row E epochs. "
        "Strengths chosen by size "
        "searches on training data only; test set read once per row. Latency: median, batch "
        "100 real test images, one thread; speed-up = baseline / row in the SAME runtime "
        "(eager, or onnxruntime), the two timed interleaved (older rows: timed apart; see "
        "the latency section). Structure: the output width of every conv / linear layer in "
        "order (16x7: seven layers of 16, rN: a rank). See benchmarks/bench_peers.py for each "
        "adapter.",
        "",
        *machines(rows),
        "## Verdict",
        "",
        *verdicts(agg),
        "",
        "### Before the shared fine-tuning",
        "",
        "Validation top-1 of each returned model before the shared fine-tuning (what a user "
        "with no fine-tuning budget gets; best of each library per cell, mean ± sd over "
        "seeds). Secondary: the verdict above, after fine-tuning, is the protocol's.",
        "",
        *before_ft_verdicts(agg),
        "",
        "## Table (mean ± sd over seeds; sizes and times: median)",
        "",
        "| model | MACs budget | baseline top-1 | method | library | structure | params | "
        "MACs kept | val top-1 before FT | test top-1 | err. increase | eager ms (x) | "
        "ORT ms (x) | compress s | fine-tune s | seeds | status / reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # cells not run with the same reason at several budgets share one line (their estimate
    # does not depend on the budget)
    budgets_of: dict[tuple[Any, ...], list[float]] = {}
    for a in agg:
        if a["status"] == ["not run"]:
            budgets_of.setdefault((a["model"], a["method"], *a["reasons"]), []).append(
                a["budget_macs"]
            )
    for a in agg:
        shown = f"{100 * a['budget_macs']:g} %"
        if a["status"] == ["not run"]:
            fr = budgets_of.pop((a["model"], a["method"], *a["reasons"]), None)
            if fr is None:
                continue  # already shown with its other budgets
            shown = ", ".join(f"{100 * b:g}" for b in fr) + " %"
        reason = "; ".join(a["reasons"] + a.get("timing_notes", []))[:640].replace("|", "/")
        missing = [s for s in SEEDS if s not in a["seeds"]]
        cur = meta.get("current_baseline", {}).get(a["model"])
        if a["n_ok"] and missing:
            each = f"~{_hours(a['seed_s'])} each, measured" if a["seed_s"] else "time unknown"
            why = (f"not run ({each})" if a["baseline"] == cur
                   else f"cannot run: this baseline's checkpoint is gone from the machine's "
                   f"cache (the current {a['model']} baseline is {cur})")  # fmt: skip
            reason = (f"seed(s) {','.join(map(str, missing))} {why}"
                      f"{'; ' + reason if reason else ''}")  # fmt: skip
        lines.append(
            f"| {a['model']} | {shown} | {a['baseline'] or '–'} | {a['method']} | {a['library']} | "
            f"{a['structure'] or '–'} | {_f(a['params'], ',.0f')} | "
            f"{_f(a['macs_kept'] and 100 * a['macs_kept'], '.2f')} % | "
            f"{_lib.pm_values(a['val_before_ft']) if a.get('val_before_ft') else '–'} | "
            f"{_lib.pm_values(a['test_top1'])} | "
            f"{_f(a['err_increase_mean'], '+.2f')} | {_f(a['latency_eager_ms'], '.2f')} "
            f"({_f(a['speedup_eager'], '.2f')}x) | {_f(a['latency_ort_ms'], '.2f')} "
            f"({_f(a['speedup_ort'], '.2f')}x) | {_f(a['compress_s'], '.0f')} | "
            f"{_f(a['finetune_s'], '.0f')} | {','.join(map(str, a['seeds']))} | "
            f"{'/'.join(a['status'])}{': ' + reason if reason else ''} |"
        )
    lines += ["", *latency_tables(agg)]
    lines += ["## What this protocol does and does not do", "", *NOTES]
    multi = {m: sorted(b) for m, b in meta.get("all_baselines", {}).items() if len(b) > 1}
    for m, bs in multi.items():
        lines.append(
            f"- {m}: rows were measured on {len(bs)} trained baselines (test top-1 "
            f"{', '.join(bs)}; the cached checkpoint was lost and retrained, which does not "
            f"reproduce it bit for bit); each comparison, mean and sd above uses ONE baseline, "
            f"never a mix. The current one is {meta['current_baseline'][m]}."
        )
    lines += ["", "Baselines: " + "; ".join(f"{k}: {v}" for k, v in meta["baselines"].items()),
              ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(
    agg: list[dict[str, Any]], model: str, out: Path, baseline: str | None = None
) -> Path | None:
    """Accuracy vs MACs of ``model``'s measured cells (those of ``baseline`` when given)."""
    from compactnn.plots import curves

    cells = [a for a in agg if a["model"] == model and a["n_ok"]
             and (baseline is None or a["baseline"] == baseline)]  # fmt: skip
    if not cells:
        return None
    series = []
    for method in sorted({a["method"] for a in cells}):
        pts = sorted((100 * a["macs_kept"], a["test_mean"]) for a in cells if a["method"] == method)
        lib = cells[[a["method"] for a in cells].index(method)]["library"]
        label = method if lib == "compactnn" else f"{method} ({lib})"
        series.append((label, [p[0] for p in pts], [p[1] for p in pts]))
    title = f"{model}: accuracy vs MACs after the same fine-tuning"
    if baseline is not None:
        title = f"{model} (baseline {baseline}): top-1 vs MACs, same fine-tuning"
    return curves(out, series, xlabel="MACs kept (%)", ylabel="test top-1 (%)", logx=True,
                  title=title)  # fmt: skip


def base_label(row: dict[str, Any]) -> str | None:
    """The trained baseline a row was measured on, by its test top-1 ("99.16 %"; the weights'
    fingerprint ``state_sha`` is in the rows that have it); None for a row not run. Rows of
    different baselines are never pooled."""
    bm = row.get("baseline_measure")
    return f"{bm['test_top1']:.2f} %" if bm else None


def current_baselines(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per model, the baseline of its latest row (the checkpoint a new run would use)."""
    cur: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: r.get("date") or ""):
        b = base_label(r)
        if b is not None:
            cur[r["model"]] = b
    return cur


def rebuild(
    jsonl: Path,
    out_dir: Path,
    meta: dict[str, Any],
    grid: tuple[tuple[str, ...], tuple[float, ...], list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Rebuild peers.json / .md / PNGs from the measured rows of ``jsonl``; with ``grid``, every
    cell of it without a row gets a computed "not run" row (:func:`not_run_rows`, timings read
    from ``out_dir/peers_timing.jsonl``)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    # the latest row of each (model, baseline, budget, method, seed) wins (reruns replace); a
    # row of another trained baseline never replaces one (they are reported apart)
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], base_label(r), r["budget_macs"], r["method"], r["seed"],
               r.get("quick", False))  # fmt: skip
        latest[key] = r
    rows = list(latest.values())
    current = current_baselines(rows)
    timing = _latest_timing(out_dir / TIMING_FILE)
    if grid is not None:
        rows += not_run_rows(rows, timing, grid)
    agg = aggregate(rows)
    meta = {**meta, "n_rows": sum(1 for r in rows if not r.get("estimated")),
            "n_not_run": sum(1 for r in rows if r.get("estimated")), "epoch_timings": timing,
            "current_baseline": current,
            "all_baselines": {m: sorted({base_label(r) for r in rows if r["model"] == m
                                         and r.get("baseline_measure")}) for m in current},
            "baselines": {**{r["model"]: r["baseline"] for r in rows if r.get("baseline")},
                          **meta.get("baselines", {})}}  # fmt: skip
    doc = {"meta": meta, "aggregate": agg, "rows": rows}
    _lib.write_result(out_dir, "peers", doc, lambda _: markdown(rows, agg, meta), default=str)
    for model in sorted({r["model"] for r in rows}):
        bases = meta["all_baselines"].get(model) or []
        if len(bases) <= 1:
            plot(agg, model, out_dir / f"peers_{model}.png")
            continue
        # one figure per baseline: the current one under the usual name
        for b in bases:
            tag = "" if b == current[model] else "_base" + b.split()[0].replace(".", "")
            plot(agg, model, out_dir / f"peers_{model}{tag}.png", baseline=b)
    return rows


def base_measure(base: nn.Module, model_name: str, quick: bool) -> dict[str, Any]:
    shape = tuple(models.default_input_shape(model_name))
    _, _, test = loaders(model_name, 0, quick)
    return {
        "state_sha": _lib.state_sha(base),
        "params": metrics.count_params(base),
        "macs": macs_of(base, shape),
        "test_top1": metrics.accuracy(base, test, topk=(1,))["top1"],
    }  # its latency: in every row's table, timed in turns with the row's model


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-caffe,kiaee-cnn,resnet20")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--methods", default="all", help="comma list, 'all', 'compactnn' or 'peers'")
    ap.add_argument("--ft-epochs", type=int, default=8, help="shared fine-tuning epochs")
    ap.add_argument(
        "--total-epochs", type=float, default=None,
        help="equal total compute E (dense epochs): the engine methods (ssr, pgt, admm-sparse "
        "with a target) fine-tune E minus their compression cost; every other row E "
        "(overrides --ft-epochs)",
    )  # fmt: skip
    ap.add_argument(
        "--ft-recipes", default="plain",
        help=f"comma list of the shared fine-tuning's recipes, each run on its own copy of every "
        f"compressed model ({', '.join(FT_RECIPES)}; 'kd': distillation from the baseline); a "
        "recipe other than plain names its rows METHOD+RECIPE",
    )  # fmt: skip
    ap.add_argument("--select-epochs", type=int, default=2,
                    help="training epochs of the peers' sparse-training selections (OTO, kirigami "
                    "group lasso)")  # fmt: skip
    ap.add_argument("--max-steps", type=int, default=None, help="cap on batches per epoch")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: untrained lenet-caffe, 400 images, 1 epoch of 3 steps",
    )
    ap.add_argument(
        "--time-epoch",
        type=int,
        default=None,
        metavar="STEPS",
        help="only time STEPS shared fine-tuning steps of each of --models, "
        "extrapolate to an epoch and append it to peers_timing.jsonl (no rows run)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild peers.json / .md / PNGs from the rows there",
    )
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--device", default="cpu",
        help="where baselines are trained and methods compress and fine-tune (e.g. cuda); "
        "latency is always measured on the CPU. A baseline trained on another device is "
        "cached and reported as another baseline",
    )  # fmt: skip
    ap.add_argument(
        "--retime", nargs=2, default=None, metavar=("ROWS", "DIR"),
        help="run nothing new: re-time the rows of the jsonl ROWS (e.g. from a --device cuda "
        "run elsewhere, or the results' own peers_rows.jsonl to refresh its rows under the "
        "current latency protocol) on this CPU from the models in DIR (--save-models), append "
        "them to the results' rows and rebuild the report",
    )  # fmt: skip
    ap.add_argument(
        "--save-models", default=None, metavar="DIR",
        help="save each row's fine-tuned model (torch.save of the module, CPU) and each "
        "baseline to DIR; the row records the file (to re-time it elsewhere: --retime)",
    )  # fmt: skip
    ap.add_argument(
        "--baseline-trained-on", default=None, metavar="DEVICE",
        help="use the cached baseline trained on DEVICE (e.g. cuda: the committed H200 "
        "kiaee-cnn baseline in benchmarks/results/checkpoints), so that rows run here pool "
        "with the rows run there; never trains one",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if args.time_epoch is not None and args.time_epoch < 1:
        ap.error(f"--time-epoch: STEPS must be >= 1, got {args.time_epoch}")
    bad = sorted({r.strip() for r in args.ft_recipes.split(",") if r.strip()} - set(FT_RECIPES))
    if bad or not args.ft_recipes.strip():
        ap.error(f"--ft-recipes: unknown recipe(s) {bad or [args.ft_recipes]}; known: "
                 f"{', '.join(FT_RECIPES)}")  # fmt: skip
    if args.ft_epochs < 0:
        ap.error(f"--ft-epochs must be >= 0, got {args.ft_epochs}")
    if args.total_epochs is not None:
        if args.total_epochs < 0 or args.total_epochs != int(args.total_epochs):
            ap.error(f"--total-epochs must be a whole number >= 0, got {args.total_epochs}")
        args.ft_epochs = int(args.total_epochs)  # the rows outside the engine fine-tune all of E
    if args.quick:
        args.ft_epochs, args.select_epochs = 1, 1
        args.max_steps = args.max_steps or 3
        if args.models == ap.get_default("models"):
            args.models = "lenet-caffe"
    return args


def machine_label(device: str, threads: int) -> str:
    """Where a row ran: the CPU (and the GPU when ``device`` is one) and the torch threads."""
    cpu = f"{platform.machine()} CPU ({os.cpu_count()} cores, shared), {threads} torch thread(s)"
    dev = torch.device(device)
    if dev.type == "cuda":
        return (f"{torch.cuda.get_device_name(dev)} (baseline training, compression and "
                f"fine-tuning on cuda); latency on its host's {cpu}")  # fmt: skip
    return f"{cpu}, no GPU"


def save_model(model: nn.Module, directory: str, name: str) -> str:
    """``torch.save`` the whole module (on the CPU) to ``directory/name.pt``; returns the name."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.pt"
    torch.save(copy.deepcopy(model).cpu(), path)
    return path.name


def methods_of(spec: str) -> list[str]:
    if spec == "all":
        return all_methods()
    if spec == "compactnn":
        return list(compactnn.methods.list_methods())
    if spec == "peers":
        return list(PEERS)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = sorted(set(names) - set(all_methods()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {all_methods()}")
    return names


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / ("peers_rows_quick.jsonl" if args.quick else "peers_rows.jsonl")
    command = "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = machine_label(args.device, args.threads)
    names = methods_of(args.methods)
    recipes = [r.strip() for r in args.ft_recipes.split(",") if r.strip()]
    model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(model_names) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; known: {sorted(MODELS)}")
    meta = {
        "date": dt.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
        "peers": ", ".join(f"{p} {_version(p)}" for p in PEER_IMPORT),
    }  # fmt: skip
    grid = (GRID_MODELS, BUDGETS, all_methods())
    if args.time_epoch is not None:
        out = []
        for model_name in model_names:
            t = time_epoch(model_name, args.time_epoch, args.quick)
            t.update(date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     machine=machine, load=list(os.getloadavg()), command=command)  # fmt: skip
            print(json.dumps(t), flush=True)
            if not args.quick:
                with (out_dir / TIMING_FILE).open("a") as f:
                    f.write(json.dumps(t) + "\n")
            out.append(t)
        return out
    if args.retime:
        src_rows = [json.loads(line) for line in Path(args.retime[0]).read_text().splitlines()
                    if line.strip()]  # fmt: skip
        batches: dict[str, torch.Tensor] = {}

        def inputs(model_name: str) -> torch.Tensor:
            if model_name not in batches:
                batches[model_name] = metrics.real_batch(loaders(model_name, 0, False)[2], 100)
            return batches[model_name]

        done = retime(src_rows, Path(args.retime[1]), inputs, machine_label("cpu", args.threads))
        if Path(args.retime[0]).resolve() == jsonl.resolve():
            # refreshing the results' own rows: append the re-timed ones only (the latest row
            # of a cell wins when the report is rebuilt), not a second copy of the others
            done = [n for n, o in zip(done, src_rows, strict=True) if n is not o]
        with jsonl.open("a") as f:
            for r in done:
                f.write(json.dumps(r, default=str) + "\n")
        print(
            f"re-timed {sum(1 for r in done if r.get('retimed'))} of {len(done)} rows", flush=True
        )
        rebuild(jsonl, out_dir, {**meta, "baselines": {}}, grid)
        return done
    if args.report_only:
        if not jsonl.is_file():
            raise SystemExit(f"--report-only: no rows at {jsonl}")
        rebuild(jsonl, out_dir, {**meta, "baselines": {}}, grid)
        return []
    baselines: dict[str, str] = {}
    new_rows = []
    for model_name in model_names:
        base, src = baseline(model_name, args.quick, args.device, args.baseline_trained_on)
        baselines[model_name] = src
        bm = base_measure(base, model_name, args.quick)
        if args.save_models:
            bm["model_file"] = save_model(base, args.save_models, f"{model_name}_baseline")
        print(f"== {model_name}: baseline {src}, {bm['test_top1']:.2f} %, {bm['macs']:,.0f} MACs",
              flush=True)  # fmt: skip
        for frac in [float(b) for b in args.budgets.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for method in names:
                    print(f"-- {model_name} {frac:g} {method} seed {seed} ...", flush=True)
                    keep: dict[str, nn.Module] | None = {} if args.save_models else None
                    rows = run_rows(method, model_name, frac, seed, args, base, bm, recipes, keep)
                    for i, row in enumerate(rows):
                        if i == 0 and keep and "finetuned" in keep:
                            row["model_file"] = save_model(
                                keep["finetuned"], args.save_models,
                                f"{model_name}_{frac:g}_{row['method']}_s{seed}")  # fmt: skip
                        row.update(
                            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            machine=machine, load=list(os.getloadavg()), command=command,
                            quick=args.quick, baseline=src, baseline_measure=bm,
                            device=args.device,
                        )  # fmt: skip
                        with jsonl.open("a") as f:
                            f.write(json.dumps(row, default=str) + "\n")
                        new_rows.append(row)
                        print(json.dumps({k: row.get(k) for k in ("method", "status", "structure",
                              "macs_kept", "test_top1", "compress_s", "reason")}, default=str),
                              flush=True)  # fmt: skip
    if not args.quick:
        rebuild(jsonl, out_dir, {**meta, "baselines": baselines}, grid)
    return new_rows


if __name__ == "__main__":
    main()
