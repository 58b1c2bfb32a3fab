"""One graph analysis of a model: layer order, classifier, residual coupling, activations.

:func:`discover` runs **one forward pass** of the model on an example input with forward hooks
on every Conv1d/Conv2d/Linear, then walks the autograd graph of the output. It does not need
``torch.fx``: a forward that branches on ``x.shape``, on data or on Python state is fine.
``torch.fx`` is still used, when the model traces, for the residual rule (exactly the rule
SSR's ResNet experiments used); when it does not trace, an autograd rule replaces it.

* **order**: layers in execution order (first call); a layer called more than once is listed
  once and noted in ``reused``.
* **classifier**: the layer that produces the output: breadth-first walk from the output's
  ``grad_fn`` back along ``next_functions`` to the first node a layer hook recorded. The
  example input is a clone with ``requires_grad=True``, so this works with frozen parameters.
  Fallback: the last executed layer.
* **residual_coupled** (autograd rule, used when fx fails): walking *forward* from a layer's
  output node through pass-through nodes only (ReLU, ReLU6/hardtanh, BatchNorm, clone), the
  layer reaches an ``AddBackward0`` whose other input, followed back through pass-through
  nodes, is not this same layer's output (an identity shortcut, another conv, ...). Adds
  reached through any other op (pooling, a view, a conv) are not seen, as in the fx rule;
  concatenations are not coupling.
* **activations**: ``"relu"`` when every autograd consumer of the layer's output is a ReLU.

With ``example_input=None`` the analysis uses ``torch.fx`` only (order = graph order,
classifier = walk back from the output node) and fails on untraceable models.

The model is never modified: train/eval flags are restored, no parameter or buffer changes
(forward in eval mode), no random number is drawn.
"""

from __future__ import annotations

import operator
import re
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from compactnn.errors import UnsupportedLayerError

__all__ = ["ModelGraph", "discover", "prunable_layers", "example_input_for"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_PRUNABLE = (nn.Conv2d, nn.Linear)
# fx rule (SSR sec. III-E): modules/functions a layer's output may pass before the add
_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout)
_PASS_FUNCS = (torch.relu, nn.functional.relu)
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}
# autograd rule: node types (trailing version digits stripped) a layer's output may pass
_PASS_NODES = {
    "ReluBackward",
    "HardtanhBackward",
    "NativeBatchNormBackward",
    "NativeBatchNormLegitNoTrainingBackward",
    "CudnnBatchNormBackward",
    "MiopenBatchNormBackward",
    "CloneBackward",
    "AliasBackward",
}


@dataclass(frozen=True)
class ModelGraph:
    """Result of :func:`discover`.

    Attributes:
        order: Conv1d/Conv2d/Linear names in execution order (first call).
        classifier: the layer producing the model's output (first tensor of a tuple/dict
            output), or ``None`` when no layer feeds the output.
        output_shape: shape of the output tensor (``None`` in fx-only mode).
        residual_coupled: layers whose output reaches a residual add (see module docstring).
        traced: whether ``torch.fx.symbolic_trace`` worked (fx residual rule used).
        depthwise: depthwise convs (``groups == in_channels > 1``), in execution order.
        reused: layers called more than once in one forward.
        activations: ``"relu"`` or ``None`` per layer, from the autograd consumers of its
            output (empty in fx-only mode).
    """

    order: tuple[str, ...]
    classifier: str | None
    output_shape: tuple[int, ...] | None
    residual_coupled: frozenset[str]
    traced: bool
    depthwise: tuple[str, ...] = ()
    reused: frozenset[str] = frozenset()
    activations: dict[str, str | None] = field(default_factory=dict)


def _trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fx.symbolic_trace(model), ""
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not traceable"
        return None, f"{type(exc).__name__}: {exc}"


def _fx_coupled(gm: fx.GraphModule) -> set[str]:
    """Layers whose output reaches a residual ``add`` through BN/ReLU/identity only (fx)."""
    mods = dict(gm.named_modules())
    coupled: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], _LAYERS):
            continue
        frontier, seen = [node], set()
        while frontier:
            cur = frontier.pop()
            for user in cur.users:
                if user in seen:
                    continue
                seen.add(user)
                if user.op == "call_function" and user.target in _ADD_TARGETS:
                    coupled.add(str(node.target))
                elif user.op == "call_method" and user.target in ("add", "add_"):
                    coupled.add(str(node.target))
                elif user.op == "call_module" and isinstance(mods[user.target], _PASS_MODULES):
                    frontier.append(user)
                elif user.op == "call_function" and user.target in _PASS_FUNCS:
                    frontier.append(user)
    return coupled


