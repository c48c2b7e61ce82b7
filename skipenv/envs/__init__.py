"""SwitchDec environments, one module per stage of an episode:

- :mod:`.codec` — action space, action labels, action ↔ plan (the one place an action is validated);
- :mod:`.evaluator` — formatted inputs, the full model's output, and the cached :class:`Outcome` of a plan;
- :mod:`.quality` — :class:`QualitySignal` classes (agreement, probability, reference metric, fidelity, likelihood);
- :mod:`.rewards` — :class:`Reward` objects (lexicographic, weighted, vector) over the pure reward functions;
- :mod:`.switchdec` — the Gymnasium shells (one-shot and layerwise);
- :mod:`.cache`, :mod:`.registration` — disk / LRU caches and model identity; the registered ids and :func:`make`.

Names are imported on first access (keeps ``import skipenv`` light).

Guarantees:

- Validated once, at construction, before anything loads: every constructor argument (the message names it;
  e.g. ``max_new_tokens`` must be an integer >= 1, ``tau`` finite and >= 0, ``num_examples`` an integer >= 1).
  At ``reset``: options must be ``None`` or ``{"index": int}`` / ``{"example_id": str}``. At ``step``: the action
  (shape, numeric 0/1 entries; ``Discrete(4)`` integers in the layerwise env); ``step`` after the episode ended
  raises naming ``reset()``. Unsupported ``render_mode`` values warn and disable rendering.
- The full-output disk cache keys on the formatted input ids, ``max_new_tokens``, the stop-rule version, the task
  class and metric, the EOS id, the gold target, and the model fingerprint (a digest of the config and all weights).
  Values computed from a full output (the gold target's and the output's own mean log-probability / probability)
  are stored in the same entry as its tokens; an entry written before such a field existed reads it as not computed.
- The observation kind is fixed per evaluator and part of its outcome-cache key (``cost`` includes the
  observation's FLOPs).
- Every cached entry carries a SHA-256 checksum and is schema-checked on read; a corrupt, edited or malformed entry
  is dropped with a ``CacheWarning`` and recomputed. A cache folder removed while running is recreated; a
  read-only cache keeps values in memory (one warning); ``SKIPENV_CACHE`` pointing at a file is one clear error
  (:class:`skipenv.assets.CacheLocationError`).
- Infos are fresh objects: editing one never changes a later step. Outcomes are cached independently of ``tau``
  and the reward, so re-rewarding them runs no forward pass.
"""

_LAZY = {
    "SwitchDecEnv": "switchdec", "SwitchDecLayerwiseEnv": "switchdec", "CANDIDATE_KINDS": "codec",
    "shared_generator": "switchdec", "ActionCodec": "codec", "LayerwiseCodec": "codec",
    "Evaluator": "evaluator", "Outcome": "evaluator", "FullOutput": "evaluator",
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
