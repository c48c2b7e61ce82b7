"""Offline datasets of skip decisions (Minari) and off-policy evaluation on them.

A one-shot SwitchDec episode is a contextual bandit round: context = the observation of one document, action =
the skip plan, reward = the lexicographic reward. Logged with the logging policy's action probability (the
*propensity*), such rounds let anyone estimate another policy's value without running the model.

- :func:`record_dataset` — run a logging policy in an env and write a Minari dataset (episode buffers handed to
  ``minari.create_dataset_from_buffers``, Arrow format; Minari's ``DataCollector`` wrapper needs JAX only to
  append steps, which a one-step episode does not need):
  observations ``[2, d + 2]`` per episode (reset, final), actions ``[1, n]``, rewards, and ``infos`` with
  ``example_id``, ``quality``, ``quality_full``, ``cost``, ``flops_saved``, ``constraint_satisfied`` and
  ``propensity`` (the logging policy's probability of the logged action). Entry 0 of each info array belongs to
  the reset and holds placeholders (NaN / −1 / ``""``); entry 1 to the step.
- :func:`evaluate_off_policy` — inverse propensity scoring (IPS, Horvitz & Thompson 1952), self-normalised IPS
  (SNIPS, Swaminathan & Joachims 2015), the direct method (DM: a ridge-regression reward model) and the doubly
  robust estimator (DR, Dudík, Langford & Li, ICML 2011) of a target policy's mean reward, and the on-policy value
  of the same policy on the same documents for comparison. Several datasets (e.g. from the random and the
  skip-nothing policies) are pooled with the mixture propensity ``Σ_j (n_j / N) μ_j(a | x)`` (the balance
  heuristic; Agarwal et al., "Effective evaluation using logged bandit feedback from multiple loggers", KDD 2017).

**One reward per dataset.** Each dataset records which reward its rewards are (:data:`REWARD_METADATA_KEY` in its
Minari metadata, :func:`reward_record`): always the env's *per-input* reward (``formulation`` ``"per_input"``,
``multiplier`` ``None``: a stationary function of (observation, action)) with its rule, ``tau`` and ``cost_weight``,
the model identity, and, for an id whose formulation is the expected constraint (``SwitchDec-XSum-v1``), that
constraint (``tau``; the loss ``quality_full - quality`` is in the infos). Why not the Lagrangian: its multiplier
moves while the episodes are logged, so the same (document, plan) gets different rewards at different steps and
IPS / DM over them estimate no fixed policy value (issue 20 H4: IPS -0.066 against an on-policy value of -0.62).
From the per-input reward and the logged loss, the expected formulation's quantities are estimated instead: the
target's mean quality loss against ``tau`` (``loss_ips`` / ``loss_snips``, with its on-policy value), and the
Lagrangian at any fixed multiplier is their linear combination. :func:`evaluate_off_policy` scores the target on
that same recorded reward (the recovered env must compute it) or refuses.

Datasets live under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``) or the ``root`` you pass. Dataset ids
follow Minari's ``namespace/name-vN`` form; ``-v0`` is appended when no version is given.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import gymnasium as gym
import numpy as np

__all__ = ["record_dataset", "evaluate_off_policy", "load_bandit_data", "dataset_id", "reward_record", "INFO_KEYS",
           "LOGGING_PREFIX", "REWARD_METADATA_KEY"]

#: numeric info keys recorded per step (``example_id`` and ``propensity`` are added)
INFO_KEYS = ("quality", "quality_full", "cost", "flops_saved", "constraint_satisfied", "reward")
#: prefix of the dataset's ``algorithm_name``: ``"skipenv-policy:" + logging policy spec``
LOGGING_PREFIX = "skipenv-policy:"
#: key of the dataset's Minari metadata that holds the JSON of :func:`reward_record`
REWARD_METADATA_KEY = "skipenv_reward"


def _env_reward(base) -> dict:
    """What the bare env's reward is: rule, tau, cost weight (the fields that determine it from an outcome)."""
    rule = base.reward
    return {"formulation": "per_input", "rule": getattr(rule, "name", type(rule).__name__),
            "tau": float(rule.tau), "cost_weight": getattr(rule, "cost_weight", None), "multiplier": None,
            "quality": str(base.evaluator.quality)}


