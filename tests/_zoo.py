"""A tiny zoo of graphs for the surgery tests, each with a hand-written parameter-count formula.

Every builder takes its widths as keyword arguments and has a ``count(**widths)`` formula
(written out by hand from the layer shapes) so the tests can state the exact parameter count
of a pruned model as ``count(**widths_after_pruning)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

K = 3  # classes
IN_C = 3  # input channels (images)


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters (so BN is not an identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


class SeqCNN(nn.Module):
    """conv-BN-ReLU-pool x2, flatten, fc-ReLU-fc. Input (3, 8, 8); flatten of c2 x 2 x 2."""

    input_shape = (IN_C, 8, 8)

    def __init__(self, c1: int = 6, c2: int = 5, h: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_C, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 4, h)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(h, K)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))

    @staticmethod
    def count(c1: int = 6, c2: int = 5, h: int = 7) -> int:
        return (
            (IN_C * c1 * 9 + c1)
            + 2 * c1  # conv1 + bn1
            + (c1 * c2 * 9 + c2)
            + 2 * c2  # conv2 + bn2
            + (c2 * 4 * h + h)  # fc1
            + (h * K + K)  # fc2
        )


class Block(nn.Module):
    """ResNet basic block; projection shortcut (1x1 conv + BN) when shape changes."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(mid)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(x)))))
        return self.relu(y + self.short(x))


