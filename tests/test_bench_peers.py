"""benchmarks/bench_peers.py: every adapter (compactnn through the public API, each installed
peer) returns a model within the SAME measured MACs budget, rows carry the schema, a row that
cannot run carries its reason, and the report / plot are rebuilt from the jsonl rows."""

from __future__ import annotations

import json

import pytest
import torch

from _bench import load_bench
from _timing import Tagged, _x
from compactnn import metrics


def _bench():
    return load_bench("bench_peers")


BUDGET = 0.5
MODEL = "lenet5"
SCHEMA = {
    "model", "dataset", "budget_macs", "method", "library", "version", "seed", "finetune",
    "status", "structure", "params", "macs", "params_kept", "macs_kept", "met", "val_top1",
    "test_top1", "baseline_test_top1", "test_err_increase", "latency_eager_ms",
    "latency_ort_ms", "speedup_eager", "compress_s", "finetune_s",
}  # fmt: skip
# admm-sparse as quick as the adapter tests need it (the rows' bookkeeping is under test, not
# the training): a target runs the budgeted engine, 60 steps instead of its default 1500
ADMM_QUICK = {"steps_per_epoch": 4, "xi": 1, "lr": 0.01, "engine_steps": 60, "anneal_steps": 30}


@pytest.fixture(scope="module")
def setup():
    bench = _bench()
    args = bench.parse(["--quick", "--models", MODEL])
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base, _ = bench.baseline(MODEL, quick=True)
    meas = bench.base_measure(base, MODEL, quick=True)
    yield bench, args, base, meas
    torch.set_num_threads(torch_threads)


def _methods():
    bench = _bench()
    return ["l1-norm", *bench.PEERS]


@pytest.mark.parametrize("method", _methods())
def test_adapter_meets_the_same_budget(setup, method: str) -> None:
    bench, args, base, meas = setup
    missing = bench.peer_missing(method)
    if missing:
        pytest.skip(f"{method}: peer not importable ({missing})")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    keep: dict = {}
    row = bench.run_row(method, MODEL, BUDGET, 0, args, base, meas, keep=keep)
    # the baseline is never modified by an adapter
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    json.dumps(row, default=str)  # serialisable as a jsonl line
    if method == "tp-bn-scale":  # lenet5 has no BatchNorm: the measured reason is recorded
        assert row["status"] == "budget not reachable"
        assert "keeps 100.00 % of the MACs" in row["reason"]
        return
    assert row["status"] == "ok", row.get("reason")
    assert SCHEMA <= set(row), sorted(SCHEMA - set(row))
    shape = (1, 28, 28)
    # MACs measured here, independently, on the returned model and on the baseline
    macs = metrics.count_flops(keep["model"], shape) / 2
    base_macs = metrics.count_flops(base, shape) / 2
    assert macs == pytest.approx(row["macs"])
    assert metrics.count_params(keep["model"]) == row["params"]
    assert macs <= BUDGET * (1 + bench.TOLERANCE) * base_macs
    assert macs < base_macs  # something was really removed
    # the shared fine-tuning keeps the structure (same size after it)
    assert metrics.count_flops(keep["finetuned"], shape) / 2 == pytest.approx(macs)
    assert 0.0 <= row["test_top1"] <= 100.0
    assert row["finetune"]["epochs"] == args.ft_epochs and row["finetune"]["distill"] == 0.0


def test_failed_row_carries_reason_and_report_rebuilds(setup, tmp_path) -> None:
    bench, args, base, meas = setup
    ok = bench.run_row("l1-norm", MODEL, BUDGET, 0, args, base, meas)
    # a budget no filter pruning can reach: the row says why instead of disappearing
    bad = bench.run_row("tp-l1", MODEL, 1e-6, 0, args, base, meas)
    assert bad["status"] == "budget not reachable" and "MACs" in bad["reason"]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r, default=str) + "\n" for r in (ok, bad)))
    rows = bench.rebuild(jsonl, tmp_path, {"date": "today", "machine": "test", "torch": "x",
                                            "peers": "p"})  # fmt: skip
    assert len(rows) == 2
    md = (tmp_path / "peers.md").read_text()
    assert "## Verdict" in md and "l1-norm" in md and "budget not reachable" in md
    assert (tmp_path / f"peers_{MODEL}.png").stat().st_size > 0
    doc = json.loads((tmp_path / "peers.json").read_text())
    assert {a["method"] for a in doc["aggregate"]} == {"l1-norm", "tp-l1"}


@pytest.mark.slow
def test_full_bench_lenet_one_budget(tmp_path) -> None:
    """The real protocol on the cached LeNet baseline (minutes): every row within budget."""
    bench = _bench()
    rows = bench.main(["--models", "lenet-caffe", "--budgets", "0.25", "--seeds", "0",
                       "--methods", "l1-norm,tp-l1", "--out", str(tmp_path)])  # fmt: skip
    assert all(r["status"] == "ok" and r["met"] for r in rows)
    assert (tmp_path / "peers.md").is_file()


