"""The tiny one-shot env of the hardening tests in tests/envs/ (a tiny random Llama with SmolLM2's tokenizer on 2
embedded XSum documents, no disk cache); the ``generator`` fixture that builds its model is in tests/envs/conftest.py."""

import gymnasium as gym

from skipenv.envs import SwitchDecEnv

KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**KW, **kw})


def wrapper_chain(env) -> list:
    """The wrappers around ``env``'s unwrapped env, outermost first."""
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out
