"""DQN (stable-baselines3) on the layerwise SwitchDec env (Discrete(4): keep / skip attention / skip FFN / both,
one decision per layer on the hidden state produced so far).

    python agents/dqn_layerwise.py --env SwitchDec-XSum-Layerwise-v0 --total-timesteps 2048 --out runs/dqn

The learned Q-network acts layer by layer; for the test-split evaluation its per-layer decisions are rolled out
in the layerwise env and the resulting plan is scored by the one-shot env (same reward).
"""

import numpy as np
from _common import evaluate_and_save, make_env, out_dir, parser

from skipenv.sb3 import train_sb3


class LayerwiseRollout:
    """Turn a layerwise policy into a one-shot policy: roll it out in a layerwise env on the same example."""

    def __init__(self, model, layerwise_env, oneshot_env):
        self.model, self.lw, self.env = model, layerwise_env, oneshot_env
        self.name = "dqn-layerwise"

    def __call__(self, observation):
        obs, _ = self.lw.reset(options={"example_id": self.env.example.id})
        done = False
        while not done:
            action, _ = self.model.predict(obs, deterministic=True)
            obs, _, done, _, info = self.lw.step(int(action))
        from skipenv import SkipPlan

        return self.env.plan_to_action(SkipPlan.from_json(info["plan"], self.env.plan_spec))


def main(argv=None):
    args = parser(__doc__.splitlines()[0], default_env="SwitchDec-XSum-Layerwise-v0",
                  default_steps=2048).parse_args(argv)
    out = out_dir(args, "dqn")
    env = make_env(args, "train", args.train_examples)
    model = train_sb3("dqn", env, total_timesteps=args.total_timesteps, seed=args.seed, device=args.device,
                      out_dir=out, progress_bar=not args.no_progress)
    lw_test = make_env(args, "test", args.eval_examples)
    import gymnasium as gym

    oneshot = gym.make(args.env.replace("-Layerwise", ""), split="test", num_examples=args.eval_examples,
                       device=args.device, **args.env_kwargs).unwrapped
    policy = LayerwiseRollout(model, lw_test, oneshot)
    from skipenv.benchmark import evaluate_policy, summarize

    episodes = evaluate_policy(policy, oneshot, seed=args.seed, progress=not args.no_progress)
    episodes.to_csv(out / "eval_episodes.csv", index=False)
    summary = summarize(episodes)
    summary.to_csv(out / "eval_summary.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
