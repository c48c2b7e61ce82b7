"""Gymnasium registration of the SwitchDec environment ids (runs on ``import skipenv``).

Ids are task variants over the two env classes plus kwargs; every id uses the embedded SmolLM2-135M-Instruct as
default generator. Hub-only datasets (CNN/DailyMail, SQuAD, SST-2) fail at ``gym.make`` with a clear message when
the dataset hub cannot be reached.
"""

from __future__ import annotations

import gymnasium as gym

_ONE_SHOT = "skipenv.envs.switchdec:SwitchDecEnv"
_LAYERWISE = "skipenv.envs.switchdec:SwitchDecLayerwiseEnv"

#: id → (entry point, kwargs)
SPECS: dict[str, tuple[str, dict]] = {
    "SwitchDec-XSum-v0": (_ONE_SHOT, {"task": "xsum", "task_source": "embedded"}),
    "SwitchDec-XSum-Layerwise-v0": (_LAYERWISE, {"task": "xsum", "task_source": "embedded"}),
    "SwitchDec-CNNDM-v0": (_ONE_SHOT, {"task": "cnndm", "task_source": "hub"}),
    "SwitchDec-SQuAD-v0": (_ONE_SHOT, {"task": "squad", "task_source": "hub"}),
    "SwitchDec-DisflQA-v0": (_ONE_SHOT, {"task": "disflqa", "task_source": "embedded"}),
    "SwitchDec-SST2-v0": (_ONE_SHOT, {"task": "sst2", "task_source": "hub"}),
    "SwitchDec-RottenTomatoes-v0": (_ONE_SHOT, {"task": "rotten_tomatoes", "task_source": "embedded"}),
}

#: The ids that run offline on the embedded assets.
OFFLINE_IDS = ("SwitchDec-XSum-v0", "SwitchDec-XSum-Layerwise-v0", "SwitchDec-DisflQA-v0",
               "SwitchDec-RottenTomatoes-v0")

ENV_IDS: tuple[str, ...] = tuple(SPECS)


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent). Episodes are one step (one-shot) or ``L + 1`` steps
    (layerwise), so no ``max_episode_steps`` is set."""
    for env_id, (entry_point, kwargs) in SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=False)
