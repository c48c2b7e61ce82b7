"""Moved to :mod:`skipenv.envs.cache`; this module re-exports it so ``from skipenv.cache import ...`` keeps
working."""

from .envs.cache import *  # noqa: F401,F403
from .envs.cache import __all__  # noqa: F401
