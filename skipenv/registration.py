"""Moved to :mod:`skipenv.envs.registration`; this module re-exports it so ``from skipenv.registration import ...``
keeps working."""

from .envs.registration import *  # noqa: F401,F403
from .envs.registration import SPECS, __all__  # noqa: F401
