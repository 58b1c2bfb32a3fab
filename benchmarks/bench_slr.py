"""SLR (Ma et al. 2019) at CPU scale: LeNet-Caffe / MNIST (the cached demo baseline).

Writes ``benchmarks/results/slr_lenet.json`` / ``.md`` / ``slr_lenet_*.png``. Slow (minutes),
not part of ``make test``:

    .venv/bin/python benchmarks/bench_slr.py [--seeds 0 1] [--quick]

Departures from the paper's protocol (also written into the results):
* LeNet-Caffe on MNIST instead of VGG-16 / NIN / AlexNet / GoogLeNet (CPU scale); kiaee-cnn on
  Fashion-MNIST runs separately (``--kiaee-only``, fixed lam1), cifar-quick too (``--net
  cifar-quick``).
* f1 normalised by the number of rows; λ in the solver's data scale (fraction of the λ1 that
  zeroes every column), t = 1 x curvature instead of 1e-3; M-step = 2 preconditioned
  full-batch momentum steps per iteration instead of SGD lr 1e-3; 150 ADMM iterations at most.
* N = 8 calibration batches of 128 images, at most 2048 rows per layer (paper: 1000 images).
* Fine-tuning: 1 epoch, SGD lr 1e-3 (paper: 5 epochs, lr 1e-5 in Caffe).
* Automatic choices (sparse-branch form) by measured latency; accuracy on the test split is
  reported only (nothing is chosen on it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import _lib
import compactnn
from compactnn import data as D
from compactnn import metrics
from compactnn.demo import demo_baseline

OUT = Path(__file__).resolve().parent / "results"


def _top1(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    ok = n = 0
    with torch.no_grad():
        for x, y in loader:
            ok += int((model(x).argmax(1) == y).sum())
            n += int(y.numel())
    return 100.0 * ok / n


def _lat(model: torch.nn.Module, shape: tuple[int, ...] = (1, 28, 28)) -> float:
    return _lib.cpu_ms(model, shape, repeats=20)


def _lat_pair(
    base: torch.nn.Module, model: torch.nn.Module, shape: tuple[int, ...] = (1, 28, 28)
) -> tuple[float, float]:
    """Compressed and baseline latency, interleaved 3 times (the machine is shared): medians."""
    a, b = [], []
    for _ in range(3):
        a.append(_lat(model, shape))
        b.append(_lat(base, shape))
    return statistics.median(a), statistics.median(b)


def _params(model: torch.nn.Module) -> int:
    from compactnn.layers import stored_param_count

    return int(stored_param_count(model))


def _run(model: Any, loaders: Any, **opts: Any) -> Any:
    t = time.perf_counter()
    res = compactnn.compress(model, "slr", loaders, progress=False, on_drop="warn", **opts)
    return res, time.perf_counter() - t


KIAEE_INPUT = (1, 28, 28)
#: the nets of the acceptance-style run (``--kiaee-only``; ``--net`` picks one): model name,
#: per-sample input, results tag, what the data is
NETS: dict[str, dict[str, Any]] = {
    "kiaee-cnn": {"input": (1, 28, 28), "tag": "kiaee", "kw": {"input_size": 28},
                  "data": "Fashion-MNIST 28x28"},
    "cifar-quick": {"input": (1, 32, 32), "tag": "cifar-quick", "kw": {},
                    "data": "Fashion-MNIST padded to 32x32 (CIFAR-10 stand-in)"},
}  # fmt: skip


def _net_data(net: str) -> tuple[Any, Any, Any, torch.nn.Module, Path]:
    """The 90 % training split, the 10 % validation split (seeded, the split ``compress`` itself
    would carve), the 10k test set and the baseline trained 6 epochs on the 90 % split (SGD lr
    0.01 momentum 0.9 wd 5e-4 cosine, seed 0; cached)."""
    import bench_kiaee_fashion as K

    ns = argparse.Namespace(train_limit=0, split_seed=0, base_epochs=6, retrain=False)
    if net == "kiaee-cnn":
        train_l, val_l, test_l, _ = K._splits(ns)
        model, ckpt = K._baseline(ns, train_l)
        return train_l, val_l, test_l, model, ckpt
    from compactnn import models
    from compactnn.train import TrainConfig, load_checkpoint, save_checkpoint, train

    train_l, val_l, test_l, _ = K._splits(ns, pad_to=32)
    ckpt = K.cache_dir() / "checkpoints" / f"{net}-fashion32-train90-e6-split0.safetensors"
    model = models.create(net, in_channels=1, seed=0)
    if ckpt.is_file():
        model, _ = load_checkpoint(ckpt, model)
    else:
        cfg = TrainConfig(epochs=6, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=0)
        train(model, train_l, config=cfg, progress=False)
        save_checkpoint(model, ckpt, model=net, model_kwargs={"in_channels": 1},
                        dataset="fashion-mnist", input_shape=[1, 32, 32], pad_to=32,
                        train_split="90 % of the training set (split_loader, fraction 0.1)",
                        split_seed=0, epochs=6, seed=0)  # fmt: skip
    return train_l, val_l, test_l, model, ckpt


def _stage_ms(
    model: torch.nn.Module, repeats: int = 9, shape: tuple[int, ...] = KIAEE_INPUT
) -> dict[str, float]:
    """Median wall-clock of every top-level child of ``model`` (batch 100, 1 thread)."""
    model.eval()
    x = torch.randn(100, *shape)
    times: dict[str, list[float]] = {}
    hooks = []
    for n, mod in model.named_children():

        def pre(mod: Any, inp: Any, n: str = n) -> None:
            times.setdefault(n, []).append(-time.perf_counter())

        def post(mod: Any, inp: Any, out: Any, n: str = n) -> None:
            times[n][-1] += time.perf_counter()

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    with torch.no_grad():
        for _ in range(repeats + 2):
            model(x)
    for h in hooks:
        h.remove()
    return {n: 1000 * statistics.median(v[2:]) for n, v in times.items()}


RUNTIMES = ("eager", "eager channels_last", "onnxruntime")


def _saved_dir(lr: float, net: str = "kiaee-cnn") -> Path:
    """Where the acceptance run's compressed model is kept (compact checkpoint, not in git)."""
    from compactnn.demo import cache_dir

    return cache_dir() / "bench" / f"slr_{NETS[net]['tag']}_lr{lr:g}"


