"""``python -m tumorseg_core`` is the ``tumorseg`` command line."""

import sys

from tumorseg_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