def reward_record(dataset) -> dict:
    """The reward a dataset's rewards are (written by :func:`record_dataset`): ``{"formulation": "per_input",
    "rule", "tau", "cost_weight", "multiplier": None, "quality", "env_id", "constraint" (``None`` or
    ``{"formulation": "expected", "tau", "loss": "quality_full - quality"}``), "identity" (model identity)}``.

    A dataset recorded before this record existed gets ``{"formulation": "per_input", "legacy": True}`` if its env
    applied the per-input formulation (its rewards then are the env's own).

    Raises:
        ValueError: no record and an env of another formulation (its rewards were Lagrangian rewards of a moving
            multiplier, or budget rewards: no target can be scored on them), or a damaged record.
    """
    import json

    raw = dataset.storage.metadata.get(REWARD_METADATA_KEY)
    if raw is None:
        spec = dataset.spec.env_spec
        formulation = (spec.kwargs or {}).get("formulation", "per_input") if spec is not None else "per_input"
        if formulation == "per_input":
            return {"formulation": "per_input", "legacy": True}
        raise ValueError(f"dataset {dataset.spec.dataset_id!r} records no reward definition and its env applied the "
                         f"{formulation!r} formulation: its rewards are Lagrangian (or budget) rewards of a state "
                         f"that moved while it was recorded, so no policy can be scored on them; record it again "
                         f"(skipenv dataset record logs the per-input reward and the constraint's loss)")
    try:
        rec = json.loads(raw)
        assert isinstance(rec, dict) and rec.get("formulation") == "per_input"
    except (ValueError, TypeError, AssertionError):
        raise ValueError(f"dataset {dataset.spec.dataset_id!r}: its reward record ({REWARD_METADATA_KEY}) is "
                         f"damaged; record it again") from None
    return rec


def _need_minari():
    try:
        import minari
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError('Minari is not installed: pip install "skipenv[offline]" (or pip install minari)') from e
    return minari