def _row(model, frac, method, seed, top1, compress_s=10.0, finetune_s=16.0, lib="compactnn"):
    return {
        "model": model, "dataset": "mnist", "budget_macs": frac, "method": method,
        "library": lib, "seed": seed, "status": "ok", "structure": "3-8-70-10",
        "params": 1000, "macs": 1e5, "macs_kept": frac, "met": True, "test_top1": top1,
        "test_err_increase": 99.2 - top1, "latency_eager_ms": 1.0, "latency_ort_ms": 0.5,
        "speedup_eager": 10.0, "speedup_ort": 20.0, "compress_s": compress_s,
        "finetune_s": finetune_s, "finetune": {"epochs": 8},
        "baseline_measure": {"params": 431080, "test_top1": 99.2},
    }  # fmt: skip


def test_not_run_rows_are_computed_from_measured_times(tmp_path) -> None:
    bench = _bench()
    # lenet-caffe measured at 50 %: l1-norm at two seeds (10 + 16 s, 14 + 24 s per seed),
    # tp-l1 at one seed (2 + 16 s); nothing of "apoz"
    rows = [
        _row("lenet-caffe", 0.5, "l1-norm", 0, 98.0),
        _row("lenet-caffe", 0.5, "l1-norm", 1, 98.2, compress_s=14.0, finetune_s=24.0),
        _row("lenet-caffe", 0.5, "tp-l1", 0, 97.5, compress_s=2.0, lib="torch-pruning"),
    ]
    timing = {
        "kiaee-cnn": {"model": "kiaee-cnn", "epoch_s": 100.0, "steps_timed": 50,
                      "torch_threads": 1, "train_epochs": 10},
        "lenet-caffe": {"model": "lenet-caffe", "epoch_s": 20.0, "steps_timed": 50,
                        "torch_threads": 1, "train_epochs": 6},
    }  # fmt: skip
    grid = (("lenet-caffe", "kiaee-cnn"), (0.5, 0.05), ["l1-norm", "tp-l1", "apoz"])
    out = bench.not_run_rows(rows, timing, grid)
    cells = {(r["model"], r["budget_macs"], r["method"]) for r in out}
    # every cell of the grid without a measured row, and only those
    want = {(m, b, k) for m in grid[0] for b in grid[1] for k in grid[2]}
    assert cells == want - {(r["model"], r["budget_macs"], r["method"]) for r in rows}
    assert all(r["status"] == "not run" and r["reason"] for r in out)
    by = {(r["model"], r["budget_macs"], r["method"]): r for r in out}
    # kiaee-cnn: lenet's median seconds per seed (median(26, 38) = 32) x 100 / 20 per seed
    k = by[("kiaee-cnn", 0.5, "l1-norm")]
    assert k["est_seed_s"] == pytest.approx(32.0 * 5.0)
    assert "x 5.0, the ratio" in k["reason"] and "100 s vs 20 s" in k["reason"]
    assert "at 50 %" in k["reason"]
    assert "at other budgets" in by[("kiaee-cnn", 0.05, "l1-norm")]["reason"]
    # the model's total: baseline (10 epochs on all images) + every missing cell's 3 seeds
    base_s = 10 * 100.0 / 0.9
    total = base_s + 3 * 5.0 * (2 * 32.0 + 2 * 18.0)
    assert k["est_model_s"] == pytest.approx(total)
    # lenet-caffe cells: from the method's own measured rows (median seconds per seed)
    lc = by[("lenet-caffe", 0.05, "l1-norm")]
    assert "32 CPU-s per seed" in lc["reason"] and "2 measured" in lc["reason"]
    # nothing measured to extrapolate from, or no timing: said so
    assert "no measured lenet-caffe row" in by[("kiaee-cnn", 0.5, "apoz")]["reason"]
    no_t = bench.not_run_rows(rows, {}, (("kiaee-cnn",), (0.5,), ["l1-norm"]))
    assert "no epoch time of kiaee-cnn and lenet-caffe measured" in no_t[0]["reason"]


