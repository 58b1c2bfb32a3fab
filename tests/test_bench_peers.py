"""benchmarks/bench_peers.py: every adapter (compactnn through the public API, each installed
peer) returns a model within the SAME measured MACs budget, rows carry the schema, a row that
cannot run carries its reason, and the report / plot are rebuilt from the jsonl rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from compactnn import metrics

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    name = "bench_peers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "bench_peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


BUDGET = 0.5
MODEL = "lenet5"
SCHEMA = {
    "model", "dataset", "budget_macs", "method", "library", "version", "seed", "finetune",
    "status", "structure", "params", "macs", "params_kept", "macs_kept", "met", "val_top1",
    "test_top1", "baseline_test_top1", "test_err_increase", "latency_eager_ms",
    "latency_ort_ms", "speedup_eager", "compress_s", "finetune_s",
}  # fmt: skip


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
