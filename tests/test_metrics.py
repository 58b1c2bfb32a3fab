"""Metrics on hand-checked tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import metrics
from compactnn.errors import ConfigError, InputShapeError


def tiny_cnn() -> nn.Module:
    # conv 1->4 3x3 on 8x8 -> 4x6x6 ; flatten 144 ; fc 144->3
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def test_params_hand_count() -> None:
    m = tiny_cnn()
    assert metrics.count_params(m) == (4 * 9 + 4) + (144 * 3 + 3) == 475


def test_flops_hand_count() -> None:
    m = tiny_cnn()
    conv_macs = 4 * 6 * 6 * 9  # out channels * positions * (c*k*k)
    fc_macs = 144 * 3
    assert metrics.count_flops(m, (1, 8, 8)) == 2 * (conv_macs + fc_macs)


def test_memory_mb() -> None:
    m = nn.Linear(1024, 256, bias=False)  # 262,144 params = 1 MiB in fp32
    assert metrics.memory_mb(m) == pytest.approx(1.0)


def test_layer_table_rows() -> None:
    m = tiny_cnn()
    rows = metrics.layer_table(m, (1, 8, 8))
    assert [r.name for r in rows] == ["0", "3"]
    assert [r.units for r in rows] == [4, 3]
    assert [r.params for r in rows] == [40, 435]
    assert [r.macs for r in rows] == [4 * 36 * 9, 144 * 3]
    assert sum(r.params for r in rows) == metrics.count_params(m)


def test_stored_param_count_protocol() -> None:
    class Sparse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10, 10))

        def stored_param_count(self) -> int:
            return 3 * 7

    m = nn.Sequential(nn.Linear(2, 2), Sparse())
    assert metrics.count_params(m) == 6 + 21


def test_compression_ratio_ma_eq15() -> None:
    assert metrics.compression_ratio(225, 1000) == pytest.approx(22.5)
    with pytest.raises(ValueError):
        metrics.compression_ratio(1, 0)


def test_latency_measured_and_threads_restored() -> None:
    before = torch.get_num_threads()
    lat = metrics.measure_latency(
        tiny_cnn(), (1, 8, 8), batch_size=4, threads=1, warmup=2, repeats=7
    )
    assert lat.repeats == 7 and lat.batch_size == 4
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert torch.get_num_threads() == before


def test_accuracy_topk() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # logits are the inputs

    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([0, 2, 1, 0])
    m = nn.Sequential(Fixed(), nn.Identity())
    m.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    acc = metrics.accuracy(m, [(logits, y)], topk=(1, 2))
    assert acc["top1"] == pytest.approx(25.0)  # only sample 0
    assert acc["top2"] == pytest.approx(50.0)  # samples 0 and 1
    assert acc["n"] == 4


def test_report_consistent_and_formats() -> None:
    m = tiny_cnn()
    rep = metrics.report(m, (1, 8, 8), latency=True, repeats=3, warmup=1)
    assert rep.params == 475 and rep.macs == 4 * 36 * 9 + 432
    text = rep.format("tiny")
    assert "475" in text and "latency" in text
    cmp = metrics.format_comparison(rep, rep)
    assert "1.00x" in cmp


def test_wrong_input_shape_is_clear() -> None:
    with pytest.raises(InputShapeError, match="input of shape"):
        metrics.count_flops(tiny_cnn(), (3, 8, 8))


def test_model_mode_restored() -> None:
    m = tiny_cnn().train()
    metrics.count_flops(m, (1, 8, 8))
    assert m.training


def test_memory_counts_sparse_indices_and_latency_uses_real_samples() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from compactnn.layers import SparseLinear
    from compactnn.metrics import memory_bytes, real_batch, report, stored_values

    w = torch.zeros(4, 10)
    w[0, 1], w[2, 3], w[3, 9] = 1.0, 2.0, 3.0
    model = torch.nn.Sequential(torch.nn.Flatten(), SparseLinear(w, torch.zeros(4)))
    # 3 values + 4 bias fp32, 2 x 3 int64 indices
    assert memory_bytes(model) == 7 * 4 + 6 * 8
    assert stored_values(model) == 7
    data = DataLoader(TensorDataset(torch.full((6, 10), 2.0), torch.zeros(6).long()), batch_size=4)
    x = real_batch(data, 10)
    assert x.shape == (10, 10) and bool((x == 2.0).all())
    rep = report(model, (10,), data=data, batch_size=5, repeats=2, warmup=0, topk=(1,))
    assert rep.latency_inputs == "real" and rep.memory_bytes == 7 * 4 + 6 * 8
    assert report(model, (10,), repeats=2, warmup=0).latency_inputs == "random"
    with pytest.raises(InputShapeError, match="'inputs' must be a batch"):
        metrics.measure_latency(model, (10,), inputs=torch.zeros(3, 5), repeats=1, warmup=0)


def test_latency_percentiles_stay_within_the_measured_times() -> None:
    for times in ([1.0, 3.0], [2.0, 5.0, 9.0], [4.0, 1.0, 8.0, 2.0, 6.0]):
        r = metrics.LatencyResult.from_times(times, batch_size=1, threads=1, warmup=0)
        assert min(times) <= r.p10_ms <= r.median_ms <= r.p90_ms <= max(times)


def test_interleaved_latency_alternates_the_order_and_pools_the_rounds() -> None:
    seen: list[tuple[str, torch.Tensor]] = []

    class Tagged(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.tag, x))
            return self.lin(x)

    before = torch.get_num_threads()
    res = metrics.measure_latency_interleaved(
        {"a": Tagged("a"), "b": Tagged("b")}, (4,), rounds=3, batch_size=5, warmup=1, repeats=2
    )
    assert set(res) == {"a", "b"}
    assert all(r.repeats == 3 * 2 and r.batch_size == 5 for r in res.values())
    # each round: warm-up + repeats of one model, then of the other; the order flips per round
    runs = [t for t, _ in seen]
    per_round = 2 * (1 + 2)
    firsts = [runs[i * per_round] for i in range(3)]
    assert firsts == ["a", "b", "a"]
    assert runs[: per_round // 2] == ["a"] * 3 and runs[per_round // 2 : per_round] == ["b"] * 3
    # with no inputs every model runs on the same random batch
    assert all(torch.equal(x, seen[0][1]) for _, x in seen)
    assert torch.get_num_threads() == before


def test_interleaved_latency_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="'models' is empty"):
        metrics.measure_latency_interleaved({}, (1, 8, 8))
    with pytest.raises(ConfigError, match="rounds"):
        metrics.measure_latency_interleaved({"m": tiny_cnn()}, (1, 8, 8), rounds=0)
    with pytest.raises(InputShapeError, match="measure_latency_interleaved: 'inputs'"):
        metrics.measure_latency_interleaved(
            {"m": tiny_cnn()}, (1, 8, 8), batch_size=2, inputs=torch.zeros(2, 3, 8, 8)
        )


def test_interleaved_latency_takes_one_input_per_model() -> None:
    """Models whose inputs differ (stages of two widths) are still timed in turn: each on its
    own batch (given, or one random batch per distinct shape), the order flipped per round."""
    seen: list[tuple[str, tuple[int, ...]]] = []

    class Tagged(nn.Module):
        def __init__(self, tag: str, d: int) -> None:
            super().__init__()
            self.tag = tag
            self.lin = nn.Linear(d, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.tag, tuple(x.shape)))
            return self.lin(x)

    ms = {"a": Tagged("a", 4), "b": Tagged("b", 6), "c": Tagged("c", 4)}
    shapes = {"a": (4,), "b": (6,), "c": (4,)}
    res = metrics.measure_latency_interleaved(ms, shapes, rounds=2, batch_size=3, warmup=0,
                                              repeats=1)  # fmt: skip
    assert set(res) == {"a", "b", "c"}
    assert seen == [("a", (3, 4)), ("b", (3, 6)), ("c", (3, 4)),
                    ("c", (3, 4)), ("b", (3, 6)), ("a", (3, 4))]  # fmt: skip
    xb = torch.full((3, 6), 2.0)
    got: dict[str, torch.Tensor] = {}
    ms2 = {"a": nn.Linear(4, 2), "b": nn.Linear(6, 2)}
    for k, m in ms2.items():
        m.register_forward_hook(lambda mod, i, o, k=k: got.__setitem__(k, i[0]))
    metrics.measure_latency_interleaved(ms2, {"a": (4,), "b": (6,)}, batch_size=3, rounds=1,
                                        repeats=1, inputs={"a": torch.ones(3, 4), "b": xb})  # fmt: skip
    assert torch.equal(got["a"], torch.ones(3, 4)) and torch.equal(got["b"], xb)
    with pytest.raises(ConfigError, match="'input_shape' given per model must have the keys"):
        metrics.measure_latency_interleaved(ms2, {"a": (4,)}, rounds=1)
    with pytest.raises(ConfigError, match="'inputs' given per model"):
        metrics.measure_latency_interleaved(ms2, {"a": (4,), "b": (6,)}, inputs={"b": xb})
