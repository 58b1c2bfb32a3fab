"""Every option of every method is validated at construction, with an error naming the method
and the option (one message shape); per-layer values are checked element by element; the
method classes are re-exported lazily by ``compactnn.methods``."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn.methods as methods
from compactnn.errors import ConfigError
from compactnn.methods import get_method, list_methods
from compactnn.methods.base import CompressionData

NAN = math.nan

# bad values shared by the options of the same kind
_POS_FLOAT = [-1.0, 0.0, "x", NAN, True]
_NONNEG_FLOAT = [-0.1, "x", math.inf, None]
_FRACTION = [-0.1, 1.5, "x", NAN]
_POS_INT = [0, -1, 1.5, "abc", True, None]
_NONNEG_INT = [-1, 2.5, "abc", None]
_OPT_POS_INT = [0, -3, 1.5, "abc"]
_BOOL = [1, "yes", None]
_LAYERS = [5, [], ["a", "a"], [1], ("conv", None)]
_SEED = [-1, "abc", 1.5, None]
_PER_LAYER = [[0.1, "x", 0.2], [0.1, NAN], {"a": -1.0}, {1: 0.1}, "x", None]

COMMON_FT = {
    "finetune_epochs": _NONNEG_INT,
    "finetune_steps_per_epoch": _OPT_POS_INT,
    "finetune_distill": _FRACTION,
    "lr": _POS_FLOAT,
    "momentum": _FRACTION,
    "weight_decay": _NONNEG_FLOAT,
    "layers": _LAYERS,
    "seed": _SEED,
}

CRITERION = {
    "keep": [[2, NAN], [0, 1], {"a": 1.5}, {"a": 0}, 3, "x"],
    "ratio": [0.0, 1.5, "x", NAN],
    "calib_batches": _POS_INT,
    "round_to": _POS_INT,
    **COMMON_FT,
}

LAYERWISE = {
    "layers": _LAYERS,
    "eps_frac": [0.0, -1.0, [0.1, 0.0], {"a": "x"}, "x", None],
    "backend": ["scs", None],
    "options": [{"max_iter": 3}, "x"],
    "n_jobs": _POS_INT,
    "parallel": ["threads", None],
    "scheduler": ["", 8786, "tcp://a b"],
    "scheduler_timeout": _POS_FLOAT,
    "max_in_flight": _OPT_POS_INT,
    "max_rows": _OPT_POS_INT,
    "calib_batches": _OPT_POS_INT,
    "linear": _BOOL,
    "asymmetric": _BOOL,
    "cascade": [0.5, 0.0, -1.0, "x", NAN, True],
    "seed": _SEED,
}

ENGINE = {
    "budget": [{"flops": 0.5}, {"macs": 0.0}, {"macs": 1.5}, "macs", 0.5],
    "engine_steps": _POS_INT,
    "anneal_steps": _POS_INT,
    "engine_lr": _POS_FLOAT,
    "engine_allocation": ["greedy", None, 1],
    "round_to": _POS_INT,
}

ADMM_OPTS = __import__("compactnn.solvers.layerwise", fromlist=["ADMMOptions"]).ADMMOptions()

BAD: dict[str, tuple[str, dict[str, list]]] = {
    "ssr": (
        "SSR",
        {
            "penalty": ["l3", None, 1],
            "lam": _PER_LAYER,
            "rho": _POS_FLOAT,
            "overrelax": _BOOL,
            "r": [2, 3.5, "3", None],
            "eps": _POS_FLOAT,
            "max_outer": _POS_INT,
            "w_steps": _POS_INT,
            "train_all": _BOOL,
            "min_keep": _POS_INT,
            "finetune_lr": _POS_FLOAT,
            "lam_path": [[], 0.1, "x", [0.1, -0.2], [0.1, [0.1, "x"]], [{"a": NAN}]],
            "path_finetune_epochs": _NONNEG_INT,
            "finetune_schedule": ["linear", None, 1],
            "finetune_step_epochs": _POS_INT,
            "gap": _BOOL,
            "gap_flatten": ["", 3, ("flatten",)],
            "gap_classifier": _LAYERS,
            "gap_fit_samples": _POS_INT,
            **COMMON_FT,
            **ENGINE,
        },
    ),
    "admm-sparse": (
        "ADMM-sparse",
        {
            "penalty": ["l2", "l21", None],
            "structure": ["rows", 1],
            "mus": [(), (0.2, 0.1), 0.1, ("a",), (0.1, -0.1), (NAN,)],
            "mu_min": _POS_FLOAT,
            "mu_max": _POS_FLOAT,
            "n_mu": _POS_INT,
            "rho": _POS_FLOAT,
            "eps": _POS_FLOAT,
            "xi": _POS_INT,
            "delta": _POS_INT,
            "nu": _POS_INT,
            "steps_per_epoch": _OPT_POS_INT,
            "finetune_epochs": [-1, 2.5, "abc"],  # None = the W-step schedule (Kiaee sec. 4)
            "overprune_guard": _BOOL,
            "eval_batches": _OPT_POS_INT,
            "mu_scale": [[1.0], 1.0, {"a": 0.0}, {"a": "x"}],
            "deploy_kernels": _BOOL,
            "measure_speed": _BOOL,
            **{k: COMMON_FT[k] for k in ("lr", "momentum", "weight_decay", "layers", "seed")},
            **ENGINE,
        },
    ),
    "random": ("criterion pruning (random)", CRITERION),
    "l1-norm": ("criterion pruning (l1-norm)", CRITERION),
    "apoz": ("criterion pruning (apoz)", CRITERION),
    "magnitude": ("criterion pruning (magnitude)", CRITERION),
    "taylor": ("criterion pruning (taylor)", CRITERION),
    "ddlr": (
        "DDLR",
        {
            **LAYERWISE,
            "rank": [0, 1.5, [2, 3], {"a": 0}, "x"],
            "energy": [0.0, 1.5, "x"],
            "dense_fallback": _BOOL,
            "conv": _BOOL,
        },
    ),
    "net-trim": (
        "Net-Trim",
        {**LAYERWISE, "zero_tol": [-0.1, 2.0, "x"], "refit_bias": _BOOL, "conv": _BOOL},
    ),
    "slr": (
        "SLR",
        {
            **{k: v for k, v in LAYERWISE.items() if k not in ("eps_frac", "cascade")},
            "options": [{"max_iter": 3}, "x", ADMM_OPTS],
            "lam1": [-1.0, [0.1, -0.2], {"a": "x"}, "x", None, NAN, -math.inf],
            "lam2": [-1.0, [0.1, NAN], "x"],
            "lam2_ratio": [-1.0, "x", NAN, None],
            "t": [0.0, -1.0, "x"],
            "scale": ["relative", None],
            "response": ["tanh", None],
            "skip_first": _BOOL,
            "fc_sparse_only": _BOOL,
            "form": ["csr", None],
            "finetune_epochs": _NONNEG_INT,
            "finetune_lr": _POS_FLOAT,
            "finetune_steps_per_epoch": _OPT_POS_INT,
            "share": [0.0, 1.5, [0.5, -0.1], "x", NAN],
        },
    ),
    "pgt": (
        "PGT",
        {
            "penalty": ["l21", "l0", None, 1],
            "lam": _PER_LAYER,
            "keep": [[2, 0], [1.5], {"a": 0}, 0, "x", True],
            "epochs": _POS_INT,
            "steps_per_epoch": _OPT_POS_INT,
            "schedule": ["linear", None],
            "init": ["random", None, True],
            "lrtc_iter": _POS_INT,
            "lrtc_tol": [-0.1, "x", NAN, None],
            "hold_zeros": _BOOL,
            "min_keep": _POS_INT,
            "finetune_lr": _POS_FLOAT,
            "finetune_rebalance": _BOOL,
            "finetune_warmup": _NONNEG_INT,
            **COMMON_FT,
            **ENGINE,
        },
    ),
}

CASES = [
    pytest.param(method, option, value, id=f"{method}-{option}-{value!r}")
    for method, (_, table) in BAD.items()
    for option, values in table.items()
    for value in values
]


def test_every_registered_method_and_option_is_covered() -> None:
    assert set(BAD) == set(list_methods())
    for method, (_, table) in BAD.items():
        cfg = get_method(method).Config
        names = {f.name for f in fields(cfg)}
        assert set(table) == names, (method, names ^ set(table))
        assert set(cfg.rules) == names, (method, names ^ set(cfg.rules))  # one rule per option


@pytest.mark.parametrize(("method", "option", "value"), CASES)
def test_bad_option_fails_at_construction_naming_method_and_option(
    method: str, option: str, value: object
) -> None:
    owner, _ = BAD[method]
    with pytest.raises(ConfigError) as info:
        get_method(method)(**{option: value})
    msg = str(info.value)
    assert f"'{option}" in msg and f"parameter of {owner}" in msg, msg


@pytest.mark.parametrize("method", sorted(BAD))
def test_defaults_construct_and_rebuild(method: str) -> None:
    cls = get_method(method)
    m = cls()
    again = cls(**{f.name: getattr(m.config, f.name) for f in fields(m.config)})
    assert again.config == m.config


def test_per_layer_values_are_normalised() -> None:
    ssr = methods.SSR(lam=[1, 0.5], layers=["a", "b"], lam_path=None)
    assert ssr.config.lam == (1.0, 0.5) and ssr.config.layers == ("a", "b")
    assert methods.SSR(layers="conv1").config.layers == ("conv1",)
    assert methods.SSR(lam_path=[0.1, [0.2, 0.3]]).config.lam_path == (0.1, (0.2, 0.3))
    assert methods.ADMMSparse(mus=[0.1, 1]).config.mus == (0.1, 1.0)
    assert methods.L1NormPruning(keep=[1, 2]).config.keep == (1, 2)
    assert methods.DDLR(rank={"a": 2}).config.rank == {"a": 2}


def test_old_late_failures_now_fail_at_construction() -> None:
    """Issue 12: these were accepted and failed late (or never) before."""
    with pytest.raises(ConfigError, match="'finetune_lr' parameter of SSR"):
        methods.SSR(finetune_lr=-1)
    with pytest.raises(ConfigError, match=r"'lam\[1\]' parameter of SSR"):
        methods.SSR(lam=[0.1, "x", 0.2])
    with pytest.raises(ConfigError, match=r"'keep\[0\]' parameter of criterion pruning"):
        methods.L1NormPruning(keep=[NAN, 2])
    with pytest.raises(ConfigError, match="'seed' parameter of ADMM-sparse"):
        methods.ADMMSparse(seed="abc")
    with pytest.raises(ConfigError, match="'layers' parameter of SSR"):
        methods.SSR(layers=5)


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    data = CompressionData(
        train=DataLoader(TensorDataset(x, y), batch_size=8), input_shape=(1, 6, 6)
    )
    return model, data


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("ssr", {"lam": [0.1, 0.2]}, r"'lam' parameter of SSR must have one value per pruned"),
        ("ssr", {"lam_path": [0.1, [0.1, 0.2]]}, r"'lam_path\[1\]' parameter of SSR"),
        ("ssr", {"lam": {"nope": 0.1}}, "names layer"),
        ("l1-norm", {"keep": [1, 2]}, "'keep' parameter of criterion pruning \\(l1-norm\\)"),
        ("random", {"keep": {"0": 5}}, r"'keep\['0'\]' parameter of criterion pruning"),
    ],
)
def test_length_checks_run_before_any_training(method, options, match, monkeypatch) -> None:
    """The number of per-layer values can only be checked against the layers at run time; it
    is checked before anything is trained."""
    import compactnn.train as train_mod

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr(train_mod, "train", no_training)
    model, data = _tiny()
    with pytest.raises(ConfigError, match=match):
        get_method(method)(**options).run(model, data, progress=False)


def test_methods_are_reexported_lazily() -> None:
    for name in list_methods():
        cls = get_method(name)
        assert getattr(methods, cls.__name__) is cls
        assert cls.__name__ in methods.__all__
        assert getattr(methods, cls.Config.__name__) is cls.Config
    assert set(methods._LAZY) <= set(methods.__all__) and "SSR" in dir(methods)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        methods.Nope  # noqa: B018
    code = (
        "import sys, compactnn.methods as m\n"
        "assert not any(k.startswith(('compactnn.methods.ssr', 'compactnn.methods.admm', "
        "'compactnn.methods.layerwise', 'compactnn.methods.criteria')) for k in sys.modules)\n"
        "from compactnn.methods import SSR\n"
        "assert 'compactnn.methods.ssr' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
