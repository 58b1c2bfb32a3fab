"""The measured latency model (issue 36 item 1): sites, the disk cache, interpolation and
calibration, snapping off latency cliffs, and its use as the latency cost of a target."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compactnn.errors import ConfigError
from compactnn.metrics import LatencyModel, LatencyTable, find_sites, snap_count

SRC = Path(__file__).resolve().parents[1] / "src"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 3 * 3, 16), nn.ReLU(),
        nn.Linear(16, 3),
    )  # fmt: skip


# ---------------------------------------------------------------------------------- snapping
def _linear(lo: int, hi: int, a: float = 1.0, b: float = 0.01) -> dict[int, float]:
    return {c: a + b * c for c in range(lo, hi + 1)}


def _cliff(lo: int = 1, hi: int = 128, at: int = 96, factor: float = 1.4) -> dict[int, float]:
    """Linear in the width, every width from ``at`` on ``factor`` times slower."""
    return {c: (1.0 + 0.01 * c) * (factor if c >= at else 1.0) for c in range(lo, hi + 1)}


def _slower_than_a_smaller(times: dict[int, float], c: int) -> bool:
    """``c`` is measured slower than a smaller width by more than the table's trend allows
    (the trend of these synthetic tables is known: 0.01 per unit)."""
    return any(times[c] > times[s] + 0.01 * (c - s) + 0.02 * times[s] for s in times if s < c)


@pytest.mark.parametrize("count", [96, 97, 100, 128])
def test_snapping_never_keeps_a_width_measured_slower_than_a_smaller_one(count: int) -> None:
    """A cliff: 96 channels (and more) 1.4x slower than 95. Every count at or over the cliff
    snaps to 95; the width returned is never slower than a smaller one of the table."""
    times = _cliff()
    got = snap_count(times, count)
    assert got == 95
    assert not _slower_than_a_smaller(times, got)
    assert times[got] < times[count]


@pytest.mark.parametrize("count", [1, 10, 50, 95])
def test_snapping_keeps_the_count_under_a_cliff_and_on_a_linear_table(count: int) -> None:
    assert snap_count(_cliff(), count) == count
    assert snap_count(_linear(1, 128), count) == count
    assert snap_count(_linear(1, 128), 128) == 128


def test_snapping_on_a_window_and_a_staircase() -> None:
    # a window of the table (as the methods measure it: a few units under the count)
    window = {c: t for c, t in _cliff().items() if 88 <= c <= 100}
    assert snap_count(window, 100) == 95
    assert snap_count(window, 95) == 95
    # flat within blocks of 8, a step at each block: the end of the last whole block
    stairs = {c: 1.0 + 0.1 * ((c + 7) // 8) for c in range(80, 106)}
    assert snap_count(stairs, 105) == 104
    assert snap_count(stairs, 99) == 96
    assert snap_count(stairs, 96) == 96
    # a width faster than a smaller one is kept (never a smaller count for nothing)
    dip = {**_linear(80, 100), 100: 0.5}
    assert snap_count(dip, 100) == 100


def test_snapping_never_raises_a_count_and_refuses_an_empty_table() -> None:
    times = _cliff()
    for count in range(1, 129):
        assert snap_count(times, count) <= count
    with pytest.raises(ConfigError, match="no width at or under 3"):
        snap_count({5: 1.0, 6: 1.1}, 3)


# ---------------------------------------------------------------------------------- sites, table
def test_sites_fold_the_channel_wise_layers_and_read_the_real_input_shape() -> None:
    sites = find_sites(_net(), (1, 12, 12))
    assert [s.name for s in sites] == ["0", "4", "7", "9"]
    assert [type(f).__name__ for f in sites[0].followers] == ["BatchNorm2d", "ReLU", "MaxPool2d"]
    assert sites[1].in_shape == (8, 5, 5) and sites[2].in_shape == (108,)
    assert [type(f).__name__ for f in sites[2].followers] == ["ReLU"]
    built = sites[0].build(1, 3)
    assert built(torch.zeros(2, 1, 12, 12)).shape == (2, 3, 5, 5)


def test_the_table_is_cached_on_disk_and_reused_by_a_fresh_process(tmp_path: Path) -> None:
    model = _net()
    before = torch.random.get_rng_state()
    table = LatencyTable(batch_size=2, cache_dir=tmp_path, repeats=2, warmup=0)
    lm = LatencyModel(model, (1, 12, 12), table)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG untouched
    assert table.measured == sum(len(a) * len(b) for a, b in lm.grids.values()) > 0
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["key"]["batch_size"] == 2 and doc["key"]["runtime"] == "eager"
    code = (
        "import torch, sys; from torch import nn\n"
        "sys.path.insert(0, 'TESTS')\n"
        "from test_latency_model import _net\n"
        "from compactnn.metrics import LatencyModel, LatencyTable\n"
        "t = LatencyTable(batch_size=2, cache_dir=sys.argv[1], repeats=2, warmup=0)\n"
        "LatencyModel(_net(), (1, 12, 12), t)\n"
        "print(t.measured)\n"
    ).replace("TESTS", str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.stdout.strip() == "0"  # nothing timed again
    # another batch size or runtime is another table
    other = LatencyTable("channels_last", batch_size=2, cache_dir=tmp_path, repeats=1, warmup=0)
    assert other.path != table.path and not other.entries


def test_interpolation_and_calibration() -> None:
    lm = LatencyModel(_net(), (1, 12, 12), LatencyTable(batch_size=2, cache_dir=False, repeats=1,
                                                        warmup=0))  # fmt: skip
    site = lm.sites[1]
    gin, gout = lm.grids[site.name]
    t = lm.table.time
    mid_in = (gin[0] + gin[1]) / 2
    want = (t(site, gin[0], gout[-1]) + t(site, gin[1], gout[-1])) / 2
    assert lm.site_ms(site, mid_in, gout[-1]) == pytest.approx(want)
    full = lm.raw()
    lm.calibrate(full + 1.0)  # the sites sum to less: a constant
    assert lm.predict() == pytest.approx(full + 1.0) and lm.fraction() == pytest.approx(1.0)
    half = {s.name: (max(1, s.in_width // 2), s.out_width) for s in lm.sites}
    lm.calibrate([(None, 2.0 * full + 3.0), (half, 2.0 * lm.raw(half) + 3.0)])  # a line
    assert lm.scale == pytest.approx(2.0) and lm.residual == pytest.approx(3.0)
    assert lm.widths_of(_net())["7"] == (108, 16)
    with pytest.raises(ConfigError, match="runtime must be one of"):
        LatencyTable("tensorrt")


def test_depthwise_and_grouped_convs_are_timed_at_tied_widths() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1, groups=2)
    )
    lm = LatencyModel(net, (2, 6, 6), LatencyTable(batch_size=1, cache_dir=False, repeats=1, warmup=0),
                      varies={"1": (True, True), "2": (True, False)})  # fmt: skip
    gin, gout = lm.grids["1"]
    assert gin == gout  # depthwise: out follows in
    assert all(w % 2 == 0 for w in lm.grids["2"][0])  # grouped: multiples of the groups
    assert lm.site_ms(lm.sites[1], 4, 4) > 0


# ---------------------------------------------------------------------------------- as a cost
class _CliffTable(LatencyTable):
    """Synthetic timings (no clock): the site's MACs, and 'conv1' with 12 outputs or more 3x
    slower: a latency cliff."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **{**k, "cache_dir": False})

    def _runs(self, site, cin, cout, repeats, warmup):  # type: ignore[no-untyped-def]
        spatial = 1
        for d in site.in_shape[1:]:
            spatial *= int(d)
        t = 1e-4 * cin * cout * spatial + 0.01
        return [t * 3.0 if site.name == "conv1" and cout >= 12 else t]


