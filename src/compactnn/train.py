"""Train, evaluate and fine-tune (with a fixed zero structure), deterministically.

Checkpoints are written with safetensors (``.safetensors``, with a JSON sidecar of metadata) or
``torch.save`` (``.pt``) and always read back with ``weights_only=True`` semantics: nothing but
tensors and plain metadata is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compactnn._progress import Progress
from compactnn._validation import check_choice, check_float, check_int
from compactnn.errors import CheckpointError, ConfigError, SolverError
from compactnn.metrics import accuracy
from compactnn.solvers.training.masks import apply_masks as _apply_param_masks

__all__ = [
    "TrainConfig",
    "TrainHistory",
    "evaluate",
    "finetune",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "train",
    "zero_masks",
    "apply_masks",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) so that training is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds legacy global users (third-party code)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training loader.
        lr: initial learning rate.
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        schedule: ``"cosine"`` (per step), ``"step"`` (x0.1 at 50 % and 75 %) or ``"constant"``.
        seed: seeds everything at the start of :func:`train`, including the shuffling of a
            ``DataLoader(..., shuffle=True)`` train loader (rebuilt with a generator seeded by
            ``seed``), so a call's batch order does not depend on earlier uses of the loader.
        max_steps_per_epoch: cap on batches per epoch (None = whole loader); for quick runs.
        grad_clip: max gradient norm (None = off).
        distill_weight: alpha of knowledge distillation when :func:`train` gets a ``teacher``:
            loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T
            (Hinton et al. 2015).
        distill_temperature: T of knowledge distillation.
        warmup_steps: linear learning-rate warm-up: step k (from 0) of the first
            ``warmup_steps`` runs at ``(k + 1) / warmup_steps`` times the schedule's rate
            (0 = off). Guards a fine-tuning whose first full-rate steps would blow up.
    """

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", "TrainConfig", min_value=0)
        check_float(self.lr, "lr", "TrainConfig", min_value=0.0, min_inclusive=False)
        check_choice(self.optimizer, "optimizer", "TrainConfig", ("sgd", "adam"))
        check_float(self.momentum, "momentum", "TrainConfig", min_value=0.0, max_value=1.0)
        check_float(self.weight_decay, "weight_decay", "TrainConfig", min_value=0.0)
        check_choice(self.schedule, "schedule", "TrainConfig", ("cosine", "step", "constant"))
        check_int(self.seed, "seed", "TrainConfig", min_value=0)
        check_int(self.warmup_steps, "warmup_steps", "TrainConfig", min_value=0)
        if self.max_steps_per_epoch is not None:
            check_int(self.max_steps_per_epoch, "max_steps_per_epoch", "TrainConfig", min_value=1)
        if self.grad_clip is not None:
            check_float(
                self.grad_clip, "grad_clip", "TrainConfig", min_value=0.0, min_inclusive=False
            )
        check_float(
            self.distill_weight, "distill_weight", "TrainConfig", min_value=0.0, max_value=1.0
        )
        check_float(
            self.distill_temperature,
            "distill_temperature",
            "TrainConfig",
            min_value=0.0,
            min_inclusive=False,
        )


@dataclass
class TrainHistory:
    """Per-epoch training loss / accuracy and (optional) validation accuracy."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)


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


def _make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    return warm * _schedule_lr(cfg, step, total)


def _schedule_lr(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    frac = step / total
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (0.1 ** (int(frac >= 0.5) + int(frac >= 0.75)))


class _SoftTargets(torch.utils.data.Dataset):
    """``dataset[i]`` followed by the teacher's logits of sample ``i``."""

    def __init__(self, dataset: Any, logits: torch.Tensor) -> None:
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.dataset[i][:2]
        return x, y, self.logits[i]


class _TeacherPerBatch:
    """Wraps any iterable of ``(x, y)``: yields ``(x, y, teacher(x))``."""

    def __init__(self, loader: Iterable[Any], teacher: nn.Module) -> None:
        self.loader, self.teacher = loader, teacher

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Any:
        dev = next(self.teacher.parameters()).device
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            for x, y, *_ in self.loader:
                with torch.no_grad():
                    t = self.teacher(x.to(dev)).detach()
                yield x, y, t
        finally:
            self.teacher.train(was_training)


