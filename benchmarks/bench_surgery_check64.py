"""Time of the surgery self-check on kiaee-cnn (issue 34), in one process, 1 torch thread.

Each plan keeps every other filter of conv1 (1 action) or of conv1..conv4 (4 actions); 2 samples
are given as ``check_inputs`` (what compress passes). The self-check's own calls are timed inside
``verify=True`` runs: the per-action comparison (``_channels.compare`` / ``reference_output``)
and the float64 run check (``surgery._check_run`` + ``Snapshot.of``; on a tree before issue 34,
``surgery._check_user_batch``, the float32 check on the user's samples). Run it on both trees to
compare, e.g. ``PYTHONPATH=<old tree>/src python benchmarks/bench_surgery_check64.py old``.

    python benchmarks/bench_surgery_check64.py [TAG] [REPEATS]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from compactnn import models, surgery
from compactnn.plan import CompressionPlan, KeepOutputs
from compactnn.surgery import _channels


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else "this tree"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    torch.set_num_threads(1)
    spent = [0.0]

    def timed(fn):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        return wrapper

    targets = [(_channels, "reference_output"), (_channels, "compare")]
    targets += [(surgery, k) for k in ("_check_user_batch", "_check_run") if hasattr(surgery, k)]
    for mod, k in targets:
        setattr(mod, k, timed(getattr(mod, k)))
    if hasattr(surgery, "Snapshot"):
        surgery.Snapshot.of = classmethod(timed(surgery.Snapshot.of.__func__))
    model = models.create("kiaee-cnn", seed=0).eval()
    shape = [3, 32, 32]
    convs = ("conv1", "conv2", "conv3", "conv4")
    acts = [KeepOutputs(n, list(range(0, model.get_submodule(n).out_channels, 2))) for n in convs]
    user = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    for n in (1, 4):
        plan = CompressionPlan(acts[:n], meta={"input_shape": shape})
        surgery.apply(plan, model, check_inputs=user)  # warm-up
        total, check = [], []
        for _ in range(reps):
            spent[0] = 0.0
            t0 = time.perf_counter()
            surgery.apply(plan, model, check_inputs=user)
            total.append(time.perf_counter() - t0)
            check.append(spent[0])
        share = statistics.median(c / t * 100 for c, t in zip(check, total, strict=True))
        print(
            f"{tag}: kiaee-cnn, {n} action(s), check_inputs=2: apply median "
            f"{statistics.median(total) * 1e3:.0f} ms, self-check median "
            f"{statistics.median(check) * 1e3:.1f} ms ({share:.0f} % of apply)",
            flush=True,
        )


if __name__ == "__main__":
    main()
