"""``python -m skipenv`` = the ``skipenv`` command."""

import sys

from .cli import main

sys.exit(main())
