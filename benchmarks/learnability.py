"""Learnability probe on the embedded SmolLM2 / XSum: how much FLOPs a contextual policy over a menu of plans can
save beyond the best static policy (single plan and mixture), per-input and expected constraint, with bootstrap CIs
and a learning curve over the number of training documents (see :mod:`skipenv.evaluation.probe`).

    python benchmarks/learnability.py --train-docs 40 --test-docs 20 --quality agreement --tau 0.1

Same as ``skipenv probe``. The evaluated table is cached under ``--out``; re-running re-analyses without a forward
pass.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from skipenv.cli.probe import configure_parser, main as probe_main

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure_parser(p)
    return probe_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
