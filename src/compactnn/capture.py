"""Record per-layer inputs/outputs of a model (the data of the layer-local methods).

For a layer with lowered weight ``W`` (:func:`compactnn.structure.lowered`) and bias ``b``,
the captured ``X`` and ``Y`` satisfy ``X @ W.T + b == Y`` (up to float rounding):

* **Linear** ``(out, in)``: one row per input vector (leading axes flattened), ``X`` is
  ``N x in``, ``Y`` is ``N x out``.
* **Conv2d**: one row per (sample, output position) in ``(b, h, w)`` order. ``X`` holds the
  im2col patches of ``F.unfold`` with the layer's kernel size, stride, padding (any
  ``padding_mode``, ``"same"``/``"valid"`` included) and dilation, columns channel-major
  ``(c, kh, kw)``: ``N x (c kh kw)``. ``Y`` is ``N x n`` (pre-activation, bias included).
* **Grouped conv** (``groups = g``): ``X`` has the patches of *all* ``c`` input channels,
  ``N x (c kh kw)``, while ``W`` is ``n x (c/g kh kw)``. Group ``j`` is the block
  ``X[:, j c/g kh kw:(j+1) c/g kh kw]`` with ``W[j n/g:(j+1) n/g]`` and
  ``Y[:, j n/g:(j+1) n/g]``; :meth:`LayerIO.group` returns that slice.

Memory: at most ``max_rows`` rows per layer are kept, a uniform random sample (seeded
reservoir sampling, Vitter's Algorithm R) of all rows seen over the forward passes; patches
are only built for the sampled rows, in bounded chunks of samples.

References:
    Ma et al. (2019) sec. III eq. (2) (X_i, Y_i per layer, Y after ReLU) and sec. V-B
    (asymmetric reconstruction); Papadimitriou & Jain (2021) (layer input/output data).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._validation import check_bool, check_int
from compactnn.errors import (
    CompactnnError,
    InputShapeError,
    UnknownNameError,
    UnsupportedLayerError,
)
from compactnn.graph import discover
from compactnn.structure import module_device

__all__ = ["LayerIO", "CaptureStore", "capture", "collect", "following_activation"]

_CHUNK_ELEMENTS = 1 << 22  # patches built per chunk of samples (about 16 MB in float32)


@dataclass
class LayerIO:
    """Inputs and outputs of one layer, as matrices.

    Attributes:
        name: dotted path of the layer.
        X: ``N x d`` inputs (im2col patches for conv, see the module docstring).
        Y: ``N x n`` pre-activation outputs.
        Y_post: ``relu(Y)`` when the layer's output feeds only a ReLU, else ``None``.
        kind: ``"conv"`` or ``"linear"``.
        groups: conv groups (see :meth:`group`).
        rows_seen: rows produced by the forward passes before subsampling.
    """

    name: str
    X: Tensor
    Y: Tensor
    Y_post: Tensor | None = None
    kind: str = "linear"
    groups: int = 1
    rows_seen: int = 0

    def group(self, j: int) -> LayerIO:
        """The data of conv group ``j``: ``X_j @ W[j n/g:(j+1) n/g].T + b_j == Y_j``.

        Raises:
            ConfigError: ``j`` not in ``[0, groups)``.
        """
        owner = f"LayerIO.group of layer {self.name!r}"
        j = check_int(j, "j", owner, min_value=0, max_value=self.groups - 1)
        dx, dy = self.X.shape[1] // self.groups, self.Y.shape[1] // self.groups
        post = None if self.Y_post is None else self.Y_post[:, j * dy : (j + 1) * dy]
        return replace(
            self,
            X=self.X[:, j * dx : (j + 1) * dx],
            Y=self.Y[:, j * dy : (j + 1) * dy],
            Y_post=post,
            groups=1,
        )


# ----------------------------------------------------------------------------- activations
_RELU_FUNCS = (F.relu, torch.relu, torch.relu_, F.relu_)


def _is_relu(node: Any, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _users(node: Any, mods: dict[str, nn.Module]) -> list[Any]:
    """The nodes that consume ``node``'s output, looking through ``nn.Identity`` modules (a
    folded BatchNorm: :class:`~compactnn.plan.FoldBatchNorm`)."""
    out = []
    for u in node.users:
        if u.op == "call_module" and isinstance(mods.get(u.target), nn.Identity):
            out.extend(_users(u, mods) or [u])
        else:
            out.append(u)
    return out


def _sequential_next(model: nn.Module, name: str) -> str | None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    i = keys.index(child) + 1
    while i < len(keys) and isinstance(parent._modules[keys[i]], nn.Identity):
        i += 1
    if i < len(keys) and isinstance(parent._modules[keys[i]], nn.ReLU):
        return "relu"
    return None


def _following_activations(
    model: nn.Module, names: Sequence[str], example_input: Tensor | None = None
) -> dict[str, str | None]:
    mods = dict(model.named_modules())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure falls back to hooks / module order
        if example_input is not None:
            acts = discover(model, example_input).activations
            return {n: acts.get(n) for n in names}
        return {n: _sequential_next(model, n) for n in names}
    out: dict[str, str | None] = {}
    for n in names:
        nodes = [nd for nd in graph.nodes if nd.op == "call_module" and nd.target == n]
        ok = bool(nodes) and all(
            len(nd.users) >= 1 and all(_is_relu(u, mods) for u in _users(nd, mods)) for nd in nodes
        )
        out[n] = "relu" if ok else None
    return out


def following_activation(
    model: nn.Module, layer_name: str, example_input: Tensor | None = None
) -> str | None:
    """``"relu"`` if the output of ``layer_name`` is consumed only by a ReLU, else ``None``.

    Uses ``torch.fx.symbolic_trace`` (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``.relu()``).
    When the model cannot be traced: with ``example_input``, one forward pass and the autograd
    nodes consuming the layer's output (all ``ReluBackward0``: ``"relu"``; see
    :func:`compactnn.graph.discover`); without it, the next module of the enclosing
    ``nn.Sequential``.

    Raises:
        UnknownNameError: ``layer_name`` is not a module of ``model``.
    """
    _resolve_layers(model, [layer_name], need_weights=False)
    return _following_activations(model, [layer_name], example_input)[layer_name]


# ----------------------------------------------------------------------------- storage
class _Reservoir:
    """Uniform sample of at most ``cap`` rows of a stream (Algorithm R, vectorised)."""

    def __init__(self, cap: int | None, seed: int) -> None:
        self.cap = cap
        self.seen = 0
        self.filled = 0
        self.gen = torch.Generator().manual_seed(seed)

    def select(self, n_rows: int) -> tuple[Tensor, Tensor]:
        """Rows of the incoming batch to store and the slots they go to (unique slots)."""
        start = self.seen
        self.seen += n_rows
        if self.cap is None:
            rows = torch.arange(n_rows)
            slots = rows + self.filled
            self.filled += n_rows
            return rows, slots
        n_fill = max(0, min(n_rows, self.cap - self.filled))
        fill_rows = torch.arange(n_fill)
        fill_slots = fill_rows + self.filled
        self.filled += n_fill
        rest = torch.arange(n_fill, n_rows)
        if rest.numel() == 0:
            return fill_rows, fill_slots
        idx = (start + rest).to(torch.float64)  # global index i; keep with prob cap / (i + 1)
        r = torch.floor(
            torch.rand(rest.numel(), generator=self.gen, dtype=torch.float64) * (idx + 1)
        )
        r = r.to(torch.long)
        acc = r < self.cap
        rows = torch.cat([fill_rows, rest[acc]])
        slots = torch.cat([fill_slots, r[acc]])
        # a later row written to the same slot wins (sequential Algorithm R semantics)
        pos = torch.arange(rows.numel())
        last = torch.full((self.cap,), -1, dtype=torch.long)
        last = last.scatter_reduce(0, slots, pos, reduce="amax")
        winners = last[last >= 0]
        return rows[winners], slots[winners]


class _LayerBuffer:
    def __init__(self, name: str, module: nn.Module, cap: int | None, seed: int) -> None:
        self.name = name
        self.module = module
        self.res = _Reservoir(cap, seed)
        self.X: Tensor | None = None
        self.Y: Tensor | None = None

    def _write(self, which: str, slots: Tensor, rows: Tensor) -> None:
        buf = getattr(self, which)
        need = int(slots.max()) + 1 if slots.numel() else 0
        if buf is None or buf.shape[0] < need:
            size = (
                self.res.cap
                if self.res.cap is not None
                else max(need, 2 * (0 if buf is None else buf.shape[0]))
            )
            new = rows.new_zeros((size, rows.shape[1]))
            if buf is not None:
                new[: buf.shape[0]] = buf
            buf = new
            setattr(self, which, buf)
        buf[slots.to(buf.device)] = rows

    def record(self, x: Tensor, y: Tensor) -> None:
        m = self.module
        if isinstance(m, nn.Linear):
            xs = x.reshape(-1, x.shape[-1])
            ys = y.reshape(-1, y.shape[-1])
            rows, slots = self.res.select(xs.shape[0])
            rows = rows.to(x.device)
            self._write("X", slots, xs[rows])
            self._write("Y", slots, ys[rows])
            return
        if not isinstance(m, nn.Conv2d):  # the store only registers Linear / Conv2d hooks
            raise UnsupportedLayerError(
                f"Layer '{self.name}' is a {type(m).__name__}; capture supports Linear and Conv2d."
            )
        if x.dim() == 3:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        b, n, ho, wo = y.shape
        per = ho * wo
        rows, slots = self.res.select(b * per)
        rows = rows.to(x.device)
        self._write("Y", slots, y.permute(0, 2, 3, 1).reshape(b * per, n)[rows])
        x, pad = _prepare_conv_input(m, x)
        d = x.shape[1] * m.kernel_size[0] * m.kernel_size[1]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, per * d))
        for b0 in range(0, b, chunk):
            b1 = min(b, b0 + chunk)
            sel = (rows >= b0 * per) & (rows < b1 * per)
            if not bool(sel.any()):
                continue
            cols = F.unfold(
                x[b0:b1], m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride
            )
            patches = cols.transpose(1, 2).reshape(-1, d)
            self._write("X", slots[sel.cpu()], patches[rows[sel] - b0 * per])


def _prepare_conv_input(m: nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Pad like the conv does; returns the input and the zero padding left for F.unfold."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pads = [(0, 0), (0, 0)]
        else:  # "same": total d (k - 1), the extra unit on the right/bottom (as torch does)
            pads = []
            for k, dil in zip(m.kernel_size, m.dilation):
                total = dil * (k - 1)
                pads.append((total // 2, total - total // 2))
    else:
        pads = [(int(p), int(p)) for p in m.padding]
    if m.padding_mode == "zeros" and all(a == b for a, b in pads):
        return x, (pads[0][0], pads[1][0])
    flat = [pads[1][0], pads[1][1], pads[0][0], pads[0][1]]
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    return F.pad(x, flat, mode=mode), (0, 0)


class CaptureStore:
    """Accumulates the rows of the captured layers across forward passes."""

    def __init__(
        self,
        buffers: dict[str, _LayerBuffer],
        activations: dict[str, str | None],
    ) -> None:
        self._buffers = buffers
        self._acts = activations

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the captured layers."""
        return tuple(self._buffers)

    def rows_seen(self, name: str) -> int:
        """Rows produced so far by layer ``name`` (before subsampling)."""
        if name not in self._buffers:
            raise UnknownNameError(
                f"Layer {name!r} is not captured by this store. Captured: {', '.join(self.layers)}."
            )
        return self._buffers[name].res.seen

    def _hook(self, name: str) -> Any:
        buf = self._buffers[name]

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            with torch.no_grad():
                buf.record(args[0].detach(), output.detach())

        return hook

    def result(self) -> dict[str, LayerIO]:
        """``{name: LayerIO}`` of the rows kept so far (copies).

        Raises:
            CompactnnError: a layer has seen no forward pass.
        """
        out: dict[str, LayerIO] = {}
        for name, buf in self._buffers.items():
            if buf.X is None or buf.Y is None or buf.res.filled == 0:
                raise CompactnnError(
                    f"Layer {name!r} saw no forward pass inside capture(): run the model on at "
                    "least one batch inside the 'with' block (or check that the layer is used)."
                )
            n = buf.res.filled
            y = buf.Y[:n].clone()
            m = buf.module
            out[name] = LayerIO(
                name=name,
                X=buf.X[:n].clone(),
                Y=y,
                Y_post=torch.relu(y) if self._acts.get(name) == "relu" else None,
                kind="conv" if isinstance(m, nn.Conv2d) else "linear",
                groups=m.groups if isinstance(m, nn.Conv2d) else 1,
                rows_seen=buf.res.seen,
            )
        return out