def test_report_covers_the_grid_and_counts_the_verdicts(tmp_path) -> None:
    bench = _bench()
    rows = [
        _row("lenet-caffe", 0.5, "l1-norm", 0, 98.0),
        _row("lenet-caffe", 0.5, "tp-l1", 0, 97.5, lib="torch-pruning"),
        _row("lenet-caffe", 0.05, "l1-norm", 0, 96.0),
        _row("lenet-caffe", 0.05, "tp-l1", 0, 97.0, lib="torch-pruning"),
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / bench.TIMING_FILE).write_text(
        "".join(
            json.dumps(
                {
                    "model": m,
                    "epoch_s": e,
                    "steps_timed": 50,
                    "torch_threads": 1,
                    "train_epochs": 10,
                }
            )
            + "\n"
            for m, e in (("kiaee-cnn", 100.0), ("lenet-caffe", 20.0))
        )
    )
    # fmt: skip
    grid = (("lenet-caffe", "kiaee-cnn"), (0.5, 0.05), ["l1-norm", "tp-l1", "apoz"])
    bench.rebuild(jsonl, tmp_path, {"date": "d", "machine": "m", "torch": "t", "peers": "p"},
                  grid)  # fmt: skip
    md = (tmp_path / "peers.md").read_text()
    assert "win 1, tie 0, lose 1" in md
    assert "lenet-caffe @ 50 % MACs: **win** by +0.50" in md
    assert "lenet-caffe @ 5 % MACs: **lose** by -1.00" in md
    assert "- kiaee-cnn: **not run** at any budget (estimated ~" in md
    # one table line per (model, method, reason) not run: the estimate depends on the budget
    # here (both measured on lenet-caffe), so one line per budget, each with its reason
    lines = [ln for ln in md.splitlines() if ln.startswith("| kiaee-cnn |")]
    est = [ln for ln in lines if "not run: estimated" in ln]
    assert len(est) == 4 and sum("| 50 % |" in ln for ln in est) == 2
    # the same reason at every budget (nothing measured for apoz): one line naming the budgets
    (apoz,) = [ln for ln in lines if "| apoz |" in ln]
    assert "| 50, 5 % |" in apoz and "no measured lenet-caffe row" in apoz
    assert len(lines) == 5
    # measured cells with fewer seeds than asked say which are missing
    assert "seed(s) 1,2 not run" in md
    doc = json.loads((tmp_path / "peers.json").read_text())
    assert doc["meta"]["n_rows"] == 4 and doc["meta"]["n_not_run"] == 8


def test_time_epoch_extrapolates_measured_steps() -> None:
    bench = _bench()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = bench.time_epoch(MODEL, 3, quick=True)
    finally:
        torch.set_num_threads(threads)
    train, _, _ = bench.loaders(MODEL, 0, True)
    assert t["steps_per_epoch"] == len(train) and t["steps_timed"] == 3
    assert t["s_per_step"] > 0
    assert t["epoch_s"] == pytest.approx(t["s_per_step"] * len(train))
    with pytest.raises(SystemExit):
        bench.parse(["--time-epoch", "0"])


def test_rows_of_different_baselines_are_never_pooled(tmp_path) -> None:
    bench = _bench()
    old = {"params": 431080, "test_top1": 99.23}
    new = {"params": 431080, "test_top1": 99.16, "state_sha": "abcdef0123"}
    rows = [
        {**_row("lenet-caffe", 0.05, "l1-norm", 0, 98.0), "baseline_measure": old,
         "date": "2026-12-01T22:00:00+00:00"},
        {**_row("lenet-caffe", 0.05, "tp-l1", 0, 98.5, lib="torch-pruning"),
         "baseline_measure": old, "date": "2026-12-01T22:05:00+00:00"},
        {**_row("lenet-caffe", 0.05, "l1-norm", 2, 90.0), "baseline_measure": new,
         "date": "2026-12-02T01:00:00+00:00"},
        {**_row("lenet-caffe", 0.05, "tp-l1", 2, 89.0, lib="torch-pruning"),
         "baseline_measure": new, "date": "2026-12-02T01:10:00+00:00"},
    ]  # fmt: skip
    assert bench.base_label(rows[0]) == "99.23 %"
    assert bench.base_label(rows[2]) == "99.16 %"
    assert bench.current_baselines(rows) == {"lenet-caffe": "99.16 %"}
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench.rebuild(jsonl, tmp_path, {"date": "d", "machine": "m", "torch": "t", "peers": "p"})
    doc = json.loads((tmp_path / "peers.json").read_text())
    cells = {(a["method"], a["baseline"]): a["test_top1"] for a in doc["aggregate"]}
    assert cells == {("l1-norm", "99.23 %"): [98.0], ("tp-l1", "99.23 %"): [98.5],
                     ("l1-norm", "99.16 %"): [90.0],
                     ("tp-l1", "99.16 %"): [89.0]}  # fmt: skip
    md = (tmp_path / "peers.md").read_text()
    # one verdict per baseline, each within it
    assert "5 % MACs (baseline 99.23 %): **lose** by -0.50" in md
    assert "5 % MACs (baseline 99.16 %): **win** by +1.00" in md
    assert "cannot run: this baseline's checkpoint is gone" in md
    assert (tmp_path / "peers_lenet-caffe.png").is_file()
    assert (tmp_path / "peers_lenet-caffe_base9923.png").is_file()


