"""PGT (Zhou et al. 2016, "Less is more") at CPU scale: supplement Tables 2-3, Figs. 1-2.

Every automatic choice is made on a validation split (10 % of the training set, seeded); the
test set is only read for the final report. Rows:

* **Table 2** -- ``lenet-caffe`` on MNIST, group sparsity on the neurons of conv2 and fc1 (the
  paper's conv2 / fc3), conv2 strength swept over three values with the fc strength fixed
  (chosen on validation), seeds averaged; neurons left, params, test error, measured CPU
  speed-up; top-t (l0, supplement sec. 4) and l1-norm pruning at the same neuron counts; the
  tensor low-rank step at the same strengths; one row in the paper's protocol (training from
  scratch).
* **Table 3** -- ``cifar-quick`` on Fashion-MNIST padded to 32x32 (CIFAR-10 stand-in), conv3
  strength swept, fc strength fixed.
* **Fig. 1** -- validation error vs % non-zero neurons of conv2 alone and fc1 alone: low rank vs
  group sparsity vs top-t (at the group runs' counts).
* **Fig. 2** -- histograms of fc1's neuron norms and of |w| after one unconstrained epoch.

Strengths are given as ``s`` = the run's total threshold in units of the layer's median neuron
norm (``PGT.at_strength``): ``lam_l = s * m_l / sum_k eta_k``.

    .venv/bin/python benchmarks/bench_pgt.py             # full run (2 worker processes)
    .venv/bin/python benchmarks/bench_pgt.py --quick     # smoke run (few steps, 1 seed)
    .venv/bin/python benchmarks/bench_pgt.py --table2 --jobs 2   # Table 2, longer schedule
    .venv/bin/python benchmarks/bench_pgt.py --table3 --jobs 2   # Table 3, the same protocol
    .venv/bin/python benchmarks/bench_pgt.py --followup ftlr --seeds SEED  # issue 17 follow-ups
    .venv/bin/python benchmarks/bench_pgt.py --followup fc55 --seeds 0 1 2 3

The default run writes benchmarks/results/pgt_short_protocol.{json,md}, pgt_fig1.png,
pgt_fig2.png (rows as they finish to pgt_rows.jsonl); ``--table2`` pgt_lenet_mnist.{json,md},
``--table3`` pgt_cifar_fashion_t3.{json,md} (rows: the protocol's ``rows`` file);
``--followup`` appends one row per seed to its rows file (:data:`FOLLOWUPS`: ``ftlr`` was
``benchmarks/pgt_ftlr_followup.py SEED``, ``fc55`` ``benchmarks/pgt_fc55_followup.py SEEDS``). Slow; not part of ``make test``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import _lib

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = RESULTS / "pgt_rows.jsonl"

# ------------------------------------------------------------------ protocol (CPU scale)
LENET_LAYERS = ("conv2", "fc1")
CONV2_S = (0.9, 1.0, 1.1)  # the three conv2 strengths (paper: tau1 = 60 / 80 / 100)
FC_GRID = (2.5, 3.0, 3.5)  # fc strength candidates, one chosen on validation (paper: 100)
FC_TARGET = 11  # the paper's fc3 neurons: the validation choice must reach it
SEEDS = (0, 1, 2, 3)  # the paper averages four runs
SEEDS_BASELINES = (0,)  # top-t: one seed (CPU time: 2 cores shared by 4 developers)
SEEDS_LOWRANK = (0,)  # the low-rank step costs ~2.5x a training step here: one seed
# 400 SGD steps of batch 64 (~half an epoch) + 300 fine-tuning steps: the CPU-scale budget
PGT_COMMON = dict(
    epochs=1,
    steps_per_epoch=400,
    lr=0.01,
    finetune_epochs=1,
    finetune_steps_per_epoch=300,
    finetune_lr=0.005,
    finetune_distill=0.5,  # from the model before PGT (as the SSR bench)
)
CIFAR_LAYERS = ("conv3", "fc1")
CONV3_S = (0.9, 1.0, 1.1)
CIFAR_FC_S = 1.5
CIFAR_BASE_EPOCHS = 2
CIFAR_BASE_STEPS = 500  # per epoch
FIG1_S = (0.8, 1.2, 1.8)
FIG1_STEPS = 200

PAPER_T2 = {
    "dense": {"conv2": 50, "fc1": 500, "params": 431080},
    "rows": [
        {"tau1": 60, "conv2": 27, "fc1": 11},
        {"tau1": 80, "conv2": 22, "fc1": 11},
        {"tau1": 100, "conv2": 18, "fc1": 11, "params": 13838},
    ],
}
PAPER_T3 = {
    "dense": {"conv3": 64, "fc1": 64},
    "rows": [
        {"tau1": 220, "conv3": 44, "fc1": 19},
        {"tau1": 240, "conv3": 34, "fc1": 18},
        {"tau1": 280, "conv3": 29, "fc1": 19},
    ],
}

_W: dict[str, Any] = {}  # per-worker cache (datasets, baselines)


# ------------------------------------------------------------------ worker side
def _init_worker(threads: int, quick: bool = False) -> None:
    torch.set_num_threads(threads)
    _W["quick"] = quick


def _data(dataset: str) -> Any:
    """(CompressionData with a seeded 10 % validation split, baseline model)."""
    if dataset in _W:
        return _W[dataset]
    from compactnn import data as cdata
    from compactnn import models
    from compactnn.api import as_compression_data
    from compactnn.train import load_checkpoint

    if dataset in ("mnist", "fashion32-train90"):  # the Table 2 / Table 3 (v2) sweeps
        P = _protocol(2 if dataset == "mnist" else 3)
        name = "mnist" if dataset == "mnist" else "fashion-mnist"
        pad = {} if dataset == "mnist" else {"pad_to": 32}
        train, test = cdata.get_loaders(name, batch_size=64, seed=0, **pad)
        cd = as_compression_data((train, test), input_shape=P["shape"], seed=0, val_fraction=0.1)
        # the dense reference: the better on validation of the protocol's baseline seeds
        cands = [
            (_acc(m, cd.val), -sd, m) for sd in P["base_seeds"] for m in [_baseline(P, cd, sd)]
        ]
        _, neg_seed, base = max(cands, key=lambda c: c[:2])
        _W[f"{dataset}_base_seed"] = -neg_seed
        _W[dataset] = (cd, base)
        return _W[dataset]
    else:
        train, test = cdata.get_loaders("fashion-mnist", batch_size=64, seed=0, pad_to=32)
        shape = (1, 32, 32)
        base = None
        if _cifar_ckpt().is_file():
            base, _ = load_checkpoint(_cifar_ckpt(), models.create("cifar-quick", in_channels=1))
    cd = as_compression_data((train, test), input_shape=shape, seed=0, val_fraction=0.1)
    _W[dataset] = (cd, base)
    return _W[dataset]


MNIST_BASE_EPOCHS = 8  # as the `compactnn demo` baseline, but on the 90 % training split
MNIST_BASE_SEEDS = (0, 1)  # two baselines trained, the better on validation is the reference


def _baseline_ckpt(P: dict[str, Any], seed: int = 0) -> Path:
    from compactnn.demo import cache_dir

    tag = "quick" if _W.get("quick") else f"e{P['base_epochs']}"
    ds = "mnist" if P["dataset"] == "mnist" else "fashion32"
    name = f"{P['model']}-{ds}-train90-split0-{tag}-seed{seed}.safetensors"
    return cache_dir() / "checkpoints" / name


def _baseline(P: dict[str, Any], cd: Any, seed: int = 0) -> nn.Module:
    """The protocol's net (LeNet Caffe 20-50-500-10, or cifar-quick with 1 input channel)
    trained on the 90 % training split only (the validation images held out, so validation
    choices are not optimistic); trained once and cached. The `compactnn demo` baseline's recipe:
    ``base_epochs`` epochs SGD lr 0.01 cosine, momentum 0.9, wd 5e-4."""
    from compactnn import models
    from compactnn.train import TrainConfig, load_checkpoint, save_checkpoint, train

    ckpt = _baseline_ckpt(P, seed)
    extra = {} if P["model"] == "lenet-caffe" else {"in_channels": 1}
    model = models.create(P["model"], seed=seed, **extra)
    if ckpt.is_file():
        model, _ = load_checkpoint(ckpt, model)
        return model
    epochs = 1 if _W.get("quick") else P["base_epochs"]
    steps = 10 if _W.get("quick") else None
    cfg = TrainConfig(epochs=epochs, lr=0.01, seed=seed, max_steps_per_epoch=steps)
    t0 = time.perf_counter()
    train(model, cd.train, config=cfg, progress=False, desc=f"train {P['model']} (90 %)")
    print(f"trained the train-90 % {P['model']} baseline in {time.perf_counter() - t0:.0f} s")
    save_checkpoint(
        model,
        ckpt,
        model=P["model"],
        dataset=P["dataset"],
        input_shape=list(P["shape"]),
        train_split="90 % of the training set (split_loader, fraction 0.1, seed 0)",
        split_seed=0,
        epochs=epochs,
        seed=seed,
    )
    return model


def _cifar_ckpt() -> Path:
    from compactnn.demo import cache_dir

    tag = "quick" if _W.get("quick") else f"e{CIFAR_BASE_EPOCHS}x{CIFAR_BASE_STEPS}"
    return cache_dir() / "checkpoints" / f"cifar-quick-fashion32-{tag}.safetensors"


def _acc(model: nn.Module, loader: Any) -> float:
    from compactnn.metrics import accuracy

    return accuracy(model, loader, topk=(1,))["top1"]


def _lam(base: nn.Module, cd: Any, strengths: dict[str, float], **opts: Any) -> dict[str, float]:
    from compactnn.methods import PGT
    from compactnn.methods.blocks import layer_scales

    m = PGT(**{**opts, "layers": tuple(strengths)})
    # s = 1 for every layer: the run's total threshold sum_k eta_k lam_l is the median norm
    scales = layer_scales(base, list(strengths))
    eta = max(m.total_step(cd), 1e-12)
    return {n: strengths[n] * scales[n] / eta for n in strengths}


def _task(spec: dict[str, Any]) -> dict[str, Any]:
    """One run; returns a row (``_model``: the compressed model, dropped from the JSON)."""
    import compactnn
    from compactnn import metrics
    from compactnn.methods import PGT

    t0 = time.perf_counter()
    kind = spec["kind"]
    if kind == "cifar_base":
        return _cifar_base(spec)
    cd, base = _data(spec.get("dataset", "mnist"))
    row: dict[str, Any] = {k: v for k, v in spec.items() if not k.startswith("_")}
    if kind == "fig2":
        return _fig2(spec, cd)
    if kind == "pgt":
        opts = dict(spec["opts"])
        if "s" in spec and opts.get("penalty", "group") != "topk":
            opts["lam"] = _lam(base, cd, spec["s"], **{k: v for k, v in opts.items()})
            row["lam"] = opts["lam"]
        res = PGT(**opts).run(copy.deepcopy(base), cd, progress=False)
        row["val_before_ft"] = res.history.get("val_top1_before_finetune")
        if "rebalance" in res.history:
            row["rebalance"] = res.history["rebalance"]
        model = res.model
    elif kind == "ft":
        model, rec = _ft_task(spec, cd, base)
        row.update(rec)
    elif kind == "ssr":  # SSR's per-layer lambdas searched for the given filter counts
        raise SystemExit(
            "The 'ssr at PGT's counts' rows used SSR.calibrate_counts, the layer-by-layer lambda "
            "search removed by the budgeted engine (issue 33): SSR now meets a budget in one "
            "run (benchmarks/bench_engine.py). The committed rows stay as measured then."
        )
    elif kind == "l1-norm":
        res = compactnn.compress(
            base, "l1-norm", cd, progress=False, measure=False, on_drop="warn", **spec["opts"]
        )
        model = res.model
    else:  # pragma: no cover
        raise ValueError(kind)
    units = {n: int(m.weight.shape[0]) for n, m in model.named_modules() if hasattr(m, "weight")}
    row.update(
        units={n: units[n] for n in spec["layers"]},
        params=metrics.count_params(model),
        val_top1=_acc(model, cd.val),
        # selection / fine-tuning-selection / Fig. 1 rows are validation-only
        test_top1=None if spec.get("tag") in ("select", "fig1", "ftsel") else _acc(model, cd.test),
        seconds=time.perf_counter() - t0,
        _model=model,
    )
    return row


def _cifar_base(spec: dict[str, Any]) -> dict[str, Any]:
    """Train cifar-quick on Fashion-MNIST 32x32 once (cached)."""
    from compactnn import data as cdata
    from compactnn import models
    from compactnn.train import TrainConfig, save_checkpoint, train

    t0 = time.perf_counter()
    ckpt = _cifar_ckpt()
    if not ckpt.is_file():
        tr, _ = cdata.get_loaders("fashion-mnist", batch_size=64, seed=0, pad_to=32)
        from compactnn.api import as_compression_data

        cd = as_compression_data((tr, None), input_shape=(1, 32, 32), seed=0, val_fraction=0.1)
        torch.manual_seed(0)
        model = models.create("cifar-quick", in_channels=1)
        steps = spec.get("steps") or CIFAR_BASE_STEPS
        train(
            model,
            cd.train,
            config=TrainConfig(epochs=CIFAR_BASE_EPOCHS, lr=0.01, max_steps_per_epoch=steps),
            progress=False,
        )
        save_checkpoint(model, ckpt, model="cifar-quick", dataset="fashion-mnist-32")
        _W.pop("fashion32", None)
    return {"kind": "cifar_base", "seconds": time.perf_counter() - t0}


def _fig2(spec: dict[str, Any], cd: Any) -> dict[str, Any]:
    """One unconstrained epoch from scratch: fc1 neuron norms and |w| (supplement Fig. 2)."""
    from compactnn import models
    from compactnn.train import TrainConfig, train

    torch.manual_seed(0)
    model = models.create("lenet-caffe")
    train(
        model,
        cd.train,
        config=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=spec.get("steps") or 400),
        progress=False,
    )
    w = model.fc1.weight.detach()
    b = model.fc1.bias.detach()
    norms = torch.cat([w, b[:, None]], dim=1).norm(dim=1)
    return {
        "kind": "fig2",
        "neuron_norms": norms.tolist(),
        "abs_w": w.abs().flatten()[::20].tolist(),  # every 20th of 400,000
    }


# ------------------------------------------------------------------ main side
def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=list)


def _model_path(key: str) -> Path:
    """Where a run's compressed model is kept (so a resumed benchmark can time it)."""
    import hashlib

    from compactnn.demo import cache_dir

    return cache_dir() / "pgt_bench_models" / (hashlib.sha1(key.encode()).hexdigest() + ".pt")


