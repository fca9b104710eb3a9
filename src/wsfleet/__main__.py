"""``python -m wsfleet``: the same as the ``wsfleet`` console script."""

import sys

from .cli import main

sys.exit(main())