def test_a_rerun_replaces_only_the_row_of_its_own_baseline(tmp_path) -> None:
    """The same (model, budget, method, seed) measured on another trained baseline is a new
    row, not a rerun: both stay (reported apart); a rerun on the same baseline replaces."""
    bench = _bench()
    old = {"params": 431080, "test_top1": 99.16, "state_sha": "0b3497d8ca3d822e"}
    new = {"params": 431080, "test_top1": 99.23, "state_sha": "c4338fdf061772db"}
    rows = [
        {**_row("lenet-caffe", 0.5, "l1-norm", 0, 98.0), "baseline_measure": old,
         "date": "2026-12-02T01:00:00+00:00"},
        {**_row("lenet-caffe", 0.5, "l1-norm", 0, 97.0), "baseline_measure": new,
         "date": "2026-12-04T03:00:00+00:00"},
        {**_row("lenet-caffe", 0.5, "l1-norm", 0, 97.5), "baseline_measure": new,
         "date": "2026-12-04T04:00:00+00:00"},
    ]  # fmt: skip
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = bench.rebuild(jsonl, tmp_path, {"date": "d", "machine": "m", "torch": "t", "peers": "p"})
    got = sorted((bench.base_label(r), r["test_top1"]) for r in out)
    assert got == [("99.16 %", 98.0), ("99.23 %", 97.5)]
    doc = json.loads((tmp_path / "peers.json").read_text())
    cells = {a["baseline"]: a["test_top1"] for a in doc["aggregate"]}
    assert cells == {"99.16 %": [98.0], "99.23 %": [97.5]}


def test_a_row_with_a_disturbed_clock_keeps_its_accuracy_but_not_its_times() -> None:
    bench = _bench()
    rows = [
        _row("lenet-caffe", 0.05, "ssr", 0, 98.9, compress_s=600.0),
        {**_row("lenet-caffe", 0.05, "ssr", 1, 98.8, compress_s=1800.0),
         "timing_note": "process paused 1,100 s during compression"},
    ]  # fmt: skip
    (a,) = bench.aggregate(rows)
    assert a["test_top1"] == [98.9, 98.8]
    assert a["compress_s"] == 600.0 and a["seed_s"] == 616.0
    assert a["timing_notes"] == ["process paused 1,100 s during compression"]
    assert bench._lenet_costs(rows)[("ssr", 0.05)]["seed_s"] == 616.0


def test_retime_replaces_only_the_latencies_and_keeps_those_measured_elsewhere(tmp_path) -> None:
    """Rows of a --device cuda run are re-timed here from their saved models, interleaved with
    the baseline in every runtime; accuracy, size and wall times stay; the latencies
    measured there move to latency_elsewhere; a row without a model file is left unchanged."""
    bench = _bench()
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))  # fmt: skip
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 10))  # fmt: skip
    assert bench.save_model(base, str(tmp_path), "m_baseline") == "m_baseline.pt"
    assert bench.save_model(small, str(tmp_path), "m_0.05_x_s0") == "m_0.05_x_s0.pt"
    bm = {"test_top1": 90.0, "latency_eager_ms": 999.0, "latency_ort_ms": 998.0,
          "model_file": "m_baseline.pt"}  # fmt: skip
    row = {"model": "m", "method": "x", "budget_macs": 0.05, "seed": 0, "status": "ok",
           "test_top1": 88.5, "params": 100, "compress_s": 3.0, "model_file": "m_0.05_x_s0.pt",
           "latency_eager_ms": 500.0, "latency_ort_ms": 400.0, "speedup_eager": 2.0,
           "speedup_ort": 2.5, "baseline_measure": bm}  # fmt: skip
    failed = {"model": "m", "method": "y", "budget_macs": 0.05, "seed": 0, "status": "failed",
              "reason": "ConfigError: ...", "baseline_measure": bm}  # fmt: skip
    x = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []

    def inputs(model_name: str) -> torch.Tensor:
        calls.append(model_name)
        return x

    out = bench.retime([row, failed], tmp_path, inputs, "here")
    assert out[1] == failed
    new = out[0]
    assert {k: new[k] for k in ("test_top1", "params", "compress_s", "status")} == {
        "test_top1": 88.5,
        "params": 100,
        "compress_s": 3.0,
        "status": "ok",
    }
    assert new["latency_elsewhere"] == {"latency_eager_ms": 500.0, "latency_ort_ms": 400.0,
                                        "speedup_eager": 2.0, "speedup_ort": 2.5}  # fmt: skip
    assert new["latency_eager_ms"] not in (500.0, None) and new["latency_ort_ms"] not in (400.0,)
    nb = new["baseline_measure"]
    assert nb["latency_elsewhere"] == {"latency_eager_ms": 999.0, "latency_ort_ms": 998.0}
    assert nb["test_top1"] == 90.0 and nb["latency_eager_ms"] != 999.0
    assert new["speedup_eager"] == pytest.approx(nb["latency_eager_ms"] / new["latency_eager_ms"])
    # onnxruntime's speed-up: the baseline's onnxruntime time, never its eager one
    assert new["speedup_ort"] == pytest.approx(nb["latency_ort_ms"] / new["latency_ort_ms"])
    assert "here" in new["latency_measured"] and new["retimed"]
    assert row["latency_eager_ms"] == 500.0  # the input row is not modified
    assert calls == ["m"]


