"""``skipenv table build | info | validate``: exact replay tables (:mod:`skipenv.tables`).

The arguments and the work live beside the table code in :mod:`skipenv.tables.cli` (``validate_table`` is also
used by the tests and the benchmarks); this module is the subcommand's entry in the CLI package.
"""

from __future__ import annotations

from ..tables.cli import configure_parser, main

__all__ = ["configure_parser", "main"]
