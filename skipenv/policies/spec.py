"""Policies from one string, and their action probabilities.

:func:`load_policy` turns what a user types into a policy for a one-shot :class:`~skipenv.envs.SwitchDecEnv`:

- a static baseline spec of :data:`POLICY_SPECS` (``skip-nothing``, ``lead:4``, ``random:0.1``,
  ``every-other:ffn``, ``calibrated:4``, ...);
- the path of a stable-baselines3 ``policy.zip`` (PPO or A2C: the algorithm is read from the file), bare or as
  ``sb3:ALGO:PATH.zip`` (the stated algorithm must match the file's);
- the path of a repository agent's ``policy.pt`` (:class:`~skipenv.policies.pg.ConstrainedPG` or
  :class:`~skipenv.policies.pg.GroupPG`, told apart by the ``.json`` saved beside it), bare or as ``pg:PATH.pt``.

``skipenv generate``, ``skipenv dataset`` and ``skipenv leaderboard`` accept all these forms. Policies act in the
one-shot env (one action: the whole plan); a layerwise policy (``Discrete(4)`` per layer, e.g. the DQN of
``agents/dqn_layerwise.py``) is rejected with an error that says so.

:func:`action_probability` and :func:`sample_action` give the probability a policy assigns to an action and a
draw from it — what off-policy evaluation needs of the logging and the target policy (:mod:`skipenv.evaluation.offline`).
Deterministic policies put probability 1 on their action; :class:`~skipenv.policies.baselines.RandomPolicy` is a product
of Bernoulli(``rate``) bits; an SB3 model with ``stochastic=True`` uses its action distribution.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

__all__ = ["load_policy", "check_policy_spec", "POLICY_SPECS", "STOCHASTIC_KINDS", "action_probability",
           "sample_action", "is_stochastic", "POLICY_HELP"]

#: the forms of a policy spec (for help texts and error messages)
POLICY_SPECS = ("skip-nothing", "random:RATE", "lead:KEEP_SEGMENTS", "every-other:attention|ffn|both",
                "calibrated:NUM_SUBLAYERS", "oracle[:MAX_SKIPS]", "PATH.zip or sb3:ppo|a2c:PATH.zip",
                "PATH.pt or pg:PATH.pt")

#: spec kinds whose policy samples (evaluated once per seed); every other kind is deterministic (evaluated once)
STOCHASTIC_KINDS = ("random",)


def check_policy_spec(spec: str) -> tuple[str, str]:
    """Check the syntax of a policy spec without building anything; returns ``(kind, argument)``.

    Raises:
        ValueError: unknown kind or a bad argument (names the spec and its valid form).
    """
    if not isinstance(spec, str):
        raise ValueError(f"a policy spec must be a string such as 'lead:4', got {spec!r}")
    kind, _, arg = spec.partition(":")
    if spec.endswith((".zip", ".pt")) and kind not in ("sb3", "pg"):  # a bare saved-policy path
        return "file", spec

    def bad(form: str) -> ValueError:
        return ValueError(f"bad policy spec {spec!r}: expected {form}")

    if kind == "skip-nothing" and not arg:
        return kind, arg
    if kind == "random":
        try:
            rate = float(arg or 0.5)
        except ValueError:
            raise bad("random:RATE with RATE a number in [0, 1], e.g. random:0.25") from None
        if not 0.0 <= rate <= 1.0:
            raise bad("random:RATE with RATE a number in [0, 1], e.g. random:0.25")
        return kind, arg
    if kind in ("lead", "calibrated") or (kind == "oracle" and arg):
        form = {"lead": "lead:KEEP_SEGMENTS", "calibrated": "calibrated:NUM_SUBLAYERS",
                "oracle": "oracle[:MAX_SKIPS]"}[kind]
        if not arg.strip().isdigit():
            raise bad(f"{form} with an integer >= 0, e.g. {kind}:4")
        return kind, arg
    if kind == "oracle":
        return kind, arg
    if kind == "every-other" and arg in ("", "attention", "ffn", "both"):
        return kind, arg
    if kind == "sb3":
        algo, _, path = arg.partition(":")
        if not algo or not path:
            raise bad("sb3:ALGO:PATH.zip, e.g. sb3:ppo:runs/ppo-xsum/policy.zip")
        return kind, arg
    if kind == "pg" and arg:
        return kind, arg
    raise ValueError(f"unknown policy spec {spec!r}; valid forms: {', '.join(POLICY_SPECS)}")


def _make_policy(spec: str, env, *, seed: int = 0, calibration_env=None):
    """A baseline from its spec (saved policies are loaded by :func:`load_policy` itself)."""
    from . import baselines as B

    kind, arg = check_policy_spec(spec)
    if kind == "skip-nothing":
        return B.SkipNothing(env)
    if kind == "random":
        return B.RandomPolicy(env, float(arg or 0.5), seed=seed)
    if kind == "lead":
        return B.lead_truncation(env, int(arg))
    if kind == "every-other":
        return B.every_other_layer(env, arg or "attention")
    if kind == "calibrated":
        policy = B.calibrate_static_drop(calibration_env or env, int(arg))
        return B.StaticPlan(env, policy.plan, name=spec)
    if kind == "oracle":
        return B.OraclePolicy(env, max_skips=int(arg) if arg else None)
    raise ValueError(f"unknown policy spec {spec!r}; valid forms: {', '.join(POLICY_SPECS)}")


#: one line for command-line help
POLICY_HELP = ("a baseline spec (skip-nothing, lead:K, random:RATE, every-other:attention|ffn|both, calibrated:N, "
               "oracle), a stable-baselines3 PATH.zip (PPO/A2C; also written sb3:ALGO:PATH.zip), or a repository "
               "agent's PATH.pt (also pg:PATH.pt); one-shot policies only, not layerwise ones")


def _sb3_class(path: Path):
    """The SB3 algorithm class that saved ``path``, read from the zip's ``data`` entry (its policy class)."""
    import json

    import stable_baselines3 as sb3

    try:
        with zipfile.ZipFile(path) as z:
            if "data" not in z.namelist():
                raise ValueError(f"{path} is not a stable-baselines3 save (no 'data' entry in the zip)")
            data = json.loads(z.read("data").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a stable-baselines3 save ({type(e).__name__}: {e}); it is damaged or "
                         f"another kind of file") from None
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if ".dqn." in module:
        return sb3.DQN
    return sb3.PPO if "n_epochs" in data or "clip_range" in data else sb3.A2C


