"""Non-learning baselines on the test split (no training): skip nothing, random, LayerDrop-style every other
layer, similarity-calibrated static drop, lead truncation, and the per-input greedy oracle.

    python agents/baselines.py --eval-examples 16 --out runs/baselines
"""

from _common import out_dir, parser

from skipenv.evaluation.harness import leaderboard

DEFAULT = ["skip-nothing", "random:0.5", "random:0.1", "every-other:attention", "every-other:ffn",
           "calibrated:4", "lead:4", "lead:6"]


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--policies", nargs="+", default=DEFAULT, help="policy specs (skipenv.policies.POLICY_SPECS)")
    p.add_argument("--oracle", action="store_true", help="also run the (expensive) per-input greedy oracle")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds of stochastic baselines (default: --seed only)")
    args = p.parse_args(argv)
    out = out_dir(args, "baselines")
    policies = args.policies + (["oracle:6"] if args.oracle else [])
    _, summary = leaderboard(policies, env_id=args.env, split="test", episodes=args.eval_examples,
                             seeds=args.seeds or [args.seed], out_dir=out,
                             env_kwargs={"device": args.device, **args.env_kwargs}, progress=not args.no_progress)
    summary.to_csv(out / "eval_summary.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