def test_device_option_and_where_rows_ran() -> None:
    """--device cuda is refused up front without CUDA; a CPU run's label says so; the report
    names each model's machines and where its latency was timed (re-timed rows apart)."""
    bench = _bench()
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.parse(["--device", "cuda"])
    assert bench.parse([]).device == "cpu"
    assert bench.machine_label("cpu", 1).endswith("1 torch thread(s), no GPU")
    rows = [
        {"model": "a", "machine": "M1"}, {"model": "a", "machine": "M1"},
        {"model": "a", "machine": "GPU", "latency_measured": "here; re-timed"},
        {"model": "b", "estimated": True, "machine": "X"},
    ]  # fmt: skip
    lines = bench.machines(rows)
    assert "- a: 2 row(s) on M1; latency: same machine" in lines
    assert "- a: 1 row(s) on GPU; latency: here; re-timed" in lines
    assert not any("- b:" in line for line in lines)
    assert bench.machines([]) == []


def test_baseline_trained_on_another_device_is_loaded_never_trained(tmp_path, monkeypatch) -> None:
    """--baseline-trained-on cuda on a CPU machine: the GPU-trained baseline (committed with the
    rows it served) is loaded so the rows pool with those run on the GPU; where there is none
    the run stops before training one."""
    bench = _bench()
    import compactnn.demo as demo

    monkeypatch.setattr(demo, "cache_dir", lambda: tmp_path)  # an empty cache
    committed = (
        bench.RESULTS / "checkpoints" / "peers-kiaee-cnn-fashion-mnist32x3-cuda-seed0.safetensors"
    )
    if not committed.is_file():
        pytest.skip("the committed kiaee-cnn H200 baseline is not in this checkout")
    model, src = bench.baseline("kiaee-cnn", False, "cpu", "cuda")
    assert src == str(committed)
    assert load_bench("_lib").state_sha(model) == "1caa76cbeb14bf8a"
    with pytest.raises(SystemExit, match="no cached baseline peers-resnet20"):
        bench.baseline("resnet20", False, "cpu", "cuda")
    assert bench.parse(["--baseline-trained-on", "cuda"]).baseline_trained_on == "cuda"


def test_before_fine_tuning_section_compares_the_returned_models() -> None:
    """The secondary comparison: best validation top-1 before the shared fine-tuning per
    library and cell (mean ± sd over seeds); rows without it or over budget are left out."""
    bench = _bench()

    def row(method, seed, before, lib="compactnn", met=True):
        return {**_row("lenet-caffe", 0.05, method, seed, 98.0, lib=lib),
                "val_top1_before_ft": before, "met": met}  # fmt: skip

    rows = [
        row("pgt", 0, 96.0), row("pgt", 1, 96.2), row("l1-norm", 0, 15.0),
        row("tp-taylor", 0, 30.0, lib="torch-pruning"),
        row("tp-taylor", 1, 32.0, lib="torch-pruning"),
        row("oto-hesso", 0, 99.0, lib="only-train-once", met=False),  # over budget: out
    ]  # fmt: skip
    lines = bench.before_ft_verdicts(bench.aggregate(rows))
    assert lines == [
        "- lenet-caffe @ 5 % MACs: best compactnn `pgt` 96.10 ± 0.14 vs best peer "
        "`tp-taylor` 31.00 ± 1.41 (+65.10 points)."
    ]
    meta = {"date": "d", "machine": "m", "torch": "t", "peers": "p", "n_rows": 6, "baselines": {}}
    md = bench.markdown(rows, bench.aggregate(rows), meta)
    assert "### Before the shared fine-tuning" in md
    (pgt,) = [ln for ln in md.splitlines() if ln.startswith("| lenet-caffe |") and "| pgt |" in ln]
    assert "| 96.10 ± 0.14 | 98.00 ± 0.00 |" in pgt


