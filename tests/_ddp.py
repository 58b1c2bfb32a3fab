"""Helpers of the torch.distributed tests: a BatchNorm-free tiny CNN, seeded data, and workers
that ``torch.multiprocessing.spawn`` starts as gloo ranks on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_TRAIN = 96  # divisible by every global batch used (8 x 2, 16 x 1)


class TinyCNN(nn.Module):
    """conv-ReLU-pool-conv-ReLU-fc-ReLU-fc on (1, 8, 8): no BatchNorm, so data-parallel
    training is the single-process training on the global batch."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 16, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(self.relu2(self.conv2(x))))))


def tiny_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyCNN()


def tiny_data(batch: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders; ``batch`` is the training batch (per rank under DDP)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + 48, 1, 8, 8, generator=g)
    w = torch.randn(64, 3, generator=g)
    y = (x.reshape(len(x), -1) @ w).argmax(1)
    tr = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    va = TensorDataset(x[N_TRAIN : N_TRAIN + 24], y[N_TRAIN : N_TRAIN + 24])
    te = TensorDataset(x[N_TRAIN + 24 :], y[N_TRAIN + 24 :])
    return (
        DataLoader(tr, batch_size=batch, shuffle=True),
        DataLoader(va, batch_size=24),
        DataLoader(te, batch_size=24),
    )


#: small runs of each training-based method (a few seconds on one CPU core)
OPTIONS: dict[str, dict[str, Any]] = {
    "ssr": dict(
        lam=(1.0, 0.65, 0.65), max_outer=3, w_steps=6, finetune_epochs=2, lr=0.01, finetune_lr=0.01
    ),
    "admm-sparse": dict(mus=(0.05, 0.2), xi=2, steps_per_epoch=6, lr=0.01, finetune_epochs=1),
    "pgt": dict(lam=1.2, epochs=3, finetune_epochs=2, lr=0.05),
    "l1-norm": dict(ratio=0.5, finetune_epochs=3),
}


def compress(method: str, batch: int, **kw: Any) -> Any:
    from compactnn import compress as _compress

    kw = {**OPTIONS[method], **kw}
    return _compress(
        tiny_model(), method, tiny_data(batch), measure=False, progress=False, max_drop=100.0,
        on_drop="warn", **kw,
    )  # fmt: skip


def state_and_arch(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return sd, {k: list(v.shape) for k, v in sd.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(rank: int, run: dict[str, Any], out: Path) -> dict[str, Any]:
    """One entry of a job on this rank; saves the returned model's state to ``out``."""
    from safetensors.torch import save_file

    from compactnn import distributed

    distributed.set_check(bool(run.get("check")))
    info: dict[str, Any] = {}
    try:
        if run.get("broadcast"):  # a per-rank value: every rank must get rank 0's
            info["value"] = distributed.broadcast_object({"rank": rank, "times": [0.1 * rank]})
            return info
        if "cli" in run:
            from compactnn.cli import main

            info["rc"] = main([a.replace("{rank}", str(rank)) for a in run["cli"]])
            return info
        res = compress(run["method"], run["batch"], **run.get("kw", {}))
        sd, info["arch"] = state_and_arch(res.model)
        save_file({k: v.contiguous() for k, v in sd.items()},
                  str(out / f"{run['name']}.rank{rank}.safetensors"))  # fmt: skip
    except Exception as exc:  # reported to the test
        info["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        distributed.set_check(None)
    return info


def worker(rank: int, world: int, port: int, out: str, runs: list[dict[str, Any]]) -> None:
    """One gloo rank on 127.0.0.1: every run of ``runs`` in turn (the same on every rank,
    except ``desync``: rank 1's F-step is perturbed from then on); writes
    ``out/info.rank{rank}.json`` and each run's model state."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    infos: dict[str, Any] = {}
    done = False
    try:
        for run in runs:
            if run.get("desync") and rank == 1:  # a deliberately diverging F-step on rank 1
                from compactnn.solvers.training.admm import ADMMEngine

                f_step = ADMMEngine.f_step

                def bad(self: Any, f_step: Any = f_step) -> None:
                    f_step(self)
                    name = next(iter(self.state.F))
                    self.state.F[name] = self.state.F[name] * 1.001

                ADMMEngine.f_step = bad  # type: ignore[method-assign]
            infos[run["name"]] = _run(rank, run, Path(out))
        done = True
    finally:
        (Path(out) / f"info.rank{rank}.json").write_text(json.dumps(infos))
        dist.destroy_process_group()
    if done:
        # every result is on disk: leave without the interpreter's C++ teardown, which
        # intermittently aborted rank 0 after the last (CLI) case on a 2-core machine
        # ("terminate called without an active exception", a native thread still joinable
        # at exit; root cause not found) and turned a finished job into errors
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def spawn(runs: list[dict[str, Any]], out: Path, world: int = 2) -> list[dict[str, Any]]:
    """Run ``runs`` on ``world`` gloo ranks; per rank, run name -> info (+ ``state``)."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(worker, args=(world, free_port(), str(out), runs), nprocs=world, join=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    ranks = []
    for r in range(world):
        infos = json.loads((out / f"info.rank{r}.json").read_text())
        for name, info in infos.items():
            st = out / f"{name}.rank{r}.safetensors"
            if st.is_file():
                info["state"] = load_file(str(st))
        ranks.append(infos)
    return ranks