def _resolve_layers(
    model: nn.Module, layers: Sequence[str], *, need_weights: bool = True
) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(
            f"capture expects an nn.Module as 'model'. Got {type(model).__name__}."
        )
    if isinstance(layers, str):
        layers = [layers]
    mods = dict(model.named_modules())
    supported = [n for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out: dict[str, nn.Module] = {}
    for n in layers:
        if n not in mods or (n == "" and not need_weights):
            raise UnknownNameError(
                f"Layer {n!r} is not a module of the model. Conv2d/Linear layers: "
                f"{', '.join(supported) or '(none)'}."
            )
        if need_weights and not isinstance(mods[n], (nn.Conv2d, nn.Linear)):
            raise UnsupportedLayerError(
                f"Layer {n!r} is a {type(mods[n]).__name__}; capture supports Conv2d and Linear "
                f"layers. Choose among: {', '.join(supported) or '(none)'}."
            )
        out[n] = mods[n]
    return out


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[str],
    *,
    max_rows: int | None = 4096,
    seed: int = 0,
    post_activation: bool = True,
) -> Iterator[CaptureStore]:
    """Record the inputs/outputs of ``layers`` during the forward passes run in the block.

    Example::

        with capture(model, ["features.0", "classifier.1"], max_rows=2048) as store:
            for x, _ in loader:
                model(x)
        io = store.result()["features.0"]  # io.X @ lowered(W).T + b == io.Y

    Inside the block the model is in eval mode and autograd is off; on exit (also on an
    exception) the hooks are removed and every submodule's ``training`` flag is restored.

    Args:
        model: the model.
        layers: dotted names of Conv2d/Linear layers.
        max_rows: rows kept per layer (uniform sample of all rows seen); ``None`` keeps all.
        seed: seed of the subsampling (layer ``i`` of ``layers`` uses ``seed + i``).
        post_activation: fill ``LayerIO.Y_post`` for layers followed by a ReLU.

    Yields:
        The :class:`CaptureStore`; call ``store.result()``.

    Raises:
        UnknownNameError: a layer name is not in the model.
        UnsupportedLayerError: a layer is not Conv2d/Linear.
        ConfigError: bad ``max_rows``/``seed``/``post_activation``.
    """
    mods = _resolve_layers(model, layers)
    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows", "capture", min_value=1)
    seed = check_int(seed, "seed", "capture", min_value=0)
    post_activation = check_bool(post_activation, "post_activation", "capture")
    names = list(mods)
    acts = _following_activations(model, names) if post_activation else dict.fromkeys(names)
    buffers = {n: _LayerBuffer(n, mods[n], max_rows, seed + i) for i, n in enumerate(names)}
    store = CaptureStore(buffers, acts)
    modes = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(store._hook(n)))
        model.eval()
        with torch.no_grad():
            yield store
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes:
            m.training = flag


