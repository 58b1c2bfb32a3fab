"""Progress output a person can read, on a terminal and in a log file.

- On a terminal: a tqdm bar that redraws at most twice a second (``mininterval=0.5``); the
  postfix (loss, accuracy) is updated without forcing a redraw.
- Not on a terminal (CI, ``make demo > log``, ``compactnn compress ... > log 2>&1``): no bar;
  one line per epoch or stage, each stamped with the run's elapsed time (``[  1:23]``), a status
  line (steps done, statistics, elapsed, ETA) at least every :func:`interval` seconds of a
  training run, and an estimate of a training run's time once its first steps are timed.
  Work outside a training loop (a solver, a search, exporting) is covered by :class:`Heartbeat`
  (the command line starts one): a line naming the current :func:`stage` whenever nothing was
  printed for :func:`interval` seconds.
- ``COMPACTNN_VERBOSE=1`` (``compactnn ... --verbose``): one line per step as well.
- ``COMPACTNN_PROGRESS_INTERVAL=SECONDS``: the interval of the status lines (default 20).
- ``enabled=False`` (``--quiet``, ``progress=False``): nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Heartbeat", "Progress", "interval", "is_tty", "log", "stage", "verbose"]

#: seconds between two redraws of a terminal bar
MIN_INTERVAL = 0.5
#: default seconds between two status lines off a terminal (the promise is one per 30 s)
DEFAULT_INTERVAL = 20.0
#: a training run's time is estimated after this many seconds (or ESTIMATE_STEPS steps)
ESTIMATE_AFTER_S = 2.0
ESTIMATE_STEPS = 20
#: a stage's line waits this long (or until another line) so that a quick failure prints
#: only its error
STAGE_GRACE_S = 5.0

_lock = threading.RLock()
_clock = {"start": time.perf_counter(), "last": time.perf_counter()}
_stage: dict[str, Any] = {"name": "", "since": time.perf_counter()}
_active: list[Progress] = []  # the open progress runs, innermost last
_pending: list[dict[str, Any]] = []  # stage lines not printed yet (see stage())


def is_tty() -> bool:
    """Whether progress goes to a terminal (stderr is one)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def verbose() -> bool:
    """Per-step lines requested (``COMPACTNN_VERBOSE`` set to a non-empty value but 0)."""
    return os.environ.get("COMPACTNN_VERBOSE", "") not in ("", "0")