def test_a_diverged_selection_training_is_rerun_once_at_a_tenth_of_the_lr(
    setup, monkeypatch
) -> None:
    """admm-sparse diverged at lr 0.01 on kiaee-cnn (loss NaN): the adapter reruns it once at
    lr / 10, the row records the lr it diverged at and the report says so; any other solver
    error, or a second divergence, fails the row with its reason."""
    bench, args, base, meas = setup
    from compactnn.errors import SolverError

    real = bench.compactnn.compress
    lrs: list[float] = []

    def diverge_first(*a, **kw):
        lrs.append(kw["lr"])
        if len(lrs) == 1:
            raise SolverError("Training loss became nan at step 5; lower the learning rate")
        return real(*a, **kw)

    monkeypatch.setattr(bench.compactnn, "compress", diverge_first)
    monkeypatch.setitem(bench.CNN_OPTS, "admm-sparse", ADMM_QUICK)
    row = bench.run_row("admm-sparse", MODEL, BUDGET, 0, args, base, meas)
    assert row["status"] == "ok", row.get("reason")
    assert lrs == [0.01, pytest.approx(0.001)]
    assert row["diverged_at_lr"] == [0.01] and row["options"]["lr"] == pytest.approx(0.001)
    (a,) = bench.aggregate([row])
    assert a["timing_notes"] == [
        "seed(s) 0: selection training diverged at lr 0.01, rerun at lr 0.001"
    ]

    # a second divergence fails the row (2 calls); another solver error is not retried (1 call)
    for message, n_calls in (("Training loss became inf at step 1", 2),
                             ("ADMM F-step produced non-finite values", 1)):  # fmt: skip

        def fail(*a, message=message, **kw):
            lrs.append(kw["lr"])
            raise SolverError(message)

        lrs.clear()
        monkeypatch.setattr(bench.compactnn, "compress", fail)
        row = bench.run_row("admm-sparse", MODEL, BUDGET, 0, args, base, meas)
        assert row["status"] == "failed" and message in row["reason"] and len(lrs) == n_calls


def test_a_budget_under_admm_sparse_guard_floor_is_rerun_without_the_guard(
    setup, monkeypatch
) -> None:
    """The paper's over-pruning guard keeps half of every layer, so 20 % of the MACs is refused
    up front; the adapter reruns without it, and the row and the report say so."""
    bench, args, base, meas = setup
    calls: list[object] = []
    real = bench.compactnn.compress

    def spy(*a, **kw):
        calls.append(kw.get("overprune_guard", True))
        return real(*a, **kw)

    monkeypatch.setattr(bench.compactnn, "compress", spy)
    monkeypatch.setitem(bench.CNN_OPTS, "admm-sparse", ADMM_QUICK)
    row = bench.run_row("admm-sparse", MODEL, 0.2, 0, args, base, meas)
    assert calls == [True, False], row.get("reason")
    assert row["options"]["overprune_guard"] is False, row.get("reason")
    assert row["status"] == "ok", row.get("reason")
    assert row["macs_kept"] <= 0.2 * (1 + bench.TOLERANCE)
    (a,) = bench.aggregate([row])
    assert a["timing_notes"] == [
        "seed(s) 0: run with overprune_guard=False (the paper's 50 % guard cannot reach this budget)"
    ]


def test_the_verdict_picks_each_librarys_row_on_validation_never_on_test() -> None:
    """Within a cell, the row compared for each library is its best mean validation top-1
    after the shared fine-tuning; a row with a better test top-1 but a worse validation one is
    not picked (picking on test would flatter both sides)."""
    bench = _bench()

    def row(method, seed, test, val, lib="compactnn"):
        return {**_row("lenet-caffe", 0.05, method, seed, test, lib=lib), "val_top1": val}

    rows = [
        *(row("l1-norm", s, 99.0 + 0.01 * s, 98.0) for s in range(3)),  # best on test
        *(row("ssr", s, 98.8, 98.5 + 0.01 * s) for s in range(3)),  # best on validation
        *(row("tp-taylor", s, 98.9 + 0.01 * s, 98.2, "torch-pruning") for s in range(3)),
        *(row("tp-l1", s, 99.5, 97.0, "torch-pruning") for s in range(3)),
    ]
    lines = bench.verdicts(bench.aggregate(rows))
    cell = [ln for ln in lines if "lenet-caffe @ 5 %" in ln]
    assert len(cell) == 1
    assert "`ssr` 98.80 %" in cell[0] and "`tp-taylor` (torch-pruning) 98.91 %" in cell[0]
    assert "**lose** by -0.11" in cell[0]


def test_a_killed_baseline_training_resumes_after_its_last_epoch(tmp_path, monkeypatch) -> None:
    """A long baseline trains in a resumable run: killed after its first epoch, the rerun
    continues from that epoch's checkpoint (it trains one epoch, not two) and ends with the
    weights of an uninterrupted training; the checkpoint gets a record of how it was made."""
    bench = _bench()
    import compactnn.demo as demo
    from compactnn import resume

    spec = {"dataset": "mnist", "data": {"limit": 256}, "train_epochs": 2}
    monkeypatch.setitem(bench.MODELS, "lenet5", spec)
    lib = load_bench("_lib")

    monkeypatch.setattr(demo, "cache_dir", lambda: tmp_path / "whole")
    whole, _ = bench.baseline("lenet5", False)

    monkeypatch.setattr(demo, "cache_dir", lambda: tmp_path / "killed")
    saves: list[str] = []
    real_save = resume.RunStore.save

    def save_then_die(self, key, tensors, meta):  # the process dies after the first epoch
        real_save(self, key, tensors, meta)
        saves.append(key)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.RunStore, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        bench.baseline("lenet5", False)
    monkeypatch.setattr(resume.RunStore, "save", real_save)
    trained: list[int] = []
    real_train = demo.train

    def counting_train(*a, **kw):
        hist = real_train(*a, **kw)
        trained.append(len(hist.train_loss))
        return hist

    monkeypatch.setattr(demo, "train", counting_train)
    resumed, path = bench.baseline("lenet5", False)
    assert saves == ["train/baseline"]
    assert trained == [2]  # the history holds both epochs: the first restored, the second run
    assert lib.state_sha(resumed) == lib.state_sha(whole)
    (sidecar,) = (tmp_path / "killed" / "checkpoints").glob("peers-lenet5-*.json")
    record = json.loads(sidecar.read_text())
    assert record["sha"] == lib.state_sha(resumed) and record["epochs"] == 2
    assert 0.0 <= record["test_top1"] <= 100.0
    assert path == str(sidecar.with_suffix(".safetensors"))


