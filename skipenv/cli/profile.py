"""``skipenv profile``: each skip candidate on its own, per skip mode (:func:`skipenv.evaluation.profile.run_profile`)
from the command line."""

from __future__ import annotations

import argparse

from .args import DEFAULT_ENV_ID, json_object, output_folder, positive_int

__all__ = ["configure_parser", "main"]


def _families(text: str) -> tuple[str, ...]:
    from ..evaluation.profile import parse_families

    try:
        return parse_families(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _modes(text: str) -> tuple[str, ...]:
    from ..evaluation.profile import parse_skip_modes

    try:
        return parse_skip_modes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``skipenv profile``."""
    from ..evaluation.profile import SPLITS

    p.add_argument("--env", default=DEFAULT_ENV_ID, help="a one-shot SwitchDec env id")
    p.add_argument("--model", default=None,
                   help="generator: the embedded short name, a Hugging Face Hub id or a local model folder (default: "
                        "the env's, the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--env-kwargs", type=json_object, default={},
                   help="further gym.make kwargs as JSON, e.g. '{\"tau\": 0.02, \"token_segments\": 4}'")
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="split of the documents (train: a profile should not look at the documents policies are tested on)")
    p.add_argument("--docs", type=positive_int, default=20, help="the first N documents of the split")
    p.add_argument("--skip-modes", type=_modes, default="identity", metavar="MODE[,MODE...]",
                   help="skip modes, comma-separated: identity (the paper's skip: the residual stream passes "
                        "unchanged) and, when the installed env has the skip_mode kwarg, its modes (e.g. mean, "
                        "linear)")
    p.add_argument("--candidates", type=_families, default="attention,ffn,tokens", metavar="KIND[,KIND...]",
                   help="candidate kinds, comma-separated: attention, ffn, tokens (each layer's sublayer / each "
                        "token segment, one bit at a time)")
    p.add_argument("--out", type=output_folder, default="runs/profile",
                   help="output folder: profile.csv (one row per document, candidate and mode; a rerun resumes it), "
                        "profile.json (model identity and configuration), summary.csv, profile.md, profile.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Run the profile from parsed :func:`configure_parser` arguments; prints the table; returns 0 (1 when the
    output folder holds rows of another model or configuration)."""
    import sys

    from ..envs.cache import IdentityMismatchError
    from ..evaluation.profile import format_table, run_profile

    env_kwargs = dict(args.env_kwargs)
    if args.model is not None:
        if "model" in env_kwargs:
            raise ValueError("set the model with --model or in --env-kwargs, not both")
        env_kwargs["model"] = args.model
    try:
        result = run_profile(args.env, env_kwargs=env_kwargs, skip_modes=args.skip_modes, families=args.candidates,
                             split=args.split, num_docs=args.docs, out_dir=args.out, progress=not args.no_progress)
    except IdentityMismatchError as e:  # a RuntimeError, but the user's folder: one line, no traceback
        print(f"skipenv profile: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result.summary, result.tau))
    f = result.folder
    print(f"\nsaved: {f / 'profile.csv'} ({len(result.rows)} rows, {result.computed} computed now), "
          f"{f / 'summary.csv'}, {f / 'profile.md'}, {f / 'profile.png'}")
    return 0
