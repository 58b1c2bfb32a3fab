"""Training-based methods under torch.distributed: 2 CPU ranks (gloo on 127.0.0.1, started by
torch.multiprocessing.spawn) end with the architecture and weights of one process on the same
global batch; the checksum debug mode catches a desynchronised rank; only rank 0 writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import _ddp
from compactnn.distributed import RankShard

PER_RANK, WORLD = 8, 2
METHODS = ("ssr", "pgt", "admm-sparse", "l1-norm")  # l1-norm: a criterion + its fine-tuning


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    """One spawn of 2 gloo ranks running every case in turn (saves the start-up per case)."""
    out = tmp_path_factory.mktemp("ddp")
    cli = [
        "compress", "spiral-mlp", "--data", "spiral", "--method", "l1-norm",
        "--opt", "ratio=0.5", "--opt", "finetune_epochs=1", "--on-drop", "warn", "--quiet",
        "--out", str(out / "cli-{rank}"), "--resume", str(out / "run-{rank}"),
    ]  # fmt: skip
    runs = [
        {"name": m, "method": m, "batch": PER_RANK, "check": m == "ssr"} for m in METHODS
    ] + [
        {"name": "cli", "cli": cli},
        {"name": "broadcast", "broadcast": True},
        {"name": "desync", "method": "admm-sparse", "batch": PER_RANK, "check": True,
         "desync": True},
    ]  # fmt: skip
    return _ddp.spawn(runs, out, world=WORLD), out


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process_on_the_global_batch(ranks, method: str) -> None:
    infos, _ = ranks
    ref = _ddp.compress(method, PER_RANK * WORLD)  # one process, batch = 8 x 2
    sd, arch = _ddp.state_and_arch(ref.model)
    for r, info in enumerate(infos):
        run = info[method]
        assert "error" not in run, run.get("error")
        assert run["arch"] == arch, f"rank {r}: {run['arch']} != {arch}"
        for k, v in sd.items():
            torch.testing.assert_close(run["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the ranks agree bit for bit (gradients all-reduced, everything else computed alike)
    for k in sd:
        assert torch.equal(infos[0][method]["state"][k], infos[1][method]["state"][k]), k
    if method != "l1-norm":  # the run must have removed something, or the test says little
        assert sum(v.numel() for v in sd.values()) < sum(
            p.numel() for p in _ddp.tiny_model().state_dict().values()
        )


def test_a_rank_dependent_decision_is_rank_0s_everywhere(ranks) -> None:
    """E.g. admm-sparse's kernel-form choice, timed on each rank: all deploy rank 0's."""
    infos, _ = ranks
    assert [info["broadcast"]["value"] for info in infos] == [{"rank": 0, "times": [0.0]}] * 2


def test_checksums_catch_a_desynchronised_rank(ranks) -> None:
    infos, _ = ranks
    for info in infos:
        err = info["desync"].get("error", "")
        assert err.startswith("DistributedError"), err
        assert "tensor 'F[conv1.weight]' differs across ranks" in err
        assert "rank(s) [1]" in err and "iteration 1" in err
    # the same checks on a healthy run raised nothing (ssr ran with them on)
    assert all("error" not in info["ssr"] for info in infos)


def test_only_rank_0_writes(ranks) -> None:
    infos, out = ranks
    assert [i["cli"].get("rc") for i in infos] == [0, 0]
    for f in ("report.json", "model.onnx", "plan.json", "recipe.yaml"):
        assert (out / "cli-0" / f).is_file(), f
    assert (out / "run-0" / "run.json").is_file()
    assert not (out / "cli-1").exists() and not (out / "run-1").exists()


def test_rank_shards_make_up_the_single_process_batches() -> None:
    """RankShard: rank r's batches of size B, side by side, are the single-process loader's
    batches of size B x W in the same order, epoch after epoch (same seeded generator)."""
    ds = TensorDataset(torch.arange(48))
    single = DataLoader(ds, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(3))
    shards = []
    for r in range(3):
        g = torch.Generator().manual_seed(3)
        sampler = RankShard(RandomSampler(ds, generator=g), num_replicas=3, rank=r)
        shards.append(DataLoader(ds, batch_size=4, sampler=sampler, generator=g))
    for _epoch in range(2):
        for whole, *parts in zip(single, *shards, strict=True):
            got = torch.cat([p[0] for p in parts])
            assert sorted(got.tolist()) == sorted(whole[0].tolist())


def test_python_dash_m_compactnn_runs_the_cli() -> None:
    """``torchrun -m compactnn`` needs ``python -m compactnn`` (compactnn/__main__.py)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "compactnn", "compress", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--resume DIR" in out and "--ddp-check" in out