def _with_model(row: dict[str, Any], cd: Any) -> dict[str, Any]:
    if "_model" not in row:
        row = dict(row, _model=torch.load(_model_path(row["_key"]), weights_only=False))
    return row


def _pool_map(
    pool: Any,
    specs: list[dict[str, Any]],
    rows_file: Path = ROWS,
    *,
    only_cached: bool = False,
) -> list[dict[str, Any]]:
    """Run ``specs``; every row is appended to ``rows_file`` as soon as it finishes. A spec whose
    row is already in ``rows_file`` (same spec, e.g. a resumed run) is not run again; with
    ``only_cached`` the specs without a row are dropped (report from what was measured)."""
    cached: dict[str, dict[str, Any]] = {}
    if rows_file != ROWS and rows_file.is_file():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            if "_key" in r:
                cached[r["_key"]] = r
    keys = [_spec_key(s) for s in specs]
    todo = [(k, s) for k, s in zip(keys, specs, strict=True) if k not in cached]
    if only_cached:
        todo = []

    def log(k: str, r: dict[str, Any]) -> None:
        if rows_file != ROWS:
            r["_key"] = k
            if "_model" in r:
                _model_path(k).parent.mkdir(parents=True, exist_ok=True)
                torch.save(r["_model"], _model_path(k))
        with rows_file.open("a") as f:
            f.write(json.dumps({k2: v for k2, v in r.items() if k2 != "_model"}) + "\n")
        cached[k] = r

    if pool is None:
        for k, s in todo:
            log(k, _task(s))
    else:
        futs = {pool.submit(_task, s): k for k, s in todo}
        for f in futures.as_completed(futs):
            log(futs[f], f.result())
    return [cached[k] for k in keys if k in cached]


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    """(mean, sd) of ``xs``: the pair this bench's JSON stores."""
    d = _lib.mean_sd(xs)
    return d["mean"], d["sd"]


def _latency(model: nn.Module, shape: tuple[int, ...]) -> float:
    return _lib.cpu_ms(model, shape, repeats=30)


def _summary(rows: list[dict[str, Any]], layers: tuple[str, ...], base_ms: float, shape: Any):
    """mean ± sd over the rows of one setting (neurons, params, test error, speed-up)."""
    out: dict[str, Any] = {"n": len(rows)}
    for n in layers:
        out[n] = _mean_sd([r["units"][n] for r in rows])
    out["params"] = _mean_sd([r["params"] for r in rows])
    out["test_err"] = _mean_sd([100 - r["test_top1"] for r in rows])
    out["val_err"] = _mean_sd([100 - r["val_top1"] for r in rows])
    ms = [_latency(r["_model"], shape) for r in rows]
    out["speedup"] = _mean_sd([base_ms / m for m in ms])
    return out


def _target_met(v: dict[str, Any]) -> bool:
    """The issue's target: conv2 <= 18, fc1 <= 11 neurons, <= +0.3 % test error (means)."""
    return bool(v["conv2_mean"] <= 18 and v["fc1_mean"] <= 11 and v["test_err_increase"] <= 0.3)


def _fmt(ms: tuple[float, float], digits: int = 1) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _followup(name: str, seeds: list[int]) -> None:
    """Run the follow-up ``name`` of :data:`FOLLOWUPS` for each seed, in this process on one
    thread; each row is appended to its rows file and summarised on stdout."""
    f = FOLLOWUPS[name]
    _init_worker(1, False)
    for seed in seeds:
        opts = {**T2_COMMON, **f["ft"], "layers": LENET_LAYERS, "seed": seed}
        spec = {
            "kind": "pgt",
            "s": {"conv2": 1.05, "fc1": f["fc_s"]},
            "opts": opts,
            "layers": list(LENET_LAYERS),
            "conv2_s": 1.05,
            "fc_s": f["fc_s"],
            "seed": seed,
            "tag": f["tag"],
            "penalty": "group",
        }
        r = _task(spec)
        model = r.pop("_model")
        if f["latency"]:
            r["cpu_ms_batch100"] = _latency(model, (1, 28, 28))
        with (RESULTS / f["rows"]).open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        keys = ("seed", "units", "params", "val_before_ft", "val_top1", "test_top1", "seconds")
        print(json.dumps({k: r[k] for k in keys}), flush=True)


