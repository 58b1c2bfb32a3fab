"""Training utilities: determinism, fixed masks, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compactnn.errors import CheckpointError, ConfigError
from compactnn.train import (
    TrainConfig,
    evaluate,
    finetune,
    load_checkpoint,
    save_checkpoint,
    train,
    zero_masks,
)


def _data(n: int = 256) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(
        TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))


def test_training_learns_and_is_deterministic() -> None:
    cfg = TrainConfig(epochs=5, lr=0.1, seed=7)
    a, b = _mlp(), _mlp()
    ha = train(a, _data(), config=cfg, progress=False)
    hb = train(b, _data(), config=cfg, progress=False)
    assert ha.train_loss == hb.train_loss
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert ha.train_loss[-1] < ha.train_loss[0]
    assert evaluate(a, _data(), topk=(1,))["top1"] > 90.0


def test_finetune_keeps_zero_structure() -> None:
    m = _mlp()
    with torch.no_grad():
        m[0].weight[::2] = 0.0
        m[2].weight[:, 3] = 0.0
    zeros0 = m[0].weight == 0
    zeros2 = m[2].weight == 0
    before = m[0].weight.detach().clone()
    finetune(m, _data(), config=TrainConfig(epochs=2, lr=0.1), progress=False)
    assert torch.all(m[0].weight[zeros0] == 0) and torch.all(m[2].weight[zeros2] == 0)
    assert not torch.equal(m[0].weight[~zeros0], before[~zeros0])  # the rest did train


def test_zero_masks_only_for_weights_with_zeros() -> None:
    m = _mlp()
    with torch.no_grad():
        m[2].weight[0, 0] = 0.0
    masks = zero_masks(m)
    assert list(masks) == ["2.weight"] and masks["2.weight"].sum() == 31


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_roundtrip(tmp_path, suffix: str) -> None:
    m = _mlp()
    p = save_checkpoint(m, tmp_path / f"m{suffix}", note="x", input_shape=[10])
    m2, meta = load_checkpoint(p, _mlp().apply(lambda mod: None))
    assert meta["note"] == "x"
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_corrupt_checkpoint_is_clear(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad, _mlp())
    badpt = tmp_path / "bad.pt"
    badpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(badpt, _mlp())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", _mlp())


def test_checkpoint_refuses_pickled_code(tmp_path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": "{}", "obj": _mlp()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p, _mlp())


def test_checkpoint_wrong_model(tmp_path) -> None:
    p = save_checkpoint(_mlp(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(p, nn.Linear(3, 3))


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="'lr' parameter of TrainConfig"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="'distill_weight' parameter of TrainConfig"):
        TrainConfig(distill_weight=1.5)
    with pytest.raises(ConfigError, match="'distill_temperature' parameter of TrainConfig"):
        TrainConfig(distill_temperature=0.0)
    with pytest.raises(ConfigError, match="'warmup_steps' parameter of TrainConfig"):
        TrainConfig(warmup_steps=-1)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "step"])
def test_warmup_ramps_the_rate_linearly_then_follows_the_schedule(monkeypatch, schedule) -> None:
    """The rate of every optimiser step: (k + 1) / W times the schedule's for k < W, the
    schedule's alone afterwards; warmup_steps=0 is the schedule alone."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def spy(self, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    total = 2 * 8  # 2 epochs of 256 / 32 batches
    train(_mlp(), _data(), config=TrainConfig(epochs=2, lr=0.1, schedule=schedule), progress=False)
    plain = list(seen)
    seen.clear()
    cfg = TrainConfig(epochs=2, lr=0.1, schedule=schedule, warmup_steps=5)
    train(_mlp(), _data(), config=cfg, progress=False)
    assert len(plain) == len(seen) == total
    for k in range(total):
        assert seen[k] == pytest.approx(plain[k] * min(1.0, (k + 1) / 5), rel=1e-12)
    assert seen[0] == pytest.approx(plain[0] / 5) and seen[4] == pytest.approx(plain[4])


def _kl(student: nn.Module, teacher: nn.Module, loader: DataLoader, t: float = 4.0) -> float:
    with torch.no_grad():
        x = torch.cat([b[0] for b in loader])
        return float(
            nn.functional.kl_div(
                nn.functional.log_softmax(student(x) / t, 1),
                nn.functional.log_softmax(teacher(x) / t, 1),
                reduction="batchmean",
                log_target=True,
            )
        )


