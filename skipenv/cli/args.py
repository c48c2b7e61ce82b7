"""Argument types and defaults shared by the ``skipenv`` subcommands (and the scripts in agents/ and benchmarks/).

A bad value is a usage error (one line, exit code 2) raised by argparse before anything loads.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

__all__ = ["DEFAULT_ENV_ID", "positive_int", "nonnegative_int", "json_object", "DefaultEnv", "ENV_FROM_RUN_HELP",
           "env_for_policies"]

from ..envs.registration import DEFAULT_ENV_ID  # the one default id of every tool


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
