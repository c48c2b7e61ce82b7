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
        reward, quality, quality_full, cost: outcomes (cost = FLOPs fraction, observation included).
        model_fingerprint: :func:`skipenv.envs.evaluator.model_fingerprint` of the generator.
        skipenv_version: package version that produced the record.
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

    @classmethod
    def from_step(cls, env, info: dict, env_id: str | None = None, env_kwargs: dict | None = None) -> "EpisodeRecord":
        """Build a record from an env (one-shot or layerwise) and the ``info`` of its terminal step."""
        from . import __version__

        base = env.unwrapped
        spec = getattr(base, "spec", None)
        env_id = env_id or (spec.id if spec is not None else None)
        if env_id is None:
            raise ValueError("env has no registered id; pass env_id= (and env_kwargs=) explicitly")
        kwargs = dict(env_kwargs if env_kwargs is not None else (spec.kwargs if spec is not None else {}))
        kwargs = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
        kwargs.setdefault("split", base.split)
        return cls(env_id=env_id, split=base.split, example_id=info["example_id"], plan=info["plan"],
                   reward=float(info["reward"]), quality=float(info["quality"]),
                   quality_full=float(info["quality_full"]), cost=float(info["cost"]),
                   model_fingerprint=base.fingerprint, skipenv_version=__version__, env_kwargs=kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "EpisodeRecord":
        """Parse a record; raises ``ValueError`` naming missing fields."""
        d = json.loads(s)
        missing = [f for f in cls.__dataclass_fields__ if f not in d and f != "env_kwargs"]
        if missing:
            raise ValueError(f"not an EpisodeRecord: missing fields {missing}")
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


def validate(record: EpisodeRecord, env=None, *, rtol: float = 1e-6, atol: float = 1e-9) -> ValidationResult:
    """Replay ``record`` and compare reward, quality, quality_full and cost.

    Args:
        record: the record.
        env: an env to replay in (default: ``gym.make(record.env_id, **record.env_kwargs)``).
        rtol, atol: tolerances (CPU float32 replays are exact; other devices may need ``rtol≈1e-3``).

    Returns:
        :class:`ValidationResult`, falsy when a number differs, when the replaying env's model fingerprint differs
        from the recorded one (a different model's numbers cannot validate), or when the record's
        ``skipenv_version`` is not a version string or is newer than this skipenv. Layerwise records are replayed
        step by step.
    """
    import gymnasium as gym

    import skipenv  # noqa: F401
    from . import __version__
    from .plan import SkipPlan

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
    plan = SkipPlan.from_json(record.plan, base.plan_spec)
    base.reset(options={"example_id": record.example_id})
    if hasattr(base, "plan_to_actions"):  # layerwise: one action per step
        for action in base.plan_to_actions(plan):
            info = base.step(action)[4]
    else:
        _, _, _, _, info = base.step(base.plan_to_action(plan))
    mismatches = {k: (getattr(record, k), float(info[k])) for k in CHECKED
                  if not math.isclose(getattr(record, k), float(info[k]), rel_tol=rtol, abs_tol=atol)}
    ok = not mismatches and fingerprint_ok and version_ok
    return ValidationResult(ok=ok, mismatches=mismatches, replayed=info, notes=notes)