def _batch_input(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise InputShapeError(
        "collect expects batches that are tensors or (x, y) tuples/lists with a tensor x. "
        f"Got {type(batch).__name__}; wrap your data in a DataLoader yielding (x, y)."
    )


def collect(
    model: nn.Module,
    layers: Sequence[str],
    data: Iterable[Any],
    *,
    max_batches: int | None = None,
    max_rows: int | None = 4096,
    seed: int = 0,
    asymmetric_from: nn.Module | None = None,
) -> dict[str, LayerIO]:
    """Run ``model`` over ``data`` under :func:`capture` and return the captured layers.

    Asymmetric mode (``asymmetric_from`` = the original model): ``X`` comes from ``model``
    (the partially compressed one) and ``Y``/``Y_post`` from ``asymmetric_from`` on the same
    batch, for layers with identical names; the same rows are sampled in both.

    Args:
        model: the model whose layer inputs are captured.
        layers: dotted names of Conv2d/Linear layers.
        data: iterable of input tensors or ``(x, y)`` batches.
        max_batches: stop after this many batches (``None`` = all).
        max_rows: rows kept per layer (``None`` = all).
        seed: subsampling seed.
        asymmetric_from: the original model for asymmetric reconstruction.

    Returns:
        ``{name: LayerIO}``.

    Raises:
        InputShapeError: bad batch type; in asymmetric mode, a layer whose row counts differ
            between the two models.
        UnknownNameError, UnsupportedLayerError, ConfigError: as :func:`capture`.

    References:
        Ma et al. (2019) sec. V-B (asymmetric strategy of Zhang et al.).
    """
    if max_batches is not None:
        max_batches = check_int(max_batches, "max_batches", "collect", min_value=1)

    device = module_device(model)

    def batches() -> Iterator[Tensor]:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                return
            yield _batch_input(batch).to(device)  # a CPU loader feeding a model on a GPU

    if asymmetric_from is None:
        with capture(model, layers, max_rows=max_rows, seed=seed) as store:
            for x in batches():
                model(x)
        return store.result()

    kw: dict[str, Any] = {"max_rows": max_rows, "seed": seed}
    with (
        capture(model, layers, post_activation=False, **kw) as comp,
        capture(asymmetric_from, layers, **kw) as orig,
    ):
        for x in batches():
            model(x)
            asymmetric_from(x)
    rc, ro = comp.result(), orig.result()
    out: dict[str, LayerIO] = {}
    for n in rc:
        if rc[n].rows_seen != ro[n].rows_seen:
            raise InputShapeError(
                f"Layer {n!r} produced {rc[n].rows_seen} rows in the compressed model but "
                f"{ro[n].rows_seen} in the original: asymmetric capture needs the same output "
                "geometry (stride, padding, input size) in both models."
            )
        out[n] = replace(rc[n], Y=ro[n].Y, Y_post=ro[n].Y_post)
    return out