def main() -> None:  # noqa: C901, PLR0915 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, 1 seed")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--cifar-only", action="store_true", help="Table 3 alone, in this process")
    ap.add_argument(
        "--table2", action="store_true", help="Table 2 with the longer schedule (pgt_lenet_mnist)"
    )
    ap.add_argument(
        "--table3",
        action="store_true",
        help="Table 3 (cifar-quick / Fashion 32x32) with Table 2's longer schedule and "
        "validation choices (pgt_cifar_fashion_t3)",
    )
    ap.add_argument(
        "--from-rows",
        action="store_true",
        help="--table2 / --table3: report from the rows already in the rows file (run nothing "
        "new after the strength and fine-tuning choices)",
    )
    ap.add_argument("--followup", choices=sorted(FOLLOWUPS),
                    help="only an issue 17 follow-up to --table2, one row per --seeds")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="--followup's seeds")
    args = ap.parse_args()
    t_start = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.followup:
        _followup(args.followup, args.seeds)
        return
    if args.table2:
        _table2(args, t_start)
        return
    if args.table3:
        _table3(args, t_start)
        return
    if args.cifar_only:
        _cifar_only(args, t_start)
        return
    if ROWS.exists():
        ROWS.unlink()
    seeds = (0,) if args.quick else SEEDS
    seeds_b = (0,) if args.quick else SEEDS_BASELINES
    seeds_lr = SEEDS_LOWRANK
    common = dict(PGT_COMMON)
    if args.quick:
        common.update(steps_per_epoch=10, finetune_steps_per_epoch=10)
    fig1_steps = 10 if args.quick else FIG1_STEPS

    ctx = mp.get_context("spawn")
    pool = (
        futures.ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=_init_worker, initargs=(args.threads, args.quick)
        )
        if args.jobs > 1
        else None
    )
    _init_worker(args.threads, args.quick)

    def pgt(s: dict[str, float], seed: int, layers=LENET_LAYERS, **kw: Any) -> dict[str, Any]:
        opts = {**common, "layers": layers, "seed": seed, **kw.pop("opts", {})}
        return {"kind": "pgt", "s": s, "opts": opts, "layers": list(layers), **kw}

    # phase 1 (validation only): the fc strength; Fig. 2; Fig. 1 group / low rank; cifar base
    mid = CONV2_S[1]
    p1 = [pgt({"conv2": mid, "fc1": f}, 0, tag="select", fc_s=f) for f in FC_GRID]
    p1.append({"kind": "fig2", "steps": 10 if args.quick else None})
    fig1 = []
    for pen in ("group", "lowrank"):
        for layer in LENET_LAYERS:
            for s in FIG1_S:
                fig1.append(
                    pgt(
                        {layer: s},
                        0,
                        layers=(layer,),
                        tag="fig1",
                        penalty=pen,
                        fig1_s=s,
                        opts=dict(
                            penalty=pen,
                            steps_per_epoch=fig1_steps,
                            finetune_epochs=0,
                        ),
                    )
                )
    p1 += fig1
    if not args.skip_cifar:
        p1.append({"kind": "cifar_base", "steps": 10 if args.quick else None})
    r1 = _pool_map(pool, p1)
    select = [r for r in r1 if r.get("tag") == "select"]
    meets = [r for r in select if r["units"]["fc1"] <= FC_TARGET]
    chosen = (
        max(meets, key=lambda r: (r["val_top1"], -r["fc_s"]))
        if meets
        else min(select, key=lambda r: r["units"]["fc1"])
    )
    fc_s = chosen["fc_s"]
    print(f"[{time.perf_counter() - t_start:.0f}s] fc strength chosen on validation: {fc_s}")
    fig2 = next(r for r in r1 if r["kind"] == "fig2")
    fig1_rows = [r for r in r1 if r.get("tag") == "fig1"]

    # phase 2: Table 2 (group, 4 seeds; low rank, 2 seeds), paper protocol row, Table 3
    p2 = [
        pgt({"conv2": c, "fc1": fc_s}, sd, tag="t2", penalty="group", conv2_s=c)
        for c in CONV2_S
        for sd in seeds
    ]
    p2 += [
        pgt(
            {"conv2": c, "fc1": fc_s},
            sd,
            tag="t2",
            penalty="lowrank",
            conv2_s=c,
            opts=dict(penalty="lowrank"),
        )
        for c in CONV2_S
        for sd in seeds_lr
    ]
    scratch_epochs = 1 if args.quick else 3
    p2.append(
        pgt(
            {"conv2": CONV2_S[-1], "fc1": fc_s},
            0,
            tag="scratch",
            penalty="group",
            conv2_s=CONV2_S[-1],
            opts=dict(init="scratch", epochs=scratch_epochs),
        )
    )
    if not args.skip_cifar:
        p2 += [
            pgt(
                {"conv3": c, "fc1": CIFAR_FC_S},
                0,
                layers=CIFAR_LAYERS,
                tag="t3",
                dataset="fashion32",
                conv3_s=c,
            )
            for c in CONV3_S
        ]
    r2 = _pool_map(pool, p2)
    print(f"[{time.perf_counter() - t_start:.0f}s] phase 2 done")

    # phase 3: top-t and l1-norm at the group rows' (mean) neuron counts; Fig. 1 top-t
    group_rows = {
        c: [
            r
            for r in r2
            if r.get("penalty") == "group" and r.get("conv2_s") == c and r["tag"] == "t2"
        ]
        for c in CONV2_S
    }
    counts = {
        c: {n: max(1, round(statistics.fmean(r["units"][n] for r in rows))) for n in LENET_LAYERS}
        for c, rows in group_rows.items()
    }
    p3 = [
        {
            "kind": "pgt",
            "opts": {
                **common,
                "layers": LENET_LAYERS,
                "seed": sd,
                "penalty": "topk",
                "keep": counts[c],
            },
            "layers": list(LENET_LAYERS),
            "tag": "t2",
            "penalty": "topk",
            "conv2_s": c,
        }
        for c in CONV2_S
        for sd in seeds_b
    ]
    p3 += [
        {
            "kind": "l1-norm",
            "opts": {
                "layers": LENET_LAYERS,
                "keep": counts[c],
                "finetune_epochs": 2,
                "lr": PGT_COMMON["finetune_lr"],
                "finetune_distill": PGT_COMMON["finetune_distill"],
                "seed": 0,
                "finetune_steps_per_epoch": 10 if args.quick else 350,
            },
            "layers": list(LENET_LAYERS),
            "tag": "t2",
            "penalty": "l1-norm",
            "conv2_s": c,
        }
        for c in CONV2_S
    ]
    for r in fig1_rows:
        if r["penalty"] != "group":
            continue
        layer = r["layers"][0]
        p3.append(
            {
                "kind": "pgt",
                "opts": {
                    **common,
                    "layers": (layer,),
                    "seed": 0,
                    "penalty": "topk",
                    "keep": r["units"][layer],
                    "steps_per_epoch": fig1_steps,
                    "finetune_epochs": 0,
                },
                "layers": [layer],
                "tag": "fig1",
                "penalty": "topk",
                "fig1_s": r["fig1_s"],
            }
        )
    r3 = _pool_map(pool, p3)
    if pool is not None:
        pool.shutdown()
    print(f"[{time.perf_counter() - t_start:.0f}s] phase 3 done")
    fig1_rows += [r for r in r3 if r.get("tag") == "fig1"]

    # ------------------------------------------------------------------ report
    from compactnn import metrics

    torch.set_num_threads(1)
    cd, base = _data("mnist")
    base_ms = _latency(base, (1, 28, 28))
    dense = {
        "params": metrics.count_params(base),
        "val_err": 100 - _acc(base, cd.val),
        "test_err": 100 - _acc(base, cd.test),
        "cpu_ms_batch100": base_ms,
    }
    t2_rows = [r for r in r2 + r3 if r.get("tag") == "t2"]
    table2 = []
    for pen in ("group", "lowrank", "topk", "l1-norm"):
        for c in CONV2_S:
            rows = [r for r in t2_rows if r["penalty"] == pen and r["conv2_s"] == c]
            if rows:
                table2.append(
                    {
                        "method": pen,
                        "conv2_s": c,
                        "fc_s": fc_s,
                        **_summary(rows, LENET_LAYERS, base_ms, (1, 28, 28)),
                    }
                )
    scratch = [r for r in r2 if r.get("tag") == "scratch"]
    scratch_sum = (
        {
            "method": "group (from scratch)",
            "conv2_s": CONV2_S[-1],
            "fc_s": fc_s,
            "epochs": scratch_epochs,
            **_summary(scratch, LENET_LAYERS, base_ms, (1, 28, 28)),
        }
        if scratch
        else None
    )
    table3: list[dict[str, Any]] = []
    cifar_dense = None
    t3 = [r for r in r2 if r.get("tag") == "t3"]
    if t3:
        cd3, base3 = _data("fashion32")
        ms3 = _latency(base3, (1, 32, 32))
        cifar_dense = {
            "params": metrics.count_params(base3),
            "val_err": 100 - _acc(base3, cd3.val),
            "test_err": 100 - _acc(base3, cd3.test),
            "epochs": CIFAR_BASE_EPOCHS,
        }
        for c in CONV3_S:
            rows = [r for r in t3 if r["conv3_s"] == c]
            table3.append(
                {
                    "method": "group",
                    "conv3_s": c,
                    "fc_s": CIFAR_FC_S,
                    **_summary(rows, CIFAR_LAYERS, ms3, (1, 32, 32)),
                }
            )
    # done-when verdict: the strongest group row
    strongest = next(r for r in table2 if r["method"] == "group" and r["conv2_s"] == CONV2_S[-1])
    verdict = {
        "conv2_mean": strongest["conv2"][0],
        "fc1_mean": strongest["fc1"][0],
        "test_err_increase": strongest["test_err"][0] - dense["test_err"],
        "params_mean": strongest["params"][0],
    }
    verdict["met"] = _target_met(verdict)
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"thread(s) for latency; training {args.jobs} job(s) x {args.threads} thread(s)",
        "command": "python benchmarks/bench_pgt.py" + (" --quick" if args.quick else ""),
        "seconds": time.perf_counter() - t_start,
        "protocol": {
            **PGT_COMMON,
            "conv2_s": CONV2_S,
            "fc_grid": FC_GRID,
            "fc_chosen": fc_s,
            "seeds": seeds,
            "seeds_baselines": seeds_b,
            "seeds_lowrank": seeds_lr,
            "fig1_steps": fig1_steps,
            "quick": args.quick,
        },
        "selection": [{k: r[k] for k in ("fc_s", "units", "val_top1")} for r in select],
        "dense": dense,
        "table2": table2,
        "scratch": scratch_sum,
        "paper_table2": PAPER_T2,
        "cifar_dense": cifar_dense,
        "table3": table3,
        "paper_table3": PAPER_T3,
        "verdict": verdict,
        "fig1": [
            {k: r[k] for k in ("penalty", "layers", "units", "val_top1", "fig1_s") if k in r}
            for r in fig1_rows
        ],
    }
    name = "pgt_short_protocol_quick" if args.quick else "pgt_short_protocol"
    _lib.write_result(RESULTS, name, out, _markdown)
    _plots(fig1_rows, fig2, RESULTS, suffix="_quick" if args.quick else "")
    print(f"[{time.perf_counter() - t_start:.0f}s] wrote {RESULTS / name}.json/.md")