def _fx_graph(model: nn.Module, gm: fx.GraphModule) -> ModelGraph:
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], _LAYERS):
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    classifier = None
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    queue: deque[Any] = deque()
    if outputs:
        first = outputs[0].args[0]
        while isinstance(first, (tuple, list)) and first:
            first = first[0]
        if isinstance(first, dict) and first:
            first = next(iter(first.values()))
        if isinstance(first, fx.Node):
            queue.append(first)
    seen: set[Any] = set()
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(mods[node.target], _LAYERS):
            classifier = str(node.target)
            break
        queue.extend(node.all_input_nodes)
    order = tuple(calls)
    if classifier is None and order:
        classifier = order[-1]
    return ModelGraph(
        order=order,
        classifier=classifier,
        output_shape=None,
        residual_coupled=frozenset(_fx_coupled(gm)),
        traced=True,
        depthwise=_depthwise(model, order),
        reused=frozenset(n for n, c in calls.items() if c > 1),
    )


def _depthwise(model: nn.Module, order: Sequence[str]) -> tuple[str, ...]:
    mods = dict(model.named_modules())
    return tuple(
        n
        for n in order
        if isinstance(mods[n], (nn.Conv1d, nn.Conv2d))
        and mods[n].groups > 1
        and mods[n].groups == mods[n].in_channels
    )


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _kind(node: Any) -> str:
    return re.sub(r"\d+$", "", type(node).__name__)


def _inputs(example_input: Tensor | Sequence[Tensor]) -> tuple[Any, ...]:
    xs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    out = []
    for x in xs:
        if isinstance(x, Tensor):
            x = x.detach().clone()
            if x.is_floating_point() or x.is_complex():
                x.requires_grad_(True)
        out.append(x)
    return tuple(out)


