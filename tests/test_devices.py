"""Models on another device than the CPU (issue 18, item 4).

No GPU runs these tests here, so the guard is mostly static: every ``torch.<factory>(...)``
call in ``src/compactnn`` without ``device=`` is listed below with the reason it cannot mix with
a model's tensors on another device (CPU-only solver data, CPU generators whose result is moved,
CPU data sets). A new such call fails the test until it passes ``device=`` or is listed here
with its reason. The ``meta`` device stands in for a GPU where the code path has no
data-dependent step; a real CUDA end-to-end test runs where a GPU is present.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SRC = Path(__file__).resolve().parents[1] / "src" / "compactnn"

FACTORIES = {
    "zeros", "ones", "empty", "full", "arange", "eye", "rand", "randn", "randint", "randperm",
    "linspace", "tensor",
}  # fmt: skip

_SOLVER_CPU = (
    "layer-wise solvers compute in float64 on CPU by contract (check_problem moves X, Y, bias "
    "there; results are moved to the layer's device by surgery)"
)

_ENGINE_CPU = (
    "CPU bookkeeping of the engine's unit masks and scores (GPU values are moved to the CPU "
    "first; thresholds go to the weights' device with .to)"
)

# (file under src/compactnn, enclosing function) -> why a default-device tensor is right there
ALLOWED: dict[tuple[str, str], str] = {
    ("api/inputs.py", "split_loader"): "index permutation of a CPU dataset (CPU generator, seeded)",
    ("capture.py", "select"): "reservoir slots on CPU; record() moves them to the data's device",
    ("cli/loading.py", "_samples"): "latency samples when no data is given; the model is moved "
    "to CPU for the CLI's ONNX / TorchScript artifacts",
    ("criteria.py", "random_scores"): "random scores from a CPU generator (the same on any "
    "device), moved to the weight's device",
    ("export/checkpoint.py", "_skeleton_plan.zeros"): "placeholders filled from safetensors; "
    "surgery puts every tensor on the target layer's device",
    ("graph.py", "example_input_for"): "moved to the model's device/dtype on the next line",
    ("methods/_layerwise_solve.py", "_deployed_violation"): "eq. (4) check on the CPU float64 "
    "copies of X, Y",
    ("methods/_engine_cost.py", "__init__"): "CostModel's latency ~ MACs least-squares fit "
    "over Python floats, on the CPU (never mixed with the model)",
    ("methods/_engine_run.py", "__init__"): _ENGINE_CPU,
    ("methods/_engine_run.py", "backward_step"): _ENGINE_CPU,
    ("methods/_engine_run.py", "project"): _ENGINE_CPU,
    ("methods/_engine_run.py", "cut"): _ENGINE_CPU,
    ("methods/_engine_alloc.py", "_final_selection"): _ENGINE_CPU,
    (
        "methods/_pgt_neurons.py",
        "state_dict",
    ): "the step count of the checkpoint (a Python int as a "
    "tensor for safetensors, never mixed with the model)",
    ("surgery/_util.py", "example_inputs_for"): "probe from a CPU generator, moved to the "
    "model's device/dtype on the next line",
    ("zoo/data/loaders.py", "get_dataset"): "normalisation constants of a CPU dataset",
}
ALLOWED_DIRS: dict[str, str] = {"solvers/layerwise/": _SOLVER_CPU}

# .numpy() needs a CPU tensor: (file, function) -> why it is one there
NUMPY_ALLOWED: dict[tuple[str, str], str] = {
    ("export/onnx.py", "to_onnx"): "samples from _as_batch (detached, CPU float32); the "
    "exported copy of the model is moved to CPU",
    ("export/onnx.py", "ort_timer"): "samples from _as_batch (detached, CPU float32)",
    ("solvers/layerwise/_cvxpy.py", "solve_cvxpy"): _SOLVER_CPU,
    ("solvers/layerwise/slr.py", "_run_cvxpy"): _SOLVER_CPU,
    ("distributed.py", "_tensor_digest"): "t.cpu() on the line itself (checksums of any device)",
    ("resume.py", "set_rng_state"): "RNG states loaded from safetensors (CPU tensors)",
    ("resume.py", "tensor_fingerprint"): "v.detach().cpu() two lines above",
}


def _calls(tree: ast.AST):
    """(enclosing function qualname, call node) for every call in ``tree``."""
    out = []

    def walk(node: ast.AST, stack: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, [*stack, child.name])
                continue
            if isinstance(child, ast.Call):
                out.append((".".join(stack), child))
            walk(child, stack)

    walk(tree, [])
    return out


def _scan() -> tuple[dict[tuple[str, str], list[int]], dict[tuple[str, str], list[int]]]:
    factories: dict[tuple[str, str], list[int]] = {}
    numpy: dict[tuple[str, str], list[int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for fn, call in _calls(ast.parse(path.read_text())):
            f = call.func
            if not isinstance(f, ast.Attribute):
                continue
            if (
                isinstance(f.value, ast.Name)
                and f.value.id == "torch"
                and f.attr in FACTORIES
                and not any(k.arg == "device" for k in call.keywords)
            ):
                factories.setdefault((rel, fn), []).append(call.lineno)
            if f.attr == "numpy" and not call.args:
                numpy.setdefault((rel, fn), []).append(call.lineno)
    return factories, numpy


def test_no_default_device_tensor_outside_the_allow_list() -> None:
    found, _ = _scan()
    new = {
        k: lines
        for k, lines in found.items()
        if k not in ALLOWED and not any(k[0].startswith(d) for d in ALLOWED_DIRS)
    }
    assert not new, (
        "torch factory calls without device= that may mix with a model on a GPU (pass "
        "device=<the model's or the input's device>, or list them in ALLOWED with the reason): "
        + "; ".join(f"{f}:{lines} in {fn or '<module>'}()" for (f, fn), lines in new.items())
    )
    stale = [k for k in ALLOWED if k not in found]
    assert not stale, f"ALLOWED entries without such a call any more (remove them): {stale}"
    assert all(ALLOWED.values()) and all(ALLOWED_DIRS.values())


def test_numpy_only_on_cpu_tensors() -> None:
    _, found = _scan()
    new = {k: v for k, v in found.items() if k not in NUMPY_ALLOWED}
    assert not new, (
        ".numpy() on a tensor that may live on a GPU: use .detach().cpu().numpy(), or list it "
        f"in NUMPY_ALLOWED with the reason: {new}"
    )
    assert not [k for k in NUMPY_ALLOWED if k not in found]


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.ReLU(),
        nn.Linear(16, 3),
    )  # fmt: skip


def test_inputs_built_for_a_model_follow_its_device() -> None:
    """On ``meta`` (a stand-in for a GPU): calibration batches, latency inputs and the graph
    forward are put on the model's device."""
    from compactnn import metrics
    from compactnn.methods.base import CompressionData
    from compactnn.methods.layerwise import default_layers
    from compactnn.structure import module_device

    model = _cnn().to("meta")
    assert module_device(model) == torch.device("meta")
    assert module_device(nn.ReLU()) == torch.device("cpu")
    x = torch.randn(8, 2, 6, 6)
    data = CompressionData(train=DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=4))
    batches = list(data.calib_batches(2, device=module_device(model)))
    assert [b.device.type for b in batches] == ["meta", "meta"]
    assert default_layers(model, batches[0]) == ["0", "3"]
    lat = metrics.measure_latency(model, (2, 6, 6), batch_size=4, warmup=1, repeats=3)
    assert lat.median_ms >= 0
    assert metrics.count_params(model) == sum(p.numel() for p in _cnn().parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ddlr", "net-trim", "l1-norm", "slr"])
def test_methods_run_with_the_model_on_cuda(method: str) -> None:
    """A model on the GPU, data loaders on the CPU: the run works and returns a GPU model that
    equals the CPU run's (the layer-wise solves are on CPU either way)."""
    import compactnn

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 2, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    kw = {"on_drop": "warn", "progress": False}
    opts = {"ratio": 0.5} if method == "l1-norm" else {"conv": True} if method != "slr" else {}
    cpu = compactnn.compress(_cnn(), method, (data, data), **kw, **opts)
    gpu = compactnn.compress(_cnn().cuda(), method, (data, data), **kw, **opts)
    assert all(p.is_cuda for p in gpu.model.parameters())
    assert gpu.report_after.params == cpu.report_after.params
    torch.testing.assert_close(gpu.model(x[:8].cuda()).cpu(), cpu.model(x[:8]), atol=1e-3, rtol=0)


def test_full_precision_turns_tf32_off_and_restores_it() -> None:
    """The surgery self-check compares to 1e-4 relative: on a GPU its passes run without TF32
    (cuDNN convs default to TF32; measured 2.5e-4 on an H200), the flags restored after, on an
    error too."""
    from compactnn.surgery._check import full_precision

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError, match="boom"), full_precision():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["l1-norm", "ssr", "slr"])
def test_a_wide_conv_on_cuda_with_tf32_is_cut_exactly(method: str) -> None:
    """On an H200, kiaee-cnn's 96-channel conv1 failed the surgery self-check (2.5e-4 > 1e-4)
    under cuDNN's default TF32, and slr timed its sparse forms with the solver's CPU weight
    next to the layer's GPU bias. Both are fixed; a wide conv net on cuda compresses."""
    import compactnn

    torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 3, 16, 16, generator=g), torch.randint(0, 3, (128,), generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 96, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(96, 64, 3),
        nn.ReLU(), nn.Flatten(), nn.Linear(64 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 3),
    ).cuda()  # fmt: skip
    res = compactnn.compress(model, method, (data, data), target={"macs": 0.5},
                             on_drop="warn", progress=False)  # fmt: skip
    assert all(p.is_cuda for p in res.model.parameters())
    assert res.model(x[:8].cuda()).shape == (8, 3)