def _with_teacher_logits(loader: Iterable[Any], teacher: nn.Module, seed: int) -> Iterable[Any]:
    """The loader with the teacher's logits as a third item of every batch.

    A ``DataLoader`` over a map-style dataset with the default sampler and collation gets the
    logits of every sample computed once (one pass in eval mode) and is rebuilt with the same
    batch size, shuffling (seeded by ``seed``), ``drop_last`` and workers; anything else gets the
    teacher run on every batch.
    """
    from torch.utils.data import DataLoader, default_collate

    if not _rebuildable(loader) or loader.collate_fn is not default_collate:  # type: ignore[attr-defined]
        from compactnn import distributed

        return _TeacherPerBatch(_seeded(loader, seed) if distributed.active() else loader, teacher)
    ds = loader.dataset  # type: ignore[attr-defined]
    dev = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    chunks = []
    try:
        with torch.no_grad():
            for x, *_ in DataLoader(ds, batch_size=512, shuffle=False):
                chunks.append(teacher(x.to(dev)).detach().cpu())
    finally:
        teacher.train(was_training)
    logits = torch.cat(chunks)
    return _rebuilt(loader, _SoftTargets(ds, logits), seed)


def _rebuilt(loader: Any, dataset: Any, seed: int) -> Any:
    """``loader`` over ``dataset`` with its batching, workers and collation, reshuffled by a fresh
    generator seeded with ``seed`` (no generator when the loader does not shuffle)."""
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    from compactnn import distributed

    shuffle = isinstance(loader.sampler, RandomSampler)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    order: dict[str, Any] = {"shuffle": shuffle}
    if distributed.active():
        # this rank's share of the single-process order (same generator, same draws): the
        # per-rank batches of a step make up the single-process batch of size B x world size
        base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
        sampler = distributed.RankShard(
            base, num_replicas=distributed.world_size(), rank=distributed.rank()
        )
        order = {"sampler": sampler}
    return DataLoader(
        dataset,
        batch_size=loader.batch_size,
        **order,
        generator=gen,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        timeout=loader.timeout,
        persistent_workers=loader.persistent_workers,
    )


def _seeded(loader: Iterable[Any], seed: int) -> Iterable[Any]:
    """``loader`` with its shuffling reseeded by ``seed``, so that a :func:`train` call sees the
    same batch order whatever the loader was used for before.

    Only a ``DataLoader`` over a map-style dataset with the default shuffling sampler
    (``shuffle=True``) is rebuilt; a sequential loader, a custom sampler or batch sampler, an
    iterable dataset or any other iterable is used as given (its order is the caller's).
    """
    from torch.utils.data import RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    from compactnn import distributed

    if distributed.active():  # every rank reads its own share (sequential loaders too)
        if _rebuildable(loader):
            return _rebuilt(loader, loader.dataset, seed)
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            return loader  # the caller's own split; train() calls set_epoch
        distributed.require_shardable(loader, "train")
    if _rebuildable(loader) and isinstance(loader.sampler, RandomSampler):
        return _rebuilt(loader, loader.dataset, seed)
    return loader


