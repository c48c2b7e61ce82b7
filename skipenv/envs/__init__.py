"""SwitchDec environments and their registration with Gymnasium."""

from .evaluator import DEFAULT_TAU, QUALITY_MODES, EpisodeEvaluator
from .switchdec import CANDIDATE_KINDS, SwitchDecEnv, SwitchDecLayerwiseEnv, shared_generator

__all__ = ["SwitchDecEnv", "SwitchDecLayerwiseEnv", "EpisodeEvaluator", "QUALITY_MODES", "DEFAULT_TAU",
           "CANDIDATE_KINDS", "shared_generator"]