def _seqcnn() -> nn.Module:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _zoo import SeqCNN

    torch.manual_seed(0)
    return SeqCNN(c1=16, c2=12, h=20).eval()


def test_the_latency_cost_follows_the_table_and_snaps_off_a_cliff(monkeypatch) -> None:
    """The cost model of a latency target predicts from the table (full model: 1; fewer units:
    less), and the snap moves conv1 from 14 (over the cliff) to 11, leaves the other groups
    alone, and never raises a count."""
    from compactnn.budget import Target
    from compactnn.methods import _engine_latency
    from compactnn.methods._engine import CostModel, _groups

    monkeypatch.setattr(_engine_latency, "LatencyTable", _CliffTable)
    model = _seqcnn()
    shape = (3, 8, 8)
    groups = _groups(model, ["conv1", "conv2", "fc1"], {"input_shape": list(shape)})
    costs = CostModel(model, groups, Target(latency=0.5), shape, latency_batch_size=4)
    assert costs.lat_cost is not None and costs.measurements >= 4
    full = {"conv1": 16, "conv2": 12, "fc1": 20}
    assert costs.cost(full)["latency"] == pytest.approx(1.0)
    fewer = {**full, "conv2": 6}
    assert costs.cost(fewer)["latency"] < 1.0
    assert costs.marginal(fewer, "conv2")["latency"] > 0
    # conv1's output feeds conv2: 1 input channel of conv2 per unit of conv1
    assert costs.lat_cost.widths(fewer)["conv2"] == (16.0, 6.0)
    assert costs.lat_cost.widths(fewer)["fc1"] == (24.0, 20.0)
    # the fit on the models timed whole depends on the clock: here the table is the model
    lm = costs.lat_cost.model
    lm.calibrate(lm.raw())
    assert (lm.scale, lm.residual) == (1.0, 0.0)
    snapped = costs.snap({"conv1": 14, "conv2": 10, "fc1": 18}, dict.fromkeys(full, 1))
    assert snapped == {"conv1": 11, "conv2": 10, "fc1": 18}
    assert costs.lat_cost.snaps["conv1"]["from"] == 14
    assert costs.snap({"conv1": 9, "conv2": 10, "fc1": 18}, dict.fromkeys(full, 1))["conv1"] == 9
    # without the latency model: the former fit on the MACs
    old = CostModel(model, groups, Target(latency=0.5), shape, latency_batch_size=4,
                    latency_model=False)  # fmt: skip
    assert old.lat_cost is None and old.snap(full, full) == full


