"""Group-baseline policy gradient (written here): G plans per document, leave-one-out baseline (RLOO), or the
advantage divided by the group's std (GRPO-style); optional behaviour-cloning warm start from the per-input oracle
or the probe policy over the probe's default menu of plans.

    python agents/group_pg.py --total-timesteps 256 --out runs/rloo
    python agents/group_pg.py --warm-start oracle --formulation expected --out runs/rloo-bc-expected

The algorithm lives in skipenv.policies.pg.GroupPG and skipenv.policies.warm_start (importable by notebooks); this file only
runs it.
"""

from _common import evaluate_and_save, make_env, out_dir, parser

from skipenv.policies.pg import GroupPG, GroupPGConfig
from skipenv.envs.wrappers import make_formulation


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--group-size", type=int, default=4, help="plans sampled per document (G >= 2)")
    p.add_argument("--groups-per-update", type=int, default=4, help="documents per gradient step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the policy")
    p.add_argument("--scale-by-std", action="store_true", help="GRPO: divide the advantage by the group's std")
    p.add_argument("--formulation", choices=("per_input", "expected"), default="per_input",
                   help="reward: the env's per-input lexicographic reward, or the expected constraint with an "
                        "online Lagrange multiplier (skipenv.envs.wrappers)")
    p.add_argument("--warm-start", choices=("none", "oracle", "probe"), default="none",
                   help="behaviour cloning before RL: targets of the oracle / probe policy over the probe menu on "
                        "the train documents (costs menu size x train documents extra episodes)")
    args = p.parse_args(argv)
    cfg = GroupPGConfig(group_size=args.group_size, groups_per_update=args.groups_per_update, lr=args.lr,
                        scale_by_std=args.scale_by_std)
    name = ("grpo" if cfg.scale_by_std else "rloo") + ("" if args.warm_start == "none" else "-bc")
    out = out_dir(args, name)
    env = make_env(args, "train", args.train_examples)
    train_env = make_formulation(env, args.formulation, **({"tau": env.tau} if args.formulation == "expected" else {}))
    agent = GroupPG(train_env, cfg, seed=args.seed, device=args.device)
    if args.warm_start != "none":
        from skipenv.evaluation.probe import evaluate_menu
        from skipenv.policies.warm_start import behaviour_cloning, warm_start_targets

        test = make_env(args, "test", 2)
        table = evaluate_menu(lambda split, n: {"train": env, "test": test}[split], num_train=args.train_examples,
                              num_test=2, progress=not args.no_progress)
        table.save(out / "probe_table")
        targets = warm_start_targets(table, env.tau, env=train_env, source=args.warm_start,
                                     formulation=args.formulation)
        behaviour_cloning(agent, targets.observations, targets.actions, weights=targets.weights, seed=args.seed)
    history = agent.learn(args.total_timesteps, progress_bar=not args.no_progress)
    agent.name = name
    history.to_csv(out / "progress.csv", index=False)
    agent.save(out / "policy.pt")
    evaluate_and_save(agent, args, out)


if __name__ == "__main__":
    main()
