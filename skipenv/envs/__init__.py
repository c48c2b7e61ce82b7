"""SwitchDec environments, one module per stage of an episode:

- :mod:`.codec` — action space, action labels, action ↔ plan (the one place an action is validated);
- :mod:`.evaluator` — formatted inputs, the full model's output, and the cached :class:`Outcome` of a plan;
- :mod:`.quality` — :class:`QualitySignal` classes (agreement, reference metric, fidelity, likelihood);
- :mod:`.rewards` — :class:`Reward` objects (lexicographic, weighted, vector) over the pure reward functions;
- :mod:`.switchdec` — the Gymnasium shells (one-shot and layerwise);
- :mod:`.cache`, :mod:`.registration` — disk / LRU caches and model identity; the registered ids and :func:`make`.

Names are imported on first access (keeps ``import skipenv`` light).
"""

_LAZY = {
    "SwitchDecEnv": "switchdec", "SwitchDecLayerwiseEnv": "switchdec", "CANDIDATE_KINDS": "codec",
    "shared_generator": "switchdec", "ActionCodec": "codec", "LayerwiseCodec": "codec",
    "Evaluator": "evaluator", "EpisodeEvaluator": "evaluator", "Outcome": "evaluator", "FullOutput": "evaluator",
    "QualitySignal": "quality", "Measurement": "quality", "QUALITY_MODES": "quality", "DEFAULT_TAU": "quality",
    "QUALITY_SIGNALS": "quality", "get_signal": "quality",
    "Reward": "rewards", "LexicographicReward": "rewards", "WeightedReward": "rewards", "VectorReward": "rewards",
    "make_reward": "rewards", "model_fingerprint": "cache", "make": "registration",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'skipenv.envs' has no attribute {name!r}")


__all__ = sorted(_LAZY)