def dataset_id(name: str) -> str:
    """Minari dataset id for ``name``: ``"skipenv/xsum-random"`` → ``"skipenv/xsum-random-v0"``; a name without a
    namespace gets ``skipenv/``.

    Raises:
        ValueError: characters Minari does not accept (letters, digits, ``-``, ``_``, ``/`` only).
    """
    if not re.fullmatch(r"[A-Za-z0-9_\-/]+", name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-', '_' and at most one '/' (namespace/name)")
    if "/" not in name:
        name = f"skipenv/{name}"
    return name if re.search(r"-v\d+$", name) else f"{name}-v0"


@contextmanager
def _datasets_root(root: str | os.PathLike | None):
    """Point Minari at ``root`` for the duration (Minari reads ``MINARI_DATASETS_PATH`` at each call)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).expanduser().resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def record_dataset(env_id: str, policy: str, episodes: int, name: str, *, env_kwargs: dict | None = None,
                   split: str = "train", seed: int = 0, root: str | os.PathLike | None = None,
                   description: str | None = None, progress: bool = True):
    """Record ``episodes`` one-shot episodes of a logging policy as a Minari dataset.

    Episode ``i`` is document ``i mod N`` of the split (``N`` documents: ``num_examples`` in ``env_kwargs``, else
    the whole split), so documents repeat only after a full pass. SB3 models log *sampled* actions (a logging
    policy must explore); baselines behave as usual (``random:RATE`` samples, static plans are deterministic).

    Args:
        env_id: a one-shot SwitchDec id.
        policy: logging policy spec or file (:func:`skipenv.policies.load_policy`).
        episodes: number of episodes (> 0).
        name: dataset name (see :func:`dataset_id`).
        env_kwargs: further ``gym.make`` kwargs (stored in the dataset's env spec, so they must be JSON values).
        split: the split the documents come from.
        seed: seed of the logging policy and of the first reset.
        root: datasets folder (default ``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``).

    Returns:
        The :class:`minari.MinariDataset`.

    The rewards are the bare env's per-input rewards also for an id of the expected formulation (v1: the env is
    built with ``formulation="per_input"``); the dataset's metadata records that reward and the constraint
    (:func:`reward_record`; the module docstring says why).

    Raises:
        ValueError: ``episodes < 1``, ``env_kwargs`` not a dict, the budget formulation, a layerwise env (not a
            one-step bandit), a dataset id that already exists.
        ImportError: Minari is not installed.
    """
    minari = _need_minari()
    from minari.data_collector import EpisodeBuffer
    from tqdm import tqdm

    from ..policies.spec import action_probability, load_policy, sample_action

    import json

    from ..envs.cache import model_identity
    from ..envs.registration import registered_formulation

    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be >= 1 (an integer), got {episodes!r}")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise ValueError(f"env_kwargs must be a dict of gym.make kwargs such as {{'num_examples': 64}}, got "
                         f"{type(env_kwargs).__name__} {env_kwargs!r}")
    ds_id = dataset_id(name)
    kwargs = {"split": split, **(env_kwargs or {})}
    formulation = registered_formulation(env_id, kwargs)
    if formulation not in ("per_input", "expected"):
        raise ValueError(f"formulation {formulation!r}: a dataset logs the per-input reward (and, for the expected "
                         f"constraint, its loss); a budget-conditioned env's reward depends on a tau drawn per "
                         f"episode and is not supported: record the env without formulation=")
    formulation_kwargs = kwargs.pop("formulation_kwargs", None)
    if formulation != "per_input":  # the bare env: its per-input reward is a fixed function of (document, plan)
        kwargs["formulation"] = "per_input"
    env = gym.make(env_id, **kwargs)
    if not isinstance(env.action_space, gym.spaces.MultiBinary):
        raise ValueError(f"{env_id} is not a one-shot env (action space {env.action_space}); record a one-shot id "
                         f"such as SwitchDec-XSum-v0")
    calib = gym.make(env_id, **{**kwargs, "split": "train", "num_examples": 16}).unwrapped \
        if policy.startswith("calibrated") else None
    logging_policy = load_policy(policy, env.unwrapped, seed=seed, calibration_env=calib, stochastic=True)
    rng = np.random.default_rng(seed)
    n_docs = len(env.unwrapped.examples)
    buffers = []
    env.reset(seed=seed)
    for i in tqdm(range(episodes), desc=f"record {policy}", disable=not progress, leave=False):
        options = {"index": i % n_docs}
        obs, info = env.reset(options=options)
        action = sample_action(logging_policy, obs, rng)
        propensity = action_probability(logging_policy, obs, action)
        next_obs, reward, terminated, truncated, step_info = env.step(action)
        # plain lists: Minari's Arrow storage cannot decode 1-D numpy info arrays (empty shape metadata)
        infos = {k: [float("nan"), float(step_info[k])] for k in INFO_KEYS}
        infos["example_id"] = ["", str(step_info["example_id"])]
        infos["propensity"] = [float("nan"), float(propensity)]
        buffers.append(EpisodeBuffer(id=i, options=options, observations=np.stack([obs, next_obs]),
                                     actions=action[None], rewards=np.array([reward]),
                                     terminations=np.array([terminated]), truncations=np.array([truncated]),
                                     infos=infos))
    with _datasets_root(root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`(code_permalink|author|author_email|eval_env)` is set to None")
        if ds_id in minari.list_local_datasets():
            raise ValueError(f"dataset {ds_id!r} already exists under {os.environ.get('MINARI_DATASETS_PATH')}; "
                             f"choose another name or delete it (minari.delete_dataset)")
        ds = minari.create_dataset_from_buffers(
            dataset_id=ds_id, buffer=buffers, env=env.spec, algorithm_name=LOGGING_PREFIX + policy,
            description=description or (f"{episodes} one-shot episodes of {env_id} ({split} split) logged with "
                                        f"{policy!r}; infos: example_id, {', '.join(INFO_KEYS)}, propensity"),
            data_format="arrow", requirements=["skipenv"])
        record = {**_env_reward(env.unwrapped), "env_id": env_id,
                  "constraint": None if formulation == "per_input" else
                  {"formulation": formulation, "tau": float(env.unwrapped.tau), "loss": "quality_full - quality",
                   "formulation_kwargs": formulation_kwargs},
                  "identity": model_identity(env.unwrapped.generator)}
        ds.storage.update_metadata({REWARD_METADATA_KEY: json.dumps(record, sort_keys=True)})
        env.close()
        return minari.load_dataset(ds_id)


def load_bandit_data(dataset) -> dict[str, np.ndarray]:
    """The bandit rounds of a one-shot dataset: ``observations [N, d + 2]`` (at reset), ``actions [N, n]``,
    ``rewards [N]``, ``propensities [N]``, ``example_ids [N]`` (str), ``quality [N]``, ``cost [N]``,
    ``quality_full [N]``."""
    obs, acts, rews, props, ids, qual, cost, qfull = [], [], [], [], [], [], [], []
    for ep in dataset.iterate_episodes():
        obs.append(np.asarray(ep.observations)[0])
        acts.append(np.asarray(ep.actions)[0])
        rews.append(float(np.asarray(ep.rewards)[0]))
        props.append(float(np.asarray(ep.infos["propensity"])[1]))
        ids.append(str(np.asarray(ep.infos["example_id"])[1]))
        qual.append(float(np.asarray(ep.infos["quality"])[1]))
        cost.append(float(np.asarray(ep.infos["cost"])[1]))
        qfull.append(float(np.asarray(ep.infos["quality_full"])[1]))
    return {"observations": np.array(obs, np.float32), "actions": np.array(acts, np.int8),
            "rewards": np.array(rews), "propensities": np.array(props), "example_ids": np.array(ids),
            "quality": np.array(qual), "cost": np.array(cost), "quality_full": np.array(qfull)}


def _features(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Reward-model features ``[N, d + 2 + n + 2]``: observation, action bits, the number of skipped bits and an
    indicator of "nothing skipped" (the reward jumps there: the full model always keeps the quality constraint)."""
    a = np.asarray(actions, np.float64)
    k = a.sum(1, keepdims=True)
    return np.hstack([np.asarray(obs, np.float64), a, k, (k == 0).astype(np.float64)])


def evaluate_off_policy(names: Sequence[str], target: str, *, root: str | os.PathLike | None = None,
                        seed: int = 0, mc_samples: int = 32, on_policy: bool = True, on_policy_samples: int = 4,
                        ridge_alpha: float = 1.0, progress: bool = True) -> dict:
    """Off-policy estimates of ``target``'s mean reward from logged datasets, and its on-policy value.

    Estimators over the ``N`` pooled rounds ``(x_i, a_i, r_i)`` with logging probability ``μ(a_i | x_i)`` and
    importance weight ``w_i = π(a_i | x_i) / μ(a_i | x_i)``:

    - IPS ``= (1/N) Σ w_i r_i``; SNIPS ``= Σ w_i r_i / Σ w_i``;
    - DM ``= (1/N) Σ E_{a∼π(·|x_i)} r̂(x_i, a)`` with ``r̂`` a ridge regression on (observation, action bits,
      number of skipped bits, "nothing skipped") fitted on the logged rounds; the expectation is exact for
      deterministic ``π`` and an average of ``mc_samples`` draws otherwise;
    - DR ``= DM + (1/N) Σ w_i (r_i − r̂(x_i, a_i))``.

    The on-policy value runs ``π`` in the recorded env (rebuilt from the dataset's env spec) on each logged
    document and averages the reward: ``on_policy_samples`` draws per logged round for a stochastic ``π`` (its
    reward varies with the draw), one run per document for a deterministic ``π``.

    Args:
        names: one or more dataset names / ids recorded by :func:`record_dataset` from the same env.
        target: target policy spec or file (:func:`skipenv.policies.load_policy`).
        root: datasets folder (default ``MINARI_DATASETS_PATH``).
        on_policy: also compute the on-policy value (runs the model on every logged document).
        on_policy_samples: draws of a stochastic target per logged round for the on-policy value.

    Returns:
        dict with ``target``, ``logging`` (specs), ``episodes``, ``ips``, ``snips``, ``dm``, ``dr``,
        ``on_policy`` (or ``None``), ``error_<est>`` = estimate − on-policy value (``snips`` and its error are
        ``None`` when no logged action has target probability > 0), ``ess`` (effective sample size
        ``(Σw)² / Σw²``), ``support`` (fraction of rounds with ``π(a_i | x_i) > 0``) and ``reward`` (the
        recorded reward, :func:`reward_record`). For a dataset of the expected constraint also ``tau``,
        ``loss_ips`` / ``loss_snips`` (off-policy mean quality loss of the target) and ``on_policy_loss``.

    The target is scored on the reward the dataset records: the env recovered from the dataset must compute that
    same reward, with the model that recorded it.

    Raises:
        ValueError: datasets of different envs, spaces or rewards, a dataset not recorded by skipenv (no logging
            spec), a dataset of Lagrangian rewards (recorded before the reward record, on v1), a recovered env that
            computes another reward than the recorded one, zero logging propensity for a logged action.
        skipenv.envs.cache.IdentityMismatchError: the model in use is not the one that recorded the dataset.
        ImportError: Minari or scikit-learn missing.
    """
    import json

    minari = _need_minari()
    from sklearn.linear_model import Ridge
    from tqdm import tqdm

    from ..envs.cache import check_identity

    from ..policies.spec import action_probability, is_stochastic, load_policy, sample_action

    with _datasets_root(root):
        datasets = [minari.load_dataset(dataset_id(n)) for n in names]
    specs = []
    for ds in datasets:
        algo = ds.storage.metadata.get("algorithm_name") or ""
        if not algo.startswith(LOGGING_PREFIX):
            raise ValueError(f"dataset {ds.spec.dataset_id!r} was not recorded by skipenv (algorithm_name "
                             f"{algo!r}); its logging policy is unknown")
        specs.append(algo[len(LOGGING_PREFIX):])
    env_specs = {ds.spec.env_spec.to_json() for ds in datasets}
    if len(env_specs) != 1:
        raise ValueError("the datasets were recorded in different envs (or with different env kwargs); pool only "
                         "datasets of one env")
    records = [reward_record(ds) for ds in datasets]
    plain = {json.dumps({k: v for k, v in r.items() if k != "identity"}, sort_keys=True) for r in records}
    if len(plain) != 1:
        raise ValueError(f"the datasets record different rewards ({sorted(plain)}); pool only datasets of one reward")
    record = records[0]
    env = datasets[0].recover_environment().unwrapped
    if not record.get("legacy"):  # the target is scored on the recorded reward, by the model that made it
        now = _env_reward(env)
        differs = {k: (record.get(k), v) for k, v in now.items() if record.get(k) != v}
        if differs:
            raise ValueError(f"dataset {datasets[0].spec.dataset_id!r}: the env recovered from it computes another "
                             f"reward than the recorded one (recorded -> now: {differs}); record it again")
        check_identity(record.get("identity"), env.generator,
                       what=f"dataset {datasets[0].spec.dataset_id!r}",
                       fix="record it again with this model, or evaluate with the model it was recorded with")
    data = [load_bandit_data(ds) for ds in datasets]
    pooled = {k: np.concatenate([d[k] for d in data]) for k in data[0]}
    counts = np.array([len(d["rewards"]) for d in data], float)
    x, a, r = pooled["observations"], pooled["actions"], pooled["rewards"]
    n = len(r)
    if len(datasets) == 1:
        mu = pooled["propensities"]
    else:  # mixture of the loggers (balance heuristic)
        loggers = [load_policy(s, env, seed=seed, stochastic=True) for s in specs]
        mu = np.array([sum(c / n * action_probability(lg, xi, ai) for c, lg in zip(counts, loggers))
                       for xi, ai in zip(x, a)])
    if np.any(mu <= 0):
        raise ValueError("a logged action has logging probability 0; the dataset's propensities are inconsistent")
    pi_policy = load_policy(target, env, seed=seed + 1)
    pi = np.array([action_probability(pi_policy, xi, ai) for xi, ai in zip(x, a)])
    w = pi / mu
    model = Ridge(alpha=ridge_alpha).fit(_features(x, a), r)
    r_hat_logged = model.predict(_features(x, a))
    rng = np.random.default_rng(seed)
    if is_stochastic(pi_policy):
        dm_terms = np.array([model.predict(_features(np.repeat(xi[None], mc_samples, 0),
                                                     np.stack([sample_action(pi_policy, xi, rng)
                                                               for _ in range(mc_samples)]))).mean() for xi in x])
    else:
        acts = np.stack([sample_action(pi_policy, xi) for xi in x])
        dm_terms = model.predict(_features(x, acts))
    out = {"target": target, "logging": specs, "episodes": int(n),
           "ips": float(np.mean(w * r)), "snips": float(np.sum(w * r) / np.sum(w)) if w.sum() > 0 else None,
           "dm": float(dm_terms.mean()), "dr": float(dm_terms.mean() + np.mean(w * (r - r_hat_logged))),
           "ess": float(w.sum() ** 2 / np.sum(w ** 2)) if np.any(w > 0) else 0.0,
           "support": float(np.mean(pi > 0)), "on_policy": None, "reward": {k: v for k, v in record.items()
                                                                             if k != "identity"}}
    constraint = record.get("constraint")
    loss = pooled["quality_full"] - pooled["quality"]
    if constraint:  # the expected constraint: the target's mean quality loss against tau, off-policy
        out.update(tau=float(constraint["tau"]), loss_ips=float(np.mean(w * loss)),
                   loss_snips=float(np.sum(w * loss) / np.sum(w)) if w.sum() > 0 else None, on_policy_loss=None)
    if on_policy:
        values, memo = [], {}
        stochastic = is_stochastic(pi_policy)
        for ex_id in tqdm(pooled["example_ids"], desc=f"on-policy {target}", disable=not progress, leave=False):
            if not stochastic and ex_id in memo:
                values.append(memo[ex_id])
                continue
            draws, losses = [], []
            for _ in range(max(1, int(on_policy_samples)) if stochastic else 1):
                obs, _ = env.reset(options={"example_id": str(ex_id)})
                _, reward, _, _, info = env.step(sample_action(pi_policy, obs, rng))
                draws.append(float(reward))
                losses.append(float(info["quality_full"]) - float(info["quality"]))
            memo[ex_id] = (float(np.mean(draws)), float(np.mean(losses)))
            values.append(memo[ex_id])
        out["on_policy"] = float(np.mean([v[0] for v in values]))
        if constraint:
            out["on_policy_loss"] = float(np.mean([v[1] for v in values]))
        for k in ("ips", "snips", "dm", "dr"):
            out[f"error_{k}"] = None if out[k] is None else out[k] - out["on_policy"]
    return out
