"""Argument types and defaults shared by the ``skipenv`` subcommands (and the scripts in agents/ and benchmarks/).

A bad value is a usage error (one line, exit code 2) raised by argparse before anything loads. Checks that need
the env id or the machine (:func:`check_env_kwargs`, :func:`check_device`, :func:`check_policy_file`) run in each
subcommand's ``main`` before any model loads and raise ``ValueError`` / ``FileNotFoundError`` (one line, exit
code 1). Every subcommand reads ``--env-kwargs`` with :func:`json_object` and checks it with
:func:`check_env_kwargs`, so a bad kwarg is refused the same way by probe, generate, leaderboard and dataset.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

__all__ = ["DEFAULT_ENV_ID", "positive_int", "nonnegative_int", "finite_float", "json_object", "plan_text",
           "output_folder", "output_file",
           "DefaultEnv", "ENV_FROM_RUN_HELP", "env_for_policies", "env_keywords", "check_env_kwargs", "check_device",
           "check_policy_file", "OBJECT_KWARGS"]

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


def finite_float(text: str) -> float:
    """A finite number (``nan`` / ``inf`` refused: a tolerance or a rate of inf makes every later number inf)."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


finite_float.__name__ = "finite number"


def json_object(text: str) -> dict:
    """``--env-kwargs`` type of every subcommand: a JSON object (``{"max_input_tokens": 256}``); any other JSON
    value (``[1]``, ``5``, ``"x"``) or invalid JSON is a usage error."""
    try:
        v = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); expected an object such as "
                                         f"'{{\"max_input_tokens\": 256}}'") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of gym.make kwargs such as "
                                         f"'{{\"max_input_tokens\": 256}}', got a JSON {type(v).__name__}: {text!r}")
    return v


json_object.__name__ = "JSON object"


def _first_existing(path):
    """``path`` or its nearest ancestor that exists (``None`` when none does)."""
    for q in (path, *path.parents):
        if q.exists():
            return q
    return None


def output_folder(text: str) -> str:
    """``--out`` type of the commands that write a folder (train, probe, profile, leaderboard): a folder that exists
    or can be created. A path naming an existing file, or under one, is a usage error that says so (instead of
    ``mkdir``'s "File exists" once the model has loaded)."""
    from pathlib import Path

    path = Path(text).expanduser()
    found = _first_existing(path)
    if found is not None and not found.is_dir():
        where = "is an existing file" if found == path else f"is under {str(found)!r}, an existing file"
        raise argparse.ArgumentTypeError(f"{text!r} {where}, but this option names an output folder: pass a new or "
                                         f"existing folder path (or move the file)")
    return text


output_folder.__name__ = "output folder"


def output_file(text: str) -> str:
    """``--out`` type of the commands that write one file (generate, dataset evaluate): a path that is not an
    existing folder and whose nearest existing ancestor is a folder (a usage error otherwise)."""
    from pathlib import Path

    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing folder, but this option names an output file: pass "
                                         f"a file path such as {str(path / 'out.json')!r}")
    found = _first_existing(path.parent)
    if found is not None and not found.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is under {str(found)!r}, an existing file, not a folder: pass a "
                                         f"path inside a folder")
    return text


output_file.__name__ = "output file"


def plan_text(text: str) -> str:
    """``--plan`` type: the syntax of ``NAME:KIND=I,J;KIND=I`` (:func:`skipenv.evaluation.probe.parse_plan`),
    checked before the model loads (whether the indices fit the model is checked once its plan spec is known)."""
    import re

    from ..policies.menu import parse_plan
    from ..plan import PlanSpec

    numbers = [int(n) for n in re.findall(r"\d+", text.rpartition(":")[2])] or [0]
    if max(numbers) > 100_000:
        raise argparse.ArgumentTypeError(f"index {max(numbers)} in plan {text!r} is out of range")
    size = max(numbers) + 1
    try:
        parse_plan(text, PlanSpec(model_type="llama", num_encoder_layers=0, num_decoder_layers=size,
                                  token_segments=size))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


