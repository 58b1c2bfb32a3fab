"""Graphs the surgery must cut exactly or refuse clearly (issue 13): chunk/split, channel-mixing
norms, SE, ShuffleNet, ResNeXt, CBAM, Linear -> view -> conv.

Every model takes a (2, 3, 8, 8) batch (``input_shape``) and ends in a Linear classifier ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

K = 3


class _Head(nn.Module):
    def _head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Chunk(_Head):
    """conv a (16) -> chunk(2) -> b on the first half, c on the second -> cat -> fc.

    ``swap=True`` calls ``c`` (second chunk) before ``b`` in ``forward``.
    """

    input_shape = (3, 8, 8)

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.swap = swap
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 5, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(11, K)

    def forward(self, x: Tensor) -> Tensor:
        h1, h2 = torch.chunk(torch.relu(self.a(x)), 2, dim=1)
        if self.swap:
            yc = self.c(h2)
            yb = self.b(h1)
        else:
            yb = self.b(h1)
            yc = self.c(h2)
        return self._head(torch.relu(torch.cat([yb, yc], 1)))


class Split(_Head):
    """conv a (16) -> split([6, 10]) -> b (6 in), c (10 in) -> add of their outputs -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(6, 7, 3, padding=1)
        self.c = nn.Conv2d(10, 7, 3, padding=1)
        self.fc = nn.Linear(7, K)

    def forward(self, x: Tensor) -> Tensor:
        h1, h2 = torch.split(torch.relu(self.a(x)), [6, 10], dim=1)
        return self._head(torch.relu(self.b(h1) + self.c(h2)))


class ChunkPool(nn.Module):
    """conv a (16) -> chunk(2) (or ``torch.split(h, 8)``) -> sigmoid of the second part -> cat ->
    pool -> fc: no layer consumes a part, so a cut that moves the boundary still runs (only the
    self-check can see that channel 8 changed part)."""

    input_shape = (3, 8, 8)

    def __init__(self, op: str = "chunk") -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h1, h2 = torch.chunk(h, 2, dim=1) if self.op == "chunk" else torch.split(h, 8, dim=1)
        return self.fc(torch.cat([h1, torch.sigmoid(h2)], 1).mean((2, 3)))


class GroupNormNet(_Head):
    """conv a (16) -> GroupNorm(4, 16) -> ReLU -> conv b -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16, affine=affine)
        self.b = nn.Conv2d(16, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self._head(torch.relu(self.b(torch.relu(self.gn(self.a(x))))))


class InstanceNormNet(_Head):
    """conv a (8) -> InstanceNorm2d(8, affine, running stats) -> ReLU -> conv b -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self._head(torch.relu(self.b(torch.relu(self.inorm(self.a(x))))))


class LayerNormNet(nn.Module):
    """conv a (8) -> global pool -> LayerNorm(8) over the channels -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.ln(torch.relu(self.a(x)).mean((2, 3))))


class DictIn(nn.Module):
    """A model whose forward takes a dict batch ``{"image": x}`` (conv a -> conv b -> fc)."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h = torch.relu(self.b(torch.relu(self.a(batch["image"]))))
        return self.fc(h.mean((2, 3)))


class LRNNet(_Head):
    """conv a (8) -> LocalResponseNorm(3, alpha=1) -> conv b -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(3, alpha=1.0)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        return self._head(torch.relu(self.b(self.lrn(torch.relu(self.a(x))))))


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class SENet(_Head):
    """conv a (8) -> BN -> SE -> conv b (8) -> BN -> SE -> + shortcut (SE-ResNet) -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.se_a = SE(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.se_b = SE(8)
        self.fc = nn.Linear(8, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.se_a(self.bn_a(self.a(x))))
        y = self.se_b(self.bn_b(self.b(x)))
        return self._head(torch.relu(x + y))


class Shuffle(_Head):
    """ShuffleNetV2 unit: conv1 (16) -> split halves -> branch on the second -> cat -> shuffle."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = nn.Conv2d(8, 8, 1)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b3 = nn.Conv2d(8, 8, 1)
        self.post = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat([x1, self.b3(self.b2(torch.relu(self.b1(x2))))], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self._head(torch.relu(self.post(y)))


class ResNeXt(_Head):
    """stem (8) -> [1x1 reduce (8) -> 3x3 groups=4 (8) -> 1x1 expand (8)] + shortcut -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.expand = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        y = self.expand(torch.relu(self.grouped(torch.relu(self.reduce(x)))))
        return self._head(torch.relu(x + y))


class DepthMultiplier(_Head):
    """stem (4) -> depthwise with depth multiplier 2 (4 -> 8, groups=4) -> 1x1 -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        return self._head(torch.relu(self.pw(torch.relu(self.dw(x)))))


class CBAM(_Head):
    """conv a (8) -> channel attention (avg + max SE) -> spatial attention (mean/max over
    channels -> conv 'sa') -> conv b -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.ca1 = nn.Linear(8, 4)
        self.ca2 = nn.Linear(4, 8)
        self.sa = nn.Conv2d(2, 1, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.a(x))
        avg, mx = x.mean((2, 3)), x.amax((2, 3))
        ca = torch.sigmoid(self.ca2(torch.relu(self.ca1(avg))) + self.ca2(torch.relu(self.ca1(mx))))
        x = x * ca[:, :, None, None]
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        x = x * torch.sigmoid(self.sa(s))
        return self._head(torch.relu(self.b(x)))


class LinearView(_Head):
    """Linear (3*8*8 -> 64) -> view (4, 4, 4) -> conv b (4 -> 6) -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 8 * 8, 64)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.lin(x.flatten(1))).view(-1, 4, 4, 4)
        return self._head(torch.relu(self.b(h)))


class ViewSum(_Head):
    """conv a (16) -> view (2, 8) -> sum over the pair -> conv b (8 in) -> fc."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).sum(1)
        return self._head(torch.relu(self.b(h)))


class SharedConv(_Head):
    """stem (6) -> the same conv ``shared`` (6 -> 6) applied twice -> fc (weight sharing)."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(x))
        return self._head(torch.relu(self.shared(x)))


class DictOut(nn.Module):
    """conv a -> BN -> conv b -> {"logits": fc(...), "feat": pooled}: a dict output."""

    input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, K)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.b(torch.relu(self.bn(self.a(x)))))
        f = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return {"logits": self.fc(f), "feat": f}


BANK: dict[str, type[nn.Module]] = {
    "chunk": Chunk,
    "split": Split,
    "chunk_pool": ChunkPool,
    "groupnorm": GroupNormNet,
    "lrn": LRNNet,
    "instancenorm": InstanceNormNet,
    "layernorm": LayerNormNet,
    "dict_in": DictIn,
    "se": SENet,
    "shuffle": Shuffle,
    "resnext": ResNeXt,
    "depth_multiplier": DepthMultiplier,
    "cbam": CBAM,
    "linear_view": LinearView,
    "view_sum": ViewSum,
    "shared_conv": SharedConv,
    "dict_out": DictOut,
}


def build_graph(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    """Deterministic bank model in eval mode, BN / InstanceNorm statistics randomised."""
    torch.manual_seed(seed)
    model = BANK[name](**kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            elif isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.copy_(torch.rand(m.num_channels, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_channels, generator=gen) * 0.1)
    return model.eval()
