"""A2C (stable-baselines3) on the one-shot SwitchDec env (MultiBinary actions).

    python agents/a2c.py --total-timesteps 448 --seed 0 --out runs/a2c

Writes policy.zip, monitor.csv, TensorBoard logs and the test-split evaluation to the output folder.
"""

from _common import evaluate_and_save, make_env, out_dir, parser

from skipenv.policies.baselines import SB3Policy
from skipenv.policies.sb3 import train_sb3


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = out_dir(args, "a2c")
    env = make_env(args, "train", args.train_examples, formulation=True)  # v1: the Lagrangian reward
    model = train_sb3("a2c", env, total_timesteps=args.total_timesteps, seed=args.seed, device=args.device,
                      out_dir=out, progress_bar=not args.no_progress)
    evaluate_and_save(SB3Policy(model, name="a2c"), args, out)


if __name__ == "__main__":
    main()
