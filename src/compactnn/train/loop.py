"""The training loop: :func:`train` (cross-entropy plus optional distillation, regulariser, masks
and step hook; resumable per epoch), :func:`finetune` (with the zero structure held fixed),
:func:`evaluate`, and the masks that hold that structure (:func:`zero_masks`,
:func:`apply_masks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from compactnn import distributed, resume
from compactnn._progress import Progress
from compactnn.errors import ConfigError, SolverError
from compactnn.metrics import accuracy
from compactnn.solvers.training.masks import apply_masks as _apply_param_masks
from compactnn.train.config import (
    TrainConfig,
    TrainHistory,
    _lr_at,
    _make_optimizer,
    seed_everything,
)
from compactnn.train.loaders import _seeded, _with_teacher_logits


def zero_masks(model: nn.Module, *, min_zero_fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """Boolean masks (True = trainable/kept) of the non-zero entries of every weight.

    Only weights (``*.weight`` with dim >= 2) that contain zeros (more than
    ``min_zero_fraction`` of them) get a mask.
    """
    masks: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.dim() < 2 or not name.endswith("weight"):
            continue
        nz = p.detach() != 0
        if (~nz).float().mean().item() > min_zero_fraction:
            masks[name] = nz.clone()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of ``model``'s parameters in place (masks by parameter name).

    Thin wrapper over :func:`compactnn.solvers.training.masks.apply_masks` (which checks names and
    shapes) for callers that hold a model rather than a parameter mapping.
    """
    _apply_param_masks(dict(model.named_parameters()), masks)


def train(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    config: TrainConfig | None = None,
    val_loader: Iterable[Any] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    params: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    desc: str = "train",
    teacher: nn.Module | None = None,
    step_hook: Callable[[float], None] | None = None,
    checkpoint: str | None = None,
) -> TrainHistory:
    """Train ``model`` in place with cross-entropy (plus an optional regulariser).

    Args:
        model: the model (modified in place).
        train_loader: iterable of ``(x, y)`` batches.
        config: optimisation settings (defaults: :class:`TrainConfig`).
        val_loader: evaluated (top-1) after every epoch when given.
        masks: parameter-name -> bool mask; masked-out entries are zero after every step
            (fixed zero structure for fine-tuning).
        extra_loss: closure returning a scalar added to the loss at every step (e.g. the ADMM
            augmented-Lagrangian term rho/2 ||W - F + Y/rho||^2).
        params: parameters to optimise (default: all).
        progress: show progress (a bar on a terminal, one line per epoch otherwise).
        desc: label of the progress bar.
        teacher: distil from this model's logits (``config.distill_weight``,
            ``config.distill_temperature``); typically the uncompressed model. Its logits are
            computed once per sample when ``train_loader`` is a ``DataLoader`` over a map-style
            dataset, else per batch. The teacher is not modified (its train/eval mode is
            restored).
        step_hook: called as ``step_hook(lr)`` right after every optimizer step (before the
            ``masks`` are re-applied) with the learning rate of that step, e.g. the proximal
            step of :func:`compactnn.solvers.training.prox_step_hook` (forward-backward
            splitting: gradient step, then prox with η = lr). A hook with ``state_dict()`` /
            ``load_state_dict()`` has its state checkpointed with the epoch (``checkpoint``).
        checkpoint: a key unique within the run: inside a resumable run
            (:func:`compactnn.resume.activate`, ``compress(resume_dir=...)``) every epoch is
            checkpointed under it (model, optimizer, step, RNG and loader generator states,
            history) and a rerun continues after the last finished epoch, ending with the same
            model. Ignored outside such a run.

    Under ``torch.distributed`` (an initialised process group of more than one rank) the
    model is trained as :class:`~torch.nn.parallel.DistributedDataParallel` and every rank reads
    its share of the loader (:class:`compactnn.distributed.RankShard`): the loader's batch size
    is the per-rank batch, the global batch is it times the world size, and the ranks' batches
    of a step are the single-process batch of that size. The history is all-reduced, so every
    rank returns the same one (see :mod:`compactnn.distributed`).

    Returns:
        TrainHistory with per-epoch loss and accuracies.
    """
    cfg = config or TrainConfig()
    seed_everything(cfg.seed)
    opt = _make_optimizer(list(params) if params is not None else model.parameters(), cfg)
    loss_fn = nn.CrossEntropyLoss()
    hist = TrainHistory()
    device = next(model.parameters()).device
    if masks:
        apply_masks(model, masks)
    if teacher is not None:
        train_loader = _with_teacher_logits(train_loader, teacher, cfg.seed)
    else:
        train_loader = _seeded(train_loader, cfg.seed)
    total = _steps_per_epoch(train_loader, cfg) * cfg.epochs
    step, start_epoch = 0, 0
    store = resume.current() if checkpoint is not None else None
    key = f"train/{checkpoint}"
    if store is not None and (saved := store.load(key)) is not None:
        start_epoch, step = _restore_epoch(saved, model, opt, train_loader, step_hook, hist)
    ddp = distributed.active()
    net = model
    if ddp:
        distributed.check_synced(model.state_dict(), f"{desc}: before training")
        net = distributed.wrap(model)
    run = _Run(model, net, train_loader, cfg, opt, loss_fn, total, device, ddp, masks,
               extra_loss, teacher, step_hook)  # fmt: skip
    bar = Progress(total - step, desc, enabled=progress and distributed.is_main())
    sampler = getattr(train_loader, "sampler", None)
    try:
        for _epoch in range(start_epoch, cfg.epochs):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(_epoch)  # a caller's own DistributedSampler
            model.train()
            step, *sums = _train_epoch(run, step, bar)
            _end_epoch(run, hist, _epoch + 1, sums, desc=desc, val_loader=val_loader, bar=bar)
            if store is not None:
                store.save(key, *_epoch_state(_epoch + 1, step, model, opt, train_loader,
                                              step_hook, hist))  # fmt: skip
    finally:
        bar.close()
    return hist


