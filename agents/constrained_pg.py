"""Constrained policy gradient (written here): Bernoulli policy over all skip candidates, REINFORCE with a
baseline, and a Lagrangian or dynamic-barrier (lexicographic) constraint handler on "quality ≥ full − tau".

    python agents/constrained_pg.py --handler barrier --total-timesteps 256 --out runs/pg-barrier

The algorithm lives in skipenv.policies.pg.ConstrainedPG (importable by notebooks); this file only runs it.
"""

from _common import evaluate_and_save, make_env, out_dir, parser

from skipenv.policies.pg import ConstrainedPG, PGConfig


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--handler", choices=("lagrangian", "barrier"), default="lagrangian",
                   help="constraint handler of ConstrainedPG")
    p.add_argument("--batch-size", type=int, default=16, help="episodes per gradient step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the policy")
    args = p.parse_args(argv)
    out = out_dir(args, f"pg-{args.handler}")
    env = make_env(args, "train", args.train_examples)
    agent = ConstrainedPG(env, PGConfig(handler=args.handler, batch_size=args.batch_size, lr=args.lr),
                          seed=args.seed, device=args.device)
    history = agent.learn(args.total_timesteps, progress_bar=not args.no_progress)
    history.to_csv(out / "progress.csv", index=False)
    agent.save(out / "policy.pt")
    evaluate_and_save(agent, args, out)


if __name__ == "__main__":
    main()