@pytest.mark.parametrize("cached", [True, False])
def test_teacher_logits_match_the_teacher_on_every_sample(cached: bool) -> None:
    from compactnn.train import _with_teacher_logits

    teacher = nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    loader = _data(100) if cached else list(_data(100))  # DataLoader -> one pass; list -> per batch
    wrapped = _with_teacher_logits(loader, teacher, seed=0)
    assert (type(wrapped).__name__ == "DataLoader") is cached
    reference = copy.deepcopy(teacher).eval()
    seen = 0
    for x, y, soft in wrapped:
        assert torch.allclose(soft, reference(x), atol=1e-6)  # eval-mode logits of these samples
        assert y.shape == (x.shape[0],)
        seen += x.shape[0]
    assert seen == 100
    assert teacher.training  # mode restored


def test_distillation_from_itself_is_a_fixed_point_and_pulls_a_student_to_the_teacher() -> None:
    m = _mlp()
    before = [p.detach().clone() for p in m.parameters()]
    cfg = TrainConfig(epochs=2, lr=0.1, weight_decay=0.0, distill_weight=1.0)
    train(m, _data(), config=cfg, teacher=copy.deepcopy(m), progress=False)
    for p, q in zip(m.parameters(), before):
        assert torch.allclose(p, q, atol=1e-6)  # KL(m || m) = 0 and so is its gradient

    teacher = _mlp()
    train(teacher, _data(), config=TrainConfig(epochs=5, lr=0.1), progress=False)

    def student() -> nn.Module:
        torch.manual_seed(11)
        return nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))

    distilled, plain = student(), student()
    kl0 = _kl(distilled, teacher, _data())
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    finetune(distilled, _data(), config=cfg, teacher=teacher, progress=False)
    finetune(plain, _data(), config=cfg, progress=False)
    kl_distilled = _kl(distilled, teacher, _data())
    assert kl_distilled < 0.5 * kl0
    assert kl_distilled < _kl(plain, teacher, _data())  # closer than cross-entropy alone gets
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])  # the teacher is not trained


def test_a_third_item_in_plain_batches_is_not_taken_for_soft_targets() -> None:
    x = torch.randn(8, 10)
    batches = [(x, torch.zeros(8, dtype=torch.long), torch.randn(8, 2))]
    with pytest.raises(ValueError, match="unpack"):
        train(_mlp(), batches, config=TrainConfig(epochs=1), progress=False)


@pytest.mark.parametrize("teacher", [False, True])
def test_batch_order_depends_on_the_seed_not_on_earlier_uses_of_the_loader(teacher: bool) -> None:
    cfg = TrainConfig(epochs=2, lr=0.1, seed=5)
    t = _mlp() if teacher else None
    fresh, used = _data(), _data()
    for _ in range(3):  # advance the shared generator of `used`
        list(used)
    a, b = _mlp(), _mlp()
    ha = train(a, fresh, config=cfg, teacher=t, progress=False)
    hb = train(b, used, config=cfg, teacher=t, progress=False)
    assert ha.train_loss == hb.train_loss
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # another seed gives another order (so training differs)
    c = _mlp()
    train(c, _data(), config=TrainConfig(epochs=2, lr=0.1, seed=6), teacher=t, progress=False)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_reseeded_loader_keeps_batching_and_a_custom_sampler_is_left_alone() -> None:
    from torch.utils.data import WeightedRandomSampler

    from compactnn.train import _seeded, _TeacherPerBatch, _with_teacher_logits

    loader = DataLoader(
        TensorDataset(torch.arange(10.0).unsqueeze(1), torch.zeros(10, dtype=torch.long)),
        batch_size=3,
        shuffle=True,
        drop_last=True,
    )
    r1, r2 = _seeded(loader, 4), _seeded(loader, 4)
    assert r1 is not loader and r1.batch_size == 3 and r1.drop_last
    o1 = [x.flatten().tolist() for x, _ in r1]
    assert o1 == [x.flatten().tolist() for x, _ in r2]  # same seed, same order
    assert len(o1) == 3 and sorted(sum(o1, [])) != list(range(10))  # drop_last held
    ordered = DataLoader(loader.dataset, batch_size=3, shuffle=False)
    assert [x.flatten().tolist() for x, _ in _seeded(ordered, 4)] == [
        x.flatten().tolist() for x, _ in ordered
    ]
    weighted = DataLoader(
        loader.dataset, batch_size=3, sampler=WeightedRandomSampler(torch.ones(10), 10)
    )
    assert _seeded(weighted, 4) is weighted  # the user's sampler decides the order
    assert isinstance(_with_teacher_logits(weighted, _mlp_1(), 0), _TeacherPerBatch)


def _mlp_1() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 2))