def _run_json(lr: float, net: str) -> Path:
    return OUT / f"slr_{NETS[net]['tag']}_lr{lr:g}.json"


def _runtimes(base: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Median ms of both models on a real batch ``x`` (100 images, 1 thread) on three runtimes.

    The same runtime for both models in every row: eager PyTorch in NCHW (the default), eager
    with both models' weights in ``channels_last`` (PyTorch's CPU max-pool over conv1's
    96 x 28 x 28 output is ~7x faster in that layout here), and onnxruntime on each model's ONNX
    export (``export.to_onnx``: checked and parity-tested). The three rows are interleaved
    3 times (the machine is shared) and the medians kept.
    """
    import copy
    import tempfile

    from compactnn import export

    def cl(m: torch.nn.Module) -> torch.nn.Module:
        c = copy.deepcopy(m).eval().to(memory_format=torch.channels_last)
        with torch.no_grad():
            if not torch.allclose(m(x[:8]), c(x[:8]), atol=1e-4, rtol=1e-4):
                raise RuntimeError("channels_last changed a model's outputs")
        return c

    base.eval()
    model.eval()
    cb, cm = cl(base), cl(model)
    pairs = {"eager": (base, model), "eager channels_last": (cb, cm)}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in RUNTIMES}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for tag, m in (("base", base), ("slr", model)):
            path = Path(tmp) / f"{tag}.onnx"
            export.to_onnx(m, path, x[:2], samples=x[:16])
            paths.append(path)
        for _ in range(3):
            for k, (b, m) in pairs.items():
                for i, mm in enumerate((b, m)):
                    times[k][i].append(float(metrics.measure_latency(
                        mm, tuple(x.shape[1:]), batch_size=len(x), threads=1, repeats=20,
                        inputs=x).median_ms))  # fmt: skip
            for i, path in enumerate(paths):
                times["onnxruntime"][i].append(
                    float(export.onnx_latency(path, x, threads=1, repeats=20).median_ms)
                )
    out: dict[str, Any] = {}
    for k, (b, m) in times.items():
        bm, mm = statistics.median(b), statistics.median(m)
        out[k] = {"base_ms": bm, "ms": mm, "speedup": bm / mm}
    return out


COMPARE = ("slr", "ddlr", "ssr", "l1-norm")


def compare(args: argparse.Namespace) -> None:
    """Item 4(e): slr against ddlr (low rank alone), ssr and l1-norm at equal params (LeNet).

    Every method gets the same budget ``target={"params": P}`` (its own search for its strength,
    on training / validation data), its own fine-tuning off, then the same fine-tuning for every
    returned model (1 epoch SGD lr 1e-3 momentum 0.9, as table (a)). Test top-1 is read once
    per row for the report. Writes ``results/slr_compare.{json,md}``.
    """
    model, test, _ = demo_baseline(progress=False)
    train, _ = D.get_loaders("mnist", batch_size=128, seed=0)
    from compactnn.methods.blocks import finetune_model

    out: dict[str, Any] = {
        "command": f"nohup .venv/bin/python benchmarks/bench_slr.py --compare {args.compare:g}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} 2-core CPU shared, no GPU, 1 torch thread",
        "load_start": os.getloadavg(), "target": {"params": args.compare},
        "baseline": {"acc": _top1(model, test), "params": _params(model)},
        "protocol": compare.__doc__, "rows": [],
    }  # fmt: skip
    for method in COMPARE:
        own_ft = {} if method == "ddlr" else {"finetune_epochs": 0}
        t = time.perf_counter()
        try:
            res = compactnn.compress(model, method, (train, test), target={"params": args.compare},
                                     progress=False, on_drop="warn", measure=False, seed=0,
                                     **own_ft)  # fmt: skip
        except Exception as e:  # noqa: BLE001 -- a row that cannot run says why
            out["rows"].append({"method": method, "status": f"{type(e).__name__}: {e}"[:300]})
            print(out["rows"][-1], flush=True)
            continue
        sec = time.perf_counter() - t
        acc0 = _top1(res.model, test)
        lat, blat = _lat_pair(model, res.model)
        finetune_model(res.model, train, epochs=1, lr=1e-3, momentum=0.9, weight_decay=0.0,
                       seed=0)  # fmt: skip
        out["rows"].append({
            "method": method, "status": "ok", "params": _params(res.model),
            "acc_no_ft": acc0, "acc_ft1": _top1(res.model, test), "speedup": blat / lat,
            "latency_ms": lat, "base_latency_ms": blat, "seconds": sec,
            "chosen": {k: v for k, v in (res.chosen or {}).items()
                       if isinstance(v, (int, float, str))},
        })  # fmt: skip
        print(out["rows"][-1], flush=True)
        out["load_end"] = os.getloadavg()
        (OUT / "slr_compare.json").write_text(json.dumps(out, indent=1, default=str))
    _compare_md(out)


def _compare_md(out: dict[str, Any]) -> None:
    b = out["baseline"]
    L = [
        "# SLR item 4(e): slr vs ddlr / ssr / l1-norm at equal params (LeNet-Caffe / MNIST)", "",
        f"Command: `{out['command']}`; {out['date']}; {out['machine']}; load average "
        f"{out['load_start'][0]:.1f} -> {out.get('load_end', out['load_start'])[0]:.1f}.",
        f"Baseline: top-1 {b['acc']:.2f} %, {b['params']:,} params. Budget: "
        f"`target={out['target']}` for every method, one seed (0).", "",
        inspect.cleandoc(out["protocol"]), "",
        "| method | params | kept % | speed-up (b=100, 1 thr) | top-1 no FT | top-1 after 1 FT "
        "epoch | drop (points) | compress s | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    ok = [r for r in out["rows"] if r["status"] == "ok"]
    for r in out["rows"]:
        if r["status"] != "ok":
            L.append(f"| {r['method']} | – | – | – | – | – | – | – | {r['status']} |")
            continue
        L.append(
            f"| {r['method']} | {r['params']:,} | {100 * r['params'] / b['params']:.2f} | "
            f"{r['speedup']:.2f}x | {r['acc_no_ft']:.2f} | {r['acc_ft1']:.2f} | "
            f"{b['acc'] - r['acc_ft1']:+.2f} | {r['seconds']:.0f} | ok |"
        )
    slr = next((r for r in ok if r["method"] == "slr"), None)
    if slr is not None and len(ok) > 1:
        L += ["", "Verdict (after the shared fine-tuning, one seed):"]
        for r in ok:
            if r is slr:
                continue
            d = slr["acc_ft1"] - r["acc_ft1"]
            word = "wins" if d > 0.05 else "loses" if d < -0.05 else "ties"
            L.append(f"* slr {word} against {r['method']} by {d:+.2f} points "
                     f"({slr['params']:,} vs {r['params']:,} params).")  # fmt: skip
    (OUT / "slr_compare.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def kiaee_remeasure(lrs: list[float], net: str = "kiaee-cnn") -> None:
    """Re-time the saved compressed models and the baseline (e.g. on a quiet machine)."""
    from compactnn import export, models

    _, _, test_l, base, _ = _net_data(net)
    base.eval()
    x = metrics.real_batch(test_l, 100)
    shape = NETS[net]["input"]
    for lr in lrs:
        path = _run_json(lr, net)
        run = json.loads(path.read_text())
        fresh = models.create(net, in_channels=1, seed=0, **NETS[net]["kw"])
        model = export.load(_saved_dir(lr, net), fresh)
        load0 = os.getloadavg()
        rt = _runtimes(base, model, x)
        run["runtimes"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load": [load0, os.getloadavg()], "rows": rt,
                           "command": f"python benchmarks/bench_slr.py --net {net} "
                           "--kiaee-remeasure --kiaee-ft-lrs "
                           + " ".join(f"{v:g}" for v in lrs)}  # fmt: skip
        run["stage_ms_remeasured"] = {"baseline": _stage_ms(base, shape=shape),
                                      "slr": _stage_ms(model, shape=shape)}  # fmt: skip
        path.write_text(json.dumps(run, indent=1, default=str))
        print(lr, json.dumps(rt))


def kiaee(args: argparse.Namespace) -> None:
    """The issue's acceptance call on kiaee-cnn / Fashion-MNIST (1x28x28), one fine-tuning lr.

    ``compress(model, "slr", data, target={"params": 0.25}, finetune_epochs=5,
    finetune_lr=LR)`` with data = the 90 % training split (54k), the 10 % validation split and
    the 10k test set; baseline: ``bench_kiaee_fashion``'s cached kiaee-cnn, 6 epochs on the 90 %
    split (SGD 0.01, cosine). Solver: 1024 rows per layer, 60 ADMM iterations (residual rule),
    2 M-steps. Writes ``results/slr_kiaee_lr{LR}.json``; ``--kiaee-report`` merges the lrs,
    chooses one on validation and writes ``slr_kiaee.{json,md}``.
    """
    import copy

    from compactnn.methods import CompressionData
    from compactnn.solvers.layerwise import SLRAdmmOptions

    net = args.net
    shape = NETS[net]["input"]
    train_l, val_l, test_l, model, ckpt = _net_data(net)
    model.eval()
    cd = CompressionData(train=train_l, val=val_l, test=test_l, input_shape=shape)
    lr = args.kiaee_ft_lr
    opts = dict(target={"params": 0.25}, max_rows=1024, options=SLRAdmmOptions(max_iter=60),
                finetune_lr=lr, progress=False, on_drop="warn", measure=False)  # fmt: skip
    out: dict[str, Any] = {
        "command": "nohup .venv/bin/python benchmarks/bench_slr.py "
        + ("" if net == "kiaee-cnn" else f"--net {net} ")
        + f"--kiaee-only --kiaee-ft-lr {lr:g}"
        + (" --kiaee-no-ft-row" if args.kiaee_no_ft_row else ""),
        "net": net,
        "data": NETS[net]["data"],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": "x86_64, 2-core CPU shared with other sessions' jobs (load below), no GPU, 1 torch thread",
        "load_start": os.getloadavg(),
        "baseline": {
            "checkpoint": str(ckpt),
            "val": _top1(model, val_l),
            "test": _top1(model, test_l),
            "params": _params(model),
            "stage_ms": _stage_ms(model, shape=shape),
        },  # fmt: skip
        "ft_lr": lr,
    }
    if args.kiaee_no_ft_row:  # the same call without fine-tuning (what the solve alone gives)
        t = time.perf_counter()
        res0 = compactnn.compress(copy.deepcopy(model), "slr", cd, finetune_epochs=0, **opts)
        out["no_ft"] = {"seconds": time.perf_counter() - t, "val": _top1(res0.model, val_l),
                        "test": _top1(res0.model, test_l)}  # fmt: skip
        print("no FT", out["no_ft"], flush=True)
    t = time.perf_counter()
    res = compactnn.compress(model, "slr", cd, finetune_epochs=5, **opts)
    sec = time.perf_counter() - t
    from compactnn import export

    export.save_checkpoint(res.model, res.plan, _saved_dir(lr, net), input_shape=shape)
    load0 = os.getloadavg()
    rt = _runtimes(model, res.model, metrics.real_batch(test_l, 100))
    lat, blat = rt["eager"]["ms"], rt["eager"]["base_ms"]  # eager NCHW, measured once
    keys = ("cr_A", "cr_B", "cr_AB", "kept_columns", "columns", "rank", "form", "form_ms",
            "seconds", "iterations", "status", "lam1", "lam2", "f1", "stored_weights",
            "original_weights", "nnz_A", "coo_A")  # fmt: skip
    out.update(
        seconds=sec, target=res.target, chosen_share=res.chosen["share"],
        params=_params(res.model), val=_top1(res.model, val_l), test=_top1(res.model, test_l),
        latency_ms=lat, base_latency_ms=blat, speedup=blat / lat,
        stage_ms=_stage_ms(res.model, shape=shape), load_end=os.getloadavg(),
        runtimes={"date": out["date"], "load": [load0, os.getloadavg()], "rows": rt,
                  "command": out["command"]},
        saved=str(_saved_dir(lr, net)),
        layers={n: {k: st.get(k) for k in keys} for n, st in res.history["layers"].items()},
    )  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    _run_json(lr, net).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: out[k] for k in ("params", "val", "test", "speedup", "seconds")}))


def kiaee_report(lrs: list[float], net: str = "kiaee-cnn") -> None:
    """Merge the per-lr runs: the lr is chosen on validation; test reported for the choice."""
    runs = [json.loads(_run_json(lr, net).read_text()) for lr in lrs]
    best = max(runs, key=lambda r: r["val"])
    base = best["baseline"]
    tag = NETS[net]["tag"]
    approx_layers = list(best["layers"])
    st_base, st_slr, when = base["stage_ms"], best["stage_ms"], "during the run"
    if "stage_ms_remeasured" in best:  # the quieter re-measure, when there is one
        st_base = best["stage_ms_remeasured"]["baseline"]
        st_slr = best["stage_ms_remeasured"]["slr"]
        when = f"re-measured {best['runtimes']['date']}"
    approx = sum(st_base[n] for n in approx_layers)
    total = sum(st_base.values())
    bound = total / (total - approx)
    out = {"runs": runs, "chosen_ft_lr": best["ft_lr"], "speedup_bound": bound,
           "departures": kiaee.__doc__}  # fmt: skip
    (OUT / f"slr_{tag}.json").write_text(json.dumps(out, indent=1, default=str))
    drop = base["test"] - best["test"]
    worst = max(v["seconds"] for v in best["layers"].values())
    red = base["params"] / best["params"]
    rt = best.get("runtimes")
    sp = {k: v["speedup"] for k, v in rt["rows"].items()} if rt else {"eager": best["speedup"]}
    ok = {"params >= 4x": red >= 4,
          **{f"speed-up >= 2x ({k})": v >= 2 for k, v in sp.items()},
          "drop <= 0.5 pt": drop <= 0.5, "solve <= 30 s/layer": worst <= 30}  # fmt: skip
    lr_list = ", ".join(f"{r['ft_lr']:g}" for r in runs)
    lr_args = " ".join(f"{r['ft_lr']:g}" for r in runs)
    L = [
        f"# SLR -- {net} / {NETS[net]['data']}: the issue's acceptance call"
        + ("" if net == "kiaee-cnn" else " on a second net (Table I/II-style)"), "",
        f"Call: `compress(model, \"slr\", data, target={{\"params\": 0.25}}, finetune_epochs=5, "
        "finetune_lr=LR, max_rows=1024, options=SLRAdmmOptions(max_iter=60))`; one run per LR "
        f"({lr_list}), LR chosen on validation: "
        f"**{best['ft_lr']:g}**.",
        f"Commands: {'; '.join('`' + r['command'] + '`' for r in runs)}; then "
        f"`.venv/bin/python benchmarks/bench_slr.py "
        + ("" if net == "kiaee-cnn" else f"--net {net} ")
        + f"--kiaee-report --kiaee-ft-lrs {lr_args}`.",
        f"Date {best['date']}; {best['machine']}; load average at start / end "
        f"{best['load_start'][0]:.1f} / {best['load_end'][0]:.1f} (timings are noisy).",
        f"Baseline: `{Path(base['checkpoint']).name}` ({net}, 6 epochs on the 90 % training "
        f"split, 54k images): validation {base['val']:.2f} %, test {base['test']:.2f} %, "
        f"{base['params']:,} params.", "",
        "| FT lr | params | reduction | speed-up (b=100, 1 thr) | val % | test % | test drop "
        "(points) | max solve s/layer | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:
        w = max(v["seconds"] for v in r["layers"].values())
        L.append(
            f"| {r['ft_lr']:g}{' (chosen)' if r is best else ''} | {r['params']:,} | "
            f"{base['params'] / r['params']:.2f}x | {r['speedup']:.2f}x | {r['val']:.2f} | "
            f"{r['test']:.2f} | {base['test'] - r['test']:+.2f} | {w:.1f} | {r['seconds']:.0f} |"
        )
    for r in runs:
        if "no_ft" in r:
            L.append(f"\nWithout fine-tuning (same call, finetune_epochs=0): validation "
                     f"{r['no_ft']['val']:.2f} %, test {r['no_ft']['test']:.2f} %.")  # fmt: skip
    L += ["", f"Per layer of the chosen run (share {best['chosen_share']:.4f} of every "
          "approximated layer's weights; CR as eq. 15, values over kept columns for A):", "",
          "| layer | kept cols | rank | CR(A) % | CR(B) % | CR(A+B) % | nnz(A) | COO(A) | form | "
          "iters | solve s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, st in best["layers"].items():
        L.append(
            f"| {n} | {st['kept_columns']}/{st['columns']} | {st['rank']} | "
            f"{100 * st['cr_A']:.1f} | {100 * st['cr_B']:.1f} | {100 * st['cr_AB']:.1f} | "
            f"{st['nnz_A']:,} | {st['coo_A']:,} | {st['form']} | {st['iterations']} | "
            f"{st['seconds']:.1f} |"
        )
    if rt:
        L += ["", f"Speed-up of the chosen run on three runtimes (the same runtime for both models; "
              f"batch of 100 real test images, 1 thread, median of 3 interleaved rounds of 20; "
              f"{rt['date']}, load average {rt['load'][0][0]:.1f} -> {rt['load'][1][0]:.1f}; "
              f"`{rt['command']}`):", "",
              "| runtime | baseline ms | SLR ms | speed-up |", "|---|---|---|---|"]  # fmt: skip
        for k, v in rt["rows"].items():
            L.append(f"| {k} | {v['base_ms']:.1f} | {v['ms']:.1f} | {v['speedup']:.2f}x |")
    kept = sorted((n for n in st_base if n not in approx_layers), key=lambda n: -st_base[n])
    approx_slr = sum(st_slr[n] for n in approx_layers)
    L += ["", f"Where the time goes (eager NCHW, median ms per top-level module, batch 100, "
          f"1 thread, {when}):", "",
          "| module | " + " | ".join(st_base) + " |",
          "|---|" + "---|" * len(st_base),
          "| baseline | " + " | ".join(f"{v:.1f}" for v in st_base.values()) + " |",
          "| SLR | " + " | ".join(f"{v:.1f}" for v in st_slr.values()) + " |", "",
          f"The approximated layers ({', '.join(approx_layers)}) are {approx:.0f} of the "
          f"baseline's {total:.0f} ms (eager NCHW, {when}); even at zero cost the network "
          f"would be at most **{bound:.2f}x** faster there; measured, they run "
          f"{approx:.0f} -> {approx_slr:.0f} ms ({approx / approx_slr:.2f}x). "
          "The largest modules SLR keeps "
          "(the first conv is not approximated, as in the paper, and no layer's output channels "
          "change): " + ", ".join(f"{n} {st_base[n]:.1f} ms" for n in kept[:3]) + ".", "",
          "Done-when: " + ", ".join(f"{k}: {'met' if v else '**not met**'}" for k, v in ok.items())
          + "."]  # fmt: skip
    (OUT / f"slr_{tag}.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--kiaee-only",
        action="store_true",
        help="only the acceptance call (on kiaee-cnn unless --net says otherwise)",
    )
    ap.add_argument(
        "--net",
        default="kiaee-cnn",
        choices=list(NETS),
        help="net of --kiaee-only / --kiaee-report / --kiaee-remeasure",
    )
    ap.add_argument("--kiaee-ft-lr", type=float, default=1e-2, help="fine-tuning lr")
    ap.add_argument("--kiaee-no-ft-row", action="store_true", help="also the call without FT")
    ap.add_argument("--kiaee-report", action="store_true", help="merge the per-lr runs")
    ap.add_argument(
        "--kiaee-remeasure",
        action="store_true",
        help="re-time the saved --kiaee-only models (all three runtimes), then report",
    )
    ap.add_argument("--kiaee-ft-lrs", type=float, nargs="+", default=[1e-2, 1e-3])
    ap.add_argument(
        "--compare",
        type=float,
        default=None,
        metavar="P",
        help="item 4(e) only: slr / ddlr / ssr / l1-norm at target params P",
    )
    ap.add_argument(
        "--plots-only", action="store_true", help="redraw the PNGs from results/slr_lenet.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.plots_only:
        _plots(json.loads((OUT / "slr_lenet.json").read_text()))
        return
    if args.compare is not None:
        compare(args)
        return
    if args.kiaee_remeasure:
        kiaee_remeasure(args.kiaee_ft_lrs, args.net)
        kiaee_report(args.kiaee_ft_lrs, args.net)
        return
    if args.kiaee_report:
        kiaee_report(args.kiaee_ft_lrs, args.net)
        return
    if args.kiaee_only:
        kiaee(args)
        return
    model, test, _ = demo_baseline(progress=False)
    train, _ = D.get_loaders("mnist", batch_size=128, seed=0)
    loaders = (train, test)
    base_acc = _top1(model, test)
    base_lat = _lat(model)
    base_params = _params(model)
    out: dict[str, Any] = {
        "command": "nohup .venv/bin/python benchmarks/bench_slr.py --seeds "
        + " ".join(map(str, args.seeds)),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()} 2-core CPU shared, no GPU, "
        "1 torch thread",
        "baseline": {"acc": base_acc, "latency_ms_b100": base_lat, "params": base_params},
        "departures": __doc__.split("(also written into the results):")[1],
        "table": [],
        "fig3": [],
        "fig4": [],
        "components": [],
    }

    def save() -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "slr_lenet.json").write_text(json.dumps(out, indent=1, default=str))

    # (a) Table I/II style: whole network, paper defaults (first conv kept, FC sparse only)
    for lam1 in (0.005, 0.01) if not args.quick else (0.01,):
        for seed in args.seeds:
            res, sec = _run(model, loaders, lam1=lam1, seed=seed)
            acc0 = _top1(res.model, test)
            lat, blat = _lat_pair(model, res.model)
            p = _params(res.model)
            from compactnn.methods.blocks import finetune_model

            fm = res.model
            finetune_model(fm, train, epochs=1, lr=1e-3, momentum=0.9, weight_decay=0.0,
                           seed=seed)  # fmt: skip
            acc1 = _top1(fm, test)
            layers = {
                n: {k: s[k] for k in ("cr_A", "cr_B", "cr_AB", "kept_columns", "columns", "rank",
                                      "form", "seconds", "iterations", "status", "coo_A",
                                      "stored_weights", "original_weights")}
                for n, s in res.history["layers"].items()
            }  # fmt: skip
            out["table"].append({
                "lam1": lam1, "seed": seed, "acc_no_ft": acc0, "acc_ft1": acc1,
                "params": p, "param_cr": p / base_params, "latency_ms": lat,
                "base_latency_ms": blat, "speedup": blat / lat, "seconds": sec, "layers": layers,
            })  # fmt: skip
            print(out["table"][-1], flush=True)
            save()

    # (b) Fig. 3: symmetric vs asymmetric as more layers are approximated (first conv included)
    chains = [["conv1"], ["conv1", "conv2"], ["conv1", "conv2", "fc1"]]
    for layers in chains if not args.quick else chains[:2]:
        for asym in (False, True):
            res, sec = _run(model, loaders, lam1=0.01, layers=tuple(layers), asymmetric=asym,
                            skip_first=False)  # fmt: skip
            out["fig3"].append({"layers": layers, "asymmetric": asym,
                                "acc": _top1(res.model, test), "params": _params(res.model),
                                "seconds": sec})  # fmt: skip
            print(out["fig3"][-1], flush=True)
            save()

    # (c) Fig. 4: non-linear vs linear response, conv2 alone, CR vs accuracy
    for lam1 in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        for resp in ("relu", "linear"):
            res, sec = _run(model, loaders, lam1=lam1, layers=("conv2",), response=resp)
            st = res.history["layers"]["conv2"]
            out["fig4"].append({"lam1": lam1, "response": resp, "acc": _top1(res.model, test),
                                "cr_AB": st["cr_AB"], "rank": st["rank"],
                                "kept": st["kept_columns"], "seconds": sec})  # fmt: skip
            print(out["fig4"][-1], flush=True)
            save()

    # (d) A only / B only / A + B on conv2 at equal size: lam bisected (log scale) until
    # CR(A+B) of conv2 is within [0.27, 0.33]
    variants = {
        "A+B": lambda lam: dict(lam1=lam),
        "A only": lambda lam: dict(lam1=lam, lam2=float("inf")),
        "B only": lambda lam: dict(lam1=float("inf"), lam2=lam),
    }
    for label, kw in variants.items():
        lo, hi = 1e-4, 0.5
        best = None
        for _ in range(7 if not args.quick else 3):
            lam = (lo * hi) ** 0.5
            res, sec = _run(model, loaders, layers=("conv2",), **kw(lam))
            st = res.history["layers"]["conv2"]
            best = (lam, res, st, sec)
            if st["cr_AB"] > 0.33:
                lo = lam
            elif st["cr_AB"] < 0.27:
                hi = lam
            else:
                break
        lam, res, st, sec = best  # type: ignore[misc]
        out["components"].append({"variant": label, "lam": lam, "acc": _top1(res.model, test),
                                  "cr_AB": st["cr_AB"], "rank": st["rank"],
                                  "kept": st["kept_columns"], "seconds": sec})  # fmt: skip
        print(out["components"][-1], flush=True)
        save()
    _markdown(out)
    _plots(out)


def _markdown(out: dict[str, Any]) -> None:
    b = out["baseline"]
    lines = [
        "# SLR (Ma et al. 2019) -- LeNet-Caffe / MNIST",
        "",
        f"Command: `{out['command']}`; {out['date']}; {out['machine']}.",
        f"Baseline: top-1 {b['acc']:.2f} %, {b['params']:,} params, "
        f"{b['latency_ms_b100']:.2f} ms / batch 100 (1 thread).",
        "",
        "## Departures from the paper's protocol",
        out["departures"],
        "## (a) whole network (first conv kept, FC sparse only, asymmetric)",
        "",
        "| lam1 | params kept % | speed-up | top-1 no FT | top-1 after 1 FT epoch | solve s |",
        "|---|---|---|---|---|---|",
    ]
    by: dict[float, list[dict[str, Any]]] = {}
    for r in out["table"]:
        by.setdefault(r["lam1"], []).append(r)
    for lam, rs in by.items():
        lines.append(
            f"| {lam} | {_lib.pm_values([100 * r['param_cr'] for r in rs])} | {_lib.pm_values([r['speedup'] for r in rs])}"
            f" | {_lib.pm_values([r['acc_no_ft'] for r in rs])} | {_lib.pm_values([r['acc_ft1'] for r in rs])} | "
            f"{_lib.pm_values([r['seconds'] for r in rs])} |"
        )
    lines += ["", "Per layer (first seed), CR as eq. (15) (A: values over kept columns; "
              "B: r(n+d)); COO column = 3 nnz(A) / original:", "",
              "| lam1 | layer | CR(A) % | CR(B) % | CR(A+B) % | COO(A) % | kept cols | rank | form "
              "| solve s | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for lam, rs in by.items():
        for n, s in rs[0]["layers"].items():
            lines.append(
                f"| {lam} | {n} | {100 * s['cr_A']:.1f} | {100 * s['cr_B']:.1f} | "
                f"{100 * s['cr_AB']:.1f} | {100 * s['coo_A'] / s['original_weights']:.1f} | "
                f"{s['kept_columns']}/{s['columns']} | {s['rank']} | {s['form']} | "
                f"{s['seconds']:.1f} | {s['status']} |"
            )
    lines += [
        "",
        "Paper (VGG-16 / CIFAR-10, Table I/III): 22.5 % of params (4.44x), 2.2x speed-up, "
        "-0.40 % after 5 epochs of fine-tuning; 10-30 min of solving per layer.",
        "",
        "## (b) Fig. 3: symmetric vs asymmetric (lam1 = 0.01, first conv included)",
        "",
        "| layers | symmetric top-1 | asymmetric top-1 |",
        "|---|---|---|",
    ]
    f3: dict[str, dict[bool, float]] = {}
    for r in out["fig3"]:
        f3.setdefault("+".join(r["layers"]), {})[r["asymmetric"]] = r["acc"]
    for k, v in f3.items():
        lines.append(
            f"| {k} | {v.get(False, float('nan')):.2f} | {v.get(True, float('nan')):.2f} |"
        )
    lines += [
        "",
        "## (c) Fig. 4: non-linear vs linear response (conv2 alone)",
        "",
        "| lam1 | response | CR(A+B) % | kept cols | rank | top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["fig4"]:
        lines.append(f"| {r['lam1']} | {r['response']} | {100 * r['cr_AB']:.1f} | {r['kept']} | "
                     f"{r['rank']} | {r['acc']:.2f} |")  # fmt: skip
    lines += [
        "",
        "## (d) components (conv2 alone, equal size: CR(A+B) in [27, 33] %)",
        "",
        "| variant | lam | CR(A+B) % | kept cols | rank | top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["components"]:
        lines.append(f"| {r['variant']} | {r['lam']:.4g} | {100 * r['cr_AB']:.1f} | {r['kept']} | {r['rank']} | "
                     f"{r['acc']:.2f} |")  # fmt: skip
    lines += ["", "(e) comparison with ddlr / ssr / l1-norm at equal params: not run (time box)."]
    (OUT / "slr_lenet.md").write_text("\n".join(lines) + "\n")


def _plots(out: dict[str, Any]) -> None:
    """Fig. 4 and Fig. 3 of the bench with compactnn's own plotting code (compactnn.plots,
    the code of ``compactnn report``)."""
    from compactnn.plots import curves

    fig4 = [
        (resp, [100 * r["cr_AB"] for r in rs], [r["acc"] for r in rs])
        for resp in ("relu", "linear")
        for rs in [[r for r in out["fig4"] if r["response"] == resp]]
    ]
    curves(OUT / "slr_lenet_fig4.png", fig4, xlabel="CR(A+B) of conv2 (%)",
           ylabel="test top-1 (%)", title="SLR LeNet conv2: non-linear vs linear response")  # fmt: skip
    fig3 = [
        ("asymmetric" if asym else "symmetric", [len(r["layers"]) for r in rs], [r["acc"] for r in rs])
        for asym in (False, True)
        for rs in [[r for r in out["fig3"] if r["asymmetric"] == asym]]
    ]  # fmt: skip
    curves(OUT / "slr_lenet_fig3.png", fig3, xlabel="layers approximated",
           ylabel="test top-1 (%)", title="SLR LeNet: layers approximated one after another")  # fmt: skip


if __name__ == "__main__":
    main()
