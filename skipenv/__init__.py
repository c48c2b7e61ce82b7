"""skipenv — Gymnasium environments for learning which parts of a frozen transformer generator each input can skip.

``import skipenv`` registers the ids in :data:`ENV_IDS`; ``gym.make("skipenv:SwitchDec-XSum-v0")`` works in a fresh
process too. Heavy pieces (models, datasets) load lazily on ``make``; the names below that need torch (envs,
generators, formulations, records) are imported on first access, so ``import skipenv`` stays light.

- build envs: :func:`make` (``gym.make`` plus a shared ``generator`` / ``evaluator`` / ``reward``), :func:`sharing`;
- plans: :class:`SkipPlan`, :class:`PlanSpec`; rewards: :func:`lexicographic_reward`, :func:`constraint_satisfied`,
  the :class:`Reward` objects; the episode pipeline: :class:`Evaluator`, :class:`QualitySignal`;
- constraint formulations: :class:`ExpectedConstraint`, :class:`BudgetConditioned`, :func:`make_formulation`;
- generators: :func:`load_generator`, :func:`wrap`; tasks: :func:`make_task`; records: :func:`validate`.
"""

__version__ = "0.1.0"

from .inputs import PromptInput
from .plan import PlanError, PlanSpec, SkipPlan
from .envs.registration import ENV_IDS, OFFLINE_IDS, make, register_envs, sharing
from .envs.rewards import constraint_satisfied, lexicographic_reward, weighted_reward

register_envs()
from .tables.envs import register_table_envs  # noqa: E402  (ids containing 'Table', issue 21)

register_table_envs()


#: public name → submodule that defines it (imported on first access: keeps ``import skipenv`` light)
_LAZY = {
    "SwitchDecEnv": "envs", "SwitchDecLayerwiseEnv": "envs", "Evaluator": "envs",
    "QualitySignal": "envs", "Reward": "envs", "LexicographicReward": "envs", "WeightedReward": "envs",
    "VectorReward": "envs",
    "ExpectedConstraint": "envs.wrappers", "BudgetConditioned": "envs.wrappers", "LagrangeMultiplier": "envs.rewards",
    "make_formulation": "envs.wrappers", "formulation_metrics": "evaluation.formulation_metrics",
    "load_generator": "loading", "load_model_and_tokenizer": "loading", "wrap": "generators",
    "make_task": "tasks", "EpisodeRecord": "envs.records", "validate": "envs.records",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'skipenv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["PromptInput", "PlanError", "PlanSpec", "SkipPlan", "ENV_IDS", "OFFLINE_IDS", "register_envs", "make",
           "sharing", "lexicographic_reward", "weighted_reward", "constraint_satisfied", *_LAZY]
