"""benchmarks/bench_ssr_gap.py and bench_ssr_lam_path.py over seeds: single-seed runs (separate
processes) are pooled into mean ± sd rows only for the same baseline fingerprint and settings;
the lambda path's trade-off is chosen on validation per seed."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest

from _bench import load_bench


def _gap():
    return load_bench("bench_ssr_gap")


def _lam():
    return load_bench("bench_ssr_lam_path")


BASE = {"checkpoint": "lenet-caffe-mnist-seed0.safetensors", "state_sha": "c4338fdf061772db",
        "params": 431080, "test_err": 0.77}  # fmt: skip


def _gap_row(label: str, filters: str, params: int, test_err: float, ms: float) -> dict:
    return {"row": label, "filters": filters, "params": params, "macs": params * 90, "ms": ms,
            "speedup": 20.0 / ms, "test_err": test_err, "err_increase": test_err - 0.77,
            "seconds": 1.0}  # fmt: skip


def _gap_run(seed: int, ssr_err: float, l1_err: float, lr: float = 1e-3, **over) -> dict:
    base = _gap_row("LeNet (ours)", "20-50", 431080, 0.77, 20.0)
    del base["err_increase"]
    rows = [
        base,
        _gap_row("GAP alone (no pruning)", "20-50", 26080, 3.0 + seed, 15.0),
        _gap_row("SSR-L2,1-GAP", f"4-{12 + seed}", 1446 + seed, ssr_err, 5.0),
        _gap_row("SSR-L2,1-GAP (weaker conv2 lambda)", "4-26", 3000, 30.0, 6.0),
        _gap_row("L1-GAP @ SSR-L2,1-GAP filters", f"4-{12 + seed}", 1446 + seed, l1_err, 5.0),
        _gap_row("Random-GAP @ SSR-L2,1-GAP filters", f"4-{12 + seed}", 1446 + seed, 11.0, 5.0),
    ]
    settings = {**_gap().EXTENSION, "finetune_lr": lr,
                "lr_choice_val_top1": {"0.01": 10.0, "0.003": 80.0, "0.001": 90.0},
                "finetune_epochs": 8, "batch_size": 64, "train_limit": None,
                "ssr_rows": _gap().SSR_ROWS, "finetune_lr_candidates": [0.01, 0.003, 0.001]}  # fmt: skip
    run = {"command": f"python bench_ssr_gap.py --seed {seed}", "date": "2026-12-03",
           "machine": "x86_64 test", "load": [2.0, 2.0, 2.0], "threads": 1,
           "protocol": "extension", "quick": False, "settings": settings,
           "baseline": dict(BASE), "seed": seed, "seconds": 600.0, "rows": rows,
           "paper": _gap().PAPER}  # fmt: skip
    return {**run, **over}


def _save(tmp_path: Path, runs: dict[str, dict]) -> list[str]:
    for stem, run in runs.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(run))
    return list(runs)


def test_gap_merge_pools_rows_as_mean_sd(tmp_path: Path) -> None:
    runs = {f"g{s}": _gap_run(s, ssr, l1, lr=lr)
            for s, ssr, l1, lr in ((2, 8.0, 7.0, 3e-3), (0, 9.0, 7.5, 1e-3), (1, 10.0, 8.5, 1e-3))}  # fmt: skip
    out = _gap().merge(_save(tmp_path, runs), tmp_path)
    assert out["seeds"] == [0, 1, 2]  # sorted by seed
    rows = {r["row"]: r for r in out["summary"]}
    ssr = rows["SSR-L2,1-GAP"]
    errs = [9.0, 10.0, 8.0]
    assert ssr["n"] == 3
    assert ssr["test_err"]["mean"] == pytest.approx(9.0)
    assert ssr["test_err"]["sd"] == pytest.approx(statistics.stdev(errs))  # 1.0 (n - 1)
    assert ssr["err_increase"]["mean"] == pytest.approx(9.0 - 0.77)
    assert ssr["params"]["mean"] == pytest.approx(1447.0)
    assert ssr["filters"] == "4.0 ± 0.0 - 13.0 ± 1.0"  # seeds disagree on conv2
    assert rows["SSR-L2,1-GAP (weaker conv2 lambda)"]["filters"] == "4-26"  # all agree
    assert rows["LeNet (ours)"]["test_err"]["sd"] == 0.0
    assert "err_increase" not in rows["LeNet (ours)"]
    # verdict from the means, paired by seed: SSR - L1 = 1.5, 1.5, 1.0 -> behind in 3 of 3
    v = out["verdict"][0]
    assert "3 seeds" in v and "+1.33 ± 0.29" in v and "behind in 3 of 3" in v
    assert "does not beat L1's" in v
    assert len(out["verdict"]) == 2 and "worse in 3 of 3 seeds" in out["verdict"][1]
    md = _gap().markdown(out)
    assert "| SSR-L2,1-GAP | 3 | 4.0 ± 0.0 - 13.0 ± 1.0 | 1,447 ± 1 |" in md
    assert "9.00 ± 1.00" in md and "+8.23 ± 1.00" in md
    assert md.count("| 1 | SSR-L2,1-GAP |") == 1  # the per-seed table
    assert "seed 2: **0.003**" in md  # each seed's lr chosen on validation
    # a pooled file pools again with a further seed
    (tmp_path / "pooled.json").write_text(json.dumps(out))
    _save(tmp_path, {"g3": _gap_run(3, 9.0, 9.5)})
    more = _gap().merge(["pooled", "g3"], tmp_path)
    assert more["seeds"] == [0, 1, 2, 3]
    assert "behind in 3 of 4" in more["verdict"][0] and "no consistent order" in more["verdict"][0]


def test_gap_merge_refuses_other_baseline_settings_or_repeated_seed(tmp_path: Path) -> None:
    a = _gap_run(0, 9.0, 8.0)
    other_base = _gap_run(1, 9.0, 8.0, baseline={**BASE, "state_sha": "0123456789abcdef"})
    stems = _save(tmp_path, {"a": a, "b": other_base})
    with pytest.raises(SystemExit, match="baseline fingerprints differ"):
        _gap().merge(stems, tmp_path)
    for key, value in (("finetune_epochs", 30), ("max_outer", 5), ("lr", 1e-3)):
        b = _gap_run(1, 9.0, 8.0)
        b["settings"][key] = value
        stems = _save(tmp_path, {"a": a, "b": b})
        with pytest.raises(SystemExit, match=f"settings differ.*{key}"):
            _gap().merge(stems, tmp_path)
    stems = _save(tmp_path, {"a": a, "b": _gap_run(1, 9.0, 8.0, protocol="paper")})
    with pytest.raises(SystemExit, match="protocol"):
        _gap().merge(stems, tmp_path)
    stems = _save(tmp_path, {"a": a, "b": _gap_run(1, 9.0, 8.0, quick=True)})
    with pytest.raises(SystemExit, match="quick"):
        _gap().merge(stems, tmp_path)
    stems = _save(tmp_path, {"a": a, "b": _gap_run(0, 9.5, 8.0)})
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0\]"):
        _gap().merge(stems, tmp_path)


def test_gap_merge_refuses_the_unfingerprinted_seed0_run(tmp_path: Path) -> None:
    """A run from before fingerprints were recorded (the 2026-12-01 seed 0 had no 'baseline'
    entry) cannot be pooled: its baseline cannot be checked."""
    old = _gap_run(0, 9.0, 8.0)
    del old["baseline"]
    stems = _save(tmp_path, {"old": old, "new": _gap_run(1, 9.0, 8.0)})
    with pytest.raises(SystemExit, match="no baseline fingerprint.*rerun"):
        _gap().merge(stems, tmp_path)


def test_gap_main_merge_writes_report_and_quick_stems(tmp_path: Path) -> None:
    stems = _save(tmp_path, {"g0": _gap_run(0, 9.0, 8.0), "g1": _gap_run(1, 8.0, 8.5)})
    _gap().main(["--merge", *stems, "--out", str(tmp_path), "--out-stem", "pooled"])
    md = (tmp_path / "pooled.md").read_text()
    doc = json.loads((tmp_path / "pooled.json").read_text())
    assert doc["seeds"] == [0, 1] and "2 seeds (0, 1)" in md
    assert "--merge g0 g1" in md and "no consistent order" in md
    # quick runs and their merges only ever write *_quick files (gitignored)
    quick = {f"q{s}": _gap_run(s, 9.0, 8.0, quick=True) for s in (0, 1)}
    _gap().main(["--merge", *_save(tmp_path, quick), "--out", str(tmp_path), "--out-stem", "x"])
    assert (tmp_path / "x_quick.json").is_file() and not (tmp_path / "x.json").exists()
    args = _gap().main.__globals__["argparse"].Namespace
    stem = _gap()._stem
    assert stem(args(out_stem=None, paper=False, seed=0, quick=True)) == "ssr_gap_quick"
    assert stem(args(out_stem="ssr_gap_seed1", paper=False, seed=1, quick=True)) == (
        "ssr_gap_seed1_quick"
    )
    assert stem(args(out_stem=None, paper=True, seed=2, quick=False)) == "ssr_gap_paper_seed2"


def _lam_run(seed: int, val: list[float], test: list[float], **over) -> dict:
    filters = ["20-50-500", "20-50-500", "10-20-100", "2-8-77"]
    params = [431080, 431080, 50000, 11000]
    rows = [{"lam": lam, "filters": f, "params": p, "macs": p * 5, "ms": 20.0 * p / 431080 + 1,
             "speedup": 1.0, "val_err": v, "test_err": t}
            for lam, f, p, v, t in zip((0.0, 0.1, 0.2, 0.3), filters, params, val, test,
                                       strict=True)]  # fmt: skip
    settings = {"outer": 5, "steps": 50, "ft": 1, "ft_steps": 50, "tol": 0.5, "batch_size": 256,
                "lr": 1e-3, "lambdas": [0.1, 0.2, 0.3], "layers": ["conv1", "conv2", "fc1"],
                "train_limit": None}  # fmt: skip
    run = {"command": f"python bench_ssr_lam_path.py --seed {seed}", "date": "2026-12-03",
           "machine": "x86_64 test", "load": [2.0, 2.0, 2.0], "threads": 1, "quick": False,
           "seed": seed, "settings": settings, "baseline": dict(BASE), "seconds": 300.0,
           "rows": rows, "chosen_lam": _lam().choose(rows, 0.5)}  # fmt: skip
    return {**run, **over}


def test_lam_path_choice_reads_validation_only() -> None:
    # lambdas 0.2 and 0.3 have the best test errors but are out of tolerance on validation
    run = _lam_run(0, val=[0.3, 0.4, 0.9, 1.0], test=[0.8, 0.9, 0.6, 0.5])
    assert run["chosen_lam"] == 0.1
    run = _lam_run(0, val=[0.3, 0.4, 0.7, 0.8], test=[0.8, 0.9, 1.0, 5.0])
    assert run["chosen_lam"] == 0.3  # smallest MACs within 0.5 of the baseline's val err
    assert _lam_run(0, val=[0.3, 0.9, 0.9, 0.9], test=[0.8] * 4)["chosen_lam"] is None


def test_lam_path_merge_chosen_points_mean_sd(tmp_path: Path) -> None:
    runs = {
        "l0": _lam_run(0, val=[0.3, 0.4, 0.7, 0.8], test=[0.8, 0.9, 1.0, 1.1]),  # 0.3
        "l1": _lam_run(1, val=[0.2, 0.3, 0.6, 0.9], test=[0.7, 0.8, 0.9, 1.0]),  # 0.2
        "l2": _lam_run(2, val=[0.4, 0.5, 0.8, 0.9], test=[0.9, 1.0, 1.2, 1.5]),  # 0.3
        "l3": _lam_run(3, val=[0.1, 0.7, 0.8, 0.9], test=[0.7, 0.7, 0.7, 0.7]),  # none
    }
    out = _lam().merge(_save(tmp_path, runs), tmp_path)
    ch = out["chosen"]
    assert [p["lam"] for p in ch["per_seed"]] == [0.3, 0.2, 0.3, None]
    assert ch["seeds_without_point"] == 1
    c = ch["pooled"]
    assert c["n"] == 3
    assert c["params"]["mean"] == pytest.approx((11000 + 50000 + 11000) / 3)
    incs = [1.1 - 0.8, 0.9 - 0.7, 1.5 - 0.9]
    assert c["err_increase"]["mean"] == pytest.approx(statistics.fmean(incs))
    assert c["err_increase"]["sd"] == pytest.approx(statistics.stdev(incs))
    assert c["test_err"]["mean"] == pytest.approx(statistics.fmean([1.1, 0.9, 1.5]))
    rows = {r["lam"]: r for r in out["summary"]}
    assert rows[0.3]["n"] == 4 and rows[0.3]["val_err"]["mean"] == pytest.approx(0.875)
    assert rows[0.0]["test_err"]["mean"] == pytest.approx(0.775)
    md = _lam().markdown(out)
    assert "lambda 0.2 in 1, 0.3 in 2 of 4; none in 1" in md
    assert "| 3 | none within 0.5 points |" in md
    assert f"({c['err_increase']['mean']:+.2f} ± {c['err_increase']['sd']:.2f} over" in md
    assert md.count("**(chosen on validation)**") == 3


def test_lam_path_merge_refuses_mismatch(tmp_path: Path) -> None:
    a = _lam_run(0, val=[0.3, 0.4, 0.7, 0.8], test=[0.8] * 4)
    for key, value in (("outer", 10), ("steps", 100), ("ft_steps", 211), ("tol", 1.0),
                       ("lambdas", [0.1, 0.2])):  # fmt: skip
        b = copy.deepcopy(a) | {"seed": 1}
        b["settings"][key] = value
        with pytest.raises(SystemExit, match=f"settings differ.*{key}"):
            _lam().merge(_save(tmp_path, {"a": a, "b": b}), tmp_path)
    b = a | {"seed": 1, "baseline": {**BASE, "state_sha": "ffffffffffffffff"}}
    with pytest.raises(SystemExit, match="baseline fingerprints differ"):
        _lam().merge(_save(tmp_path, {"a": a, "b": b}), tmp_path)
    with pytest.raises(SystemExit, match="threads"):
        _lam().merge(_save(tmp_path, {"a": a, "b": a | {"seed": 1, "threads": 2}}), tmp_path)
    old = {k: v for k, v in a.items() if k not in ("baseline", "seed")}
    old["settings"] = {**a["settings"], "seed": 1}
    with pytest.raises(SystemExit, match=r"\(seed 1\) records no baseline fingerprint"):
        _lam().merge(_save(tmp_path, {"a": a, "old": old}), tmp_path)
