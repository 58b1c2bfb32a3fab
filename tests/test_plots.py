"""compactnn.plots: the figures' data (spectra, sparsity maps) and every PNG from report.json."""

from __future__ import annotations

import json

import torch
from torch import nn

from compactnn.cli import main
from compactnn.layers import LowRankLinear, SparseLinear
from compactnn.plots import curves, layer_figures, plot_all


def test_layer_figures_hold_the_spectrum_and_the_support() -> None:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    w = original[3].weight.detach() * (torch.rand(3, 8) < 0.5)
    small = nn.Sequential(nn.Flatten(), LowRankLinear(16, 8, 2), nn.ReLU(), SparseLinear(w))
    figs = layer_figures(small, original)
    (spec,) = figs["spectra"]
    assert spec["layer"] == "1" and spec["rank"] == 2 and spec["full_rank"] == 8
    want = torch.linalg.svdvals(original[1].weight.detach())
    assert torch.allclose(torch.tensor(spec["singular_values"]), want, atol=1e-6)
    (sp,) = figs["sparsity"]
    assert sp["layer"] == "3" and sp["shape"] == [3, 8]
    assert abs(sp["density"] - float((w != 0).float().mean())) < 1e-9
    assert torch.equal(torch.tensor(sp["map"]) > 0, w != 0)  # no pooling at this size


def test_report_redraws_every_png_from_report_json(tmp_path) -> None:
    doc = {
        "method": "admm-sparse",
        "before": {
            "params": 130,
            "macs": 130,
            "layers": [
                {"name": "fc1", "type": "Linear", "units": 10, "params": 100},
                {"name": "fc2", "type": "Linear", "units": 3, "params": 30},
            ],
        },
        "after": {
            "params": 70,
            "macs": 70,
            "layers": [
                {"name": "fc1", "type": "SparseLinear", "units": 10, "params": 40},
                {"name": "fc2", "type": "Linear", "units": 3, "params": 30},
            ],
        },
        "history": {
            "path": [
                {"mu": 0.0, "sparsity_percent": 0.0, "val_top1": 90.0},
                {"mu": 0.1, "sparsity_percent": 40.0, "val_top1": 89.0},
            ]
        },
        "target": {
            "target": {"params": 0.5},
            "option": "mu",
            "strength": 0.1,
            "trace": [
                {"strength": 0.05, "kept": {"params": 0.8}},
                {"strength": 0.1, "kept": {"params": 0.5}},
            ],
        },
        "figures": layer_figures(
            nn.Sequential(LowRankLinear(6, 4, 1), SparseLinear(torch.eye(3, 4))),
            nn.Sequential(nn.Linear(6, 4)),
        ),
    }
    names = plot_all(doc, tmp_path)
    assert names == [
        "layers_params.png", "path_accuracy.png", "budget_search.png", "spectra.png",
        "sparsity.png",
    ]  # fmt: skip
    for n in names:
        assert (tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n
        (tmp_path / n).unlink()
    (tmp_path / "report.json").write_text(json.dumps(doc))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    for n in names:
        assert (tmp_path / n).is_file() and f"]({n})" in md, n


def test_curves_is_the_benchmarks_plot(tmp_path) -> None:
    p = curves(tmp_path / "c.png", [("a", [1, 2], [3, 4]), ("b", [1, 2], [4, 3])],
               xlabel="x", ylabel="y", marks=[(1.5, "chosen")])  # fmt: skip
    assert p.is_file() and p.stat().st_size > 1000


def test_the_engine_trajectory_is_drawn_from_the_history(tmp_path) -> None:  # noqa: ANN001
    hist = [
        {"step": s, "phase": "anneal" if s < 20 else "settle", "budget": {"macs": b},
         "kept": {"macs": k}, "val_top1": v}
        for s, b, k, v in ((10, 0.6, 0.7, 90.0), (20, 0.25, 0.25, 85.0), (30, 0.25, 0.25, 88.0))
    ]  # fmt: skip
    from compactnn.plots import plot_engine

    assert plot_engine({"method": "ssr", "history": {"engine": hist}}, tmp_path) == ["engine.png"]
    assert (tmp_path / "engine.png").stat().st_size > 0
    assert plot_engine({"method": "l1-norm", "history": {}}, tmp_path) == []