plan_text.__name__ = "plan"

#: env constructor arguments that take Python objects (a loaded model, an evaluator, a reward rule): they cannot
#: come from JSON on the command line
OBJECT_KWARGS = ("generator", "evaluator", "reward")


def env_keywords(env_id: str) -> set[str] | None:
    """The keyword arguments ``gym.make(env_id, ...)`` accepts: those of the env class of the id (its ``__init__``
    and, through ``**kwargs``, its base classes', read with :mod:`inspect`, so a new env argument is accepted
    without editing a list) plus ``formulation`` / ``formulation_kwargs`` / ``skip_threshold``
    (:func:`skipenv.envs.registration.env_class_keywords`, the check ``gym.make`` itself runs); ``None`` for an id
    that is not a skipenv one (then ``gym.make`` checks).

    Raises:
        gymnasium.error.Error: an unknown id.
    """
    from ..envs.registration import env_class_keywords, env_class_of

    cls = env_class_of(env_id)
    return None if cls is None else env_class_keywords(cls)


def check_device(device, option: str = "--device") -> str:
    """Refuse a torch device no model can run on here, before anything loads: not a device string, ``meta``
    (shapes without data), or CUDA / MPS that this machine lacks.

    Raises:
        ValueError: the message names the device and the fix.
    """
    import torch

    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps ({option})") from None
    if d.type == "meta":
        raise ValueError(f"device {device!r}: meta tensors hold shapes only, no data, so no model can run on them; "
                         f"use {option} cpu (or cuda)")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch finds no CUDA GPU on this machine; use {option} cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use "
                             f"{option} cuda:0")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available here; use {option} cpu")
    elif d.type != "cpu":
        raise ValueError(f"device {device!r}: skipenv runs on cpu, cuda or mps; use {option} cpu")
    return device


