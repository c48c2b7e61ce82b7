"""``python -m skipenv.cli``: the ``skipenv`` console script."""

import sys

from . import main

sys.exit(main())