def _loaders():  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 8, 8, generator=g)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=32), DataLoader(ds, batch_size=48)


@pytest.mark.parametrize("method", ["l1-norm", "ssr"])
def test_a_latency_target_reports_the_models_predicted_and_measured_latency(
    method: str, monkeypatch, tmp_path: Path
) -> None:
    """A latency target runs on the latency model (criteria split / the engine) and the result
    says what it predicted for the returned model beside what was measured (interleaved with
    the original); the table went to the cache directory."""
    import compactnn

    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path))
    model = _seqcnn()
    opts = ({"finetune_epochs": 0} if method == "l1-norm" else
            {"finetune_epochs": 0, "engine_steps": 40, "anneal_steps": 20})  # fmt: skip
    res = compactnn.compress(model, method, _loaders(), target={"latency": 0.8}, progress=False,
                             on_drop="warn", latency_batch_size=8, measure=False, **opts)  # fmt: skip
    pred = res.target["latency_prediction"]
    assert pred["original_ms"] > 0 and pred["measured_ms"] > 0
    assert pred["measured_fraction"] == pytest.approx(res.target["kept"]["latency"])
    assert pred["predicted_fraction"] > 0 and pred["predicted_ms"] > 0
    fitted = (res.target.get("latency_model") if method == "l1-norm"
              else res.history["engine_info"]["latency_model"])  # fmt: skip
    assert fitted["runtime"] == "eager" and fitted["sites"] == 4
    assert set(fitted["calibration_ms"]) == {"1", "0.5", "0.25"}
    assert "the method's" in pred["calibration"]
    assert "latency model: predicted" in res.summary()
    assert list((tmp_path / "latency").glob("*.json"))


