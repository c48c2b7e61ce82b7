"""PPO (Ray RLlib) on a one-shot SwitchDec env, with env runners in parallel processes or on a Ray cluster.

    python agents/rllib_ppo.py --total-timesteps 448 --num-env-runners 2 --out runs/rllib-ppo
    RAY_ADDRESS=auto python agents/rllib_ppo.py ...           # on a running Ray cluster (or --ray-address HOST:6379)

Needs the ``ray`` extra (``pip install -e ".[ray]"``). The env is registered with ``ray.tune.register_env``; every
env runner builds its own env, so each runner process loads its own copy of the generator (SmolLM2-135M: ~0.6 GB
of memory per runner). Full-model references are shared through ``SKIPENV_CACHE``: the driver computes the
references of the training documents once before training (as the other agents do) and the runners read them from
disk. On a cluster, either point ``SKIPENV_CACHE`` at a shared filesystem (NFS, …) on every node (then one node's
references serve all), or let each node keep its own cache (a runner computes a missing reference the first time
it meets a document, then reads it from its node's disk). Every node needs skipenv installed and the embedded
assets fetched (``skipenv download``).

RLlib has no distribution for ``MultiBinary`` actions, so the runners see the same bits as ``MultiDiscrete([2] *
n)`` (one two-way categorical per bit: the same Bernoulli policy). As in the SB3 agents, the policy starts near
"skip nothing": the bias of each bit's logits is set so the initial skip probability is ``--init-skip-prob``.

Writes progress.csv (per training iteration: env steps, seconds, env steps/s, mean return), initial_policy.json (the
measured mean skip probability of the initial policy on the training documents), the RLlib checkpoint and the
test-split evaluation (``eval_summary.csv``, ``eval_episodes.csv``) to the output folder.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from _common import evaluate_and_save, make_env, out_dir, parser

ENV_NAME = "skipenv-oneshot"


def env_creator(config: dict):
    """Build the env of one env runner (runs in the runner's process)."""
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)

    env = gym.make(config["env_id"], split="train", num_examples=config["num_examples"], device=config["device"],
                   **config["env_kwargs"])
    if isinstance(env.action_space, gym.spaces.MultiBinary):
        env = MultiBinaryAsMultiDiscrete(env)
    return env


def _wrapper_class():
    import gymnasium as gym

    class _MultiBinaryAsMultiDiscrete(gym.ActionWrapper):
        """``MultiBinary(n)`` seen as ``MultiDiscrete([2] * n)``: the same 0/1 vector (RLlib has a distribution for
        the latter only)."""

        def __init__(self, env):
            super().__init__(env)
            self.action_space = gym.spaces.MultiDiscrete([2] * env.action_space.n)

        def action(self, action):
            return np.asarray(action, dtype=np.int8)

    return _MultiBinaryAsMultiDiscrete


MultiBinaryAsMultiDiscrete = _wrapper_class()


def set_initial_skip_probability(algo, p: float) -> None:
    """Set the bias of the policy head's last layer so every bit starts with skip probability ``p`` (logits
    ``[0, logit(p)]`` per bit; the weights are left as initialised) and sync the weights to the env runners."""
    import torch

    def apply(learner):
        module = learner.module["default_policy"]
        last = [m for m in module.pi.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            bias = torch.zeros_like(last.bias).view(-1, 2)
            bias[:, 1] = math.log(p / (1 - p))
            last.bias.copy_(bias.view(-1))

    algo.learner_group.foreach_learner(apply)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def mean_skip_probability(algo, observations) -> float:
    """Mean probability of skipping a bit under the current module, over ``observations`` (shape ``[N, d + 2]``)."""
    import torch

    module = algo.get_module()
    with torch.no_grad():
        out = module.forward_inference({"obs": torch.as_tensor(np.asarray(observations, np.float32))})
    logits = out["action_dist_inputs"].view(len(observations), -1, 2)
    return float(torch.softmax(logits, -1)[..., 1].mean())


def deterministic_policy(algo, name: str = "rllib-ppo"):
    """The trained module as a one-shot policy: the more likely value of each bit (argmax of its two logits)."""
    import torch

    from skipenv.policies.baselines import CallablePolicy

    module = algo.get_module()

    def act(observation):
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.as_tensor(np.asarray(observation, np.float32)[None])})
        logits = out["action_dist_inputs"][0].view(-1, 2)
        return logits.argmax(-1).numpy().astype(np.int8)

    return CallablePolicy(act, name=name)


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--num-env-runners", type=int, default=2, help="parallel env runner processes (0: in the driver)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (e.g. auto or HOST:6379); default: $RAY_ADDRESS, else a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.add_argument("--train-batch-size", type=int, default=64, help="env steps per training iteration")
    p.add_argument("--init-skip-prob", type=float, default=0.02, help="initial skip probability of every bit")
    args = p.parse_args(argv)
    out = out_dir(args, "rllib-ppo")

    import pandas as pd
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    # the driver computes the training documents' full-model references once; runners read them via SKIPENV_CACHE
    train_env = make_env(args, "train", args.train_examples)
    train_obs = [train_env.reset(options={"index": i})[0] for i in range(len(train_env.examples))]

    env_vars = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if os.environ.get("SKIPENV_CACHE"):
        env_vars["SKIPENV_CACHE"] = os.environ["SKIPENV_CACHE"]
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, num_cpus=None if address else args.num_cpus, runtime_env={"env_vars": env_vars},
             include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    register_env(ENV_NAME, env_creator)
    batch = int(args.train_batch_size)
    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config={"env_id": args.env, "num_examples": args.train_examples,
                                           "device": args.device, "env_kwargs": args.env_kwargs})
        .env_runners(num_env_runners=args.num_env_runners, num_envs_per_env_runner=1,
                     rollout_fragment_length=max(1, batch // max(1, args.num_env_runners)))
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=batch, minibatch_size=min(32, batch), num_epochs=10, lr=1e-3,
                  gamma=1.0, lambda_=1.0)
        .debugging(seed=args.seed)
    )
    algo = config.build_algo()
    set_initial_skip_probability(algo, args.init_skip_prob)
    initial = mean_skip_probability(algo, train_obs)
    (out / "initial_policy.json").write_text(json.dumps({"init_skip_prob": args.init_skip_prob,
                                                         "mean_skip_probability_on_train_docs": initial}))
    rows, steps, t0 = [], 0, time.perf_counter()
    while steps < args.total_timesteps:
        t = time.perf_counter()
        result = algo.train()
        runners = result["env_runners"]
        new_steps = int(runners["num_env_steps_sampled_lifetime"]) - steps
        steps += new_steps
        dt = time.perf_counter() - t
        rows.append({"iteration": len(rows) + 1, "env_steps": steps, "seconds": dt, "env_steps_per_s": new_steps / dt,
                     "episode_return_mean": runners.get("episode_return_mean", float("nan"))})
        if not args.no_progress:
            r = rows[-1]
            print(f"iteration {r['iteration']}: {steps} env steps, {r['env_steps_per_s']:.1f} steps/s, "
                  f"mean return {r['episode_return_mean']:.3f}", flush=True)
    pd.DataFrame(rows).to_csv(out / "progress.csv", index=False)
    print(f"trained {steps} env steps in {time.perf_counter() - t0:.1f} s with {args.num_env_runners} env runner(s)")
    algo.save_to_path(str((out / "checkpoint").resolve()))
    evaluate_and_save(deterministic_policy(algo), args, out)
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
