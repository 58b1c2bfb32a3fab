"""``python -m compactnn.cli ...``: the command line (the same as ``python -m compactnn``)."""

import sys

from compactnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
