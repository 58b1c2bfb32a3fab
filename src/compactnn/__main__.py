"""``python -m compactnn ...`` (what ``torchrun --nproc-per-node N -m compactnn`` runs)."""

import sys

from compactnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