def _rebuildable(loader: Any) -> bool:
    """A ``DataLoader`` over a map-style dataset with the default samplers (``shuffle=True`` or
    ``False``, automatic batching): one that :func:`_rebuilt` reproduces exactly."""
    from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return False
    if loader.batch_size is None:
        return False
    s = loader.sampler
    if type(s) is SequentialSampler:
        return True
    return (
        type(s) is RandomSampler and not s.replacement and s.num_samples == len(loader.dataset)  # type: ignore[arg-type]
    )


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
    from torch.utils.data.distributed import DistributedSampler

    from compactnn import distributed, resume

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
    try:  # of the loader this rank reads
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = cfg.max_steps_per_epoch or 0
    if cfg.max_steps_per_epoch is not None and steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    kd_w, kd_t = cfg.distill_weight, cfg.distill_temperature
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
    bar = Progress(total - step, desc, enabled=progress and distributed.is_main())
    sampler = getattr(train_loader, "sampler", None)
    try:
        for _epoch in range(start_epoch, cfg.epochs):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(_epoch)  # a caller's own DistributedSampler
            model.train()
            sum_loss, correct, seen = 0.0, 0, 0
            for i, batch in enumerate(train_loader):
                if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
                    break
                # (x, y), or (x, y, teacher logits) from _with_teacher_logits: a third item in
                # the user's own batches is never mistaken for soft targets
                if teacher is None:
                    x, y = batch
                else:
                    x, y, soft = batch
                lr = _lr_at(cfg, step, total)
                for g in opt.param_groups:
                    g["lr"] = lr
                x, y = x.to(device), y.to(device)
                out = net(x)
                loss = loss_fn(out, y)
                if teacher is not None:
                    kd = nn.functional.kl_div(
                        nn.functional.log_softmax(out / kd_t, dim=1),
                        nn.functional.log_softmax(soft.to(device) / kd_t, dim=1),
                        reduction="batchmean",
                        log_target=True,
                    )
                    loss = (1.0 - kd_w) * loss + kd_w * kd_t * kd_t * kd
                if extra_loss is not None:
                    loss = loss + extra_loss()
                finite = bool(torch.isfinite(loss))
                if ddp:  # every rank stops together, or the others would wait forever
                    finite = distributed.all_reduce_sum([0.0 if finite else 1.0])[0] == 0
                if not finite:
                    raise SolverError(
                        f"Training loss became {loss.item()} at step {step}; lower the learning "
                        f"rate (lr={cfg.lr}) or check the data for NaNs."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                if step_hook is not None:
                    step_hook(lr)
                if masks:
                    apply_masks(model, masks)
                step += 1
                bs = int(y.numel())
                sum_loss += float(loss.detach()) * bs
                correct += int((out.detach().argmax(1) == y).sum())
                seen += bs
                bar.step(loss=f"{sum_loss / seen:.4f}", acc=f"{100.0 * correct / seen:.2f}")
            if seen == 0:
                raise ConfigError(
                    f"{desc}: the training loader yielded no batch, so nothing was trained; pass "
                    "a training loader with data (or set the epochs / finetune_epochs to 0)."
                )
            if ddp:  # the global batch's statistics, the same on every rank
                sum_loss, correct, seen = distributed.all_reduce_sum([sum_loss, correct, seen])
            hist.train_loss.append(sum_loss / max(seen, 1))
            hist.train_acc.append(100.0 * correct / max(seen, 1))
            stats = {"loss": hist.train_loss[-1], "train top-1": hist.train_acc[-1]}
            if val_loader is not None:  # every rank, on the same (synchronised) model
                hist.val_acc.append(accuracy(model, val_loader, topk=(1,))["top1"])
                stats["val top-1"] = hist.val_acc[-1]
            bar.epoch(_epoch + 1, cfg.epochs, **stats)
            if ddp:
                distributed.check_synced(model.state_dict(), f"{desc}: epoch {_epoch + 1}")
            if store is not None:
                store.save(key, *_epoch_state(_epoch + 1, step, model, opt, train_loader,
                                              step_hook, hist))  # fmt: skip
    finally:
        bar.close()
    return hist


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
    from compactnn import resume

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
    from compactnn import resume

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


# --------------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], /, **meta: Any) -> Path:
    """Save the state dict (+ JSON-serialisable ``meta``, e.g. ``model="lenet-caffe"``).

    ``.safetensors`` -> safetensors file with metadata in its header; anything else -> torch.save
    of ``{"state_dict": ..., "meta": ...}`` (plain tensors and JSON types only).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta_json = json.dumps(meta, sort_keys=True)
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(p), metadata={"compactnn": meta_json})
    else:
        torch.save({"state_dict": state, "meta": meta_json}, p)
    return p


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (or a plain state dict).

    Raises:
        CheckpointError: missing, truncated or corrupt file, or one with non-tensor content.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint '{p}' does not exist. Check the path.")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                meta_raw = (f.metadata() or {}).get("compactnn", "{}")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj:
                state, meta_raw = obj["state_dict"], obj.get("meta", "{}")
            else:
                state, meta_raw = obj, "{}"
        meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip / header / pickle refused by weights_only
        raise CheckpointError(
            f"Checkpoint '{p}' could not be read ({type(exc).__name__}: {exc}). It is corrupt, "
            "truncated or not a compactnn/torch checkpoint; re-save it with "
            "compactnn.train.save_checkpoint."
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"Checkpoint '{p}' does not hold a state dict of tensors; save model.state_dict()."
        )
    return state, meta


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, strict: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint into ``model`` (or build the reference model named in its metadata).

    Returns:
        ``(model, meta)``.

    Raises:
        CheckpointError: unreadable file, or tensors that do not fit the model (names the keys).
    """
    state, meta = read_checkpoint(path)
    if model is None:
        name = meta.get("model")
        if not name:
            raise CheckpointError(
                f"Checkpoint '{path}' does not name its model; pass model= (an nn.Module) to "
                "load_checkpoint."
            )
        from compactnn.models import create

        model = create(name, **meta.get("model_kwargs", {}))
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Checkpoint '{path}' does not match {type(model).__name__}: {exc}"
        ) from exc
    if strict and (
        result.missing_keys or result.unexpected_keys
    ):  # pragma: no cover - torch raises
        raise CheckpointError(f"Checkpoint '{path}' keys mismatch: {result}")
    return model, meta
