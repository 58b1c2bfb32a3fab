import os

import pytest
import torch

# Two cores shared with other jobs: keep tests single-threaded and deterministic.
torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
