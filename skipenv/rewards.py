"""Moved to :mod:`skipenv.envs.rewards`; this module re-exports it so ``from skipenv.rewards import ...`` keeps
working."""

from .envs.rewards import *  # noqa: F401,F403
from .envs.rewards import EPS, __all__  # noqa: F401
