"""benchmarks/bench_ddlr_repro.py and bench_net_trim_cascade.py over seeds (issue 15): each seed
has its own reference model and calibration draw; runs made as separate processes pool into
mean ± sd only for the same settings; the committed single-seed JSONs read as seed 0."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _bench import load_bench


def _ddlr():
    return load_bench("bench_ddlr_repro")


def _cascade():
    return load_bench("bench_net_trim_cascade")


# --- seeds change the reference model and the calibration draw ---------------------------------


def test_reference_cache_key_differs_per_seed_and_seed0_keeps_the_old_name(tmp_path, monkeypatch):
    b = _ddlr()
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path))
    paths = {
        s: b._reference_path("fig3_mnist", b.EXPERIMENTS["fig3_mnist"], 819, s) for s in (0, 1, 2)
    }
    assert len(set(paths.values())) == 3
    assert paths[0].name == "ddlr_fig3_mnist_lenet5_mnist_n819_e30.safetensors"
    assert paths[1].name == "ddlr_fig3_mnist_lenet5_mnist_n819_e30_s1.safetensors"
    spiral = [
        b._reference_path("fig2_spiral", b.EXPERIMENTS["fig2_spiral"], 820, s).name for s in (0, 2)
    ]
    assert spiral == [
        "ddlr_fig2_spiral_spiral-mlp_spiral_n820_e1000_sgd.safetensors",
        "ddlr_fig2_spiral_spiral-mlp_spiral_n820_e1000_sgd_s2.safetensors",
    ]
    # the cascade bench's reference (the first reproduction's protocol) is keyed the same way
    ours = {b._reference_path("fig3_mnist", b.OURS["fig3_mnist"], 1024, s).name for s in (0, 1)}
    assert ours == {
        "ddlr_fig3_mnist_lenet5_mnist_n1024_e30.safetensors",
        "ddlr_fig3_mnist_lenet5_mnist_n1024_e30_s1.safetensors",
    }


def test_calibration_draw_differs_per_seed_and_seed0_is_the_old_draw():
    b = _ddlr()
    assert b._calib_seed(256, 0) == 256  # the single-seed runs' generator seed
    assert len({b._calib_seed(N, s) for N in (128, 256, 512) for s in range(5)}) == 15


def test_spiral_data_is_fixed_across_seeds():
    b = _ddlr()
    exp = b.EXPERIMENTS["fig2_spiral"]
    (tr0, te0), (tr1, te1) = b._datasets(exp, 0), b._datasets(exp, 1)
    assert torch.equal(tr0.tensors[0], tr1.tensors[0]) and torch.equal(
        te0.tensors[1], te1.tensors[1]
    )


# --- pooling of the DDLR runs ------------------------------------------------------------------


def _ddlr_row(seed: int, N: int, method: str, eps: float, size: float, rel: float) -> dict:
    count = "rank" if method == "ddlr" else "nnz"
    layer = {"status": "optimal", "iterations": 10, "violation": 0.0, "deployed_violation": 0.0,
             "form": "lowrank" if method == "ddlr" else "sparse", count: int(100 * size)}  # fmt: skip
    return {
        "experiment": "fig3_mnist", "seed": seed, "N": N, "method": method, "eps_frac": eps,
        "size_ratio": size, "stored_weights": int(100 * size), "original_weights": 100,
        "top1": 90.0 * rel, "rel_acc": rel, "rel_acc_full_test": rel, "seconds": 1.0,
        "per_layer": {"fc1": layer}, "warnings": [],
    }  # fmt: skip


# DDLR at sizes 0.4 / 0.2, Net-Trim at 0.5 / 0.3: DDLR beats Net-Trim at 0.5 in seeds 0 and 1
# and on the mean (0.94 > 0.93), loses there in seed 2; beats it at 0.3 in every seed.
DDLR_AT_04 = (0.96, 0.96, 0.90)


def _ddlr_run(seed: int, *, eps=(0.1, 0.2), max_iter: int = 5000, N: int = 128) -> dict:
    rows = [
        _ddlr_row(seed, N, "ddlr", eps[0], 0.4, DDLR_AT_04[seed]),
        _ddlr_row(seed, N, "ddlr", eps[1], 0.2, 0.85),
        _ddlr_row(seed, N, "net-trim", eps[0], 0.5, 0.93),
        _ddlr_row(seed, N, "net-trim", eps[1], 0.3, 0.80),
    ]
    exp = {
        "experiment": "fig3_mnist", "seed": seed, "reference": "cached", "paper": "Fig. 3",
        "model": "lenet5", "dataset": "mnist", "layers": ["fc1"], "train_samples": 819,
        "test_samples": 205, "baseline_top1": 89.0 + seed, "baseline_top1_full_test": 93.0,
        "protocol": {"train": {"epochs": 30, "batch": 64, "lr": 1e-3, "optimizer": "adam"},
                     "train_limit": 1024, "split": 0.8},
        "original_weights": 100, "rows": rows,
    }  # fmt: skip
    return {
        "seed": seed, "command": f".venv/bin/python benchmarks/bench_ddlr_repro.py --seeds {seed}",
        "machine": "test", "date": "2026-12-02", "total_seconds": 10.0, "max_iter": max_iter,
        "load_at_end": [1.0, 1.0, 1.0], "experiments": [exp],
    }  # fmt: skip


def test_ddlr_pool_gives_mean_sd_over_seeds_and_a_verdict_from_the_means():
    b = _ddlr()
    doc = b.pool([_ddlr_run(2), _ddlr_run(0), _ddlr_run(1)])
    assert doc["seeds"] == [0, 1, 2]
    (res,) = b.summarize(doc)
    assert res["baseline_top1"] == pytest.approx({"mean": 90.0, "sd": 1.0, "n": 3})
    pt = next(p for p in res["points"] if p["method"] == "ddlr" and p["eps_frac"] == 0.1)
    sd = math.sqrt(((0.96 - 0.94) ** 2 * 2 + (0.90 - 0.94) ** 2) / 2)  # sample sd
    assert pt["rel_acc"] == pytest.approx({"mean": 0.94, "sd": sd, "n": 3})
    assert pt["size_ratio"] == pytest.approx({"mean": 0.4, "sd": 0.0, "n": 3})
    assert pt["by_seed"]["2"]["rel_acc"] == pytest.approx(0.90)
    assert res["dominance_mean"] == {"128": [2, 0, 0]}
    assert res["dominance_by_seed"]["128"] == {"0": [2, 0, 0], "1": [2, 0, 0], "2": [1, 0, 1]}
    md = b.markdown({**doc, "command": "cmd", "machine": "m", "date": "d"})
    assert "0.9400 ± 0.0346 (n=3)" in md  # the DDLR point at size 0.4
    assert "DDLR ahead on the mean curve over 3 seeds" in md
    assert "DDLR ahead in 2 of 3 seeds taken one by one" in md
    assert "| 128 | ddlr | 0.1 | 0.400 / 0.9600 | 0.400 / 0.9600 | 0.400 / 0.9000 |" in md
    assert "Command: `cmd`" in md and "Machine: m" in md and "Date: d" in md


@pytest.mark.parametrize(
    ("other", "what"),
    [
        ({"max_iter": 2000}, "max_iter"),
        ({"eps": (0.1, 0.3)}, "experiments"),
        ({"N": 256}, "experiments"),
    ],
)
def test_ddlr_pool_refuses_runs_of_other_settings(other, what):
    b = _ddlr()
    with pytest.raises(ValueError, match=what):
        b.pool([_ddlr_run(0), _ddlr_run(1, **other)])


def test_ddlr_pool_refuses_a_seed_twice():
    b = _ddlr()
    with pytest.raises(ValueError, match="more than once"):
        b.pool([_ddlr_run(1), _ddlr_run(1)])


def test_ddlr_merge_reads_a_single_seed_json_as_seed0_and_writes_quick_names(tmp_path, monkeypatch):
    b = _ddlr()
    monkeypatch.setattr(b, "RESULTS", tmp_path)
    legacy = {k: v for k, v in _ddlr_run(0).items() if k not in ("seed", "max_iter", "load_at_end")}
    legacy["command"] = ".venv/bin/python benchmarks/bench_ddlr_repro.py --max-iter 5000"
    (tmp_path / "old_quick.json").write_text(json.dumps(legacy))
    for s in (1, 2):
        one = b._document([_ddlr_run(s)], "c")
        (tmp_path / f"ddlr_repro_seed{s}_quick.json").write_text(json.dumps(one))
    stems = ["old_quick", "ddlr_repro_seed1_quick", "ddlr_repro_seed2_quick"]
    doc = b.merge(stems, "ddlr_repro_quick")
    assert doc["seeds"] == [0, 1, 2] and "--merge old_quick" in doc["command"]
    b._write(doc, "ddlr_repro_quick")
    written = sorted(
        p.name for p in tmp_path.iterdir() if p.name not in {f"{s}.json" for s in stems}
    )
    assert written == ["ddlr_fig3_mnist_quick.png", "ddlr_repro_quick.json", "ddlr_repro_quick.md"]
    # a legacy run with another iteration cap is not pooled with the others
    legacy["command"] += " --max-iter 100"
    (tmp_path / "old_quick.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="max_iter"):
        b.merge(stems, "x")


def test_quick_runs_write_only_quick_files():
    b = _ddlr()
    args = b._parser().parse_args(["--quick", "--seeds", "1", "--out", "ddlr_repro_seed1"])
    stem = b._stem(args)
    assert stem == "ddlr_repro_seed1_quick"
    assert b._png_name(stem, "fig2_spiral") == "ddlr_fig2_spiral_seed1_quick.png"
    assert b._png_name("ddlr_repro", "fig2_spiral") == "ddlr_fig2_spiral.png"  # committed name
    assert b._parser().parse_args([]).seeds == [0, 1, 2]


# --- pooling of the cascade runs ---------------------------------------------------------------


def _cascade_run(seed: int, top1_cascade: float, *, N: int = 256, max_iter: int = 5000) -> dict:
    def row(eps, scheme, gamma, size, top1):
        return {"eps_frac": eps, "scheme": scheme, "gamma": gamma,
                "nnz": {"fc1": 100, "fc2": int(100 * size)}, "eps": {"fc1": 1.0, "fc2": 2.0},
                "status": {"fc1": "optimal", "fc2": "optimal"}, "size_ratio": size,
                "top1": top1, "rel_acc": top1 / 90.0, "seconds": 1.0}  # fmt: skip

    rows = [
        row(0.02, "parallel", None, 1.0, 92.0),
        row(0.02, "cascade 1.05", 1.05, 1.1, 93.0),
        row(0.04, "parallel", None, 0.5, 90.0),
        row(0.04, "cascade 1.05", 1.05, 0.75, top1_cascade),  # parallel at 0.75: 91.0
    ]
    return {
        "seed": seed, "command": "python benchmarks/bench_net_trim_cascade.py ", "date": "d",
        "machine": "m", "load_at_end": [1.0, 1.0, 1.0], "torch": "t", "reference": "cached",
        "model": "lenet5", "dataset": "mnist", "train_samples": 1024, "N": N,
        "max_iter": max_iter, "layers": ["fc1", "fc2"], "baseline_top1": 93.0 + seed,
        "original_weights": 40800, "seconds": 5.0, "rows": rows,
    }  # fmt: skip


def test_cascade_pool_pairs_the_difference_to_parallel_within_each_seed():
    c = _cascade()
    doc = c.pool([_cascade_run(s, 91.0 + d) for s, d in ((0, 0.2), (1, 0.4), (2, 0.9))])
    summ = c.summarize(doc)
    assert summ["baseline_top1"] == pytest.approx({"mean": 94.0, "sd": 1.0, "n": 3})
    pt = next(p for p in summ["points"] if p["eps_frac"] == 0.04 and p["gamma"])
    assert pt["vs_parallel"] == pytest.approx({"mean": 0.5, "sd": math.sqrt(0.13), "n": 3})
    assert pt["by_seed"]["1"]["vs_parallel"] == pytest.approx(0.4)
    # size 1.1 lies outside the parallel sweep: no difference there
    assert (
        next(p for p in summ["points"] if p["eps_frac"] == 0.02 and p["gamma"])["vs_parallel"]
        is None
    )
    md = c.markdown({**doc, "command": "cmd", "machine": "m", "date": "d"})
    assert "+0.50 ± 0.36 (n=3)" in md
    assert "mean over 3 seeds" in md and "cascade ahead on the mean at 1 of 1 points" in md


def test_cascade_pool_refuses_other_settings_and_reads_the_old_json_as_seed0(tmp_path, monkeypatch):
    c = _cascade()
    with pytest.raises(ValueError, match="N differs"):
        c.pool([_cascade_run(0, 91.0), _cascade_run(1, 91.0, N=128)])
    with pytest.raises(ValueError, match="max_iter differs"):
        c.pool([_cascade_run(0, 91.0), _cascade_run(1, 91.0, max_iter=100)])
    with pytest.raises(ValueError, match="more than once"):
        c.pool([_cascade_run(1, 91.0), _cascade_run(1, 91.0)])
    monkeypatch.setattr(c, "RESULTS", tmp_path)
    old = {k: v for k, v in _cascade_run(0, 91.0).items() if k not in ("seed", "max_iter")}
    (tmp_path / "net_trim_cascade.json").write_text(json.dumps(old))
    (tmp_path / "s1.json").write_text(json.dumps(c._document([_cascade_run(1, 91.0)], "c")))
    doc = c.merge(["net_trim_cascade", "s1"], "net_trim_cascade")
    assert doc["seeds"] == [0, 1] and doc["runs"][0]["max_iter"] == 5000


@pytest.mark.parametrize(
    ("bench", "stem"),
    [("bench_ddlr_repro", "ddlr_repro"), ("bench_net_trim_cascade", "net_trim_cascade")],
)
def test_the_committed_results_pool(bench, stem):
    """The committed JSON (single-seed format: seed 0; or already pooled) reads and renders."""
    b = load_bench(bench)
    saved = json.loads((b.RESULTS / f"{stem}.json").read_text())
    doc = {**b.pool(b._runs_of(saved)), **{k: saved[k] for k in ("command", "machine", "date")}}
    assert 0 in doc["seeds"]
    assert f"(n={len(doc['seeds'])})" in b.markdown(doc)