def check_env_kwargs(env_id: str, env_kwargs, *, reserved: dict[str, str] | None = None,
                     option: str = "--env-kwargs") -> dict:
    """Check ``gym.make`` kwargs given on the command line against what ``env_id`` accepts, before any model loads.

    Checks: a JSON object; every name one of :func:`env_keywords` (a misspelt name gets the closest one
    suggested); no :data:`OBJECT_KWARGS`; none of ``reserved`` (name → why: the subcommand sets it itself);
    ``device`` (:func:`check_device`) and ``dtype`` (:func:`skipenv.loading.resolve_dtype`); ``formulation`` one of
    :data:`skipenv.envs.wrappers.FORMULATIONS` and ``formulation_kwargs`` the wrapper's arguments with valid values
    (the Lagrange multiplier's ``lr``, ``update_every``, ``lam_init``, ``lam_max`` are checked by building one;
    ``tau_range`` two finite numbers ``0 <= low <= high``). The env's own values are checked by its constructor,
    which does so before it loads the model.

    Returns:
        ``env_kwargs`` itself.

    Raises:
        ValueError: the first problem found, naming the kwarg and the fix.
        gymnasium.error.Error: an unknown env id.
    """
    import difflib

    if not isinstance(env_kwargs, dict):
        raise ValueError(f"{option} must be a JSON object such as '{{\"max_input_tokens\": 256}}', got "
                         f"{type(env_kwargs).__name__} {env_kwargs!r}")
    accepted = env_keywords(env_id)
    for k, why in (reserved or {}).items():
        if k in env_kwargs:
            raise ValueError(f"{option}: {k!r} {why}")
    objects = sorted(set(env_kwargs) & set(OBJECT_KWARGS))
    if objects:
        raise ValueError(f"{option}: {objects} take Python objects (a loaded model, an Evaluator, a Reward), not JSON; "
                         f"use skipenv.make(..., {objects[0]}=...) from Python")
    if accepted is not None:
        for k in env_kwargs:
            if k not in accepted:
                close = difflib.get_close_matches(str(k), sorted(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{option}: {env_id} takes no keyword argument {k!r}{hint}; it takes "
                                 f"{', '.join(sorted(accepted - set(OBJECT_KWARGS)))}")
    if "device" in env_kwargs:
        check_device(env_kwargs["device"], option=f"{option} device")
    if "dtype" in env_kwargs:
        from ..loading import resolve_dtype

        if not isinstance(env_kwargs["dtype"], str):
            raise ValueError(f"{option}: dtype must be a string such as 'float32', got {env_kwargs['dtype']!r}")
        resolve_dtype(env_kwargs["dtype"])
    _check_formulation(env_id, env_kwargs, option)
    return env_kwargs


def _check_formulation(env_id: str, env_kwargs: dict, option: str) -> None:
    import math
    import numbers

    from ..envs.registration import _formulation_arguments, env_tau, registered_formulation
    from ..envs.rewards import LagrangeMultiplier
    from ..envs.wrappers import FORMULATIONS

    formulation = registered_formulation(env_id, env_kwargs)
    if formulation not in FORMULATIONS:
        raise ValueError(f"{option}: unknown formulation {formulation!r}; choose one of {FORMULATIONS}")
    fk = env_kwargs.get("formulation_kwargs")
    if fk is None:
        return
    if not isinstance(fk, dict):
        raise ValueError(f"{option}: formulation_kwargs must be an object such as {{\"lr\": 0.1}}, got {fk!r}")
    allowed = _formulation_arguments(formulation)
    unknown = sorted(set(fk) - allowed)
    if unknown:
        raise ValueError(f"{option}: formulation {formulation!r} does not take formulation_kwargs {unknown}; it takes "
                         f"{sorted(allowed) or 'none'}")
    if formulation == "expected":
        if "update" in fk and not isinstance(fk["update"], bool):
            raise ValueError(f"{option}: formulation_kwargs update must be true or false, got {fk['update']!r}")
        try:
            tau = env_tau(env_id, env_kwargs)
        except (TypeError, ValueError):
            return  # a bad tau / quality: the env's constructor names it
        try:
            LagrangeMultiplier(tau, **{k: v for k, v in fk.items() if k != "update"})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{option}: formulation_kwargs: {e}") from None
    elif formulation == "budget" and "tau_range" in fk:
        r = fk["tau_range"]
        ok = isinstance(r, (list, tuple)) and len(r) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in r) \
            and r[0] <= r[1]
        if not ok:
            raise ValueError(f"{option}: formulation_kwargs tau_range must be [low, high] with 0 <= low <= high "
                             f"finite numbers, got {r!r}")


def check_policy_file(spec: str) -> str:
    """Check a policy spec before the model loads: its syntax (:func:`skipenv.policies.check_policy_spec`) and, for
    a saved policy, that the file exists and is what its name says (a ``.zip`` a zip archive with SB3's ``data``
    entry; a ``.pt`` a file beside its ``.json``).

    Raises:
        ValueError: a bad spec or a file that is not a saved policy; FileNotFoundError: a missing file.
    """
    import zipfile
    from pathlib import Path

    from ..policies.spec import check_policy_spec

    kind, arg = check_policy_spec(spec)
    path = None
    if kind == "file":
        path = Path(spec)
    elif kind == "sb3":
        path = Path(arg.partition(":")[2])
    elif kind == "pg":
        path = Path(arg)
    if path is None:
        return spec
    if not path.is_file():
        raise FileNotFoundError(f"policy file {str(path)!r} does not exist; train one (e.g. `skipenv train`) or pass "
                                f"a baseline spec such as 'lead:4'")
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                ok = "data" in z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"policy file {str(path)!r} is not a stable-baselines3 save (a zip archive with a 'data' "
                             f"entry, as `skipenv train` writes policy.zip); it is damaged or another kind of file")
    return spec


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
