"""DQN (stable-baselines3) on the layerwise SwitchDec env (Discrete(4): keep / skip attention / skip FFN / both,
one decision per layer on the hidden state produced so far).

    python agents/dqn_layerwise.py --env SwitchDec-XSum-Layerwise-v0 --total-timesteps 2048 --out runs/dqn

The learned Q-network acts layer by layer; for the test-split evaluation its per-layer decisions are rolled out
in the layerwise env and the resulting plan is scored by the one-shot env (same reward).
"""

from _common import evaluate_and_save, make_env, out_dir, parser, make_test_env

from skipenv.policies.baselines import LayerwiseRollout
from skipenv.policies.sb3 import train_sb3


def main(argv=None):
    args = parser(__doc__.splitlines()[0], default_env="SwitchDec-XSum-Layerwise-v0",
                  default_steps=2048).parse_args(argv)
    out = out_dir(args, "dqn")
    env = make_env(args, "train", args.train_examples)
    model = train_sb3("dqn", env, total_timesteps=args.total_timesteps, seed=args.seed, device=args.device,
                      out_dir=out, progress_bar=not args.no_progress)
    lw_test = make_env(args, "test", args.eval_examples)
    oneshot = make_test_env(args)
    evaluate_and_save(LayerwiseRollout(model, lw_test, oneshot, name="dqn-layerwise"), args, out, env=oneshot)


if __name__ == "__main__":
    main()