def _plots(fig1_rows: list[dict[str, Any]], fig2: dict[str, Any], out: Path, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    total = {"conv2": 50, "fc1": 500}
    for ax, layer in zip(axes, ("conv2", "fc1"), strict=True):
        for pen, mk in (("lowrank", "s-"), ("group", "o-"), ("topk", "^-")):
            pts = sorted(
                (100 * r["units"][layer] / total[layer], 100 - r["val_top1"])
                for r in fig1_rows
                if r["penalty"] == pen and r["layers"] == [layer]
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), mk, label=pen)
        ax.set_xlabel(f"% non-zero neurons of {layer}")
        ax.set_ylabel("validation top-1 error (%)")
        ax.set_title(f"LeNet {layer} (supp. Fig. 1)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"pgt_fig1{suffix}.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist(fig2["neuron_norms"], bins=40)
    axes[0].set_title("fc1 neuron norms, 400 unconstrained steps")
    axes[1].hist(fig2["abs_w"], bins=60)
    axes[1].set_title("fc1 |w|, 400 unconstrained steps")
    fig.tight_layout()
    fig.savefig(out / f"pgt_fig2{suffix}.png", dpi=110)
    plt.close(fig)


def _markdown(o: dict[str, Any]) -> str:
    d = o["dense"]
    p = o["protocol"]
    lines = [
        "# PGT (Zhou et al. 2016 supplement) at CPU scale",
        "",
        f"Command: `{o['command']}` · date {o['date']} · {o['machine']} · "
        f"{o['seconds'] / 60:.1f} min.",
        "",
        "Protocol (CPU-scale departures from the paper): start from our trained LeNet "
        "(8 epochs on the 90 % training split) instead of training from scratch; "
        f"{p['steps_per_epoch']} SGD steps (batch 64, ~half an epoch) of proximal-gradient "
        f"training (lr {p['lr']} cosine, momentum 0.9, wd 5e-4) then "
        f"{p['finetune_steps_per_epoch']} fine-tuning steps (lr {p['finetune_lr']}, "
        f"distillation weight {p['finetune_distill']} from the model before PGT); strengths s in "
        "units of "
        "the layer's median neuron norm over the whole run (not Caffe's τ); seeds vary the "
        f"training order ({len(p['seeds'])} for group, {len(p['seeds_baselines'])} for low "
        "rank / top-t). The fc strength was chosen on the validation split (10 % of the "
        f"training set): candidates {p['fc_grid']}, rule = best validation accuracy among those "
        f"reaching ≤ {FC_TARGET} fc1 neurons → **{p['fc_chosen']}**.",
        "",
        "## Table 2: lenet-caffe / MNIST (mean ± sd over seeds; test set)",
        "",
        f"Dense: conv2 50, fc1 500, {d['params']:,} params, test error {d['test_err']:.2f} %, "
        f"{d['cpu_ms_batch100']:.2f} ms / batch of 100 (1 thread).",
        "",
        "| method | conv2 s | conv2 | fc1 | params | test err % | Δ err | val err % | speed-up | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in o["table2"] + ([o["scratch"]] if o["scratch"] else []):
        lines.append(
            f"| {r['method']} | {r['conv2_s']} | {_fmt(r['conv2'])} | {_fmt(r['fc1'])} | "
            f"{_fmt(r['params'], 0)} | {_fmt(r['test_err'], 2)} | "
            f"{r['test_err'][0] - d['test_err']:+.2f} | {_fmt(r['val_err'], 2)} | "
            f"{_fmt(r['speedup'], 2)}x | {r['n']} |"
        )
    lines += [
        "",
        "top-t and l1-norm run at the group rows' mean neuron counts; l1-norm gets 2 "
        "x 350 fine-tuning steps (about PGT's training budget of 400 + 300 steps).",
        "",
        "Paper (supp. Table 2, 4 runs averaged, from scratch, Caffe): conv2 27 / 22 / 18 at "
        "τ1 = 60 / 80 / 100, fc3 11; 13,838 params at τ1 = 100.",
        "",
    ]
    v = o["verdict"]
    lines.append(
        f"**Issue target** (conv2 ≤ 18, fc ≤ 11, ≤ +0.3 % test error, strongest group row): "
        f"conv2 {v['conv2_mean']:.1f}, fc1 {v['fc1_mean']:.1f}, {v['params_mean']:.0f} params, "
        f"{v['test_err_increase']:+.2f} % → **{'met' if v['met'] else 'NOT met'}**."
    )
    if o["table3"]:
        cdn = o["cifar_dense"]
        lines += [
            "",
            "## Table 3: cifar-quick / Fashion-MNIST 32×32 (CIFAR-10 stand-in, 1 seed)",
            "",
            f"Dense (our baseline, {cdn['epochs']} epochs): conv3 64, fc1 64, "
            f"{cdn['params']:,} params, test error {cdn['test_err']:.2f} %.",
            "",
            "| conv3 s | fc s | conv3 | fc1 | params | test err % | Δ err | speed-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in o["table3"]:
            lines.append(
                f"| {r['conv3_s']} | {r['fc_s']} | {_fmt(r['conv3'])} | {_fmt(r['fc1'])} | "
                f"{_fmt(r['params'], 0)} | {_fmt(r['test_err'], 2)} | "
                f"{r['test_err'][0] - cdn['test_err']:+.2f} | {_fmt(r['speedup'], 2)}x |"
            )
        lines += [
            "",
            "Paper (supp. Table 3, CIFAR-10): conv3 44 / 34 / 29, fc4 19 / 18 / 19.",
        ]
    lines += [
        "",
        "## Fig. 1 (validation error vs % non-zero neurons, one layer constrained, "
        f"{p['fig1_steps']} steps, no fine-tuning) and Fig. 2",
        "",
        "![fig1](pgt_fig1.png) ![fig2](pgt_fig2.png)",
        "",
        "| penalty | layer | s | neurons | val err % |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(o["fig1"], key=lambda r: (r["layers"][0], r["penalty"], r["fig1_s"])):
        layer = r["layers"][0]
        lines.append(
            f"| {r['penalty']} | {layer} | {r['fig1_s']} | {r['units'][layer]} | "
            f"{100 - r['val_top1']:.2f} |"
        )
    lines += [
        "",
        "## Supplement sec. 1 accounting (tests/test_pgt.py)",
        "",
        "`alexnet-caffe`: 60,965,224 params; removing 2,996 fc6 neurons removes 39,885,748 "
        "(65.42 %, 152.2 MB) -- counted on the model (meta device, fc6/fc7 rebuilt without "
        "the neurons) in `tests/test_pgt.py::test_alexnet_accounting_of_the_supplement`.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ Tables 2 and 3, longer schedule
# The 2026-11-24 protocol (PGT_COMMON: ~half an epoch of PGT + 300 fine-tuning steps) left the
# group rows +2.3-3.5 % over dense; ``--table2`` / ``--table3`` rerun Tables 2 / 3 with whole
# epochs and a decaying fine-tuning lr, one protocol (``_sweep_table``) for both nets. Paper
# departures: from our trained net (not from scratch), s units (not Caffe's tau), 2 + 3 epochs
# (the paper trains to convergence in Caffe).
T2_COMMON = dict(
    epochs=2,  # proximal-gradient epochs (lr 0.01 cosine over the 2 epochs)
    lr=0.01,
    finetune_epochs=3,  # fine-tuning epochs of the pruned net (cosine -> 0)
    finetune_lr=0.01,  # v1's fixed value; v2 chooses it (T2_FT_CANDIDATES)
    finetune_distill=0.5,  # from the model before PGT
)
# Issue 17 follow-ups to --table2 (group PGT at conv2 s 1.05), one row per seed appended to
# ``rows``: ``ftlr`` -- the chosen Table 2 setting (fc s 4.5, the --table2 schedule) with
# fine-tuning lr 0.001 instead of 0.01; ``fc55`` -- fc s 5.5 (the next fc grid value) with v2's
# fine-tuning choice (lr 0.003, not rebalanced), its CPU ms at batch 100 measured. Informed by
# v2's counts (not by test numbers): v2's fc s 5.0 was chosen on seed 0 (fc1 11), but seeds 2
# and 3 of the chosen setting kept 12 fc1 neurons; a selection on all four seeds would have
# walked on to 5.5. The conv2 walk and the fine-tuning choice are not redone (v2's).
FOLLOWUPS: dict[str, dict[str, Any]] = {
    "ftlr": {"fc_s": 4.5, "ft": {"finetune_lr": 0.001}, "tag": "t2-ftlr0.001",
             "rows": "pgt_t2_ftlr_rows.jsonl", "latency": False},
    "fc55": {"fc_s": 5.5, "ft": {"finetune_lr": 0.003, "finetune_rebalance": False},
             "tag": "t2-fc5.5", "rows": "pgt_t2v2_fc55_rows.jsonl", "latency": True},
}  # fmt: skip
# selection candidates (validation, PGT training only): the fc strength at T2_FC_AT_CONV2, then
# the conv2 strength at the chosen fc strength; both grids walked upward, stopping at the first
# value that meets the count (= the weakest that meets it, every weaker one having been run).
# v1 (2026-12-01) had fc (4.0, 4.5): both left 12 fc1 neurons at conv2 1.1, so v2's fc grid
# starts at 4.5 and goes to 6 (informed by v1's validation runs).
# v3 (2026-12-02): the counts are met by *all four* seeds' selection runs (v2 chose on seed 0
# alone, and seeds 2-3 of its choice kept one fc1 neuron more); conv2 grid from 0.95 so that the
# sweep has the paper's three rows; warm-up candidates in the fine-tuning choice.
T2_GRID_FC = (4.5, 5.0, 5.5, 6.0)
T2_FC_AT_CONV2 = 1.1
T2_GRID_CONV2 = (0.95, 1.0, 1.05, 1.1, 1.15)
T2_SELECT_SEEDS = (0, 1, 2, 3)
# the fine-tuning, chosen on validation after fine-tuning the first selection seed's pruned net
# (the same rule for group and top-t): the candidate of lowest validation error, ties -> the
# earlier. v1 fine-tuned at lr 0.01 only, which sent 3 of 4 group seeds to chance (dead fc1
# ReLUs); v2 found that a linear warm-up avoids it (validation diagnostic), so v3 adds
# ``finetune_warmup`` (T2_WARMUP steps, ~1/8 epoch) at the two larger lrs.
T2_WARMUP = 100
T2_FT_CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {"finetune_lr": lr, "finetune_rebalance": rb}
    for rb in (False, True)
    for lr in (0.01, 0.003, 0.001)
) + tuple(
    {"finetune_lr": lr, "finetune_rebalance": False, "finetune_warmup": T2_WARMUP}
    for lr in (0.01, 0.003)
)
T2_TARGET = {"conv2": 18, "fc1": FC_TARGET}  # the paper's smallest row: 18 / 11
T2_SEEDS = (0, 1, 2, 3)  # the chosen setting (the paper averages four runs)
T2_SEEDS_SWEEP = (0, 1, 2, 3)  # the two weaker conv2 strengths of the sweep
T2_SEEDS_TOPK = (0, 1, 2, 3)
T2_SWEEP = 3  # Table 2 rows: the chosen conv2 strength and the grid's two below it
# v1's rows: pgt_t2_rows.jsonl, pgt_t2_ftlr_rows.jsonl; v2's: pgt_t2v2_rows.jsonl
T2_ROWS = "pgt_t2v3_rows.jsonl"
T2_NOTES = "pgt_lenet_mnist_notes.md"  # hand-written notes appended to the report

# Table 3: cifar-quick on Fashion-MNIST 32x32, the same protocol; the targets are the paper's
# smallest row (conv3 29, fc4 19 of 64 each). Grids fixed before any run (no earlier result at
# this schedule): a cifar-quick neuron's norm spread is narrower than LeNet's fc1 (64 vs 500
# neurons), so the fc grid starts lower. CPU time (~72 ms per training step at 1 thread, 2.5x a
# LeNet step): one selection seed, fewer fine-tuning candidates (the lrs and the warm-up of
# Table 2's), 4 seeds at the chosen setting (2 in the first run), 1 at the weaker two.
T3_BASE_EPOCHS = 8
T3_GRID_FC = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
T3_FC_AT_CONV3 = 1.0
T3_GRID_CONV3 = (0.8, 0.9, 1.0, 1.1, 1.2, 1.4, 1.6)
T3_FT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"finetune_lr": 0.01, "finetune_rebalance": False},
    {"finetune_lr": 0.003, "finetune_rebalance": False},
    {"finetune_lr": 0.01, "finetune_rebalance": False, "finetune_warmup": T2_WARMUP},
)


def _protocol(table: int) -> dict[str, Any]:
    """What differs between the Table 2 (LeNet / MNIST) and Table 3 (cifar-quick / Fashion 32)
    sweeps; ``_sweep_table`` is the same for both."""
    if table == 2:
        return {
            "table": 2,
            "conv": "conv2",
            "fc": "fc1",
            "model": "lenet-caffe",
            "dataset": "mnist",
            "shape": (1, 28, 28),
            "target": T2_TARGET,
            "grid_fc": T2_GRID_FC,
            "grid_conv": T2_GRID_CONV2,
            "fc_at_conv": T2_FC_AT_CONV2,
            "select_seeds": T2_SELECT_SEEDS,
            "seeds": T2_SEEDS,
            "seeds_sweep": T2_SEEDS_SWEEP,
            "seeds_topk": T2_SEEDS_TOPK,
            "cands": T2_FT_CANDIDATES,
            "rows": T2_ROWS,
            "name": "pgt_lenet_mnist",
            "notes": T2_NOTES,
            "tag": "t2",
            "flag": "--table2",
            "base_epochs": MNIST_BASE_EPOCHS,
            "base_seeds": MNIST_BASE_SEEDS,
            "paper": "Paper (supp. Table 2, 4 runs averaged, from scratch, Caffe): conv2 27 / 22 / "
            "18 at τ1 = 60 / 80 / 100, fc3 11; 13,838 params at τ1 = 100 (supp. sec. 5); the "
            "paper's Fig. 1 has group / low rank ahead of top-t at equal neuron counts.",
            "paper_rows": PAPER_T2,
            "dataset_text": "`lenet-caffe` on MNIST",
        }
    return {
        "table": 3,
        "conv": "conv3",
        "fc": "fc1",
        "model": "cifar-quick",
        "dataset": "fashion32-train90",
        "shape": (1, 32, 32),
        "target": {"conv3": 29, "fc1": 19},
        "grid_fc": T3_GRID_FC,
        "grid_conv": T3_GRID_CONV3,
        "fc_at_conv": T3_FC_AT_CONV3,
        "select_seeds": (0,),
        "seeds": (0, 1, 2, 3),
        "seeds_sweep": (0,),
        "seeds_topk": (0, 1, 2, 3),
        "cands": T3_FT_CANDIDATES,
        "rows": "pgt_t3v2_rows.jsonl",
        "name": "pgt_cifar_fashion_t3",
        "notes": "pgt_cifar_fashion_t3_notes.md",
        "tag": "t3",
        "flag": "--table3",
        "base_epochs": T3_BASE_EPOCHS,
        "base_seeds": (0,),
        "paper": "Paper (supp. Table 3, CIFAR-10, from scratch, Caffe): conv3 44 / 34 / 29 at "
        "τ1 = 220 / 240 / 280, fc4 19 / 18 / 19 (the paper's fc4 = our fc1, cifar-quick's "
        "64-unit hidden layer).",
        "paper_rows": PAPER_T3,
        "dataset_text": "`cifar-quick` on Fashion-MNIST padded to 32x32 (the CIFAR-10 stand-in: "
        "no CIFAR copy installs offline; 1 input channel)",
    }


def _select_t2(rows: list[dict[str, Any]], P: dict[str, Any]) -> tuple[float, float]:
    """The stated rule, on validation-only selection runs (PGT training without fine-tuning,
    the protocol's selection seeds): the fc strength = the weakest in ``grid_fc`` whose runs all
    reach the fc target (conv at ``fc_at_conv``); the conv strength = the weakest in
    ``grid_conv`` whose runs (at that fc strength) all reach the conv target -- the weakest
    strength meeting the count, as the platform's budget search picks. Falls back to the
    strongest candidate when none meets the count."""
    fc = _select_fc(rows, P)
    return _select_conv2(rows, fc, P), fc


def _meets(rows: list[dict[str, Any]], layer: str, P: dict[str, Any]) -> bool:
    target = P["target"]
    return bool(rows) and all(r["units"][layer] <= target[layer] for r in rows)


def _select_fc(rows: list[dict[str, Any]], P: dict[str, Any]) -> float:
    cs, grid = f"{P['conv']}_s", P["grid_fc"]
    at = [r for r in rows if r[cs] == P["fc_at_conv"]]
    return next(
        (f for f in grid if _meets([r for r in at if r["fc_s"] == f], P["fc"], P)), grid[-1]
    )


def _select_conv2(rows: list[dict[str, Any]], fc: float, P: dict[str, Any]) -> float:
    cs, grid = f"{P['conv']}_s", P["grid_conv"]
    at = [r for r in rows if r["fc_s"] == fc]
    return next((c for c in grid if _meets([r for r in at if r[cs] == c], P["conv"], P)), grid[-1])


def _select_ft(rows: list[dict[str, Any]]) -> int:
    """Index of the chosen fine-tuning candidate: lowest validation error after fine-tuning,
    ties -> the earlier candidate."""
    return min(range(len(rows)), key=lambda i: (100 - rows[i]["val_top1"], i))


def _ft_task(spec: dict[str, Any], cd: Any, base: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune the pruned net of an earlier run (``spec['from']``: its key) with ``PGT.
    finetune`` (the fine-tuning ``PGT.run`` does, teacher = the model before PGT)."""
    from compactnn.methods import PGT

    model = torch.load(_model_path(spec["from"]), weights_only=False)
    before = _acc(model, cd.val)
    rec = PGT(**spec["opts"]).finetune(
        model, cd, list(spec["layers"]), teacher=copy.deepcopy(base).eval()
    )
    return model, {"val_before_ft": before, **rec}


def _table2(args: Any, t_start: float) -> None:
    """Supplement Table 2 (``lenet-caffe`` / MNIST): ``_sweep_table``. Writes
    ``pgt_lenet_mnist.{json,md}``."""
    _sweep_table(args, t_start, _protocol(2))


def _table3(args: Any, t_start: float) -> None:
    """Supplement Table 3 (``cifar-quick`` / Fashion-MNIST 32x32): ``_sweep_table``. Writes
    ``pgt_cifar_fashion_t3.{json,md}``."""
    _sweep_table(args, t_start, _protocol(3))


def _sweep_table(args: Any, t_start: float, P: dict[str, Any]) -> None:  # noqa: C901, PLR0915
    """One supplement table with the longer schedule (``T2_COMMON``): strengths and fine-tuning
    chosen on validation, the protocol's seeds at the chosen setting, top-t / l1-norm at the
    same neuron counts with the same training budget."""
    from compactnn import metrics

    C, F = P["conv"], P["fc"]
    CS = f"{C}_s"  # the spec / row key of the conv strength ("conv2_s" for Table 2)
    layers = (C, F)
    tag = P["tag"]
    quick = args.quick
    common = dict(T2_COMMON)
    if quick:
        common.update(steps_per_epoch=10, finetune_steps_per_epoch=10, epochs=1, finetune_epochs=1)
    seeds = (0,) if quick else P["seeds"]
    seeds_sweep = (0,) if quick else P["seeds_sweep"]
    seeds_topk = (0,) if quick else P["seeds_topk"]
    sel_seeds = (0,) if quick else P["select_seeds"]
    cands = P["cands"]
    rows_file = RESULTS / (P["rows"].replace(".jsonl", "_quick.jsonl") if quick else P["rows"])
    ctx = mp.get_context("spawn")
    pool = (
        futures.ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=_init_worker, initargs=(args.threads, quick)
        )
        if args.jobs > 1
        else None
    )
    _init_worker(args.threads, quick)
    only = args.from_rows
    # the dense reference, trained (once, cached) here before any worker needs it, and its
    # fingerprint in every spec: a row of another baseline is never taken from the rows file
    base_sha = _lib.state_sha(_data(P["dataset"])[1])
    ds = {} if P["dataset"] == "mnist" else {"dataset": P["dataset"]}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:.0f}s] {msg}", flush=True)

    def pgt(c: float, f: float, seed: int, **kw: Any) -> dict[str, Any]:
        opts = {**common, "layers": layers, "seed": seed, **kw.pop("opts", {})}
        return {
            "kind": "pgt",
            "s": {C: c, F: f},
            "opts": opts,
            "layers": list(layers),
            CS: c,
            "fc_s": f,
            "seed": seed,
            "base_sha": base_sha,
            **ds,
            **kw,
        }

    def ft(src: dict[str, Any], cand: dict[str, Any], tag: str) -> dict[str, Any]:
        """Fine-tuning of ``src``'s pruned net (a PGT run without fine-tuning)."""
        opts = {**src["opts"], "finetune_epochs": common["finetune_epochs"], **cand}
        keys = ("layers", CS, "fc_s", "seed", "penalty", "base_sha", *ds)
        return {
            "kind": "ft",
            "from": src["_key"],
            "opts": opts,
            "cand": cand,
            "tag": tag,
            **{k: src[k] for k in keys},
        }

    # phase 1 (validation only): PGT training without fine-tuning; fc strength, then conv's
    def sel(c: float, f: float, sd: int, pen: str = "group", **o: Any) -> dict[str, Any]:
        return pgt(c, f, sd, tag="select", penalty=pen, opts={"finetune_epochs": 0, **o})

    r1: list[dict[str, Any]] = []

    def walk(grid: tuple[float, ...], spec_of: Any, layer: str) -> None:
        for v in grid:
            rows = _pool_map(pool, [spec_of(v, sd) for sd in sel_seeds], rows_file)
            seen = {r["_key"] for r in r1}  # a run met twice (both walks) is listed once
            r1.extend(r for r in rows if r["_key"] not in seen)
            say(f"selection {layer} at {v}: {[r['units'] for r in rows]}")
            if _meets(rows, layer, P):
                return

    walk(P["grid_fc"], lambda f, sd: sel(P["fc_at_conv"], f, sd), F)
    fc_s = _select_fc(r1, P)
    walk(P["grid_conv"], lambda c, sd: sel(c, fc_s, sd), C)
    conv_s, fc_s = _select_t2(r1, P)
    i = P["grid_conv"].index(conv_s)
    sweep = P["grid_conv"][max(0, i - T2_SWEEP + 1) : i + 1]
    at = [r for r in r1 if r[CS] == conv_s and r["fc_s"] == fc_s]
    # top-t's t: the chosen setting's selection-run counts (PGT's neurons do not depend on the
    # fine-tuning, and selection seed 0 trains exactly as the table's seed 0)
    counts = {n: max(1, round(statistics.fmean(r["units"][n] for r in at))) for n in layers}
    say(f"chosen on validation: {C} s {conv_s}, fc s {fc_s}; sweep {sweep}; t = {counts}")

    # phase 1c (validation only): the fine-tuning, on the first selection seed's pruned nets
    topk_opts = {"penalty": "topk", "keep": counts}
    src = {
        "group": next(r for r in at if r["seed"] == sel_seeds[0]),
        "topk": _pool_map(pool, [sel(conv_s, fc_s, sel_seeds[0], "topk", **topk_opts)], rows_file)[
            0
        ],
    }
    ftsel = {
        pen: _pool_map(pool, [ft(s, c, "ftsel") for c in cands], rows_file)
        for pen, s in src.items()
    }
    best = {pen: cands[_select_ft(rows)] for pen, rows in ftsel.items()}
    say(f"fine-tuning chosen on validation: {best}")

    # phase 2 (most important first): group at the chosen setting (the selection seed's row is
    # its fine-tuning candidate run: the same training), top-t (same training + fine-tuning
    # rule) and l1-norm (fine-tuned for the same total epochs, top-t's lr) at the same neuron
    # counts, then the two weaker conv strengths of the sweep (their selection runs fine-tuned)
    rest = [sd for sd in seeds if sd != sel_seeds[0]]
    group = [
        ft(r, best["group"], tag)
        if r is not None
        else pgt(conv_s, fc_s, sd, tag=tag, penalty="group", opts=best["group"])
        for sd in rest
        for r in [next((r for r in at if r["seed"] == sd), None)]
    ]  # a seed with a selection run: that run's pruned net fine-tuned (the same training)
    topk = [
        pgt(conv_s, fc_s, sd, tag=tag, penalty="topk", opts={**topk_opts, **best["topk"]})
        for sd in seeds_topk
        if sd != sel_seeds[0]
    ]
    l1_epochs = common["epochs"] + common["finetune_epochs"]
    l1 = {
        "kind": "l1-norm",
        "opts": {
            "layers": layers,
            "keep": counts,
            "finetune_epochs": l1_epochs,
            "lr": best["topk"]["finetune_lr"],
            "finetune_distill": common["finetune_distill"],
            "seed": 0,
            **({"finetune_steps_per_epoch": 10} if quick else {}),
        },
        "layers": list(layers),
        "tag": tag,
        "penalty": "l1-norm",
        CS: conv_s,
        "seed": 0,
        "base_sha": base_sha,
        **ds,
    }
    # SSR (Lin et al.) at the same counts: its own AULM training (defaults), lambdas searched
    # per layer for top-t's counts (SSR.calibrate_counts), fine-tuned as l1-norm
    ssr = {
        "kind": "ssr",
        "opts": {
            "layers": layers,
            "finetune_epochs": common["finetune_epochs"],
            "finetune_lr": best["topk"]["finetune_lr"],
            "finetune_distill": common["finetune_distill"],
            "seed": 0,
            **({"max_outer": 2, "w_steps": 5, "finetune_steps_per_epoch": 10} if quick else {}),
        },
        "keep": counts,
        "layers": list(layers),
        "tag": tag,
        "penalty": "ssr",
        CS: conv_s,
        "seed": 0,
        "base_sha": base_sha,
        **ds,
    }
    weaker = []  # sweep rows: a seed without a selection run at that strength is trained
    for c in sweep[:-1]:
        for sd in seeds_sweep:
            r = next((r for r in r1 if r["fc_s"] == fc_s and r[CS] == c and r["seed"] == sd), None)
            weaker.append(
                ft(r, best["group"], tag)
                if r is not None
                else pgt(c, fc_s, sd, tag=tag, penalty="group", opts=best["group"])
            )
    r2 = _pool_map(pool, group + topk + [l1] + weaker + [ssr], rows_file, only_cached=only)
    if pool is not None:
        pool.shutdown()
    say(f"Table {P['table']} runs done")

    torch.set_num_threads(1)
    shape = P["shape"]
    cd, base = _data(P["dataset"])
    base_ms = _latency(base, shape)
    # the selection seed's rows of the chosen setting: the chosen candidates' fine-tuned nets
    for pen in ("group", "topk"):
        r = _with_model(dict(ftsel[pen][cands.index(best[pen])]), cd)
        r2.append({**r, "tag": tag, "test_top1": _acc(r["_model"], cd.test)})
    r2 = [_with_model(r, cd) for r in r2]
    units0 = {n: int(m.weight.shape[0]) for n, m in base.named_modules() if n in layers}
    dense = {
        "units": units0,
        "params": metrics.count_params(base),
        "val_err": 100 - _acc(base, cd.val),
        "test_err": 100 - _acc(base, cd.test),
        "cpu_ms_batch100": base_ms,
        "checkpoint": _baseline_ckpt(P, _W[f"{P['dataset']}_base_seed"]).name,
        "epochs": 1 if quick else P["base_epochs"],
        "candidates": [
            {"checkpoint": _baseline_ckpt(P, sd).name, "val_err": 100 - _acc(m, cd.val)}
            for sd in P["base_seeds"]
            for m in [_baseline(P, cd, sd)]
        ],
    }
    table = []
    for pen in ("group", "topk", "l1-norm", "ssr"):
        for c in sweep:
            rows = sorted(
                (r for r in r2 if r["penalty"] == pen and r[CS] == c),
                key=lambda r: r.get("seed", 0),
            )
            if rows:
                summ = _summary(rows, layers, base_ms, shape)
                summ["val_err_before_ft"] = _mean_sd(
                    [100 - r["val_before_ft"] for r in rows if r.get("val_before_ft") is not None]
                    or [float("nan")]
                )
                summ["per_seed"] = [
                    {
                        "seed": r.get("seed"),
                        "units": r["units"],
                        "params": r["params"],
                        "test_err": 100 - r["test_top1"],
                        "val_err": 100 - r["val_top1"],
                    }
                    for r in rows
                ]
                table.append({"method": pen, "conv_s": c, "fc_s": fc_s, **summ})
    chosen = next(r for r in table if r["method"] == "group" and r["conv_s"] == conv_s)
    topk_row = next((r for r in table if r["method"] == "topk"), None)
    verdict = {
        "conv_mean": chosen[C][0],
        "fc_mean": chosen[F][0],
        "params_mean": chosen["params"][0],
        "test_err_increase": chosen["test_err"][0] - dense["test_err"],
        "n": chosen["n"],
        "n_topk": topk_row["n"] if topk_row else 0,
        "topk_test_err_increase": topk_row["test_err"][0] - dense["test_err"] if topk_row else None,
    }
    if P["table"] == 2:  # the Done-when (Table 2 only)
        verdict["met"] = bool(
            verdict["conv_mean"] <= P["target"][C]  # T2_TARGET: conv2 18, fc1 11
            and verdict["fc_mean"] <= P["target"][F]
            and verdict["test_err_increase"] <= 0.3
            and verdict["n"] >= len(P["seeds"])
        )
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()} (shared 2-core CPU, no GPU), "
        f"training {args.jobs} job(s) x {args.threads} thread(s), latency 1 thread",
        "load_average": list(os.getloadavg()),
        "command": f"python benchmarks/bench_pgt.py {P['flag']} --jobs {args.jobs}"
        + (" --quick" if quick else "")
        + (" --from-rows" if only else ""),
        "seconds": time.perf_counter() - t_start,
        "rows_file": rows_file.name,
        "layers": {"conv": C, "fc": F},
        "protocol": {
            **{k: v for k, v in common.items() if k != "finetune_lr"},
            "table": P["table"],
            "dataset_text": P["dataset_text"],
            "target": P["target"],
            "grid_conv": P["grid_conv"],
            "grid_fc": P["grid_fc"],
            "fc_at_conv": P["fc_at_conv"],
            "select_seeds": sel_seeds,
            "chosen": {"conv_s": conv_s, "fc_s": fc_s},
            "finetune_candidates": cands,
            "finetune_chosen": best,
            "sweep": sweep,
            "seeds": seeds,
            "seeds_sweep": seeds_sweep,
            "seeds_topk": seeds_topk,
            "l1_norm_finetune_epochs": l1_epochs,
            "topk_keep": counts,
            "quick": quick,
        },
        "selection": [
            {"conv_s": r[CS], **{k: r[k] for k in ("fc_s", "seed", "units", "val_top1")}}
            for r in r1
        ],
        "finetune_selection": {
            pen: [
                {
                    "candidate": r["cand"],
                    "val_err_before_ft": 100 - r["val_before_ft"],
                    "val_err": 100 - r["val_top1"],
                }
                for r in rows
            ]
            for pen, rows in ftsel.items()
        },
        "dense": dense,
        "table": table,
        "paper": P["paper"],
        "paper_rows": P["paper_rows"],
        "verdict": verdict,
    }
    name = P["name"] + ("_quick" if quick else "")
    notes = RESULTS / P["notes"]
    notes_md = "" if quick or not notes.is_file() else "\n" + notes.read_text()
    _lib.write_result(RESULTS, name, out, lambda o: _markdown_t2(o) + notes_md)
    say(f"wrote {RESULTS / name}.json/.md")


def _cand(c: dict[str, Any]) -> str:
    return (
        f"lr {c['finetune_lr']}"
        + (", rebalanced" if c.get("finetune_rebalance") else "")
        + (f", warm-up {c['finetune_warmup']} steps" if c.get("finetune_warmup") else "")
    )


def _markdown_t2(o: dict[str, Any]) -> str:
    d = o["dense"]
    p = o["protocol"]
    v = o["verdict"]
    C, F = o["layers"]["conv"], o["layers"]["fc"]
    tc, tf = p["target"][C], p["target"][F]
    cands = "; ".join(_cand(c) for c in p["finetune_candidates"])
    model = d["checkpoint"].split("-train90")[0].replace("-mnist", "").replace("-fashion32", "")
    lines = [
        f"# PGT (Zhou et al. 2016 supplement), Table {p['table']} at CPU scale: "
        f"{p['dataset_text']}",
        "",
        f"Command: `{o['command']}` · date {o['date']} · {o['machine']} · load average at the "
        f"end {', '.join(f'{x:.1f}' for x in o['load_average'])} · {o['seconds'] / 60:.1f} min "
        f"· rows `{o['rows_file']}`.",
        "",
        "Protocol, with every departure from the paper's:",
        "",
        f"* Dense reference: `{model}` trained here on the 90 % training split only "
        f"(`{d['checkpoint']}`, {d['epochs']} epochs SGD lr 0.01 cosine; the better on validation "
        "of seeds "
        f"{', '.join(c['checkpoint'].rsplit('seed', 1)[1].split('.')[0] for c in d['candidates'])}"
        "), the other 10 % (seeded) is the validation split every choice below is made on; the "
        "test set is read only for this report. *Paper*: Caffe's net, trained on the whole "
        "training set.",
        f"* PGT starts from that trained model (*paper*: from scratch): {p['epochs']} epochs of "
        f"forward-backward training (batch 64, SGD lr {p['lr']} cosine, momentum 0.9, wd 5e-4, "
        f"group soft threshold of every {C} / {F} neuron after each step), zero neurons removed, "
        f"then {p['finetune_epochs']} epochs of fine-tuning (cosine to 0 from the chosen lr, "
        f"distillation weight {p['finetune_distill']} from the model before PGT). *Paper*: "
        "trains with the constraint to convergence, no separate fine-tuning stated.",
        "* Strengths s = the run's total threshold in units of the layer's median neuron norm "
        "(`PGT.at_strength`), not Caffe's τ.",
        f"* Strengths chosen on validation (stated rule, `_select_t2`), PGT training only (no "
        f"fine-tuning), seeds {tuple(p['select_seeds'])}: fc s = the weakest of "
        f"{tuple(p['grid_fc'])} whose runs all reach ≤ {tf} {F} neurons ({C} s "
        f"{p['fc_at_conv']}), then {C} s = the weakest of {tuple(p['grid_conv'])} whose runs "
        f"all reach ≤ {tc} {C} neurons at that fc s (the strongest candidate when none does); "
        "each grid is walked upward and stops at the first value that meets its count → "
        f"**{C} s {p['chosen']['conv_s']}, fc s {p['chosen']['fc_s']}**. The sweep (the "
        f"paper's three τ1) is the chosen {C} s and the grid values below it: "
        f"{tuple(p['sweep'])}.",
        f"* Fine-tuning chosen on validation (`_select_ft`, the same rule for group and top-t): "
        f"selection seed {p['select_seeds'][0]}'s pruned net fine-tuned with each candidate "
        f"({cands}; "
        f"'rebalanced' = `finetune_rebalance`: every kept {C} / {F} neuron and the next "
        "layer's inputs it feeds rescaled to equal norms before fine-tuning, the function "
        "unchanged; 'warm-up' = `finetune_warmup`: the lr ramped up linearly over the first "
        "steps), the lowest validation error after fine-tuning wins (ties: the earlier) → "
        f"**group: {_cand(p['finetune_chosen']['group'])}; top-t: "
        f"{_cand(p['finetune_chosen']['topk'])}**. That run is also the seed-"
        f"{p['select_seeds'][0]} row below (the same training).",
        f"* Seeds (training order, and the fine-tuning's): {len(p['seeds'])} at the chosen "
        f"setting, {len(p['seeds_sweep'])} at the two weaker {C} "
        f"strengths (their selection runs fine-tuned with group's choice); top-t "
        f"(`penalty='topk'`, the l0 baseline of supp. sec. 4: the same {p['epochs']} + "
        f"{p['finetune_epochs']} epochs, t = the chosen setting's neuron counts "
        f"{p['topk_keep']}) {len(p['seeds_topk'])} seeds; l1-norm pruning at the same counts, "
        f"{p['l1_norm_finetune_epochs']} fine-tuning epochs (the same total training) at top-t's "
        "chosen lr, 1 seed; SSR (Lin et al., `ssr` with its defaults: l2,1 AULM, K-step lr 1e-3, "
        "10 outer x 100 W-steps per layer) at the same counts, each layer's lambda searched for "
        f"its count (`SSR.calibrate_counts`), then {p['finetune_epochs']} fine-tuning epochs at "
        "top-t's lr with the same distillation, 1 seed (where run: the row is absent "
        "otherwise).",
        "",
        f"## Table {p['table']} (test set; mean ± sd over seeds)",
        "",
        f"Dense: {C} {d['units'][C]}, {F} {d['units'][F]}, {d['params']:,} params, test error "
        f"{d['test_err']:.2f} % (validation {d['val_err']:.2f} %), {d['cpu_ms_batch100']:.2f} ms "
        "/ batch of 100.",
        "",
        f"| method | {C} s | {C} | {F} | params | test err % | Δ err | val err % | "
        "val err before FT % | speed-up | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in o["table"]:
        vb = r["val_err_before_ft"]
        lines.append(
            f"| {r['method']} | {r['conv_s']} | {_fmt(r[C])} | {_fmt(r[F])} | "
            f"{_fmt(r['params'], 0)} | {_fmt(r['test_err'], 2)} | "
            f"{r['test_err'][0] - d['test_err']:+.2f} | {_fmt(r['val_err'], 2)} | "
            f"{_fmt(vb, 2) if vb[0] == vb[0] else '–'} | "
            f"{_fmt(r['speedup'], 2)}x | {r['n']} |"
        )
    lines.append("")
    for r in o["table"]:
        if r["n"] > 1:
            per = ", ".join(f"{x['test_err']:.2f}" for x in r["per_seed"])
            cnt = ", ".join(f"{x['units'][C]}/{x['units'][F]}" for x in r["per_seed"])
            lines.append(
                f"* {r['method']} at {C} s {r['conv_s']}, per seed: test error {per} %; "
                f"neurons {C}/{F} {cnt}"
            )
    ti = v["topk_test_err_increase"]
    cmp = ""
    if ti is not None:
        diff = v["test_err_increase"] - ti
        side = "behind" if diff > 0 else ("ahead of" if diff < 0 else "level with")
        cmp = (
            f" Top-t at the same counts ({v['n_topk']} seeds): {ti:+.2f} % → group is "
            f"{side} top-t by {abs(diff):.2f} points of test error."
        )
    head = (
        f"**Issue target** ({C} ≤ {tc}, fc ≤ {tf}, ≤ +0.3 % test error, mean of 4 seeds, "
        f"chosen setting; here {v['n']} seeds): "
        if "met" in v
        else f"**Chosen setting** (the paper's smallest row: {C} {tc}, fc {tf}; {v['n']} seeds): "
    )
    lines += [
        "",
        o["paper"],
        "",
        head + f"{C} {v['conv_mean']:.1f}, {F} {v['fc_mean']:.1f}, {v['params_mean']:.0f} "
        f"params, {v['test_err_increase']:+.2f} %"
        + (f" → **{'met' if v['met'] else 'NOT met'}**." if "met" in v else ".")
        + cmp,
        "",
        "## Selection runs (validation only, PGT training without fine-tuning)",
        "",
        f"| {C} s | fc s | seed | {C} | {F} | val err % (before fine-tuning) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(o["selection"], key=lambda r: (r["conv_s"], r["fc_s"], r["seed"])):
        lines.append(
            f"| {r['conv_s']} | {r['fc_s']} | {r['seed']} | {r['units'][C]} | "
            f"{r['units'][F]} | {100 - r['val_top1']:.2f} |"
        )
    lines += [
        "",
        "## Fine-tuning selection (validation only, selection seed, chosen setting)",
        "",
        "| method | candidate | val err % before FT | val err % after FT |",
        "|---|---|---|---|",
    ]
    for pen, rows in o["finetune_selection"].items():
        for r in rows:
            lines.append(
                f"| {pen} | {_cand(r['candidate'])} | {r['val_err_before_ft']:.2f} | "
                f"{r['val_err']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def _cifar_only(args: Any, t_start: float) -> None:
    """Supplement Table 3 alone (one process): baseline, then the conv3 sweep."""
    from compactnn import metrics

    _init_worker(args.threads, args.quick)
    common = dict(PGT_COMMON)
    if args.quick:
        common.update(steps_per_epoch=10, finetune_steps_per_epoch=10)
    _cifar_base({"steps": 10 if args.quick else None})
    cd3, base3 = _data("fashion32")
    rows = []
    for c in CONV3_S:
        spec = {
            "kind": "pgt",
            "s": {"conv3": c, "fc1": CIFAR_FC_S},
            "opts": {**common, "layers": CIFAR_LAYERS, "seed": 0},
            "layers": list(CIFAR_LAYERS),
            "tag": "t3",
            "dataset": "fashion32",
            "conv3_s": c,
        }
        rows.append(_task(spec))
        print(
            f"[{time.perf_counter() - t_start:.0f}s] conv3 s {c}: {rows[-1]['units']}", flush=True
        )
    ms3 = _latency(base3, (1, 32, 32))
    dense = {
        "params": metrics.count_params(base3),
        "val_err": 100 - _acc(base3, cd3.val),
        "test_err": 100 - _acc(base3, cd3.test),
        "epochs": CIFAR_BASE_EPOCHS,
        "steps_per_epoch": CIFAR_BASE_STEPS,
    }
    table3 = [
        {
            "method": "group",
            "conv3_s": r["conv3_s"],
            "fc_s": CIFAR_FC_S,
            **_summary([r], CIFAR_LAYERS, ms3, (1, 32, 32)),
        }
        for r in rows
    ]
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, 1 job x {args.threads} thread(s)",
        "command": "python benchmarks/bench_pgt.py --cifar-only"
        + (" --quick" if args.quick else ""),
        "seconds": time.perf_counter() - t_start,
        "protocol": {**common, "conv3_s": CONV3_S, "fc_s": CIFAR_FC_S, "seed": 0},
        "cifar_dense": dense,
        "table3": table3,
        "paper_table3": PAPER_T3,
    }
    name = "pgt_cifar_fashion" + ("_quick" if args.quick else "")
    lines = [
        "# PGT, supplement Table 3 at CPU scale: cifar-quick on Fashion-MNIST 32x32",
        "",
        f"Command: `{out['command']}` · date {out['date']} · {out['machine']} · "
        f"{out['seconds'] / 60:.1f} min. CIFAR-10 stand-in (no CIFAR copy offline). Baseline: "
        f"cifar-quick trained here {CIFAR_BASE_EPOCHS} x {CIFAR_BASE_STEPS} steps (batch 64, lr "
        "0.01 cosine) on 90 % of the training set; PGT as in `pgt_lenet_mnist.md` (conv3 and "
        "fc1 constrained, strengths in units of the median neuron norm, not chosen on "
        "validation: fixed beforehand), 1 seed.",
        "",
        f"Dense: conv3 64, fc1 64, {dense['params']:,} params, test error "
        f"{dense['test_err']:.2f} %.",
        "",
        "| conv3 s | fc s | conv3 | fc1 | params | test err % | Δ err | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table3:
        lines.append(
            f"| {r['conv3_s']} | {r['fc_s']} | {r['conv3'][0]:.0f} | {r['fc1'][0]:.0f} | "
            f"{r['params'][0]:.0f} | {r['test_err'][0]:.2f} | "
            f"{r['test_err'][0] - dense['test_err']:+.2f} | {r['speedup'][0]:.2f}x |"
        )
    lines += ["", "Paper (supp. Table 3, CIFAR-10): conv3 44 / 34 / 29, fc4 19 / 18 / 19.", ""]
    _lib.write_result(RESULTS, name, out, "\n".join(lines))
    print(f"wrote {RESULTS / name}.json/.md")


if __name__ == "__main__":
    main()