def _steps_per_epoch(loader: Iterable[Any], cfg: TrainConfig) -> int:
    """Optimizer steps per epoch: the batches of the loader this rank reads, capped by
    ``cfg.max_steps_per_epoch`` (that cap alone when the loader has no length)."""
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps = cfg.max_steps_per_epoch or 0
    if cfg.max_steps_per_epoch is not None and steps:
        steps = min(steps, cfg.max_steps_per_epoch)
    return steps


@dataclass
class _Run:
    """What every step of one :func:`train` call reads (its arguments, resolved)."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    loader: Iterable[Any]
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    total: int  # steps of the whole run (the learning-rate schedule's length)
    device: torch.device
    ddp: bool
    masks: Mapping[str, torch.Tensor] | None
    extra_loss: Callable[[], torch.Tensor] | None
    teacher: nn.Module | None
    step_hook: Callable[[float], None] | None


def _train_epoch(run: _Run, step: int, bar: Progress) -> tuple[int, float, int, int]:
    """One pass over the loader; returns ``(steps done, loss sum, correct, samples seen)``."""
    cfg = run.cfg
    sum_loss, correct, seen = 0.0, 0, 0
    for i, batch in enumerate(run.loader):
        if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
            break
        loss, out, y = _train_step(run, batch, step)
        step += 1
        bs = int(y.numel())
        sum_loss += float(loss.detach()) * bs
        correct += int((out.detach().argmax(1) == y).sum())
        seen += bs
        bar.step(loss=f"{sum_loss / seen:.4f}", acc=f"{100.0 * correct / seen:.2f}")
    return step, sum_loss, correct, seen


def _end_epoch(
    run: _Run,
    hist: TrainHistory,
    epoch: int,
    sums: list[float],
    *,
    desc: str,
    val_loader: Iterable[Any] | None,
    bar: Progress,
) -> None:
    """Record epoch ``epoch`` (from 1) in ``hist`` from its ``[loss sum, correct, samples]``,
    summed over the ranks, with the validation top-1 when there is a ``val_loader``."""
    sum_loss, correct, seen = sums
    if seen == 0:
        raise ConfigError(
            f"{desc}: the training loader yielded no batch, so nothing was trained; pass "
            "a training loader with data (or set the epochs / finetune_epochs to 0)."
        )
    if run.ddp:  # the global batch's statistics, the same on every rank
        sum_loss, correct, seen = distributed.all_reduce_sum([sum_loss, correct, seen])
    hist.train_loss.append(sum_loss / max(seen, 1))
    hist.train_acc.append(100.0 * correct / max(seen, 1))
    stats = {"loss": hist.train_loss[-1], "train top-1": hist.train_acc[-1]}
    if val_loader is not None:  # every rank, on the same (synchronised) model
        hist.val_acc.append(accuracy(run.model, val_loader, topk=(1,))["top1"])
        stats["val top-1"] = hist.val_acc[-1]
    bar.epoch(epoch, run.cfg.epochs, **stats)
    if run.ddp:
        distributed.check_synced(run.model.state_dict(), f"{desc}: epoch {epoch}")


def _train_step(
    run: _Run, batch: Any, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimizer step ``step`` on ``batch``; returns ``(loss, output, labels)``."""
    cfg, opt = run.cfg, run.opt
    # (x, y), or (x, y, teacher logits) from _with_teacher_logits: a third item in
    # the user's own batches is never mistaken for soft targets
    if run.teacher is None:
        x, y = batch
    else:
        x, y, soft = batch
    lr = _lr_at(cfg, step, run.total)
    for g in opt.param_groups:
        g["lr"] = lr
    x, y = x.to(run.device), y.to(run.device)
    out = run.net(x)
    loss = run.loss_fn(out, y)
    if run.teacher is not None:
        kd_w, kd_t = cfg.distill_weight, cfg.distill_temperature
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(out / kd_t, dim=1),
            nn.functional.log_softmax(soft.to(run.device) / kd_t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        loss = (1.0 - kd_w) * loss + kd_w * kd_t * kd_t * kd
    if run.extra_loss is not None:
        loss = loss + run.extra_loss()
    finite = bool(torch.isfinite(loss))
    if run.ddp:  # every rank stops together, or the others would wait forever
        finite = distributed.all_reduce_sum([0.0 if finite else 1.0])[0] == 0
    if not finite:
        raise SolverError(
            f"Training loss became {loss.item()} at step {step}; lower the learning "
            f"rate (lr={cfg.lr}) or check the data for NaNs."
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    opt.step()
    if run.step_hook is not None:
        run.step_hook(lr)
    if run.masks:
        apply_masks(run.model, run.masks)
    return loss, out, y


def _epoch_state(
    epoch: int,
    step: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: Any,
    step_hook: Any,
    hist: TrainHistory,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What :func:`train` needs to continue after ``epoch`` (see ``checkpoint``)."""
    tensors = resume.model_state(model)
    o_t, o_m = resume.optimizer_state(opt)
    r_t, r_m = resume.rng_state()
    tensors.update(o_t, **r_t)
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        tensors["loader.generator"] = gen.get_state()
    if hasattr(step_hook, "state_dict"):
        tensors.update({f"hook.{k}": v for k, v in step_hook.state_dict().items()})
    meta = {"epoch": epoch, "step": step, "history": hist.to_dict(), "opt": o_m, "rng": r_m}
    return tensors, meta


def _restore_epoch(
    saved: tuple[dict[str, torch.Tensor], dict[str, Any]],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: Any,
    step_hook: Any,
    hist: TrainHistory,
) -> tuple[int, int]:
    """Load what :func:`_epoch_state` saved; returns ``(epochs done, steps done)``."""
    tensors, meta = saved
    resume.load_model_state(model, tensors)
    resume.load_optimizer(opt, tensors, meta["opt"])
    resume.set_rng_state(tensors, meta["rng"])
    gen = getattr(loader, "generator", None)
    if "loader.generator" in tensors and isinstance(gen, torch.Generator):
        gen.set_state(tensors["loader.generator"])
    if hasattr(step_hook, "load_state_dict"):
        step_hook.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("hook.")})
    for k, v in meta["history"].items():
        getattr(hist, k).extend(v)
    return int(meta["epoch"]), int(meta["step"])


def evaluate(
    model: nn.Module, loader: Iterable[Any], *, topk: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-1 / top-5 accuracy in % (see :func:`compactnn.metrics.accuracy`)."""
    return accuracy(model, loader, topk=topk)


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    config: TrainConfig | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    val_loader: Iterable[Any] | None = None,
    progress: bool = True,
    teacher: nn.Module | None = None,
    checkpoint: str | None = None,
) -> TrainHistory:
    """Fine-tune with the current zero structure held fixed.

    Args:
        masks: masks to hold; default: the zeros present in the model now
            (:func:`zero_masks`), so that pruned weights stay exactly zero.
        teacher: distil from this model (see :func:`train`).
        checkpoint: epoch checkpoints in a resumable run (see :func:`train`).
    """
    cfg = config or TrainConfig(epochs=1, lr=1e-3, schedule="cosine")
    m = dict(masks) if masks is not None else zero_masks(model)
    return train(
        model,
        train_loader,
        config=cfg,
        val_loader=val_loader,
        masks=m,
        progress=progress,
        desc="fine-tune",
        teacher=teacher,
        checkpoint=checkpoint,
    )
