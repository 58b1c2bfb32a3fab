"""The argument parser of ``compactnn`` and the texts it shows.

:func:`build_parser` (one helper per sub-command), :func:`method_help` (``compactnn compress
--method M --help``: M's options from its config dataclass) and :func:`cli_terms` (an API
error message rewritten with the flags a command-line user types).
"""

from __future__ import annotations

import argparse
import re
import textwrap

from compactnn.cli.inputs import DATASET_OPTS

# compactnn.methods (torch), dataclasses and inspect (~9 ms) are imported by method_help and
# _field_docs alone: ``compactnn --help`` imports this module and needs none of them.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compactnn",
        description="Compress a trained PyTorch CNN/MLP into a physically smaller, faster model.",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (anywhere on the command line)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_inspect(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_compress(sub)
    _add_export(sub)
    _add_report(sub)
    _add_data_prepare(sub)
    return p


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn inspect``: per-layer table and totals of a model."""
    pi = sub.add_parser(
        "inspect",
        help="per-layer table and totals of a model, a checkpoint or a compressed result",
    )
    pi.add_argument(
        "model",
        nargs="?",
        help="reference model name (e.g. lenet-caffe; names: compactnn.models.list_models()), "
        "a checkpoint path, or a result directory of compactnn compress --out DIR",
    )
    pi.add_argument("--factory", help="user model as package.module:function")
    pi.add_argument(
        "--factory-kwargs",
        metavar="K=V,...",
        help="arguments of the --factory function, values read as YAML (e.g. num_classes=10)",
    )
    pi.add_argument("--checkpoint", help="weights to load into the model")
    pi.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28")
    pi.add_argument(
        "--batch-size", type=int, default=1, help="batch size for the latency measurement"
    )
    pi.add_argument(
        "--threads", type=int, default=1, help="torch threads for the latency measurement"
    )
    pi.add_argument("--no-latency", action="store_true", help="skip the latency measurement")


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn train``: train a reference model on a bundled dataset."""
    pt = sub.add_parser("train", help="train a reference model on a bundled dataset")
    pt.add_argument("model")
    pt.add_argument("--dataset", default="mnist")
    pt.add_argument("--epochs", type=int, default=5)
    pt.add_argument("--lr", type=float, default=0.01)
    pt.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", help="checkpoint path (.safetensors or .pt)")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn demo``: LeNet on MNIST, compressed with the demo's method."""
    pd = sub.add_parser(
        "demo",
        help="train (or load cached) LeNet on MNIST, compress it with SSR, print before/after",
    )
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--retrain", action="store_true", help="ignore the cached baseline")
    pd.add_argument("--no-compress", action="store_true", help="only train/report the baseline")
    pd.add_argument(
        "--out", help="directory for the shipped artifacts (default: CACHE/demo-result)"
    )


def _add_compress(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn compress``: its options in three groups, in the order ``--help`` lists them."""
    pc = sub.add_parser("compress", help="compress a model with a registered method")
    _add_compress_inputs(pc)
    _add_compress_run(pc)
    _add_compress_deploy(pc)


def _add_compress_inputs(pc: argparse.ArgumentParser) -> None:
    """What to compress and with what: model, method, data, seed, factory, recipe, options."""
    pc.add_argument("model", nargs="?", help="reference model name or checkpoint path")
    pc.add_argument(
        "--method",
        help="method name, e.g. ssr, admm-sparse, ddlr, net-trim (--method M --help lists M's "
        "options)",
    )
    pc.add_argument(
        "--data",
        help="dataset name (mnist, fashion-mnist, digits, spiral, cifar10) or "
        "package.module:function returning loaders or datasets: (train, test), (train, val, "
        "test), {'train': ..., 'val': ..., 'test': ...} or one training loader (the current "
        "directory is importable)",
    )
    pc.add_argument(
        "--data-opt",
        action="append",
        metavar="K=V,...",
        help="options of --data, values read as YAML (repeatable). A dataset name takes "
        + ", ".join(DATASET_OPTS)
        + " (mean/std: normalisation, one value or one per channel; limit: a seeded subset "
        "of each split); a function gets them as keyword arguments",
    )
    pc.add_argument(
        "--input-key",
        help="dict batches: the key of the model's input tensor (the model's forward takes "
        "that tensor)",
    )
    pc.add_argument(
        "--label-key",
        help="dict batches: the key of the labels (default: the first of label, labels, "
        "target, targets, y)",
    )
    pc.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the validation split, the loaders and the method (its 'seed' option)",
    )
    pc.add_argument(
        "--factory",
        help="user model as package.module:function (the current directory is importable)",
    )
    pc.add_argument(
        "--factory-kwargs",
        metavar="K=V,...",
        help="arguments of the --factory function, values read as YAML (e.g. "
        "num_classes=10,widths=[16,32])",
    )
    pc.add_argument("--checkpoint", help="weights to load into the model")
    pc.add_argument("--recipe", help="YAML file: {method: ..., data: ..., options: {...}}")
    pc.add_argument(
        "--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)"
    )
    pc.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28")


def _add_compress_run(pc: argparse.ArgumentParser) -> None:
    """The run: latency batch, budget, accuracy drop, validation split, outputs, progress."""
    pc.add_argument(
        "--batch-size", type=int, default=100, help="batch size of the latency measurement"
    )
    pc.add_argument(
        "--target",
        metavar="KEY=FRACTION",
        help="budget: fraction of the original kept, e.g. macs=0.1 or params=0.2,macs=0.1 "
        "(keys: params, macs, latency); the method's strength is chosen on validation",
    )
    pc.add_argument(
        "--max-drop",
        type=float,
        help="accuracy points the model may lose on the validation split (default 5)",
    )
    pc.add_argument(
        "--on-drop",
        choices=("raise", "warn"),
        default="raise",
        help="what to do when --max-drop is exceeded or a layer collapses",
    )
    pc.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training data held out for validation (seeded; default 0.1)",
    )
    pc.add_argument("--out", help="directory for plan, report.json and recipe.yaml")
    pc.add_argument(
        "--ddp-check",
        action="store_true",
        help="under torchrun: compare checksums of every non-reduced step (F-steps, duals, "
        "pruning decisions, weights) across ranks and stop naming the tensor that differs "
        "(COMPACTNN_DDP_CHECK=1)",
    )
    pc.add_argument(
        "--resume",
        metavar="DIR",
        help="run directory: every stage is checkpointed there; rerunning the same command "
        "continues after the last finished stage (a different run's directory is refused)",
    )
    pc.add_argument(
        "--quiet", action="store_true", help="no progress output (the final summary stays)"
    )
    pc.add_argument(
        "--verbose", action="store_true", help="one log line per training step (and per stage)"
    )


def _add_compress_deploy(pc: argparse.ArgumentParser) -> None:
    """The shipped model: sparse form, --prefer speed, latency threads, torch.compile."""
    pc.add_argument(
        "--sparse-form",
        choices=("dense", "gather"),
        default="dense",
        help="how sparse layers are exported to ONNX / TorchScript: dense matrices (fast on "
        "CPU) or gathered non-zeros (small file); latency is measured on that form",
    )
    pc.add_argument(
        "--prefer",
        choices=("size", "speed"),
        default="size",
        help="speed: keep dense every compressed layer measured slower than the dense layer",
    )
    pc.add_argument(
        "--threads", type=int, default=1, help="threads of the latency measurements (fixed)"
    )
    pc.add_argument(
        "--compile",
        action="store_true",
        help="also time the deployed model under torch.compile (inductor; needs a C++ "
        "compiler, skipped with a warning where it cannot work)",
    )


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn export``: model.onnx / model.pt of a result directory."""
    pe = sub.add_parser(
        "export", help="write model.onnx / model.pt of an earlier result directory (--out DIR)"
    )
    pe.add_argument("result", help="result directory (model.safetensors + plan.json)")
    pe.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    pe.add_argument("--model", help="reference model name of the original architecture")
    pe.add_argument("--factory", help="original architecture as package.module:factory")
    pe.add_argument(
        "--factory-kwargs", metavar="K=V,...", help="arguments of the --factory function"
    )
    pe.add_argument("--data", help="dataset whose test samples check parity (default: random)")
    pe.add_argument("--sparse-form", choices=("dense", "gather"), default="dense")


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn report``: report.md (+ plots) of a result directory."""
    pr = sub.add_parser("report", help="render report.md (+ PNG plots) of a result directory")
    pr.add_argument("result", help="result directory with report.json")


def _add_data_prepare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``compactnn data-prepare``: the bundled datasets converted to the cache."""
    sub.add_parser("data-prepare", help="convert bundled datasets to the cache (used by make)")


# API terms in messages -> the flags a command-line user types
_CLI_TERMS: tuple[tuple[str, str], ...] = (
    (r"input_shape=\s*(?:to compactnn\.compress\s*)?\(e\.g\. \(([\d, ]+)\)\)", "--input-shape"),
    (r"The '(\w+)' parameter of Target", r"The \1 fraction of --target"),
    (r"The '(input_shape|max_drop|on_drop|val_fraction)' parameter of compress", "--\\1"),
    (r"\b(input_shape|max_drop|val_fraction)=", "--\\1 "),
    (r"The '(\w+)' parameter of get_(?:dataset|loaders)", r"--data-opt \1"),
    (r"The '(input_key|label_key)' parameter of compress", r"--\1"),
    (r"\b(input_key|label_key)=KEY", r"--\1 KEY"),
    (r"\bon_drop='(\w+)'", r"--on-drop \1"),
    (
        r"Pass the per-sample input shape the model expects, e\.g\. \(1, 28, 28\)",
        "Pass the per-sample input shape the model expects with --input-shape (e.g. 1,28,28)",
    ),
    (r"\btarget=\{'(\w+)': ([\d.]+)\}", r"--target \1=\2"),
    (
        r"\bdata=\((?:train_loader|train)[^)]*\)(?: or a dataset name(?: such as '\w+')?)?",
        "--data NAME",
    ),
    (
        r"The '(\w+)((?:\[[^\]]*\])?)' parameter of (?!compress\b)",
        r"The option '\1\2' (--opt \1=...) of ",
    ),
)


def cli_terms(message: str) -> str:
    """Rewrite an API error message in command-line terms (``input_shape=`` -> ``--input-shape``)."""
    for pattern, repl in _CLI_TERMS:
        if repl == "--input-shape":
            message = re.sub(
                pattern,
                lambda m: "--input-shape (e.g. --input-shape " + m.group(1).replace(" ", "") + ")",
                message,
            )
            continue
        message = re.sub(pattern, repl, message)
    # flags are spelt with dashes
    return re.sub(r"--(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)


def _field_docs(config: type) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``name -> (text, names sharing it)`` from the ``Attributes:`` sections of ``config``
    and its bases (an entry ``a, b: text`` describes ``a`` and ``b`` together)."""
    import inspect

    docs: dict[str, tuple[str, tuple[str, ...]]] = {}
    for klass in reversed(config.__mro__):
        doc = inspect.cleandoc(klass.__doc__ or "")
        lines = doc.splitlines()
        if "Attributes:" not in lines:
            continue
        entries: list[tuple[list[str], list[str]]] = []
        for line in lines[lines.index("Attributes:") + 1 :]:
            if line and not line.startswith(" "):
                break  # next section
            m = re.match(r"^ {4}([\w, ]+?)\s*(?:\([^)]*\))?:\s*(.*)$", line)
            if m and not line.startswith("     "):
                entries.append(([n.strip() for n in m.group(1).split(",")], [m.group(2)]))
            elif entries and line.strip():
                entries[-1][1].append(line.strip())
        for names, text in entries:
            for n in names:
                docs[n] = (" ".join(t for t in text if t).replace("``", ""), tuple(names))
    return docs


def method_help(name: str, width: int = 100) -> str:
    """The options of method ``name``: default and full meaning, from its config dataclass."""
    import dataclasses

    from compactnn.methods import get_method

    cls = get_method(name)
    config = cls.Config
    docs = _field_docs(config)
    lines = [
        f"options of method '{name}' ({config.__name__}); pass them as --opt KEY=VALUE (values "
        "read as YAML) or under 'options:' in a --recipe:",
    ]
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        lines.append(f"  {f.name} = {default!r}")
        text, names = docs.get(f.name, (f"(not described; see {config.__name__})", (f.name,)))
        if len(names) > 1:
            others = ", ".join(n for n in names if n != f.name)
            text = f"(described together with {others}) {text}"
        lines += textwrap.wrap(
            text, width=width, initial_indent="      ", subsequent_indent="      "
        )
    return "\n".join(lines)
