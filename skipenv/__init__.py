"""skipenv — Gymnasium environments for learning which parts of a frozen transformer generator each input can skip.

``import skipenv`` registers the ids in :data:`ENV_IDS`; ``gym.make("skipenv:SwitchDec-XSum-v0")`` works in a fresh
process too. Heavy pieces (models, datasets) load lazily on ``make``.
"""

__version__ = "0.1.0"

from .inputs import PromptInput
from .plan import PlanError, PlanSpec, SkipPlan
from .registration import ENV_IDS, OFFLINE_IDS, make, register_envs
from .rewards import lexicographic_reward, weighted_reward

register_envs()


#: public name → submodule that defines it (imported on first access: keeps ``import skipenv`` light)
_LAZY = {
    "SwitchDecEnv": "envs", "SwitchDecLayerwiseEnv": "envs", "EpisodeEvaluator": "envs", "Evaluator": "envs",
    "load_generator": "loading", "load_model_and_tokenizer": "loading", "wrap": "generators",
    "make_task": "tasks", "EpisodeRecord": "records", "validate": "records",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'skipenv' has no attribute {name!r}")


__all__ = ["PromptInput", "PlanError", "PlanSpec", "SkipPlan", "ENV_IDS", "OFFLINE_IDS", "register_envs", "make",
           "lexicographic_reward", "weighted_reward", "SwitchDecEnv", "SwitchDecLayerwiseEnv", "EpisodeEvaluator", "Evaluator",
           "load_generator", "load_model_and_tokenizer", "wrap", "make_task", "EpisodeRecord", "validate"]
