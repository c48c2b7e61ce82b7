"""Replayable episode records (after CompilerGym's ``CompilerEnvState``): everything needed to re-run one episode
and check its numbers, so published results can be verified.

>>> record = EpisodeRecord.from_step(env, info)          # after env.step(action)
>>> record.to_json()                                       # store / publish
>>> skipenv.validate(record)                               # re-make the env, replay the plan, compare
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EpisodeRecord", "ValidationResult", "validate"]

#: numbers compared by :func:`validate`
CHECKED = ("reward", "quality", "quality_full", "cost")


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode: env id + kwargs, example, plan, outcomes, and provenance.

    Attributes:
        env_id: registered id (e.g. ``"SwitchDec-XSum-v0"``); ``env_kwargs`` are the ``gym.make`` kwargs (names /
            numbers only).
        split, example_id: which input.
        plan: the plan as JSON (:meth:`skipenv.SkipPlan.to_json`).
        reward, quality, quality_full, cost: outcomes (cost = FLOPs fraction, observation included); ``reward`` is
            the unwrapped env's own (stateless, replayable) reward, ``info["env_reward"]`` under a formulation
            wrapper, whose stateful reward (e.g. the Lagrangian one) cannot be replayed from one episode.
        model_fingerprint: :func:`skipenv.envs.evaluator.model_fingerprint` of the generator.
        skipenv_version: package version that produced the record.
        skip_mode: ``"identity"`` or ``"<mode>:<calibration digest>"`` (:mod:`skipenv.envs.skip_modes`): the
            calibration statistics the plan ran with; :func:`validate` refuses a replay under others. Records
            written before skip modes have none (identity).
    """

    env_id: str
    split: str
    example_id: str
    plan: str
    reward: float
    quality: float
    quality_full: float
    cost: float
    model_fingerprint: str
    skipenv_version: str
    env_kwargs: dict = field(default_factory=dict)
    skip_mode: str = "identity"

    @classmethod
    def from_step(cls, env, info: dict, env_id: str | None = None, env_kwargs: dict | None = None) -> "EpisodeRecord":
        """Build a record from an env (one-shot or layerwise) and the ``info`` of its terminal step."""
        from .. import __version__

        base = env.unwrapped
        spec = getattr(base, "spec", None)
        env_id = env_id or (spec.id if spec is not None else None)
        if env_id is None:
            raise ValueError("env has no registered id; pass env_id= (and env_kwargs=) explicitly")
        kwargs = dict(env_kwargs if env_kwargs is not None else (spec.kwargs if spec is not None else {}))
        kwargs = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
        kwargs.setdefault("split", base.split)
        if getattr(base, "segment_boundaries", "tokens") != "tokens":  # always recorded when not the default
            kwargs["segment_boundaries"] = base.segment_boundaries
        evaluator = getattr(base, "evaluator", None)
        tag = getattr(evaluator, "skip_mode_tag", "identity")
        if tag != "identity":  # the mode and its calibration settings, so that validate re-makes the same bypasses
            kwargs["skip_mode"] = evaluator.skip_mode
            kwargs["calibration_documents"] = len(evaluator.calibration_ids)
            if evaluator.skip_mode == "linear":
                kwargs["linear_rank"] = int(evaluator.bypasses.rank)
        return cls(env_id=env_id, split=base.split, example_id=info["example_id"], plan=info["plan"],
                   reward=float(info.get("env_reward", info["reward"])), quality=float(info["quality"]),
                   quality_full=float(info["quality_full"]), cost=float(info["cost"]),
                   model_fingerprint=base.fingerprint, skipenv_version=__version__, env_kwargs=kwargs,
                   skip_mode=tag)

    def to_json(self) -> str:
        d = asdict(self)
        if d["skip_mode"] == "identity":  # records of the default mode keep their earlier form
            del d["skip_mode"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "EpisodeRecord":
        """Parse a record.

        Raises:
            ValueError: not JSON, not an object, missing or unknown fields, or a field of the wrong type (numbers
                must be finite reals, ``env_kwargs`` an object, the others strings); the message names them.
        """
        d = json.loads(s)
        if not isinstance(d, dict):
            raise ValueError(f"not an EpisodeRecord: expected a JSON object, got {type(d).__name__}")
        missing = [f for f in cls.__dataclass_fields__ if f not in d and f not in ("env_kwargs", "skip_mode")]
        if missing:
            raise ValueError(f"not an EpisodeRecord: missing fields {missing}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"not an EpisodeRecord: unknown fields {unknown}")
        bad = [k for k in CHECKED if isinstance(d[k], bool) or not isinstance(d[k], (int, float))
               or not math.isfinite(d[k])]
        bad += [k for k in ("env_id", "split", "example_id", "plan", "model_fingerprint", "skipenv_version")
                if not isinstance(d[k], str)]
        if not isinstance(d.get("skip_mode", "identity"), str):
            bad.append("skip_mode")
        if not isinstance(d.get("env_kwargs", {}), dict):
            bad.append("env_kwargs")
        if bad:
            raise ValueError(f"not an EpisodeRecord: bad value of {bad} (numbers must be finite, env_kwargs an "
                             f"object, the rest strings)")
        return cls(**d)


def _version_tuple(v: str) -> tuple[int, ...] | None:
    """``"0.1.0"`` → ``(0, 1, 0)``; ``None`` for anything that is not dot-separated integers."""
    parts = str(v).split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


@dataclass
class ValidationResult:
    """Outcome of :func:`validate`: ``ok`` and, per checked number, ``(recorded, replayed)`` where they differ."""

    ok: bool
    mismatches: dict[str, tuple[float, float]]
    replayed: dict[str, Any]
    notes: list[str]

    def __bool__(self) -> bool:
        return self.ok


def _settings_differ(record: EpisodeRecord, base) -> list[str]:
    """Notes for every setting of ``record`` (env id, split, and the ``env_kwargs`` that change the numbers) that
    the replaying env ``base`` does not have; empty when they agree."""
    from .quality import get_signal
    from .registration import SPECS

    notes = []
    spec = getattr(base, "spec", None)
    if spec is not None and spec.id != record.env_id:
        notes.append(f"env id differs: recorded {record.env_id}, replay {spec.id}")
    elif record.env_id in SPECS:
        entry, defaults = SPECS[record.env_id]
        if entry.rsplit(":", 1)[1] != type(base).__name__:
            notes.append(f"{record.env_id} is a {entry.rsplit(':', 1)[1]}, the replay env a {type(base).__name__}")
        task = record.env_kwargs.get("task", defaults.get("task"))  # gym.make kwargs may override the id's task
        if isinstance(task, str) and task.strip().lower().replace("-", "_") != base.task.name:
            notes.append(f"task differs: recorded {task!r} ({record.env_id}), replay {base.task.name!r}")
    if record.split != base.split:
        notes.append(f"split differs: recorded {record.split!r}, replay {base.split!r}")
    kw = record.env_kwargs
    actual = {"tau": lambda: base.tau, "quality": lambda: base.quality, "reward_mode": lambda: base.reward.name,
              "token_segments": lambda: base.plan_spec.token_segments, "max_new_tokens": lambda: base.max_new_tokens,
              "max_input_tokens": lambda: base.max_input_tokens,
              "layer_block": lambda: getattr(base, "layer_block", None),
              "candidates": lambda: list(getattr(base, "candidates", ()) or ()),
              "cost_weight": lambda: getattr(base.reward, "cost_weight", None),
              "observation": lambda: getattr(base, "observation_kind", "pooled"),
              "segment_boundaries": lambda: getattr(base, "segment_boundaries", "tokens"),
              "skip_mode": lambda: getattr(base, "skip_mode", "identity")}
    # settings the registered id itself sets (e.g. SwitchDec-XSum-v1's quality and tau) count as given
    registered = {k: v for k, v in SPECS.get(record.env_id, ("", {}))[1].items() if k in actual}
    wanted = {**registered, **kw}
    if "lam" in wanted and "cost_weight" not in wanted:
        wanted["cost_weight"] = wanted.pop("lam")
    # a setting neither the record nor its registered id gives had the env's default
    quality = wanted.get("quality") or "agreement"
    defaults = {"quality": "agreement", "reward_mode": "lexicographic", "token_segments": 8, "observation": "pooled",
                "segment_boundaries": "tokens", "skip_mode": "identity"}
    if type(base).__name__ == "SwitchDecEnv":
        defaults.update(layer_block=1, candidates=["attention", "ffn", "tokens"])
    try:
        defaults["tau"] = get_signal(quality).default_tau
    except ValueError:
        pass
    if wanted.get("reward_mode") == "weighted":
        defaults["cost_weight"] = 0.5
    wanted = {**defaults, **{k: v for k, v in wanted.items() if v is not None}}
    for key, get in actual.items():
        if key not in wanted or wanted[key] is None:
            continue
        want, have = wanted[key], get()
        if key == "quality":
            try:
                want = get_signal(want).name
            except ValueError:
                pass
        if key == "observation" and isinstance(want, str):  # "layer:04" / "layer: 4" is the env's "layer:4"
            from .observations import parse_observation_kind

            try:
                name, m = parse_observation_kind(want)
                want = name if name in ("pooled", "segments", "units") else f"{name}:{m}"
            except ValueError:
                pass
        if key == "candidates" and isinstance(want, (list, tuple)):  # the kinds, not their order, set the numbers
            want, have = sorted(set(want)), sorted(set(have))
        same = (math.isclose(float(want), float(have), rel_tol=1e-9, abs_tol=1e-12)
                if isinstance(want, (int, float)) and isinstance(have, (int, float)) else want == have)
        if not same:
            notes.append(f"env setting {key} differs: recorded {want!r}, replay {have!r}")
    have_tag = getattr(getattr(base, "evaluator", None), "skip_mode_tag", "identity")
    if record.skip_mode != have_tag and not any(n.startswith("env setting skip_mode") for n in notes):
        notes.append(f"skip-mode calibration statistics differ: recorded {record.skip_mode}, replay {have_tag}")
    return notes


def validate(record: EpisodeRecord, env=None, *, rtol: float = 1e-6, atol: float = 1e-9) -> ValidationResult:
    """Replay ``record`` and compare reward, quality, quality_full and cost.

    Args:
        record: the record.
        env: an env to replay in (default: ``gym.make(record.env_id, **record.env_kwargs)``).
        rtol, atol: tolerances (CPU float32 replays are exact; other devices may need ``rtol≈1e-3``).

    Returns:
        :class:`ValidationResult`, falsy when a number differs, when the replaying env's model fingerprint differs
        from the recorded one (a different model's numbers cannot validate), when the replaying env's id, split,
        task, class or a recorded setting that changes the numbers (``tau``, ``quality``, ``reward_mode``,
        ``cost_weight``, ``token_segments``, ``max_new_tokens``, ``max_input_tokens``, ``layer_block``,
        ``candidates``, ``observation``, ``segment_boundaries``, ``skip_mode`` and its calibration statistics) differs from
        the record's (a note names it), or when the record's
        ``skipenv_version`` is not a version string or is newer than this skipenv. Layerwise records are replayed
        step by step.
    """
    import gymnasium as gym

    import skipenv  # noqa: F401
    from .. import __version__
    from ..plan import SkipPlan

    notes = []
    recorded_version, ours = _version_tuple(record.skipenv_version), _version_tuple(__version__)
    version_ok = recorded_version is not None and (ours is None or recorded_version <= ours)
    if recorded_version is None:
        notes.append(f"unknown skipenv version {record.skipenv_version!r} in the record")
    elif not version_ok:
        notes.append(f"record made by skipenv {record.skipenv_version}, newer than this skipenv {__version__}")
    if env is None:
        env = gym.make(record.env_id, **record.env_kwargs)
    base = env.unwrapped
    fingerprint_ok = base.fingerprint == record.model_fingerprint
    if not fingerprint_ok:
        notes.append(f"model fingerprint differs: recorded {record.model_fingerprint}, replay {base.fingerprint}")
    setting_notes = _settings_differ(record, base)
    notes += setting_notes
    plan = SkipPlan.from_json(record.plan, base.plan_spec)
    base.reset(options={"example_id": record.example_id})
    if hasattr(base, "plan_to_actions"):  # layerwise: one action per step
        for action in base.plan_to_actions(plan):
            info = base.step(action)[4]
    else:
        _, _, _, _, info = base.step(base.plan_to_action(plan))
    mismatches = {k: (getattr(record, k), float(info[k])) for k in CHECKED
                  if not math.isclose(getattr(record, k), float(info[k]), rel_tol=rtol, abs_tol=atol)}
    ok = not mismatches and fingerprint_ok and version_ok and not setting_notes
    return ValidationResult(ok=ok, mismatches=mismatches, replayed=info, notes=notes)
