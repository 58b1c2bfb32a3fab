import os

import pytest
import torch

# Two cores shared with other jobs: tests run single-threaded unless told otherwise
# (COMPACTNN_TEST_THREADS, else OMP_NUM_THREADS, else 1 torch intra-op thread). No test may
# depend on the thread count: `make test-threads` runs the fast suite with 1 and 2 threads
# (OMP_NUM_THREADS / MKL_NUM_THREADS varied; they also reach BLAS and the subprocesses: Dask
# workers, DDP ranks, fresh interpreters).
torch.set_num_threads(
    int(os.environ.get("COMPACTNN_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1)
)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def dask_cluster():  # type: ignore[no-untyped-def]
    """One loopback LocalCluster of 2 single-threaded worker processes for the whole run
    (starting one and warming its workers costs seconds): tests/solvers/test_layerwise_parallel.py
    and tests/test_dask_end_to_end.py share it. A task whose worker dies fails at once (no
    retries on fresh workers; test_dask_end_to_end's worker-killing test relies on it)."""
    pytest.importorskip("distributed")
    import dask

    from compactnn.solvers.layerwise.parallel import local_cluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), local_cluster(2) as c:
        yield c


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Fake eager / onnxruntime timers for compactnn.export.runtimes (tests/_timing.py): the
    log of the rounds they were called for."""
    from _timing import install_fake_clock

    return install_fake_clock(monkeypatch)
