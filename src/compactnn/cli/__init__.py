"""The ``compactnn`` command line.

compactnn inspect lenet-caffe                 # per-layer table + totals of a reference model
compactnn inspect ckpt.safetensors            # ... or of a saved checkpoint
compactnn inspect --factory mymodels:make --factory-kwargs num_classes=10 --input-shape 3,32,32
compactnn inspect out/                        # a result of compactnn compress --out out/
compactnn compress --method ssr --help        # the options of ssr, defaults and meaning
compactnn train lenet-caffe --dataset mnist --epochs 5 --out lenet.safetensors
compactnn demo                                # train (or load cached) LeNet on MNIST, report

A bad input ends in one line ``compactnn: error: ...`` naming the flag, exit status 2 (the
traceback with ``--debug``).

:func:`main` parses with :mod:`.parser` (the parser, ``--method M --help``, API messages in
flag terms), then runs the sub-command: :mod:`.compress` (``compactnn compress``) or
:mod:`.commands` (the others). Both build on :mod:`.inputs` (what the user typed, parsed and
checked) and :mod:`.loading` (the model and the data a command works on).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

# _load_ckpt, _parse_factory_kwargs and method_help are re-exported too: tests import them from
# compactnn.cli
from compactnn.cli.inputs import _load_ckpt as _load_ckpt
from compactnn.cli.inputs import _parse_factory_kwargs as _parse_factory_kwargs
from compactnn.cli.parser import build_parser, cli_terms, method_help
from compactnn.errors import CompactnnError

__all__ = ["main", "build_parser"]


def _method_in(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(AttributeError, ValueError):  # a log file keeps the lines' order
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        if argv[:1] == ["compress"] and ({"-h", "--help"} & set(argv)) and _method_in(argv):
            text = method_help(_method_in(argv) or "")
            sub = next(
                a.choices["compress"]
                for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)
            )
            print(text)  # the method's own options first, then the command's
            print()
            print("options of 'compactnn compress' (every method):")
            print(sub.format_help())
            return 0
        args = parser.parse_args(argv)
        # the commands import torch and the methods: loaded once the command line is parsed,
        # so that --help and a mistyped flag answer without that wait
        from compactnn.cli.commands import COMMANDS

        return int(COMMANDS[args.command](args) or 0)
    except CompactnnError as exc:
        if debug:
            raise
        print(f"compactnn: error: {cli_terms(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compactnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `compactnn ... | head` closed the pipe: stop quietly, as cat does
        with contextlib.suppress(OSError):  # Python's flush at exit must not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(
            f"compactnn: internal error: {type(exc).__name__}: {first} (please report it; "
            "rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def __getattr__(name: str) -> object:
    """``compactnn.cli.cache_dir`` / ``demo_baseline``, where scripts found them before they moved
    to :mod:`compactnn.demo`: forwarded on first use, so ``--help`` does not import torch."""
    if name in ("cache_dir", "demo_baseline"):
        from compactnn import demo  # torch, the reference models and the training loop

        return getattr(demo, name)
    raise AttributeError(f"module 'compactnn.cli' has no attribute {name!r}")
