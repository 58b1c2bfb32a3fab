"""benchmarks/bench_ssr_budget.py: each (row, seed) is one CLI call whose report is summarised
from what the returned model measured; finished runs are reused only for the same baseline,
recipe and seed; rows are mean ± sd over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from _bench import load_bench


def _bench():
    return load_bench("bench_ssr_budget")


def _report(top1: float, units: tuple[int, int, int], eager: float) -> dict:
    layers = [
        {"name": "conv1", "type": "Conv2d", "units": units[0]},
        {"name": "pool", "type": "MaxPool2d", "units": 0},
        {"name": "conv2", "type": "Conv2d", "units": units[1]},
        {"name": "fc1", "type": "Linear", "units": units[2]},
        {"name": "fc2", "type": "Linear", "units": 10},
    ]
    return {
        "before": {"macs": 2_293_000, "accuracy": {"top1": 99.2}},
        "after": {"params": 9000, "macs": 85_000, "accuracy": {"top1": top1}, "layers": layers},
        "target": {"met": True, "seconds": 300.0},
        "chosen": {"lam": {"conv1": 0.5, "conv2": 0.1, "fc1": 0.1}},
        "validation": {"drop": 1.0},
        "deploy": {
            "latency": {
                "batch 100": {
                    "eager_original": {"median_ms": 20.0},
                    "eager": {"median_ms": eager},
                    "onnxruntime": {"median_ms": 1.0},
                }
            }
        },
        "seconds": {"compress": 600.0},
        "warnings": [],
    }


def test_summary_reads_the_returned_model(tmp_path, monkeypatch):
    b = _bench()
    r = b._summarise(_report(98.9, (3, 7, 68), 2.5), "paper", 1, {"wall_seconds": 610.0})
    assert r["structure"] == "3-7-68"  # the classifier and non-layers are not part of it
    assert r["err_increase"] == pytest.approx(0.3)
    assert r["speedup"] == pytest.approx(8.0)
    assert r["macs_kept"] == pytest.approx(85_000 / 2_293_000)
    assert r["wall_seconds"] == 610.0


def test_runs_reused_only_for_the_same_baseline_recipe_and_seed(tmp_path, monkeypatch):
    b = _bench()
    monkeypatch.setattr(b, "_run_dir", lambda key, seed: tmp_path / f"{key}-{seed}")
    calls = []

    class Proc:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(cmd, **_kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        seed = int(cmd[cmd.index("--seed") + 1])
        (out / "report.json").write_text(json.dumps(_report(99.0 - 0.1 * seed, (3, 7, 60), 2.0)))
        return Proc()

    monkeypatch.setattr(b.subprocess, "run", fake_run)
    ckpt = tmp_path / "base.safetensors"
    r0 = b._run("paper", 0, ckpt, "sha-a", 1)
    assert len(calls) == 1 and "--recipe" in calls[0] and "batch_size=256" in calls[0]
    assert r0["test_top1"] == pytest.approx(99.0)
    b._run("paper", 0, ckpt, "sha-a", 1)  # same baseline, recipe, seed: reused
    assert len(calls) == 1
    b._run("paper", 0, ckpt, "sha-b", 1)  # another baseline: run again
    assert len(calls) == 2
    b._run("paper", 1, ckpt, "sha-b", 1)
    assert len(calls) == 3

    def failing(cmd, **_kw):
        p = Proc()
        p.returncode = 2
        return p

    monkeypatch.setattr(b.subprocess, "run", failing)
    with pytest.raises(SystemExit, match="extension seed 0 failed"):
        b._run("extension", 0, ckpt, "sha-b", 1)


def test_rows_are_mean_sd_over_seeds():
    b = _bench()
    runs = {
        "paper": [
            b._summarise(_report(t, (3, 7, 68), 2.5), "paper", i, {})
            for i, t in enumerate((94.0, 95.0, 96.0))
        ],  # fmt: skip
        "extension": [
            b._summarise(_report(t, (3, 7, 69), 2.5), "extension", i, {})
            for i, t in enumerate((99.0, 98.9, 98.8))
        ],  # fmt: skip
    }
    out = {
        "command": "python benchmarks/bench_ssr_budget.py",
        "dates": ["2026-12-02"],
        "machine": "x86_64",
        "baseline": "~/b.safetensors",
        "base_sha": "abc",
        "base_test_top1": 99.2,
        "rows": {
            k: {**{f: b.ROWS[k][f] for f in ("label", "recipe", "differs")}, "runs": v}
            for k, v in runs.items()
        },
    }
    out["verdict"] = b._verdict(out)
    md = b._markdown(out)
    sd = statistics.stdev([99.2 - t for t in (94.0, 95.0, 96.0)])
    assert f"**+4.20 ± {sd:.2f}**" in md  # paper row: err increase mean ± sd over 3 seeds
    assert "**+0.30 ± 0.10**" in md
    assert "loses 3.90 points more than the extension" in out["verdict"]
    assert md.count("| paper protocol | ") == 3 and md.count("| extension | ") == 3


def test_keep_pools_earlier_runs_only_of_the_same_baseline_and_recipe(tmp_path, monkeypatch):
    b = _bench()
    cur = {k: b._file_sha(b.RECIPES / b.ROWS[k]["recipe"]) for k in b.ROWS}
    old = {
        "base_sha": "sha-a",
        "rows": {
            "paper": {"runs": [{"seed": 0, "recipe_sha": cur["paper"], "date": "d"}]},
            "extension": {
                "runs": [
                    {"seed": 0, "recipe_sha": cur["extension"], "date": "d"},
                    {"seed": 1, "recipe_sha": "another-recipe", "date": "d"},
                    {"seed": 2, "date": "d"},  # no recipe fingerprint: never pooled
                ]
            },
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    kept = b._previous(path, "sha-a")
    assert sorted(kept) == [("extension", 0), ("paper", 0)]
    assert b._previous(path, "sha-b") == {}  # another baseline: nothing pooled
    assert b._previous(tmp_path / "missing.json", "sha-a") == {}


def test_a_run_records_its_recipe_fingerprint(tmp_path, monkeypatch):
    b = _bench()
    monkeypatch.setattr(b, "_run_dir", lambda key, seed: tmp_path / f"{key}-{seed}")

    class Proc:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(cmd, **_kw):
        out = Path(cmd[cmd.index("--out") + 1])
        (out / "report.json").write_text(json.dumps(_report(99.0, (3, 7, 60), 2.0)))
        return Proc()

    monkeypatch.setattr(b.subprocess, "run", fake_run)
    r = b._run("extension", 0, tmp_path / "base.safetensors", "sha-a", 1)
    assert r["recipe_sha"] == b._file_sha(b.RECIPES / b.ROWS["extension"]["recipe"])


def test_keep_with_one_row_and_seed_writes_every_earlier_run_too(tmp_path, monkeypatch):
    """`--rows paper --seeds 1 --keep` adds paper seed 1 and keeps the earlier runs of both rows
    (it used to write a report with that one run only)."""
    b = _bench()
    monkeypatch.setattr(b, "RESULTS", tmp_path)
    monkeypatch.setattr(b, "_baseline", lambda: (tmp_path / "base.safetensors", "sha-a"))
    monkeypatch.setattr(b, "_run_dir", lambda key, seed: tmp_path / f"{key}-{seed}")
    cur = {k: b._file_sha(b.RECIPES / b.ROWS[k]["recipe"]) for k in b.ROWS}

    def summary(key, seed):
        r = b._summarise(_report(99.0 - seed, (3, 7, 60), 2.0), key, seed, {"date": "d"})
        return r | {"recipe_sha": cur[key]}

    old = {
        "base_sha": "sha-a",
        "rows": {
            "paper": {"runs": [summary("paper", 0)]},
            "extension": {"runs": [summary("extension", s) for s in (0, 1, 2)]},
        },
    }
    (tmp_path / "ssr_budget_seeds.json").write_text(json.dumps(old))
    ran = []
    monkeypatch.setattr(
        b, "_run", lambda key, seed, *a: ran.append((key, seed)) or summary(key, seed)
    )
    monkeypatch.setattr(b.sys, "argv", ["bench", "--rows", "paper", "--seeds", "1", "--keep"])
    b.main()
    assert ran == [("paper", 1)]
    out = json.loads((tmp_path / "ssr_budget_seeds.json").read_text())
    assert [r["seed"] for r in out["rows"]["paper"]["runs"]] == [0, 1]
    assert [r["seed"] for r in out["rows"]["extension"]["runs"]] == [0, 1, 2]


def test_keep_reports_a_run_finished_here_that_was_not_asked(tmp_path, monkeypatch):
    """`--rows paper --seeds 2 --keep` on a machine that finished paper seed 1 and extension
    seed 2 earlier (runs the earlier JSON does not hold) reports them too, without re-running
    them (it used to drop them: a run directory here hid the kept run and was not asked)."""
    b = _bench()
    monkeypatch.setattr(b, "RESULTS", tmp_path)
    monkeypatch.setattr(b, "_baseline", lambda: (tmp_path / "base.safetensors", "sha-a"))
    monkeypatch.setattr(b, "_run_dir", lambda key, seed: tmp_path / f"{key}-{seed}")
    cur = {k: b._file_sha(b.RECIPES / b.ROWS[k]["recipe"]) for k in b.ROWS}
    for key, seed in (("paper", 1), ("extension", 2)):  # finished here, in an earlier session
        d = b._run_dir(key, seed)
        d.mkdir()
        (d / "bench_meta.json").write_text(json.dumps(b._meta(key, seed, "sha-a")))
        (d / "report.json").write_text(json.dumps(_report(95.0 - seed, (3, 7, 60), 2.0)))
    other = b._run_dir("paper", 0)  # a run of another baseline here: the kept run is used
    other.mkdir()
    (other / "bench_meta.json").write_text(json.dumps(b._meta("paper", 0, "sha-b")))
    (other / "report.json").write_text(json.dumps(_report(50.0, (1, 1, 1), 2.0)))
    old = {
        "base_sha": "sha-a",
        "rows": {
            "paper": {"runs": [b._summarise(_report(94.0, (3, 7, 68), 2.0), "paper", 0,
                                            {"date": "d"}) | {"recipe_sha": cur["paper"]}]},
            "extension": {"runs": [b._summarise(_report(99.0, (3, 7, 69), 2.0), "extension",
                                                0, {"date": "d"})
                                   | {"recipe_sha": cur["extension"]}]},
        },
    }  # fmt: skip
    (tmp_path / "ssr_budget_seeds.json").write_text(json.dumps(old))
    ran = []
    real_run = b._run

    def run(key, seed, *a):
        ran.append((key, seed, b._finished(key, seed, "sha-a")))
        if b._finished(key, seed, "sha-a"):
            return real_run(key, seed, *a)  # reuses the report, runs nothing
        return b._summarise(_report(93.0, (3, 7, 70), 2.0), key, seed, {"date": "d"})

    monkeypatch.setattr(b, "_run", run)
    monkeypatch.setattr(b.sys, "argv", ["bench", "--rows", "paper", "--seeds", "2", "--keep"])
    b.main()
    # only paper seed 2 ran; the two finished here were read back
    assert sorted(ran) == [("extension", 2, True), ("paper", 1, True), ("paper", 2, False)]
    out = json.loads((tmp_path / "ssr_budget_seeds.json").read_text())
    assert [r["seed"] for r in out["rows"]["paper"]["runs"]] == [0, 1, 2]
    assert [r["seed"] for r in out["rows"]["extension"]["runs"]] == [0, 2]
    assert [r["test_top1"] for r in out["rows"]["paper"]["runs"]] == [94.0, 94.0, 93.0]
