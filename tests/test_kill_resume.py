"""``compactnn compress --resume DIR`` killed with SIGKILL and run again gives the same model,
bit for bit, as an uninterrupted run (issue 34).

Each case runs the command line in a subprocess and kills it with SIGKILL at another stage:
from outside, as soon as a stage line appears in its log (the model and data loaded, the
compression running; the export running, every checkpoint written), or from inside, right
after a given checkpoint was written (``compactnn.resume.after_save``: the budget search's
choice; a fine-tuning epoch). The same command with the same ``--resume DIR`` then runs to the
end, and its ``model.safetensors`` must equal the uninterrupted run's tensor for tensor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

# the command line run in a subprocess; COMPACTNN_TEST_KILL_AFTER="KEY_PART:N" makes it
# SIGKILL itself right after the N-th checkpoint whose key contains KEY_PART was written
RUNNER = """
import os, signal, sys
from compactnn import resume
spec = os.environ.get("COMPACTNN_TEST_KILL_AFTER")
if spec:
    part, n = spec.rsplit(":", 1)
    seen = []
    def hook(key):
        if part in key:
            seen.append(key)
            if len(seen) == int(n):
                print(f"killing myself after checkpoint {key}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    resume.after_save = hook
from compactnn.cli import main
sys.exit(main(sys.argv[1:]))
"""

ARGS = [
    "compress", "--factory", "tests.test_cli_data:mlp", "--method", "taylor",
    "--target", "macs=0.5", "--opt", "finetune_epochs=3", "--data", "digits",
    "--on-drop", "warn", "--batch-size", "1", "--seed", "3",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COMPACTNN_VERBOSE", None)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COMPACTNN_PROGRESS_INTERVAL="60")
    env.update(extra)
    return env


_SECONDS: dict[str, float] = {}


def _run(
    out: Path,
    resume_dir: Path | None,
    *,
    kill_on: str | None = None,
    kill_at: float | None = None,
    **env: str,
) -> str:
    """Run the command; ``kill_on``: SIGKILL it when a log line contains that text;
    ``kill_at``: SIGKILL it that many seconds after its start. Returns the log; asserts a kill
    happened where one was asked for."""
    argv = [*ARGS, "--out", str(out)]
    if resume_dir is not None:
        argv += ["--resume", str(resume_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *argv],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_at is not None:
        try:
            proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return ""
        assert proc.returncode == 0  # finished before the kill: nothing to test
        return ""
    log = []
    assert proc.stderr is not None
    for line in proc.stderr:
        log.append(line)
        if kill_on is not None and kill_on in line:
            proc.send_signal(signal.SIGKILL)
            break
    rest = proc.communicate(timeout=600)[1] or ""
    text = "".join(log) + rest
    if kill_on is None and "COMPACTNN_TEST_KILL_AFTER" not in env:
        assert proc.returncode == 0, text
    else:
        assert proc.returncode == -signal.SIGKILL, text
    return text


def _same_model(a: Path, b: Path) -> None:
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "out"
    t0 = time.perf_counter()
    _run(out, None)
    _SECONDS["uninterrupted"] = time.perf_counter() - t0
    return out


SLOW = pytest.mark.slow  # a minute or more each on a loaded 2-core machine


@pytest.mark.parametrize(
    ("how", "where"),
    [
        pytest.param("line", "stage: compress", marks=SLOW),  # model + data loaded
        pytest.param("checkpoint", "budget search:1", marks=SLOW),  # search done, no training
        ("checkpoint", "fine-tune:2"),  # after the 2nd of 3 fine-tuning epochs
        pytest.param("line", "stage: export + latency", marks=SLOW),  # all checkpoints written
        pytest.param("time", "0.6", marks=SLOW),  # at 60 % of the uninterrupted run's time
    ],
)
def test_sigkill_then_resume_gives_the_uninterrupted_model(
    tmp_path: Path, uninterrupted: Path, how: str, where: str
) -> None:
    rdir, out = tmp_path / "run", tmp_path / "out"
    if how == "line":
        log = _run(out, rdir, kill_on=where)
    elif how == "time":  # wherever the run is then (the resumed run must not care)
        _run(out, rdir, kill_at=float(where) * _SECONDS["uninterrupted"])
    else:
        log = _run(out, rdir, COMPACTNN_TEST_KILL_AFTER=where)
        line = next(ln for ln in log.splitlines() if "killing myself" in ln)
        assert where.split(":")[0] in line, log
    _run(out, rdir)  # the same command again, to the end
    _same_model(out, uninterrupted)