def test_a_snapped_group_keeps_its_best_units_and_the_larger_ratio_decides() -> None:
    from compactnn.budget import LatencyRatio
    from compactnn.methods._engine_alloc import _snapped

    keep = {"a": torch.tensor([True, True, False, True, True])}
    scores = {"a": torch.tensor([0.5, 0.1, 9.0, 0.7, 0.3])}
    assert _snapped(keep, {"a": 2}, scores) == {"a": [0, 3]}  # the dropped unit 2 stays out
    assert _snapped(keep, {"a": 4}, scores) == {"a": [0, 1, 3, 4]}
    r = LatencyRatio(ratio=0.3, quiet=0.36, original_ms=10.0, model_ms=3.0)
    assert r.upper == 0.36 and LatencyRatio(0.3, 0.2, 10.0, 3.0).upper == 0.3


def test_the_criteria_split_is_made_again_under_its_prediction_when_measured_over(
    monkeypatch, tmp_path: Path
) -> None:
    """A measured latency 1.6x the MACs fraction (a stand-in for a machine the latency model
    underestimates; no clock: a synthetic table): every split made again predicts less than the
    one before, the cost model is fitted once, and the record holds plain data."""
    import compactnn
    from compactnn import metrics
    from compactnn.methods import criteria_pruning

    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path))

    def fake(original, model, shape, keys, **kw):  # type: ignore[no-untyped-def]
        macs = metrics.count_flops(model, shape) / metrics.count_flops(original, shape)
        return {"latency": min(1.0, 1.6 * macs)}

    monkeypatch.setattr(criteria_pruning, "measure_kept", fake)
    # a clock-free latency model: the synthetic table, calibrated as is
    from compactnn.methods import _engine_latency

    monkeypatch.setattr(_engine_latency, "LatencyTable", _CliffTable)
    monkeypatch.setattr(LatencyModel, "calibrate", lambda self, points: None)
    fits = []
    real_init = criteria_pruning.uniform_counts.__globals__["CostModel"].__init__

    def counting(self, *a, **k):  # type: ignore[no-untyped-def]
        fits.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(criteria_pruning.uniform_counts.__globals__["CostModel"], "__init__",
                        counting)  # fmt: skip
    method = compactnn.methods.get_method("l1-norm")(finetune_epochs=0)
    from compactnn.api.inputs import as_compression_data

    data = as_compression_data(_loaders(), input_shape=(3, 8, 8))
    chosen, rec = method.calibrate(_seqcnn(), data, compactnn.Target(latency=0.5))
    assert rec["option"].startswith("filters per layer"), rec
    preds = [t["predicted"]["latency"] for t in rec["trace"]]
    assert 2 <= len(preds) <= 4 and len(fits) == 1, preds
    for (a, b), t in zip(zip(preds, preds[1:]), rec["trace"]):
        if t["kept"]["latency"] > 0.5:
            assert b < a  # made again under the last prediction
    assert "cost_model" not in rec
    json.dumps(rec)


def test_the_next_split_aims_between_the_splits_measured_over_and_under() -> None:
    from compactnn.methods.criteria_pruning import _next_aim

    # one split over: its prediction scaled by the measured error
    assert _next_aim([(0.1, 0.4)], 0.3) == pytest.approx(0.075)
    # one over, one under: on the power law through the two (kiaee-cnn on 2026-12-07: predicted
    # 0.097 measured 0.366, then 0.022 measured 0.093)
    pts = [(0.097, 0.366), (0.022, 0.093)]
    aim = _next_aim(pts, 0.3)
    assert 0.022 < aim < 0.097
    b = math.log(0.366 / 0.093) / math.log(0.097 / 0.022)
    assert 0.093 * (aim / 0.022) ** b == pytest.approx(0.3)
    # one split under (far): more budget next time; never out of (0, 1]
    assert _next_aim([(0.2, 0.1)], 0.3) == pytest.approx(0.6)
    assert _next_aim([(0.5, 0.1)], 0.3) == 1.0
