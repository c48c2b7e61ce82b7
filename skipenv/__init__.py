"""skipenv — Gymnasium environments for learning which parts of a frozen transformer generator each input can skip.

``import skipenv`` registers the ids in :data:`ENV_IDS`; ``gym.make("skipenv:SwitchDec-XSum-v0")`` works in a fresh
process too. Heavy pieces (models, datasets) load lazily on ``make``.
"""

__version__ = "0.1.0"

from .inputs import PromptInput
from .plan import PlanError, PlanSpec, SkipPlan
from .registration import ENV_IDS, OFFLINE_IDS, register_envs
from .rewards import lexicographic_reward, weighted_reward

register_envs()


def __getattr__(name):  # lazy access to the heavier submodules' public names
    if name in ("SwitchDecEnv", "SwitchDecLayerwiseEnv", "EpisodeEvaluator"):
        from . import envs

        return getattr(envs, name)
    if name in ("load_generator", "load_model_and_tokenizer"):
        from . import loading

        return getattr(loading, name)
    if name in ("wrap",):
        from .generators import wrap

        return wrap
    if name in ("make_task", "EpisodeRecord", "validate"):
        if name == "make_task":
            from .tasks import make_task

            return make_task
        from . import records

        return getattr(records, name)
    raise AttributeError(f"module 'skipenv' has no attribute {name!r}")


__all__ = ["PromptInput", "PlanError", "PlanSpec", "SkipPlan", "ENV_IDS", "OFFLINE_IDS", "register_envs",
           "lexicographic_reward", "weighted_reward", "SwitchDecEnv", "SwitchDecLayerwiseEnv", "EpisodeEvaluator",
           "load_generator", "load_model_and_tokenizer", "wrap", "make_task", "EpisodeRecord", "validate"]
