"""``python -m ntkrobust``: the command line."""

import sys

from ntkrobust.cli import main

if __name__ == "__main__":
    sys.exit(main())