class TinyResNet(nn.Module):
    """ResNet-20-like: stem, stage 1 (2 blocks, width w1), stage 2 (1 block, stride 2, w2), GAP, fc."""

    input_shape = (IN_C, 8, 8)

    def __init__(self, w1: int = 6, m1: int = 5, m2: int = 4, w2: int = 7, m3: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(IN_C, w1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.block1 = Block(w1, m1, w1)
        self.block2 = Block(w1, m2, w1)
        self.block3 = Block(w1, m3, w2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w2, K)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.flatten(self.pool(x)))

    @staticmethod
    def count(w1: int = 6, m1: int = 5, m2: int = 4, w2: int = 7, m3: int = 6) -> int:
        stem = IN_C * w1 * 9 + 2 * w1
        b1 = w1 * m1 * 9 + 2 * m1 + m1 * w1 * 9 + 2 * w1
        b2 = w1 * m2 * 9 + 2 * m2 + m2 * w1 * 9 + 2 * w1
        b3 = w1 * m3 * 9 + 2 * m3 + m3 * w2 * 9 + 2 * w2 + w1 * w2 + 2 * w2
        return stem + b1 + b2 + b3 + w2 * K + K


class GroupedAlexNet(nn.Module):
    """AlexNet-style: conv1 -> conv2 (groups 2) -> conv3 -> conv4 (groups 2) -> conv5 (groups 2)."""

    input_shape = (IN_C, 8, 8)

    def __init__(
        self, c1: int = 8, c2: int = 8, c3: int = 12, c4: int = 12, c5: int = 8, h: int = 6
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_C, c1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, groups=2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)
        self.relu4 = nn.ReLU()
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc6 = nn.Linear(c5 * 4, h)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(h, K)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.relu3(self.conv3(self.relu2(self.conv2(x))))
        x = self.pool5(self.relu5(self.conv5(self.relu4(self.conv4(x)))))
        return self.fc7(self.relu6(self.fc6(self.flatten(x))))

    @staticmethod
    def count(c1: int = 8, c2: int = 8, c3: int = 12, c4: int = 12, c5: int = 8, h: int = 6) -> int:
        return (
            (IN_C * c1 * 9 + c1)
            + (c2 * (c1 // 2) * 9 + c2)
            + (c3 * c2 * 9 + c3)
            + (c4 * (c3 // 2) * 9 + c4)
            + (c5 * (c4 // 2) * 9 + c5)
            + (c5 * 4 * h + h)
            + (h * K + K)
        )


class ResidualGrouped(nn.Module):
    """A 16-channel residual stream feeding a groups=2 conv (the "15-channel input" case)."""

    input_shape = (IN_C, 4, 4)

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_C, w, 3, padding=1)
        self.res = nn.Conv2d(w, w, 3, padding=1)
        self.gconv = nn.Conv2d(w, w, 3, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.res(x))
        return self.fc(self.flatten(self.pool(torch.relu(self.gconv(x)))))

    @staticmethod
    def count(w: int = 16) -> int:
        return (IN_C * w * 9 + w) + (w * w * 9 + w) + (w * (w // 2) * 9 + w) + (w * K + K)


class Inception(nn.Module):
    """stem -> [1x1 branch a | 1x1 -> 3x3 branch b] -> concat -> 1x1 conv -> GAP -> fc."""

    input_shape = (IN_C, 6, 6)

    def __init__(self, c0: int = 5, a: int = 4, b1: int = 3, b2: int = 5, d: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IN_C, c0, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c0)
        self.a = nn.Conv2d(c0, a, 1)
        self.a_bn = nn.BatchNorm2d(a)
        self.b1 = nn.Conv2d(c0, b1, 1)
        self.b2 = nn.Conv2d(b1, b2, 3, padding=1)
        self.b2_bn = nn.BatchNorm2d(b2)
        self.mix = nn.Conv2d(a + b2, d, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(d, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        ya = torch.relu(self.a_bn(self.a(x)))
        yb = torch.relu(self.b2_bn(self.b2(torch.relu(self.b1(x)))))
        y = torch.relu(self.mix(torch.cat([ya, yb], dim=1)))
        return self.fc(self.flatten(self.pool(y)))

    @staticmethod
    def count(c0: int = 5, a: int = 4, b1: int = 3, b2: int = 5, d: int = 6) -> int:
        return (
            (IN_C * c0 * 9 + c0 + 2 * c0)
            + (c0 * a + a + 2 * a)
            + (c0 * b1 + b1)
            + (b1 * b2 * 9 + b2 + 2 * b2)
            + ((a + b2) * d + d)
            + (d * K + K)
        )


class Depthwise(nn.Module):
    """1x1 expand -> BN -> 3x3 depthwise (groups = channels) -> BN -> 1x1 project -> GAP -> fc."""

    input_shape = (IN_C, 6, 6)

    def __init__(self, c: int = 6, d: int = 5) -> None:
        super().__init__()
        self.expand = nn.Conv2d(IN_C, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn2 = nn.BatchNorm2d(c)
        self.project = nn.Conv2d(c, d, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(d, K)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.expand(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(self.flatten(self.pool(torch.relu(self.project(x)))))

    @staticmethod
    def count(c: int = 6, d: int = 5) -> int:
        return (IN_C * c + c + 2 * c) + (c * 9 + c + 2 * c) + (c * d + d) + (d * K + K)


class MLP(nn.Module):
    """fc1-ReLU-fc2-ReLU-fc3 on 10 features."""

    input_shape = (10,)

    def __init__(self, h1: int = 8, h2: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, h1)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(h1, h2)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(h2, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))

    @staticmethod
    def count(h1: int = 8, h2: int = 6) -> int:
        return (10 * h1 + h1) + (h1 * h2 + h2) + (h2 * K + K)


ZOO: dict[str, type[nn.Module]] = {
    "seq": SeqCNN,
    "resnet": TinyResNet,
    "alexnet": GroupedAlexNet,
    "residual_grouped": ResidualGrouped,
    "inception": Inception,
    "depthwise": Depthwise,
    "mlp": MLP,
}


def build(name: str, seed: int = 0, **widths: int) -> nn.Module:
    """Deterministic zoo model in eval mode with random BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ZOO[name](**widths)
    randomize_bn(model, gen)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ShapeCheckedNet(nn.Module):
    """Classifier registered first; forward checks and branches on the input shape (fx fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"expected (N, 1, 8, 8) inputs, got {tuple(x.shape)}")
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        x = x.flatten(1) if x.shape[0] > 1 else x.reshape(1, -1)
        return self.head(torch.relu(self.fc(x)))


def tiny_cnn() -> nn.Module:
    """conv 8 -> pool -> conv 12 -> fc 16 -> 3 classes on 1x8x8 inputs (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )
