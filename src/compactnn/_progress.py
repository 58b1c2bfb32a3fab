"""Progress output a person can read, on a terminal and in a log file.

- On a terminal: a tqdm bar that redraws at most twice a second (``mininterval=0.5``); the
  postfix (loss, accuracy) is updated without forcing a redraw.
- Not on a terminal (CI, ``make demo > log``): no bar; one line per epoch or stage.
- ``COMPACTNN_VERBOSE=1`` (``compactnn ... --verbose``): one line per step as well.
- ``enabled=False`` (``--quiet``, ``progress=False``): nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress", "is_tty", "verbose"]

#: seconds between two redraws of a terminal bar
MIN_INTERVAL = 0.5


def is_tty() -> bool:
    """Whether progress goes to a terminal (stderr is one)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def verbose() -> bool:
    """Per-step lines requested (``COMPACTNN_VERBOSE`` set to a non-empty value but 0)."""
    return os.environ.get("COMPACTNN_VERBOSE", "") not in ("", "0")


def _fmt(stats: dict[str, Any]) -> str:
    parts = []
    for k, v in stats.items():
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


class Progress:
    """A bar on a terminal, one line per epoch elsewhere (see the module docstring).

    Args:
        total: steps in all (0 or ``None``: unknown).
        desc: what runs, e.g. ``"fine-tune"``.
        enabled: ``False`` prints nothing at all.
    """

    def __init__(self, total: int | None, desc: str, enabled: bool = True) -> None:
        self.desc = desc
        self.enabled = bool(enabled)
        self.tty = self.enabled and is_tty()
        self.verbose = self.enabled and verbose()
        self.steps = 0
        self._t0 = time.perf_counter()
        self.bar = tqdm(
            total=total or None,
            desc=desc,
            disable=not self.tty,
            leave=False,
            mininterval=MIN_INTERVAL,
        )

    def step(self, **stats: Any) -> None:
        """One step done; ``stats`` shown in the bar (or per line with ``--verbose``)."""
        self.steps += 1
        self.bar.update(1)
        if self.tty:
            self.bar.set_postfix(stats, refresh=False)
        elif self.verbose:
            self._line(f"step {self.steps}: {_fmt(stats)}")

    def epoch(self, index: int, total: int, **stats: Any) -> None:
        """End of epoch ``index`` (1-based) of ``total``: one line when not on a terminal."""
        if self.enabled and not self.tty:
            dt = time.perf_counter() - self._t0
            self._line(f"epoch {index}/{total}: {_fmt(stats)} ({dt:.1f} s)")

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
