"""The demo's baseline and settings, and the training recipe of the reference models.

Public for scripts and benchmarks (``compactnn.cli`` is the command line only):
:func:`cache_dir`, :func:`train_model`, :func:`demo_weights`, :func:`demo_baseline`,
:func:`training_data_sha256` and the ``DEMO_*`` settings of ``compactnn demo``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from compactnn import data, models
from compactnn.errors import CheckpointError
from compactnn.train import TrainConfig, load_checkpoint, save_checkpoint, train

__all__ = [
    "cache_dir",
    "train_model",
    "demo_weights",
    "demo_baseline",
    "training_data_sha256",
    "DEMO_WEIGHTS",
    "DEMO_EPOCHS",
    "DEMO_METHOD",
    "DEMO_TARGET",
    "DEMO_OPTIONS",
]


def cache_dir() -> Path:
    """``$COMPACTNN_CACHE`` or ``~/.cache/compactnn``."""
    return Path(os.environ.get("COMPACTNN_CACHE", Path.home() / ".cache" / "compactnn"))


def train_model(
    model_name: str,
    dataset: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: str = "sgd",
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    device: str | None = None,
    checkpoint: str | None = None,
    **data_kwargs: Any,
) -> tuple[Any, Any, Any, Any]:
    """Train ``model_name`` on ``dataset`` from seed ``seed``: the model, its history and the
    train / test loaders. ``checkpoint``: the key of :func:`compactnn.train.train`'s epoch
    checkpoints inside a resumable run (:func:`compactnn.resume.activate`), so a killed
    training continues after its last finished epoch."""
    info = data.dataset_info(dataset)
    in_shape = models.default_input_shape(model_name)
    model = models.create(
        model_name,
        in_channels=in_shape[0] if len(in_shape) == 3 else None,
        num_classes=info.num_classes,
        seed=seed,
    )
    if device is not None:  # train there (the loaders stay on the CPU; train() moves batches)
        model.to(device)
    train_loader, test_loader = data.get_loaders(
        dataset, batch_size=batch_size, seed=seed, **data_kwargs
    )
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        seed=seed,
        optimizer=optimizer,
        weight_decay=5e-4 if optimizer == "sgd" else 0.0,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    hist = train(
        model, train_loader, config=cfg, progress=progress, desc=f"train {model_name}",
        checkpoint=checkpoint,
    )  # fmt: skip
    return model, hist, train_loader, test_loader


#: the demo's baseline, shipped as package data (trained once by the command in its sidecar)
DEMO_WEIGHTS = "lenet-caffe-mnist-seed0.safetensors"


def demo_weights() -> tuple[Path, dict[str, Any]]:
    """The shipped demo baseline (``compactnn/_weights``) and its sidecar, sha256 verified.

    Raises:
        CheckpointError: the file is missing or its sha256 is not the sidecar's.
    """
    import hashlib
    from importlib.resources import files

    base = Path(str(files("compactnn") / "_weights"))
    path, side = base / DEMO_WEIGHTS, base / (DEMO_WEIGHTS.removesuffix(".safetensors") + ".json")
    if not path.is_file() or not side.is_file():
        raise CheckpointError(
            f"The shipped demo baseline {path} (or its sidecar {side.name}) is missing from this "
            "installation; reinstall compactnn, or run 'compactnn demo --retrain' to train it."
        )
    meta = json.loads(side.read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != meta["sha256"]:
        raise CheckpointError(
            f"The shipped demo baseline {path} has sha256 {digest}, not {meta['sha256']} as "
            f"{side.name} records: the file is damaged. Reinstall compactnn, or run "
            "'compactnn demo --retrain' to train it."
        )
    return path, meta


def training_data_sha256(dataset: str = "mnist") -> str:
    """sha256 of the training split as :func:`compactnn.data.load_arrays` gives it: the
    float32 image bytes (N, C, H, W), then the int64 label bytes."""
    import hashlib

    import numpy as np

    x, y = data.load_arrays(dataset, "train")
    h = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def demo_baseline(*, seed: int = 0, progress: bool = True, retrain: bool = False) -> Any:
    """LeNet (Caffe 20-50-500-10) trained on MNIST: ``(model, test loader, checkpoint path)``.

    Seed 0: the weights shipped with compactnn (:func:`demo_weights`, sha256 checked), unless
    ``retrain``. Other seeds, or ``retrain``: trained here (8 epochs) once and cached.
    """
    import torch

    if seed == 0 and not retrain:
        path, meta = demo_weights()
        with torch.random.fork_rng(devices=[]):  # the fresh model's init draws
            model, _ = load_checkpoint(path, models.create("lenet-caffe"))
            _, test_loader = data.get_loaders("mnist", batch_size=64, seed=seed)
        print(
            f"baseline: shipped {path.name} (sha256 {meta['sha256'][:12]}... verified; "
            f"trained by '{meta['command']}'; --retrain trains it here)"
        )
        return model, test_loader, path
    ckpt = cache_dir() / "checkpoints" / f"lenet-caffe-mnist-seed{seed}.safetensors"
    if ckpt.is_file() and not retrain:
        with torch.random.fork_rng(devices=[]):
            model, _ = load_checkpoint(ckpt, models.create("lenet-caffe"))
            _, test_loader = data.get_loaders("mnist", batch_size=64, seed=seed)
        print(f"baseline: cached {ckpt}")
        return model, test_loader, ckpt
    model, _, _, test_loader = train_model(
        "lenet-caffe",
        "mnist",
        epochs=DEMO_EPOCHS,
        lr=0.01,
        batch_size=64,
        seed=seed,
        progress=progress,
    )
    save_checkpoint(
        model,
        ckpt,
        model="lenet-caffe",
        dataset="mnist",
        input_shape=[1, 28, 28],
        seed=seed,
        epochs=DEMO_EPOCHS,
    )
    print(f"baseline: trained here ({DEMO_EPOCHS} epochs), cached at {ckpt}")
    return model, test_loader, ckpt


DEMO_EPOCHS = 8

#: the demo's method and budget: the method's own budgeted search picks the per-layer
#: strength for the target (no hand-picked lambda); DEMO_METHOD is overridable for development
#: (``COMPACTNN_DEMO_METHOD=taylor``), the shipped demo is SSR
DEMO_METHOD = os.environ.get("COMPACTNN_DEMO_METHOD", "ssr")
DEMO_TARGET: dict[str, float] = {"macs": 0.1}
#: fine-tuning of the demo: 2 epochs (the paper's protocol, and this demo until issue 34, used
#: 30) at lr 0.01, cosine, distilling from the unpruned LeNet, so that the demo runs in minutes
DEMO_FINETUNE_EPOCHS = 2
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "ssr": {
        "finetune_epochs": DEMO_FINETUNE_EPOCHS,
        "finetune_lr": 0.01,
        "finetune_distill": 0.5,
    },
    "taylor": {"finetune_epochs": DEMO_FINETUNE_EPOCHS, "lr": 0.01, "finetune_distill": 0.5},
}
#: the demo compresses on one torch thread (timings and float order as the benchmarks)
DEMO_TRAIN_THREADS = 1
#: what changed against the demo before issue 34 (printed and in report.json)
DEMO_CHANGES = (
    f"{DEMO_FINETUNE_EPOCHS} fine-tuning epochs, not 30; the MACs target met by one joint run "
    "of the budgeted engine, not a lambda read off a sweep; shipped baseline weights"
)