def load_policy(spec: str, env, *, seed: int = 0, calibration_env=None, device: str = "cpu",
                stochastic: bool = False):
    """Build a policy ``observation -> action`` for ``env`` from a spec or a saved file.

    Args:
        spec: a baseline spec, a ``.zip`` (SB3) or a ``.pt`` (ConstrainedPG) path, bare or as ``sb3:ALGO:PATH.zip``
            / ``pg:PATH.pt`` (see the module docstring).
        env: the one-shot env the policy acts in (its action layout and plan spec); ``env.unwrapped`` is used.
        seed: seed of stochastic policies.
        calibration_env: train-split env for ``calibrated:N`` (default ``env``).
        device: torch device of learned policies.
        stochastic: for SB3 models, sample from the action distribution instead of the mode (a logging policy).

    Returns:
        A callable with a ``name``; SB3 models are :class:`~skipenv.policies.baselines.SB3Policy` with ``stochastic`` set.

    Raises:
        FileNotFoundError: a ``.zip`` / ``.pt`` path that does not exist.
        ValueError: an unknown spec (lists the valid forms); ``sb3:ALGO:`` naming another algorithm than the file's;
            a policy whose action or observation shape does not fit ``env`` (a layerwise policy, other env kwargs).
    """
    import gymnasium as gym

    from .baselines import SB3Policy

    env = env.unwrapped
    kind, _, rest = spec.partition(":")
    algo = None
    if kind == "sb3":  # sb3:ALGO:PATH.zip, the leaderboard's form
        algo, _, spec = rest.partition(":")
        if not algo or not spec:
            raise ValueError(f"policy spec 'sb3:{rest}' needs an algorithm and a path, e.g. "
                             f"'sb3:ppo:runs/ppo-xsum/policy.zip' (or just the path: the algorithm is read from it)")
    elif kind == "pg" and rest:  # pg:PATH.pt
        spec = rest
    path = Path(spec)
    if kind in ("sb3", "pg") or spec.endswith((".zip", ".pt")):
        if not path.is_file():
            raise FileNotFoundError(f"policy file {spec!r} does not exist; train one (e.g. `skipenv train`) or pass "
                                    f"a baseline spec such as 'lead:4'")
        if kind == "sb3" or (kind != "pg" and spec.endswith(".zip")):
            cls = _sb3_class(path)
            if algo is not None and algo.lower() != cls.__name__.lower():
                raise ValueError(f"{spec} was saved by {cls.__name__}, not {algo!r}: write "
                                 f"'sb3:{cls.__name__.lower()}:{spec}' or just the path")
            model = cls.load(str(path), device=device)
            if (isinstance(model.action_space, gym.spaces.Discrete)
                    and not isinstance(env.action_space, gym.spaces.Discrete)):
                raise ValueError(f"{spec} is a layerwise policy (one {model.action_space} action per layer, e.g. "
                                 f"agents/dqn_layerwise.py); generate, dataset and leaderboard run one-shot policies "
                                 f"(one {env.action_space} action per input). Evaluate it with the script that "
                                 f"trained it, or train a one-shot agent (skipenv train, agents/ppo.py)")
            if model.action_space != env.action_space or model.observation_space.shape != env.observation_space.shape:
                raise ValueError(f"{spec} was trained for action space {model.action_space} and observations of shape "
                                 f"{model.observation_space.shape}, but this env has {env.action_space} and "
                                 f"{env.observation_space.shape}: pass the --env / env kwargs it was trained with")
            policy = SB3Policy(model, name=f"{cls.__name__.lower()}:{path.parent.name or path.stem}")
        else:
            from .pg import GroupPG, load_agent

            # GroupPG or ConstrainedPG, told by the .json beside it; GroupPG checks its sizes against env
            policy = load_agent(path, env, device=device)
            policy.name = f"{policy.name if isinstance(policy, GroupPG) else 'pg'}:{path.parent.name}"
    else:
        policy = _make_policy(spec, env, seed=seed, calibration_env=calibration_env)
    if isinstance(policy, SB3Policy):
        policy.stochastic = bool(stochastic)
    return policy


