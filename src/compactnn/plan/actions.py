"""The actions of a compression plan (:class:`KeepOutputs`, :class:`KeepInputs`,
:class:`LowRank`, :class:`SparseLowRank`, :class:`SetWeights`, :class:`KernelSparse`,
:class:`GapHead`, :class:`FoldBatchNorm`, :class:`SetState`): frozen dataclasses that check their
fields on construction; :data:`Action` is their union."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from compactnn.errors import PlanError


def _check_layer(layer: Any, kind: str) -> str:
    if not isinstance(layer, str) or not layer:
        raise PlanError(
            f"{kind}.layer must be the dotted name of a layer in model.named_modules(), e.g. "
            f"'features.0'. Got {layer!r}."
        )
    return layer


def _check_keep(layer: str, keep: Any, kind: str) -> tuple[int, ...]:
    try:
        items = list(keep)
    except TypeError:
        raise PlanError(
            f"{kind}(layer={layer!r}): 'keep' must be a sequence of channel indices. Got {keep!r}."
        ) from None
    out: list[int] = []
    for i in items:
        if isinstance(i, Tensor) and i.numel() == 1 and not i.is_floating_point():
            i = int(i.item())
        if isinstance(i, bool) or not isinstance(i, int):
            raise PlanError(
                f"{kind}(layer={layer!r}): 'keep' must contain ints. Got {i!r}; pass e.g. "
                "tensor.tolist()."
            )
        out.append(int(i))
    if not out:
        raise PlanError(
            f"{kind}(layer={layer!r}) keeps no channels, which would remove the layer's whole "
            "output; keep at least one index."
        )
    if len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        raise PlanError(
            f"{kind}(layer={layer!r}): duplicate indices {dup} in 'keep'; list each once."
        )
    if min(out) < 0:
        raise PlanError(
            f"{kind}(layer={layer!r}): negative index {min(out)} in 'keep'; use indices >= 0."
        )
    return tuple(out)


def _check_t(layer: str, t: Any, name: str, kind: str, optional: bool = False) -> Tensor | None:
    if t is None and optional:
        return None
    if not isinstance(t, Tensor):
        raise PlanError(f"{kind}(layer={layer!r}): '{name}' must be a torch.Tensor. Got {t!r}.")
    if not t.is_floating_point():
        raise PlanError(f"{kind}(layer={layer!r}): '{name}' must be a floating-point tensor.")
    if not bool(torch.isfinite(t).all()):
        raise PlanError(f"{kind}(layer={layer!r}): '{name}' contains NaN or Inf values.")
    return t.detach().cpu().contiguous()


def _check_weight_bias(action: Any, kind: str) -> None:
    """Check the ``layer``, ``weight`` and optional ``bias`` of the frozen action ``action`` of
    type ``kind``, storing the checked tensors on it."""
    _check_layer(action.layer, kind)
    object.__setattr__(action, "weight", _check_t(action.layer, action.weight, "weight", kind))
    object.__setattr__(action, "bias", _check_t(action.layer, action.bias, "bias", kind, True))


class _TensorEq:
    """Equality for frozen dataclasses holding tensors (exact, via ``torch.equal``)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # each subclass is a dataclass

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if not (
                    isinstance(a, Tensor)
                    and isinstance(b, Tensor)
                    and a.dtype == b.dtype
                    and torch.equal(a, b)
                ):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class KeepOutputs:
    """Keep only output channels (Conv2d) / neurons (Linear) ``keep`` of ``layer``.

    All coupled structures follow: the BN after it, the inputs of its consumers (flatten ->
    linear: the ``H W`` block of each channel), residual partners of an add, concat offsets,
    depthwise convs. Kept channels stay in their original (ascending) order whatever the
    order of ``keep``.
    """

    layer: str
    keep: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_layer(self.layer, "KeepOutputs")
        object.__setattr__(self, "keep", _check_keep(self.layer, self.keep, "KeepOutputs"))


@dataclass(frozen=True)
class KeepInputs:
    """Keep only input channels (Conv2d) / features (Linear) ``keep`` of ``layer``.

    Removed input channels are dead for this layer (column sparsity, SSR / Ma et al.). If the
    producing channels feed only this layer they are removed too; otherwise a channel selection
    is inserted in front of the layer.
    """

    layer: str
    keep: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_layer(self.layer, "KeepInputs")
        object.__setattr__(self, "keep", _check_keep(self.layer, self.keep, "KeepInputs"))