def test_fine_tuning_recipes_share_one_compression_and_distil_from_the_baseline(
    setup, monkeypatch
) -> None:
    """``--ft-recipes plain,kd``: one compression, then one row per recipe, each fine-tuning
    its own copy of the compressed model; the kd row distils from the baseline (the teacher
    handed to the shared fine-tuning is a copy of it, the baseline itself untouched)."""
    bench, args, base, meas = setup
    seen: list = []
    real = bench.finetune

    def spy(model, loader, *, config, progress, teacher=None):
        seen.append((id(model), config.distill_weight if teacher is not None else 0.0, teacher))
        return real(model, loader, config=config, progress=progress, teacher=teacher)

    monkeypatch.setattr(bench, "finetune", spy)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    keep: dict = {}
    rows = bench.run_rows("l1-norm", MODEL, BUDGET, 0, args, base, meas, ("plain", "kd"), keep)
    assert [r["method"] for r in rows] == ["l1-norm", "l1-norm+kd"]
    assert [r["library"] for r in rows] == ["compactnn", "compactnn"]
    assert rows[0]["compress_s"] == rows[1]["compress_s"]  # one compression for both
    assert rows[0]["structure"] == rows[1]["structure"]
    assert rows[0]["finetune"]["distill"] == 0.0 and "recipe" not in rows[0]["finetune"]
    assert rows[1]["finetune"]["recipe"] == "kd" and rows[1]["finetune"]["distill"] == 0.5
    # two fine-tunings, of two different models; only the second one has a teacher, a copy of
    # the baseline with its weights
    assert len(seen) == 2 and seen[0][0] != seen[1][0]
    assert seen[0][2] is None and seen[1][1] == 0.5
    teacher = seen[1][2]
    assert teacher is not base
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert bench.library_of("tp-taylor+kd") == "torch-pruning"
    assert bench.split_recipe("ssr-uniform+kd") == ("ssr-uniform", "kd")
    with pytest.raises(SystemExit):
        bench.parse(["--ft-recipes", "plain,nope"])


def test_units_lists_every_conv_and_linear_width_nested_included() -> None:
    """resnet20 from the zoo: all 21 convs (19 + 2 shortcuts) and fc, in registration order;
    a pruned block shows; a low-rank layer is its rank, its factors not listed again."""
    from compactnn import models
    from compactnn.layers import LowRankLinear

    bench = _bench()
    net = models.create("resnet20", in_channels=3, num_classes=10)
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers) == 22
    assert bench.units(net) == "16x7-32x7-64x7-10"
    net.layer2.get_submodule("1").conv1 = torch.nn.Conv2d(32, 5, 3, padding=1)  # the 11th
    assert bench.units(net) == "16x7-32x3-5-32x3-64x7-10"
    low = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.Flatten(),
                              LowRankLinear(6 * 24 * 24, 10, rank=3))  # fmt: skip
    assert bench.units(low) == "6-r3"


def test_measure_row_takes_each_speedup_in_its_own_runtime(fake_clock) -> None:
    """The baseline is 3x slower in eager and 2x in onnxruntime (fake clock): each speed-up is
    its own runtime's, at batch 1 and 100, and the ratio is speed-up / MACs reduction."""
    bench = _bench()
    out = bench.measure_row(Tagged("small"), Tagged("base"), _x(), 0.25)
    assert out["speedup_eager"] == pytest.approx(3.0) and out["speedup_ort"] == pytest.approx(2.0)
    assert (out["latency_eager_ms"], out["latency_ort_ms"]) == (1.0, 2.0)
    assert "ort_error" not in out and out["latency_protocol"]["interleaved"]
    for rt, up in (("eager", 3.0), ("eager channels_last", 3.0), ("onnxruntime", 2.0)):
        for b in ("batch 1", "batch 100"):
            assert out["latency"][rt][b]["speedup"] == pytest.approx(up)
            assert out["latency"][rt][b]["ratio"] == pytest.approx(up / 4.0)
    # batch 1 and batch 100, each of the two models timed in turns
    assert {b for _, _, b in fake_clock} == {1, 100}
    json.dumps(out)


