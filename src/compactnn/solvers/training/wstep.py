"""A ready-made SGD W-step for :func:`compactnn.solvers.training.run_admm`.

.. math:: \\min_W \\mathcal{L}_{net}(W) + \\frac{\\rho}{2}\\sum_l \\|W_l - \\hat F_l + \\hat Y_l/\\rho\\|_F^2

solved approximately by ``engine.config.w_epochs`` epochs of SGD (momentum), as both papers do,
from a fresh optimizer at every outer iteration (the driver's momentum rule, see
:mod:`compactnn.solvers.training.run`).

References:
    Kiaee et al. (2016) eq. (7) and sec. 4 (SGD, lr 0.001, batch 128); Lin et al. (2019)
    eq. (11) and sec. IV (lr 0.001, momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._validation import check_float, check_int
from compactnn.solvers.training.admm import ADMMEngine

__all__ = ["sgd_w_step"]


def sgd_w_step(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    engine: ADMMEngine,
    *,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    epochs: int | None = None,
    train_all: bool = False,
) -> Callable[[int], None]:
    """Build ``w_step(k)`` running SGD epochs on ``loss_fn(model(x), y) + engine.penalty_loss()``.

    Args:
        model: the network.
        loader: iterable of ``(x, y)`` batches.
        loss_fn: task loss ``L_net``.
        engine: the ADMM engine whose augmented term is added.
        lr: learning rate (papers: 0.001).
        momentum: SGD momentum (Lin: 0.9).
        weight_decay: L2 weight decay (Lin: 5e-4).
        epochs: epochs per W-step; ``None`` reads ``engine.config.w_epochs``.
        train_all: optimise every parameter of ``model`` (Kiaee, global loss) instead of only
            the regularised ones (Lin, layer by layer).

    Returns:
        The closure ``w_step(k)`` for :func:`~compactnn.solvers.training.run_admm`; every call
        builds a new SGD optimizer, so momentum starts at zero in each outer iteration.
    """
    check_float(lr, "lr", "sgd_w_step", min_value=0.0, min_inclusive=False)
    check_float(momentum, "momentum", "sgd_w_step", min_value=0.0, max_value=1.0)
    check_float(weight_decay, "weight_decay", "sgd_w_step", min_value=0.0)
    if epochs is not None:
        check_int(epochs, "epochs", "sgd_w_step", min_value=1)
    params = list(model.parameters()) if train_all else list(engine.params.values())

    def w_step(k: int) -> None:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        n_epochs = epochs if epochs is not None else engine.config.w_epochs
        model.train()
        for _ in range(n_epochs):
            for batch in loader:
                x, y = batch[0], batch[1]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y) + engine.penalty_loss()
                loss.backward()
                opt.step()

    return w_step