def is_stochastic(policy) -> bool:
    """Whether ``policy`` draws its action at random (then :func:`action_probability` is not 0/1)."""
    from .baselines import RandomPolicy

    return isinstance(policy, RandomPolicy) or bool(getattr(policy, "stochastic", False))


def _sb3_distribution(policy, observation):
    import torch

    model = policy.model
    obs_t, _ = model.policy.obs_to_tensor(np.asarray(observation, dtype=np.float32))
    with torch.no_grad():
        return model.policy.get_distribution(obs_t)


def sample_action(policy, observation, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw an action from ``policy`` (its own action for deterministic policies); ``int8``, shape ``[n]``.

    ``rng`` is used by stochastic SB3 models (random baselines keep their own seeded generator)."""
    if getattr(policy, "stochastic", False):
        import torch

        dist = _sb3_distribution(policy, observation)
        if rng is not None:
            torch.manual_seed(int(rng.integers(2**31)))
        return dist.sample()[0].cpu().numpy().astype(np.int8)
    return np.asarray(policy(observation)).astype(np.int8)


def action_probability(policy, observation, action) -> float:
    """Probability that ``policy`` takes ``action`` (shape ``[n]``, 0/1) after ``observation``.

    - :class:`~skipenv.policies.baselines.RandomPolicy` with rate ``r``: ``r^k (1 − r)^(n − k)``, ``k`` = skipped bits.
    - an SB3 model with ``stochastic=True``: ``exp(log_prob)`` of its action distribution (a product of Bernoulli
      bits for ``MultiBinary``).
    - every other policy is deterministic: 1.0 if ``policy(observation)`` equals ``action``, else 0.0 (calling it
      draws nothing, so this is exact for static plans and SB3 models used with ``deterministic=True``).
    """
    from .baselines import RandomPolicy

    a = np.asarray(action).astype(np.int64).reshape(-1)
    if isinstance(policy, RandomPolicy):
        k = int(a.sum())
        return float(policy.rate ** k * (1.0 - policy.rate) ** (len(a) - k))
    if getattr(policy, "stochastic", False):
        import torch

        dist = _sb3_distribution(policy, observation)
        return float(torch.exp(dist.log_prob(torch.as_tensor(a[None], dtype=torch.float32))).item())
    return float(np.array_equal(np.asarray(policy(observation)).astype(np.int64).reshape(-1), a))