def test_retime_refreshes_rows_and_keeps_the_first_latencies(tmp_path, fake_clock) -> None:
    """--retime on rows already re-timed (or timed under the old protocol): the new protocol's
    table replaces the latencies; latency_elsewhere keeps what the row had first."""
    bench = _bench()
    bench.save_model(Tagged("base"), str(tmp_path), "m_baseline")
    bench.save_model(Tagged("small"), str(tmp_path), "m_0.25_x_s0")
    row = {"model": "m", "method": "x", "budget_macs": 0.25, "seed": 0, "status": "ok",
           "macs_kept": 0.25, "model_file": "m_0.25_x_s0.pt", "latency_eager_ms": 5.0,
           "latency_ort_ms": 4.0, "speedup_eager": 2.0, "speedup_ort": 9.0,
           "baseline_measure": {"test_top1": 90.0, "latency_eager_ms": 10.0,
                                "latency_ort_ms": 7.0, "model_file": "m_baseline.pt"}}  # fmt: skip
    (once,) = bench.retime([row], tmp_path, lambda _: _x(), "here")
    (twice,) = bench.retime([once], tmp_path, lambda _: _x(), "there")
    first = {"latency_eager_ms": 5.0, "latency_ort_ms": 4.0, "speedup_eager": 2.0,
             "speedup_ort": 9.0}  # fmt: skip
    for new in (once, twice):
        assert new["latency_elsewhere"] == first
        assert new["baseline_measure"]["latency_elsewhere"] == {"latency_eager_ms": 10.0,
                                                                "latency_ort_ms": 7.0}  # fmt: skip
        assert new["speedup_ort"] == pytest.approx(2.0) and new["speedup_eager"] == pytest.approx(
            3.0
        )
        assert new["latency"]["onnxruntime"]["batch 1"]["ratio"] == pytest.approx(0.5)
    assert (
        "there" in twice["latency_measured"] and twice["baseline_measure"]["latency_ort_ms"] == 4.0
    )


def test_the_report_has_a_latency_table_per_cell_and_fixes_old_ort_speedups(tmp_path) -> None:
    """Rows with a latency table: one table per cell (runtime x batch speed-ups, the ratio in
    brackets), labelled with where it was timed and that it was interleaved. An older row (no
    table) stored baseline EAGER / row ORT; the report shows baseline ORT / row ORT instead."""
    bench = _bench()
    table = {"eager": {"batch 1": {"base_ms": 3.0, "model_ms": 1.0, "speedup": 3.0, "ratio": 0.75},
                       "batch 100": {"base_ms": 6.0, "model_ms": 1.5, "speedup": 4.0, "ratio": 1.0}},
             "onnxruntime": {"error": "model: ExportError: no"}}  # fmt: skip
    new = {**_row("lenet-caffe", 0.25, "l1-norm", 0, 98.0), "latency": table, "machine": "M1"}
    old = _row("lenet-caffe", 0.25, "tp-l1", 0, 97.0, lib="torch-pruning")
    old["baseline_measure"] = {**old["baseline_measure"], "latency_ort_ms": 2.0}
    assert bench._ort_speedup(old) == pytest.approx(2.0 / 0.5)  # not the stored 20.0
    assert bench._ort_speedup(new) == 20.0
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in (new, old)))
    bench.rebuild(jsonl, tmp_path, {"date": "d", "machine": "m", "torch": "t", "peers": "p"})
    md = (tmp_path / "peers.md").read_text()
    assert "## Latency: each row's model and its baseline timed interleaved" in md
    assert "### lenet-caffe @ 25 % MACs" in md and "Timed on: M1." in md
    (line,) = [ln for ln in md.splitlines() if ln.startswith("| l1-norm | compactnn | 25.00 % |")]
    assert "3.00x (0.75) | 4.00x (1.00)" in line
    assert "| eager b1 | eager b100 |" in md
    assert not any(ln.startswith("| tp-l1 |") for ln in md.splitlines())  # no table: left out
    (tp,) = [ln for ln in md.splitlines() if "| tp-l1 | torch-pruning |" in ln]
    assert "(4.00x)" in tp and "(20.00x)" not in tp


def test_only_the_engine_methods_variants_are_costed_as_engine_rows() -> None:
    """Under --total-epochs E an engine row fine-tunes E minus its compression cost; a criterion
    variant (l1-norm-r8: round_to=8) is a criterion row and fine-tunes all of E."""
    bench = _bench()
    assert {"ssr-r8", "pgt-r8", "admm-sparse-r8", "ssr-uniform"} <= set(bench.ENGINE_METHODS)
    assert not {"l1-norm-r8", "taylor-r8"} & set(bench.ENGINE_METHODS)
    assert bench.VARIANTS["l1-norm-r8"] == ("l1-norm", {"round_to": 8})