def discover(
    model: nn.Module, example_input: Tensor | Sequence[Tensor] | None = None
) -> ModelGraph:
    """Analyse ``model`` with one forward pass on ``example_input`` (see the module docstring).

    Args:
        model: the model (not modified; train/eval flags restored).
        example_input: a batch the model accepts (a tensor or a tuple of positional inputs).
            ``None``: fx-only analysis.

    Raises:
        UnsupportedLayerError: ``example_input`` is ``None`` and the model cannot be traced by
            ``torch.fx``, or the forward pass fails.
    """
    gm, why = _trace(model)
    if example_input is None:
        if gm is None:
            raise UnsupportedLayerError(
                f"{type(model).__name__} cannot be traced by torch.fx ({why}); pass the input "
                "shape (input_shape=) so that its layers are found by a forward pass, or pass "
                "layers= explicitly."
            )
        return _fx_graph(model, gm)

    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    node_of: dict[Any, str] = {}

    def make_hook(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            t = _first_tensor(out)
            if t is not None and t.grad_fn is not None:
                node_of[t.grad_fn] = name

        return hook

    handles = [
        m.register_forward_hook(make_hook(n)) for n, m in mods.items() if isinstance(m, _LAYERS)
    ]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.enable_grad():
            out = model(*_inputs(example_input))
    except Exception as exc:  # noqa: BLE001 - report any forward failure the same way
        raise UnsupportedLayerError(
            f"{type(model).__name__} does not run on the example input of shape "
            f"{_shape_text(example_input)} ({type(exc).__name__}: {exc}). Pass the model's "
            "per-sample input shape, or layers= explicitly."
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes:
            m.training = flag

    order = tuple(calls)
    t = _first_tensor(out)
    users: dict[Any, list[Any]] = {}
    bfs: list[Any] = []
    if t is not None and t.grad_fn is not None:
        seen = {t.grad_fn}
        queue = deque([t.grad_fn])
        while queue:
            node = queue.popleft()
            bfs.append(node)
            for nxt, _ in node.next_functions:
                if nxt is None:
                    continue
                users.setdefault(nxt, []).append(node)
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
    classifier = next((node_of[n] for n in bfs if n in node_of), order[-1] if order else None)

    coupled = _fx_coupled(gm) if gm is not None else _autograd_coupled(node_of, users)
    activations: dict[str, str | None] = {}
    for name in order:
        nodes = [n for n, v in node_of.items() if v == name]
        ok = bool(nodes) and all(
            users.get(n) and all(_kind(u) == "ReluBackward" for u in users[n]) for n in nodes
        )
        activations[name] = "relu" if ok else None
    return ModelGraph(
        order=order,
        classifier=classifier,
        output_shape=None if t is None else tuple(t.shape),
        residual_coupled=frozenset(coupled),
        traced=gm is not None,
        depthwise=_depthwise(model, order),
        reused=frozenset(n for n, c in calls.items() if c > 1),
        activations=activations,
    )


def _autograd_coupled(node_of: dict[Any, str], users: dict[Any, list[Any]]) -> set[str]:
    def sources(node: Any) -> set[str | None]:
        """Layers an add input comes from, through pass-through nodes (data input only)."""
        seen = set()
        while node is not None and node not in seen:
            seen.add(node)
            if node in node_of:
                return {node_of[node]}
            if _kind(node) not in _PASS_NODES or not node.next_functions:
                return {None}
            node = node.next_functions[0][0]
        return {None}

    coupled: set[str] = set()
    for start, name in node_of.items():
        frontier, seen = [start], {start}
        while frontier and name not in coupled:
            cur = frontier.pop()
            for u in users.get(cur, []):
                kind = _kind(u)
                if kind == "AddBackward":
                    others = [n for n, _ in u.next_functions if n is not None and n is not cur]
                    if any(sources(n) != {name} for n in others):
                        coupled.add(name)
                elif kind in _PASS_NODES and u not in seen:
                    seen.add(u)
                    frontier.append(u)
    return coupled


def _shape_text(example_input: Any) -> str:
    if isinstance(example_input, Tensor):
        return str(tuple(example_input.shape))
    return str(
        [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in example_input]
    )


def example_input_for(model: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """A zero batch of 2 of per-sample shape ``input_shape`` on the model's device/dtype."""
    p = next(model.parameters(), None)
    x = torch.zeros((2, *(int(s) for s in input_shape)))
    return x if p is None else x.to(device=p.device, dtype=p.dtype)


def prunable_layers(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | None = None,
    *,
    coupled: bool = False,
    graph: ModelGraph | None = None,
) -> list[str]:
    """Default layers whose filters/neurons may be removed, in execution order.

    Every executed Conv2d/Linear except the classifier (its outputs are the classes) and
    depthwise convs (their channels follow their input); without ``coupled`` also except the
    layers whose outputs feed a residual add (SSR sec. III-E: only the inner convs of a block).
    With ``coupled`` those are listed too, every member of each group (the methods keep one
    layer per group: :func:`compactnn.methods._common.prunable_layers`). ``graph``: the
    model's :func:`discover` on ``example_input`` when the caller has it already.

    Raises:
        UnsupportedLayerError: no such layer (the message lists the model's layers and how to
            pass ``layers=``), or see :func:`discover`.
    """
    g = graph if graph is not None else discover(model, example_input)
    mods = dict(model.named_modules())
    layers = [
        n
        for n in g.order
        if isinstance(mods[n], _PRUNABLE)
        and n != g.classifier
        and (coupled or n not in g.residual_coupled)
        and n not in g.depthwise
    ]
    if not layers:
        found = [
            f"{n} ({type(m).__name__}, weight {tuple(m.weight.shape)})"
            for n, m in model.named_modules()
            if isinstance(m, _PRUNABLE)
        ]
        listing = "; ".join(found) if found else "none"
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no Conv2d/Linear layer that can be pruned by default "
            f"(the classifier {g.classifier!r}, "
            + ("" if coupled else f"residual-coupled layers {sorted(g.residual_coupled)} ")
            + "and depthwise convs are left alone). Its Conv2d/"
            f"Linear layers: {listing}. Pass layers=[...] with the dotted names to prune."
        )
    return layers