def interval() -> float:
    """Seconds between two status lines off a terminal (``COMPACTNN_PROGRESS_INTERVAL``)."""
    text = os.environ.get("COMPACTNN_PROGRESS_INTERVAL", "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def restart_clock() -> None:
    """Start the run clock of the ``[elapsed]`` stamps now (the command line's start)."""
    with _lock:
        now = time.perf_counter()
        _clock["start"] = _clock["last"] = now


def elapsed() -> float:
    """Seconds on the run clock."""
    return time.perf_counter() - _clock["start"]


def log(text: str) -> None:
    """One line to stderr, stamped with the run's elapsed time (after any pending stage line)."""
    with _lock:
        _flush_pending()
        _print(text)


def _print(text: str) -> None:
    print(f"[{duration(elapsed()):>7}] {text}", file=sys.stderr, flush=True)
    _clock["last"] = time.perf_counter()


def flush() -> None:
    """Print the pending stage lines now (before a plain ``print`` of the stage's results)."""
    with _lock:
        _flush_pending()


def _flush_pending() -> None:
    now = time.perf_counter()
    for entry in _pending:
        late = now - entry["t"]
        _print(entry["text"] + (f", started {late:.1f} s ago" if late >= 1.0 else ""))
    _pending.clear()


def current_stage() -> str:
    return str(_stage["name"])


@contextlib.contextmanager
def stage(name: str, detail: str = "", *, enabled: bool = True) -> Iterator[None]:
    """Name the work inside the block: one line ``stage: NAME (detail)`` and the name in every
    :class:`Heartbeat` line while it runs; the previous stage is current again after it.

    The stage's line is printed before the next line of any kind (a progress line, a
    heartbeat), after :data:`STAGE_GRACE_S` seconds (by the :class:`Heartbeat`), at
    :func:`flush`, or when the block ends normally; a block that fails before any of these
    prints nothing of its own, so that a bad input still ends in one error line.
    """
    with _lock:
        before = dict(_stage)
        _stage.update(name=name, since=time.perf_counter())
        text = f"stage: {name}" + (f" ({detail})" if detail else "")
        entry = {"text": text, "t": time.perf_counter()}
        if enabled:
            _pending.append(entry)
    ok = False
    try:
        yield
        ok = True
    finally:
        with _lock:
            if entry in _pending:
                if ok:
                    _flush_pending()
                else:
                    _pending.remove(entry)
            _stage.update(before)


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
        self.total = int(total or 0)
        self.enabled = bool(enabled)
        self.tty = self.enabled and is_tty()
        self.verbose = self.enabled and verbose()
        self.lines = self.enabled and not self.tty
        self.steps = 0
        self.stats: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._estimated = False
        self.bar = tqdm(
            total=total or None,
            desc=desc,
            disable=not self.tty,
            leave=False,
            mininterval=MIN_INTERVAL,
        )
        if self.enabled:
            with _lock:
                _active.append(self)

    def status(self) -> str:
        """``"123/4,000 steps (3 %), loss 0.12, elapsed 0:31, ETA 16:20"``."""
        dt = time.perf_counter() - self._t0
        if self.total:
            text = f"{self.steps:,}/{self.total:,} steps ({100 * self.steps / self.total:.0f} %)"
        else:
            text = f"{self.steps:,} steps"
        if self.stats:
            text += f", {_fmt(self.stats)}"
        text += f", elapsed {duration(dt)}"
        if self.total and self.steps:
            text += f", ETA {duration(dt / self.steps * (self.total - self.steps))}"
        return text

    def step(self, **stats: Any) -> None:
        """One step done; ``stats`` shown in the bar (or per line with ``--verbose``)."""
        self.steps += 1
        self.stats = stats
        self.bar.update(1)
        if self.tty:
            self.bar.set_postfix(stats, refresh=False)
        elif self.verbose:
            self._line(f"step {self.steps}: {_fmt(stats)}")
        elif self.lines:
            now = time.perf_counter()
            dt = now - self._t0
            if (
                not self._estimated
                and self.total
                and (dt >= ESTIMATE_AFTER_S or self.steps >= ESTIMATE_STEPS)
            ):
                self._estimated = True
                per = dt / self.steps
                if per * self.total >= interval():  # long work: say how long up front
                    self._line(
                        f"{self.total:,} steps planned; the first {self.steps} took {dt:.1f} s "
                        f"({per:.3g} s/step): estimate {duration(per * self.total)} in all"
                    )
            elif now - max(_clock["last"], self._t0) >= interval():  # quiet for an interval
                self._line(self.status())

    def epoch(self, index: int, total: int, **stats: Any) -> None:
        """End of epoch ``index`` (1-based) of ``total``: one line when not on a terminal."""
        if self.lines:
            dt = time.perf_counter() - self._t0
            eta = ""
            if self.total and self.steps and self.steps < self.total:
                eta = f", ETA {duration(dt / self.steps * (self.total - self.steps))}"
            self._line(f"epoch {index}/{total}: {_fmt(stats)} ({dt:.1f} s{eta})")

    def _line(self, text: str) -> None:
        log(f"{self.desc}: {text}")

    def close(self) -> None:
        self.bar.close()
        with _lock:
            if self in _active:
                _active.remove(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Heartbeat:
    """A daemon thread that logs the current :func:`stage` (and the innermost open
    :class:`Progress`'s status) whenever nothing was printed for :func:`interval` seconds.

    Off a terminal only (a terminal has its bars); ``enabled=False`` starts nothing. Use as a
    context manager around the work.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled) and not is_tty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, interval() / 4)):
            now = time.perf_counter()
            quiet = now - max(_clock["last"], self._t0)  # since the last line or the start
            if quiet < interval() and not _pending:
                continue
            with _lock:
                bar = _active[-1] if _active else None
                name = current_stage() or "working"
                since = now - float(_stage["since"])
                if _pending:
                    if now - _pending[0]["t"] >= min(interval(), STAGE_GRACE_S):
                        _flush_pending()  # the stage's own line, once not a quick failure
                        continue
                    if quiet < interval():
                        continue
            if bar is not None:
                log(f"{bar.desc}: {bar.status()} (stage: {name})")
            else:
                log(f"{name}: still running, {duration(since)} in this stage")

    def __enter__(self) -> Heartbeat:
        self._t0 = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="compactnn-heartbeat")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
