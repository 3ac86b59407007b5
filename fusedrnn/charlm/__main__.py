"""``python -m fusedrnn.charlm`` (also under ``torchrun ... -m fusedrnn.charlm train``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
