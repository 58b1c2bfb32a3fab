"""slr's deployed speed on kiaee-cnn / Fashion-MNIST with the fused form (issue 36, item 2).

Takes the slr model of ``bench_slr.py --kiaee-only --kiaee-ft-lr LR`` (its compact checkpoint
in ``~/.cache/compactnn/bench/slr_kiaee_lrLR``, the baseline it was compressed from) and
deploys each approximated layer again, with the same values, in the form measured fastest among
all of slr's forms (``compactnn.methods.slr.fastest_form``: the two branches with the sparse one
gathered / channel-dropped / dense, or one fused product ``[Q | A_K] [Z; X_K]`` / one conv over
``[Z; x_C]``), in NCHW as slr chooses today. Then times the baseline, the model as the run
shipped it and the re-deployed model interleaved (``metrics.measure_latency_interleaved``,
rounds alternate the order), 1 thread, on a real test batch of 1 and of 100, in three runtimes:
eager NCHW, eager channels_last (model and input converted; the conversion paid in every call)
and onnxruntime (each model's ONNX export, wrapped so that its session is timed by the same
interleaved call). Also per top-level module times (eager NCHW and channels_last, batch 100),
the per-layer candidate timings, test top-1, stored parameters (Ma et al.'s eq. 15 count) and
the weights the forms execute.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_slr_fast.py --ft-lr 0.01
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_slr_fast.py --no-ft  # no fine-tuning

Writes ``benchmarks/results/slr_fast_kiaee/result.json`` and ``NOTE.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import bench_slr as S
from compactnn import data as cdata
from compactnn import export, metrics, models, surgery
from compactnn.export.onnx import ort_session
from compactnn.layers import (
    ColumnSparseConv2d,
    ColumnSparseLinear,
    FusedSparseLowRankConv2d,
    FusedSparseLowRankLinear,
    SparsePlusLowRank,
    stored_param_count,
)
from compactnn.methods.slr import fastest_form
from compactnn.plan import CompressionPlan, SparseLowRank
from compactnn.surgery import sparse_lowrank_layer

OUT = Path(__file__).resolve().parent / "results" / "slr_fast_kiaee"
SHAPE = (1, 28, 28)
COLUMN = (ColumnSparseConv2d, ColumnSparseLinear)
SLR_LAYERS = (SparsePlusLowRank, FusedSparseLowRankConv2d, FusedSparseLowRankLinear, *COLUMN)


class _ChannelsLast(nn.Module):
    """``model`` in channels_last, its NCHW input converted in every call (as ``ship``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _Ort(nn.Module):
    """An onnxruntime session (1 thread) as a module, so the interleaved timer runs it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.sess = ort_session(path, threads=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(None, {"input": np.ascontiguousarray(x.numpy())})[0])


def _action(name: str, m: nn.Module, dense: nn.Module) -> SparseLowRank:
    """The SparseLowRank action holding the values of the deployed slr layer ``m``."""
    shape = dense.weight.shape
    if isinstance(m, (FusedSparseLowRankConv2d, FusedSparseLowRankLinear)):
        a, p, q = m.sparse_matrix(), m.first_matrix(), m.second_matrix()
        form, bias = ("fused-channels" if getattr(m, "form", "") == "channels" else "fused"), m.bias
    else:
        sp, lr = (m.sparse, m.lowrank) if isinstance(m, SparsePlusLowRank) else (m, None)
        a, form = sp.dense_matrix(), sp.form
        p = None if lr is None else lr.first.weight.reshape(lr.rank, -1)
        q = None if lr is None else lr.second.weight.reshape(shape[0], lr.rank)
        bias = sp.bias if lr is None else lr.second.bias
    low = p is not None and p.shape[0] > 0
    return SparseLowRank(
        layer=name, sparse=a.detach().reshape(shape), first=p.detach() if low else None,
        second=q.detach() if low else None, bias=None if bias is None else bias.detach(),
        form=form,
    )  # fmt: skip


def redeploy(
    model: nn.Module, x: torch.Tensor, form: str = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """Each slr layer of ``model`` in the form measured fastest now (``"auto"``), or all in
    ``form`` (same values)."""
    shapes = _shapes(model, x)
    new = copy.deepcopy(model)
    rec: dict[str, Any] = {}
    fixed = form
    for name, m in list(model.named_modules()):
        if not isinstance(m, SLR_LAYERS) or "." in name:
            continue
        dense = export.dense_equivalent(m)
        act = _action(name, m, dense)
        form, ms = (fixed, {}) if fixed != "auto" else fastest_form(dense, act, shapes[name])
        layer = sparse_lowrank_layer(dense, SparseLowRank(**{**act.__dict__, "form": form}))
        setattr(new, name, layer)
        rec[name] = {"was": act.form, "form": form, "form_ms_b100": ms,
                     "rank": 0 if act.first is None else int(act.first.shape[0]),
                     "kept_columns": int(layer.columns.numel()) if hasattr(layer, "columns")
                     else int(layer.sparse.columns.numel()),
                     "stored": stored_param_count(layer),
                     "executed": int(layer.executed_param_count()) if hasattr(
                         layer, "executed_param_count") else stored_param_count(layer),
                     "input_shape": list(shapes[name])}  # fmt: skip
        print(name, rec[name], flush=True)
    return new.eval(), rec


def _shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp, _n=n: out.__setitem__(_n, tuple(inp[0].shape[1:])))
        for n, m in model.named_children()]  # fmt: skip
    with torch.no_grad():
        model(x[:2])
    for h in hooks:
        h.remove()
    return out


def _stages(models_: dict[str, nn.Module], x: torch.Tensor, rounds: int = 3) -> dict[str, Any]:
    """Median ms of every top-level module of each model (batch ``x``), rounds interleaved."""
    times: dict[str, dict[str, list[float]]] = {k: {} for k in models_}
    for rnd in range(rounds):
        for key in list(models_) if rnd % 2 == 0 else list(models_)[::-1]:
            model, xi = models_[key], x
            if isinstance(model, _ChannelsLast):
                model, xi = model.model, x.contiguous(memory_format=torch.channels_last)
            t = times[key]
            hooks = []
            for n, mod in model.named_children():
                hooks.append(
                    mod.register_forward_pre_hook(
                        lambda m, i, _n=n, _t=t: _t.setdefault(_n, []).append(-time.perf_counter())
                    )
                )
                hooks.append(mod.register_forward_hook(
                    lambda m, i, o, _n=n, _t=t: _t[_n].__setitem__(-1, _t[_n][-1] + time.perf_counter())))  # fmt: skip
            with torch.no_grad():
                for _ in range(2):
                    model(xi)
                for v in t.values():
                    del v[-2:]  # warm-up runs
                for _ in range(7):
                    model(xi)
            for h in hooks:
                h.remove()
    return {k: {n: 1e3 * statistics.median(v) for n, v in t.items()} for k, t in times.items()}


def note(out: dict[str, Any]) -> str:
    """NOTE.md's tables from ``result.json``."""
    p, lat = out["params"], out["latency"]
    if "structure" in out:  # random values: the accuracy is the structure's run's
        st = out["structure"]
        acc = {"baseline": st["baseline_test"], "slr_shipped": st["test"],
               "slr_fused": st["test"], "slr_all_fused": st["test"]}  # fmt: skip
    else:
        acc = out["test_top1"]
    drop = acc["baseline"] - acc["slr_fused"]
    red = p["baseline"] / p["slr_fused"]
    L = [
        "# slr on kiaee-cnn / Fashion-MNIST, deployed with the fused form (issue 36, item 2)", "",
        f"Command: `{out['command']}` ({out['date']}; {out['machine']}; load average "
        f"{out['load_start'][0]:.1f} at start, {out['load_end'][0]:.1f} at the end; "
        f"torch {out['torch']}). The slr model: `{out['slr_checkpoint']}`; the baseline: "
        f"`{out['baseline_checkpoint']}`.", "",
        f"Test top-1: baseline {acc['baseline']:.2f} %, slr as shipped {acc['slr_shipped']:.2f} "
        f"%, slr re-deployed (auto: every form, fused ones included, timed per layer) "
        f"{acc['slr_fused']:.2f} %, slr all fused {acc['slr_all_fused']:.2f} % (drop "
        f"{drop:+.2f} points; re-deployed vs shipped: max |logit diff| "
        f"{out['max_abs_logit_diff_fused_vs_shipped']:.2e}, the same function). Stored "
        f"parameters (Ma et al. eq. 15 count + biases): baseline {p['baseline']:,}, slr "
        f"{p['slr_fused']:,} (**{red:.2f}x** fewer; as shipped {p['slr_shipped']:,}, all fused "
        f"{p['slr_all_fused']:,}). MACs per image: "
        + ", ".join(f"{k} {v:,}" for k, v in out["macs"].items()) + ".", "",
        "Latency, median ms, the four models timed interleaved in one call per row "
        "(`measure_latency_interleaved`, the order alternating between rounds), 1 thread, a "
        "real test batch; speed-up = baseline / model in the same runtime:", "",
        "| runtime | batch | baseline ms | slr shipped ms | slr auto ms | slr all fused ms | "
        "speed-up shipped | speed-up auto | speed-up all fused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, r in lat.items():
        rt, bs = key.rsplit(" b", 1)
        L.append(f"| {rt} | {bs} | {r['baseline']:.2f} | {r['slr_shipped']:.2f} | "
                 f"{r['slr_fused']:.2f} | {r['slr_all_fused']:.2f} | {r['speedup_shipped']:.2f}x "
                 f"| **{r['speedup_fused']:.2f}x** | **{r['speedup_all_fused']:.2f}x** |")  # fmt: skip
    L += ["", "Per layer: the form chosen now (`fastest_form`, batch 100 of the layer's real "
          "input shape, 1 thread, median of 7) and the candidates' ms:", "",
          "| layer | input | rank | kept cols | shipped form | chosen form | stored | executed "
          "| candidates ms (b=100) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, r in out["layers"].items():
        cands = ", ".join(f"{k} {v:.1f}" for k, v in r["form_ms_b100"].items())
        L.append(f"| {n} | {'x'.join(map(str, r['input_shape']))} | {r['rank']} | "
                 f"{r['kept_columns']} | {r['was']} | {r['form']} | {r['stored']:,} | "
                 f"{r['executed']:,} | {cands} |")  # fmt: skip
    stages = {
        **out["stage_ms_b100"],
        "onnxruntime (its own profile, 10 runs)": out["ort_profile_ms_b100"],
    }
    for rt, st in stages.items():
        names = list(dict.fromkeys(n for row in st.values() for n in row))
        L += [
            "",
            f"Per top-level module, {rt}, batch 100, median ms (interleaved rounds):",
            "",
            "| model | " + " | ".join(names) + " | sum |",
            "|---" * (len(names) + 2) + "|",
        ]
        for k, row in st.items():
            L.append(f"| {k} | " + " | ".join(f"{row.get(n, 0.0):.1f}" for n in names)
                     + f" | {sum(row.values()):.1f} |")  # fmt: skip
    ops = out.get("ort_profile_ops_ms_b100", {})
    if ops:
        L += ["", "onnxruntime's own profile by op (batch 100, median ms per run) of the slr "
              "layers, all fused, against the original layers (onnxruntime fuses a conv with its "
              "ReLU and names it after the ReLU):", "", "| model | module / op | ms |",
              "|---|---|---|"]  # fmt: skip
        for k, row in ops.items():
            for name, ms in row.items():
                if name.split()[0] in ("conv2", "conv3", "conv4", "relu2", "relu3", "relu4"):
                    L.append(f"| {k} | {name} | {ms:.2f} |")
    return "\n".join(L) + "\n"


def ort_profile(
    path: Path, x: torch.Tensor, runs: int = 10, by_op: bool = False
) -> dict[str, float]:
    """onnxruntime's own profile (1 thread): median ms per run of the nodes of each top-level
    module (the first component of the exported node names, e.g. ``/conv2/Gather``; a conv
    onnxruntime fuses with its ReLU is reported under the ReLU's name; the NCHWc layout
    reorders it inserts are summed apart; ``by_op``: per module and op type)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": np.ascontiguousarray(x.numpy())}
    for _ in range(2 + runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")].lstrip("/")
        mod = node.split("/")[0].strip()
        mod = "layout reorders" if mod.startswith("Reorder") else mod or "other"
        if by_op:
            mod = f"{mod} {e['args'].get('op_name', '')}"
        per.setdefault(mod, []).append(e["dur"] / 1e3)
    # every module's nodes ran 2 + runs times: the per-run sum, the warm-up runs dropped
    out = {}
    for mod, durs in per.items():
        k = len(durs) // (2 + runs)
        sums = [sum(durs[i * k : (i + 1) * k]) for i in range(2, 2 + runs)] if k else [0.0]
        out[mod] = statistics.median(sums)
    return out


def _top1(model: nn.Module, loader: Any) -> float:
    return S._top1(model, loader)


def compress_no_ft() -> Path:
    """``bench_slr.py --kiaee-only``'s call without its fine-tuning (the structure -- kept
    columns, ranks -- is fixed by the solves; fine-tuning changes values only), with today's
    slr (its per-layer form choice includes the fused forms); saved beside the FT run's."""
    import compactnn
    from compactnn.methods import CompressionData
    from compactnn.solvers.layerwise import SLRAdmmOptions

    train_l, val_l, test_l, model, _ = S._net_data("kiaee-cnn")
    cd = CompressionData(train=train_l, val=val_l, test=test_l, input_shape=SHAPE)
    t = time.perf_counter()
    res = compactnn.compress(model.eval(), "slr", cd, target={"params": 0.25}, max_rows=1024,
                             options=SLRAdmmOptions(max_iter=60), finetune_epochs=0,
                             progress=False, on_drop="warn", measure=False)  # fmt: skip
    out = S._saved_dir(0.0).with_name("slr_kiaee_noft")
    export.save_checkpoint(res.model, res.plan, out, input_shape=SHAPE)
    keys = ("kept_columns", "rank", "form", "form_ms", "stored_weights", "executed_weights")
    rec = {
        "seconds": time.perf_counter() - t,
        "chosen": res.chosen,
        "layers": {n: {k: v.get(k) for k in keys} for n, v in res.history["layers"].items()},
    }
    (out / "run.json").write_text(json.dumps(rec, indent=1, default=str))
    print(json.dumps(rec, default=str), flush=True)
    return out


def synthetic(path: Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """kiaee-cnn with random values (seed 0) and an slr model of the structure of the run in
    ``path`` (``bench_slr.py --kiaee-report``'s json: its chosen run): per approximated layer
    the same number of kept columns (drawn at random, seeded), the same rank and the form it
    shipped; random values (latency does not depend on them). The run's accuracy and count
    are in ``path``."""
    doc = json.loads(Path(path).read_text())
    run = next(r for r in doc["runs"] if r["ft_lr"] == doc["chosen_ft_lr"])
    base = models.create("kiaee-cnn", in_channels=1, seed=0, input_size=28).eval()
    g = torch.Generator().manual_seed(0)
    actions = []
    for name, st in run["layers"].items():
        mod = base.get_submodule(name)
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        n, d = w.shape
        A = torch.zeros(n, d)
        cols = torch.randperm(d, generator=g)[: st["kept_columns"]]
        A[:, cols] = w[:, cols]
        r = int(st["rank"])
        first = 0.05 * torch.randn(r, d, generator=g) if r else None
        second = 0.05 * torch.randn(n, r, generator=g) if r else None
        actions.append(SparseLowRank(layer=name, sparse=A.reshape(mod.weight.shape), first=first,
                                     second=second, bias=mod.bias.detach(),
                                     form=st["form"].split("/")[-1]))  # fmt: skip
    shipped = surgery.apply(CompressionPlan(actions), base, example_inputs=torch.zeros(2, *SHAPE))
    info = {"run": run["command"], "date": run["date"], "params": run["params"],
            "test": run["test"], "baseline_test": run["baseline"]["test"],
            "baseline_params": run["baseline"]["params"],
            "layers": {n: {k: run["layers"][n][k] for k in ("kept_columns", "columns", "rank",
                                                             "form")} for n in run["layers"]}}  # fmt: skip
    return base, shipped.eval(), info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument(
        "--no-ft",
        action="store_true",
        help="compress again without fine-tuning and measure that model",
    )
    ap.add_argument(
        "--structure-of",
        type=Path,
        default=None,
        help="no trained model: time kiaee-cnn (random values) against the slr "
        "model with the structure (kept columns, ranks, forms) of this result",
    )
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    if args.structure_of is not None:
        base, shipped, structure = synthetic(args.structure_of)
        test_l = DataLoader(cdata.get_dataset("fashion-mnist", "test"), batch_size=500)
        ckpt, saved = "kiaee-cnn random init (seed 0)", f"the structure of {args.structure_of}"
    else:
        saved = compress_no_ft() if args.no_ft else S._saved_dir(args.ft_lr)
        _, _, test_l, base, ckpt = S._net_data("kiaee-cnn")
        shipped = export.load(saved, models.create("kiaee-cnn", in_channels=1, seed=0,
                                                   input_size=28))  # fmt: skip
    base.eval()
    x100 = metrics.real_batch(test_l, 100)
    mode = ("--no-ft" if args.no_ft else f"--structure-of {args.structure_of}"
            if args.structure_of else f"--ft-lr {args.ft_lr:g}")  # fmt: skip
    out: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_slr_fast.py "
                   + f"{mode} --rounds {args.rounds}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} 2-core CPU ({platform.processor() or 'AMD EPYC'}), "
                   "shared with other jobs during the run (load below), no GPU, 1 thread",
        "load_start": os.getloadavg(), "baseline_checkpoint": str(ckpt), "slr_checkpoint": str(saved),
        "torch": torch.__version__,
    }  # fmt: skip
    fused, out["layers"] = redeploy(shipped, x100)
    all_fused, out["layers_all_fused"] = redeploy(shipped, x100, "fused")
    with torch.no_grad():
        out["max_abs_logit_diff_fused_vs_shipped"] = max(
            float((m(x100) - shipped(x100)).abs().max()) for m in (fused, all_fused)
        )
    trio = {"baseline": base, "slr_shipped": shipped, "slr_fused": fused,
            "slr_all_fused": all_fused}  # fmt: skip
    out["params"] = {k: stored_param_count(m) for k, m in trio.items()}
    out["macs"] = {k: metrics.count_flops(m, SHAPE) // 2 for k, m in trio.items()}
    if args.structure_of is None:
        out["test_top1"] = {k: _top1(m, test_l) for k, m in trio.items()}
    else:
        out["structure"] = structure
    out["latency"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ort = {}
        for k, m in trio.items():
            path = Path(tmp) / f"{k}.onnx"
            export.to_onnx(m, path, x100[:2], samples=x100[:16])
            ort[k] = _Ort(path)
        out["ort_profile_ms_b100"] = {k: ort_profile(Path(tmp) / f"{k}.onnx", x100)
                                      for k in ("baseline", "slr_fused", "slr_all_fused")}  # fmt: skip
        out["ort_profile_ops_ms_b100"] = {k: ort_profile(Path(tmp) / f"{k}.onnx", x100, by_op=True)
                                          for k in ("baseline", "slr_all_fused")}  # fmt: skip
        runtimes = {"eager NCHW": trio,
                    "eager channels_last": {k: _ChannelsLast(m) for k, m in trio.items()},
                    "onnxruntime": ort}  # fmt: skip
        for bs in (1, 100):
            x = x100[:bs]
            for rt, ms in runtimes.items():
                res = metrics.measure_latency_interleaved(
                    ms, SHAPE, rounds=args.rounds, batch_size=bs, threads=1, warmup=3,
                    repeats=40 if bs == 1 else 8, inputs=x)  # fmt: skip
                row = {k: float(r.median_ms) for k, r in res.items()}
                row["speedup_shipped"] = row["baseline"] / row["slr_shipped"]
                row["speedup_fused"] = row["baseline"] / row["slr_fused"]
                row["speedup_all_fused"] = row["baseline"] / row["slr_all_fused"]
                out["latency"][f"{rt} b{bs}"] = row
                print(rt, bs, row, flush=True)
    four = {"baseline": base, "slr_fused": fused, "slr_all_fused": all_fused}
    out["stage_ms_b100"] = {
        "eager NCHW": _stages(four, x100),
        "eager channels_last": _stages({k: _ChannelsLast(m) for k, m in four.items()}, x100),
    }
    out["load_end"] = os.getloadavg()
    out["wall_s"] = time.time() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "result_noft" if args.no_ft else "result"
    (OUT / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str))
    (OUT / f"{stem}.md").write_text(note(out))
    print(json.dumps({k: out.get(k) for k in ("params", "test_top1")}, default=str))


if __name__ == "__main__":
    main()
