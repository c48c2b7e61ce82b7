"""skipenv — Gymnasium environments for learning which parts of a frozen transformer generator each input can skip."""

__version__ = "0.1.0"

from .inputs import PromptInput
from .plan import PlanError, PlanSpec, SkipPlan