@dataclass(frozen=True, eq=False)
class LowRank(_TensorEq):
    """Replace ``layer`` by its factorization ``W = second @ first`` (+ ``bias``).

    Linear: ``first`` (r, d_in), ``second`` (d_out, r). Conv2d (groups = 1): ``first``
    (r, c, kh, kw) or lowered (r, c kh kw), ``second`` (n, r) or (n, r, 1, 1).
    """

    layer: str
    first: Tensor
    second: Tensor
    bias: Tensor | None

    def __post_init__(self) -> None:
        _check_layer(self.layer, "LowRank")
        for name in ("first", "second"):
            object.__setattr__(
                self, name, _check_t(self.layer, getattr(self, name), name, "LowRank")
            )
        object.__setattr__(self, "bias", _check_t(self.layer, self.bias, "bias", "LowRank", True))


@dataclass(frozen=True, eq=False)
class SparseLowRank(_TensorEq):
    """Replace ``layer`` by ``sparse`` (same shape as its weight) + low rank.

    The low-rank branch is ``second @ first`` as in :class:`LowRank` and carries ``bias``.
    ``form`` is how the sparse branch is stored and run: ``"coo"`` (COO non-zeros,
    :class:`~compactnn.layers.SparseConv2d`) or, for a column-sparse ``sparse`` (Ma et al.'s
    structured ``A``), ``"gather"`` / ``"channels"`` / ``"dense"``
    (:class:`~compactnn.layers.ColumnSparseConv2d` / ``ColumnSparseLinear``: kept columns only),
    or both branches in one product: ``"fused"`` (the kept im2col rows gathered, one GEMM of
    ``[Q | A_K]``) / ``"fused-channels"`` (one conv over the kept channels and the rank-``r``
    maps; a Linear runs it as ``"fused"``), :class:`~compactnn.layers.FusedSparseLowRankConv2d`
    / ``FusedSparseLowRankLinear``.
    ``first = second = None`` (rank 0): the sparse branch alone, carrying ``bias``.
    """

    layer: str
    sparse: Tensor
    first: Tensor | None
    second: Tensor | None
    bias: Tensor | None
    form: str = "coo"

    FORMS: ClassVar[tuple[str, ...]] = (
        "coo", "gather", "channels", "dense", "fused", "fused-channels",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_layer(self.layer, "SparseLowRank")
        if (self.first is None) != (self.second is None):
            raise PlanError(
                f"SparseLowRank(layer={self.layer!r}): pass both 'first' and 'second' (the "
                "low-rank factors) or neither (rank 0: the sparse branch alone)."
            )
        for name in ("sparse", "first", "second"):
            object.__setattr__(
                self,
                name,
                _check_t(self.layer, getattr(self, name), name, "SparseLowRank", name != "sparse"),
            )
        object.__setattr__(
            self, "bias", _check_t(self.layer, self.bias, "bias", "SparseLowRank", True)
        )
        if self.form not in self.FORMS:
            raise PlanError(
                f"SparseLowRank(layer={self.layer!r}): 'form' must be one of {self.FORMS}. "
                f"Got {self.form!r}."
            )


@dataclass(frozen=True, eq=False)
class SetWeights(_TensorEq):
    """Overwrite the weight (same shape) and bias of ``layer``.

    With ``sparse=True`` the layer is replaced by :class:`~compactnn.layers.SparseLinear` /
    :class:`~compactnn.layers.SparseConv2d` storing only the non-zeros. ``bias=None`` removes
    the bias (it must then be absent or zero in the layer's function).
    """

    layer: str
    weight: Tensor
    bias: Tensor | None
    sparse: bool = False

    def __post_init__(self) -> None:
        _check_weight_bias(self, "SetWeights")
        if not isinstance(self.sparse, bool):
            raise PlanError(
                f"SetWeights(layer={self.layer!r}): 'sparse' must be a bool. Got {self.sparse!r}."
            )


@dataclass(frozen=True, eq=False)
class KernelSparse(_TensorEq):
    """Replace the Conv2d ``layer`` by :class:`~compactnn.layers.KernelSparseConv2d`.

    ``weight`` (the conv's weight shape) holds zero kernels ``W_ij`` that are not stored;
    ``bias`` the conv's bias (or None). ``form`` is how it runs (``"dense"``, ``"grouped"``,
    ``"sparse"``: :data:`~compactnn.layers.KERNEL_FORMS`); ``filter_groups`` the filter groups of
    the ``"grouped"`` form (a partition of the filters; empty = built from the input supports).

    References:
        Kiaee et al. 2016, sec. 3.2 (sparsity blocks W_ij).
    """

    layer: str
    weight: Tensor
    bias: Tensor | None
    form: str = "dense"
    filter_groups: tuple[tuple[int, ...], ...] = ()

    FORMS: ClassVar[tuple[str, ...]] = ("dense", "grouped", "sparse")

    def __post_init__(self) -> None:
        _check_weight_bias(self, "KernelSparse")
        if self.weight.dim() != 4:
            raise PlanError(
                f"KernelSparse(layer={self.layer!r}): 'weight' must be a conv weight (n, c, kh, "
                f"kw). Got shape {tuple(self.weight.shape)}."
            )
        if self.form not in self.FORMS:
            raise PlanError(
                f"KernelSparse(layer={self.layer!r}): 'form' must be one of {self.FORMS}. "
                f"Got {self.form!r}."
            )
        try:
            groups = tuple(
                tuple(_check_keep(self.layer, g, "KernelSparse")) for g in self.filter_groups
            )
        except TypeError:
            raise PlanError(
                f"KernelSparse(layer={self.layer!r}): 'filter_groups' must be a sequence of "
                f"filter-index sequences. Got {self.filter_groups!r}."
            ) from None
        object.__setattr__(self, "filter_groups", groups)


@dataclass(frozen=True)
class GapHead:
    """SSR "-GAP" head: replace the FC classifier by global average pooling.

    The module at ``flatten`` (an ``nn.Flatten`` following the last conv stage) becomes
    ``AdaptiveAvgPool2d(1)`` + ``Flatten``, and every module named in ``classifier`` (the FC
    layers and their activations / dropouts) becomes ``nn.Identity``.

    * ``linear=False`` (NIN style): the last conv before the flatten must have as many output
      channels as the model has classes; the output is the spatial mean of its feature maps,
      ``y_k = mean_{h,w} z_{k,h,w}``.
    * ``linear=True`` (the paper's AlexNet / VGG-16 "-GAP" models, whose 2.5M / 9.2M
      parameters are the pruned convs plus one c x classes classifier): the pooled c features
      go through a new ``Linear(c, classes)``, initialised to zero (deterministic; the method
      that adds the head fits it, e.g. SSR by least squares, and fine-tunes).

    Surgery checks that the model's output width is unchanged. The new model needs fine-tuning
    (the map is not equivalent to the FC head).

    References:
        Lin et al. 2019 (SSR), Sec. IV-B/C ("X-GAP", Tables III-IV).
    """

    flatten: str
    classifier: tuple[str, ...]
    linear: bool = False

    def __post_init__(self) -> None:
        _check_layer(self.flatten, "GapHead")
        cls = (self.classifier,) if isinstance(self.classifier, str) else self.classifier
        try:
            names = tuple(cls)
        except TypeError:
            raise PlanError(
                f"GapHead(flatten={self.flatten!r}): 'classifier' must be a sequence of layer "
                f"names. Got {self.classifier!r}."
            ) from None
        if not names or not all(isinstance(n, str) and n for n in names):
            raise PlanError(
                f"GapHead(flatten={self.flatten!r}): 'classifier' must name at least one layer to "
                f"drop. Got {self.classifier!r}."
            )
        if self.flatten in names:
            raise PlanError(
                f"GapHead: the flatten layer {self.flatten!r} must not also be in 'classifier'."
            )
        object.__setattr__(self, "classifier", names)
        if not isinstance(self.linear, bool):
            raise PlanError(
                f"GapHead(flatten={self.flatten!r}): 'linear' must be True or False. "
                f"Got {self.linear!r}."
            )

    @property
    def layer(self) -> str:
        """The flatten layer (for uniform error messages)."""
        return self.flatten


def _under(key: str, layers: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in layers)


@dataclass(frozen=True)
class FoldBatchNorm:
    r"""Fold the inference-mode BatchNorm ``bn`` into ``layer`` (a Conv2d / Linear whose output
    feeds only ``bn``): with :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`,
    :math:`W' = \mathrm{diag}(s) W`, :math:`b' = s (b - \mu) + \beta` (the layer gains a bias if
    it had none) and ``bn`` becomes ``nn.Identity``. Exact for the model in eval mode; the
    compressed model then has no BN to update when it is trained again.
    """

    layer: str
    bn: str

    def __post_init__(self) -> None:
        _check_layer(self.layer, "FoldBatchNorm")
        if not isinstance(self.bn, str) or not self.bn:
            raise PlanError(
                f"FoldBatchNorm.bn must be the dotted name of the BatchNorm after {self.layer!r}. "
                f"Got {self.bn!r}."
            )


@dataclass(frozen=True, eq=False)
class SetState:
    """Load every parameter and persistent buffer of the model from ``state`` (strictly).

    Applied after the structural actions, it makes a plan self-contained: replayed on a fresh,
    untrained instance of the architecture it gives the compressed model exactly, BatchNorm
    statistics and any other buffer included. The model's ``state_dict()`` must have exactly the
    keys of ``state`` plus the keys under the layers in ``skip`` (layers whose tensors come from
    earlier :class:`LowRank` / :class:`SparseLowRank` / :class:`SetWeights` actions, stored once),
    with the same shapes; otherwise surgery raises one :class:`~compactnn.errors.PlanError`
    naming the first mismatching key and its shapes.

    Build it with :meth:`from_model`.
    """

    state: dict[str, Tensor]
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.state, Mapping):
            raise PlanError(
                "SetState: 'state' must be a dict key -> Tensor (a model's state_dict()). Got "
                f"{type(self.state).__name__}."
            )
        skip = (self.skip,) if isinstance(self.skip, str) else self.skip
        try:
            skip = tuple(skip)
        except TypeError:
            raise PlanError(
                f"SetState: 'skip' must be a sequence of layer names. Got {self.skip!r}."
            ) from None
        if not all(isinstance(n, str) and n for n in skip):
            raise PlanError(f"SetState: 'skip' must contain layer names. Got {self.skip!r}.")
        state: dict[str, Tensor] = {}
        for k, v in self.state.items():
            if not isinstance(k, str) or not k:
                raise PlanError(f"SetState: state keys must be non-empty strings. Got {k!r}.")
            if not isinstance(v, Tensor):
                raise PlanError(f"SetState: state[{k!r}] must be a torch.Tensor. Got {v!r}.")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise PlanError(f"SetState: state[{k!r}] contains NaN or Inf values.")
            if _under(k, skip):
                raise PlanError(
                    f"SetState: state[{k!r}] lies under a skipped layer {skip}; a skipped layer's "
                    "tensors come from an earlier action, so leave them out of 'state'."
                )
            state[k] = v.detach().to("cpu", copy=True).contiguous()
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "skip", skip)

    @classmethod
    def from_model(cls, model: nn.Module, skip: tuple[str, ...] = ()) -> SetState:
        """The state of ``model`` (copied), leaving out the tensors under the ``skip`` layers."""
        skip = tuple(skip)
        state = {
            k: v
            for k, v in model.state_dict().items()
            if isinstance(v, Tensor) and not _under(k, skip)
        }
        return cls(state=state, skip=skip)

    @property
    def layer(self) -> str:
        """The whole model (``""``; for uniform error messages)."""
        return ""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            self.skip == other.skip
            and list(self.state) == list(other.state)
            and all(
                a.dtype == b.dtype and torch.equal(a, b)
                for a, b in zip(self.state.values(), other.state.values(), strict=True)
            )
        )

    __hash__ = None  # type: ignore[assignment]


# layers whose tensors a plan action carries itself (SetState.skip lists them)
LAYER_STATE_ACTIONS = (LowRank, SparseLowRank, SetWeights, KernelSparse)

Action = (
    KeepOutputs | KeepInputs | LowRank | SparseLowRank | SetWeights | KernelSparse | GapHead
    | FoldBatchNorm | SetState
)  # fmt: skip
_ACTIONS: dict[str, type] = {
    c.__name__: c
    for c in (
        KeepOutputs, KeepInputs, LowRank, SparseLowRank, SetWeights, KernelSparse, GapHead,
        FoldBatchNorm, SetState,
    )
}  # fmt: skip
