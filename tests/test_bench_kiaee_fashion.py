"""benchmarks/bench_kiaee_fashion.py: rows run as separate processes merge into one report only
for the same baseline and setup; the timing helper alternates the order of the models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _bench import load_bench


def _bench():
    return load_bench("bench_kiaee_fashion")


def _run(seed: int, top1: float, speedup: float) -> dict:
    point = {
        "mu": 0.0, "val_top1": 91.0, "zero_blocks": {}, "blocks": {}, "sparsity_percent": 0.0,
        "epochs": 0, "latency_ms": 10.0, "speedup": 1.0, "speedup_b1": 1.0, "kernel_deploy": {},
    }  # fmt: skip
    chosen = {
        "test_top1": top1, "val_top1": 91.0, "speedup": speedup, "speedup_b1": 1.0,
        "ort_speedup": 1.0, "params": 100, "macs": 1000, "removed_filters": {},
    }  # fmt: skip
    return {"seed": seed, "seconds": 1.0, "path": [point], "chosen_index": 0, "chosen_mu": 0.0,
            "chosen": chosen}  # fmt: skip


def _out(b, label: str, runs: list, ckpt: str = "base.safetensors") -> dict:
    row = {"label": label, "differs": "-", "runs": runs, "summary": b._summary(runs)}
    return {
        "benchmark": "t", "command": f"python bench {label}", "argv": {}, "date": "2026-12-02",
        "machine": "x", "load_start": [1.0], "baseline_checkpoint": ckpt, "setup": "s",
        "max_drop": 0.5, "blocks": {k: 1 for k in b.LAYER_ORDER}, "notes": [],
        "baseline": {"test_top1": 90.7, "val_top1": 91.0, "params": 1, "macs": 1,
                     "test_images": 10, "val_images": 10, "eager_ms": 1.0, "ort_ms": 1.0},
        "rows": [row], "total_seconds": 5.0,
    }  # fmt: skip


def test_merge_pools_rows_of_one_baseline(tmp_path, monkeypatch):
    b = _bench()
    monkeypatch.setattr(b, "RESULTS", tmp_path)
    p = _out(b, "paper protocol", [_run(s, 90.3 + 0.1 * s, 1.0) for s in range(3)])
    e = _out(b, "extension", [_run(s, 90.2, 1.4) for s in range(3)])
    (tmp_path / "p.json").write_text(json.dumps(p))
    (tmp_path / "e.json").write_text(json.dumps(e))
    b._merge(["p", "e"], "m")
    m = json.loads((tmp_path / "m.json").read_text())
    assert [r["label"] for r in m["rows"]] == ["paper protocol", "extension"]
    assert m["rows"][0]["summary"]["test_top1"]["n"] == 3
    assert m["rows"][0]["summary"]["test_top1"]["mean"] == pytest.approx(90.4)
    # 1.4x at 0.50 points: the acceptance (>= 1.3x at <= 0.5 points) is met for that row only
    assert "'extension': eager speed-up 1.40x at 0.50 points" in m["verdict"]
    assert "'paper protocol': eager speed-up 1.00x" in m["verdict"]
    md = (tmp_path / "m.md").read_text()
    assert md.count("| extension | ") == 1 + 3  # the summary line and one line per seed
    e2 = _out(b, "extension", [_run(0, 90.0, 1.0)], ckpt="other.safetensors")
    (tmp_path / "e2.json").write_text(json.dumps(e2))
    with pytest.raises(SystemExit, match="baseline_checkpoint differs"):
        b._merge(["p", "e2"], "m2")


def test_timing_alternates_the_order():
    b = _bench()
    order = []

    class Tagged(nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            order.append(self.tag)
            return x

    ms = {tag: Tagged(tag) for tag in ("a", "b", "c")}
    out = b._timing(ms, torch.zeros(2, 1, 28, 28), rounds=2, repeats=1)
    assert set(out) == {"a", "b", "c"} and all(v > 0 for v in out.values())
    # per model: 2 warm-up passes + 1 timed; round 2 runs the models in reverse order
    assert [t for i, t in enumerate(order) if i % 3 == 0] == ["a", "b", "c", "c", "b", "a"]


def test_merge_pools_seeds_of_one_row_run_as_separate_processes(tmp_path, monkeypatch):
    b = _bench()
    monkeypatch.setattr(b, "RESULTS", tmp_path)

    def run(seed, top1, mus=(0.25, 1.0)):
        return _run(seed, top1, 1.2) | {"options": {"mus": list(mus)}, "mu_scale": {"c": 1.0}}

    def write(stem, runs, sha="w1"):
        o = _out(b, "extension", runs)
        o["baseline"]["weights_sha"] = sha
        (tmp_path / f"{stem}.json").write_text(json.dumps(o))

    write("s0", [run(0, 90.0)])
    write("s12", [run(2, 90.4), run(1, 90.2)])
    b._merge(["s0", "s12"], "m")
    m = json.loads((tmp_path / "m.json").read_text())
    assert len(m["rows"]) == 1
    row = m["rows"][0]
    assert [r["seed"] for r in row["runs"]] == [0, 1, 2]
    assert row["summary"]["test_top1"]["n"] == 3
    assert row["summary"]["test_top1"]["mean"] == pytest.approx(90.2)
    assert row["summary"]["test_top1"]["sd"] == pytest.approx(0.2)
    write("dup", [run(0, 91.0)])
    with pytest.raises(SystemExit, match="seed 0 given twice"):
        b._merge(["s0", "dup"], "m2")
    write("grid", [run(3, 91.0, mus=(0.5, 1.0))])
    with pytest.raises(SystemExit, match="ran other options"):
        b._merge(["s0", "grid"], "m3")
    write("other", [run(4, 91.0)], sha="w2")
    with pytest.raises(SystemExit, match="baseline weights differ"):
        b._merge(["s0", "other"], "m4")


def test_merge_refuses_a_retrained_baseline_without_fingerprint(tmp_path, monkeypatch):
    b = _bench()
    monkeypatch.setattr(b, "RESULTS", tmp_path)
    old = _out(b, "paper protocol", [_run(0, 90.3, 1.0)])  # a report from before weights_sha
    new = _out(b, "extension", [_run(0, 90.2, 1.1)])
    new["baseline"] |= {"weights_sha": "w1", "test_top1": 90.6}  # retrained: same path, 90.6 %
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    with pytest.raises(SystemExit, match="the baselines differ"):
        b._merge(["old", "new"], "m")
    new["baseline"]["test_top1"] = 90.7  # same accuracies and size: taken as the same baseline
    (tmp_path / "new.json").write_text(json.dumps(new))
    b._merge(["old", "new"], "m")


def test_layout_times_leave_the_models_nchw_and_the_report_shows_them():
    b = _bench()
    base = b._fresh().eval()
    small = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 784, 10))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        t = b._layout_times(base, small.eval(), x, rounds=1)
    finally:
        torch.set_num_threads(threads)
    for m in (base.conv2, base.conv3):  # Module.to() would have converted them in place
        assert not m.weight.is_contiguous(memory_format=torch.channels_last)
    assert t["speedup_nchw"] == pytest.approx(t["baseline_nchw_ms"] / t["model_nchw_ms"])
    assert t["speedup_cl"] == pytest.approx(t["baseline_cl_ms"] / t["model_cl_ms"])
    best = min(t["baseline_nchw_ms"], t["baseline_cl_ms"]) / min(
        t["model_nchw_ms"], t["model_cl_ms"]
    )
    assert t["speedup_best_layout"] == pytest.approx(best)
    lay = {"baseline_nchw_ms": 200.0, "baseline_cl_ms": 100.0, "model_nchw_ms": 100.0,
           "model_cl_ms": 80.0, "speedup_nchw": 2.0, "speedup_cl": 1.25,
           "speedup_best_layout": 1.25}  # fmt: skip
    runs = [_run(0, 90.2, 2.0), _run(1, 90.2, 2.0)]
    out = _out(b, "extension", runs)
    assert "Memory layouts" not in b._markdown(out)  # only once --layouts ran
    for r in runs:
        r["chosen"]["layouts"] = lay
    out["layouts"] = {"command": "c", "date": "d", "rounds": 1, "load_start": [1.0],
                      "load_end": [1.0]}  # fmt: skip
    md = b._markdown(out)
    assert "| extension | 0 | 200.0 / 100.0 | 100.0 / 80.0 | 2.00 | 1.25 | 1.25 |" in md
    assert "**1.25 ± 0.00 (n=2)**" in md
