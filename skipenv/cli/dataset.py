"""``skipenv dataset record|evaluate``: Minari datasets of logged episodes and off-policy evaluation on them
(:mod:`skipenv.evaluation.offline`)."""

from __future__ import annotations

import os
from pathlib import Path

from .args import DEFAULT_ENV_ID, ENV_FROM_RUN_HELP, DefaultEnv, check_env_kwargs, check_policy_file, \
    env_for_policies, json_object, nonnegative_int, output_file, positive_int

__all__ = ["configure_parser", "main"]


def configure_parser(p) -> None:
    """Arguments of ``skipenv dataset`` (sub-commands ``record`` and ``evaluate``)."""
    from ..policies import POLICY_HELP

    sub = p.add_subparsers(dest="dataset_command", metavar="{record,evaluate}", required=True,
                          help="record: log episodes of a policy as a Minari dataset; evaluate: off-policy estimates from one")
    rec = sub.add_parser("record",
                         help="log a policy's episodes (with its action probabilities) as a Minari dataset")
    rec.add_argument("--env", default=DefaultEnv(DEFAULT_ENV_ID), help="one-shot env id" + ENV_FROM_RUN_HELP)
    rec.add_argument("--policy", required=True, help="logging policy: " + POLICY_HELP)
    rec.add_argument("--episodes", type=positive_int, required=True, help="episodes to record (document i mod N)")
    rec.add_argument("--out", required=True, help="dataset name, e.g. xsum-random (-> skipenv/xsum-random-v0)")
    rec.add_argument("--split", default="train", help="split the documents come from (default: train)")
    rec.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the logging policy (default: 0)")
    ev = sub.add_parser("evaluate",
                        help="IPS / SNIPS / DM / doubly-robust estimate of a policy's reward from datasets, "
                             "checked against its on-policy value")
    ev.add_argument("--dataset", nargs="+", required=True, help="dataset name(s); several are pooled")
    ev.add_argument("--policy", required=True, help="target policy: " + POLICY_HELP)
    ev.add_argument("--seed", type=nonnegative_int, default=0, help="seed of stochastic target policies (default: 0)")
    ev.add_argument("--no-on-policy", action="store_true", help="skip the on-policy check (no model runs)")
    ev.add_argument("--on-policy-samples", type=positive_int, default=4,
                    help="draws per logged document of a stochastic target for the on-policy value (default: 4)")
    ev.add_argument("--out", type=output_file, default=None, help="also write the estimates as JSON to this file")
    for q in (rec, ev):
        q.add_argument("--root", default=None,
                       help="datasets folder (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
    rec.add_argument("--env-kwargs", type=json_object, default={},
                     help='further gym.make kwargs as JSON, e.g. \'{"num_examples": 64}\'')


def main(args) -> int:
    """Run ``skipenv dataset record|evaluate``; returns the exit code (1 with the reason on bad input)."""
    import json
    import sys

    from ..evaluation.offline import evaluate_off_policy, record_dataset

    try:
        check_policy_file(args.policy)  # before anything loads
        if args.dataset_command == "record":
            env_id = env_for_policies(args.env, [args.policy], "dataset record")
            check_env_kwargs(env_id, args.env_kwargs, reserved={"split": "is set with --split"})
            ds = record_dataset(env_id, args.policy, args.episodes, args.out, env_kwargs=args.env_kwargs,
                                split=args.split, seed=args.seed, root=args.root, progress=not args.no_progress)
            where = args.root or os.environ.get("MINARI_DATASETS_PATH") or "~/.minari/datasets"
            print(f"saved Minari dataset {ds.spec.dataset_id} ({ds.total_episodes} episodes) under {where}")
            print(f"load it with: minari.load_dataset({ds.spec.dataset_id!r})")
            return 0
        res = evaluate_off_policy(args.dataset, args.policy, root=args.root, seed=args.seed,
                                  on_policy=not args.no_on_policy, on_policy_samples=args.on_policy_samples,
                                  progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"skipenv dataset {args.dataset_command}: {e}", file=sys.stderr)
        return 1
    print(f"target {res['target']} on {res['episodes']} logged rounds of {', '.join(res['logging'])} "
          f"(support {res['support']:.0%}, effective sample size {res['ess']:.1f})")
    if res["support"] == 0:
        print("the logged actions never include the target's: IPS is 0 and SNIPS undefined; DR reduces to DM "
              "(log with a policy that covers the target's actions)")
    print(f"{'estimator':<10}{'value':>10}{'error':>10}")
    for k in ("ips", "snips", "dm", "dr"):
        if res[k] is None:
            print(f"{k.upper():<10}{'n/a':>10}")
            continue
        err = f"{res[f'error_{k}']:+10.4f}" if res["on_policy"] is not None else f"{'':>10}"
        print(f"{k.upper():<10}{res[k]:>10.4f}{err}")
    if res["on_policy"] is not None:
        print(f"{'on-policy':<10}{res['on_policy']:>10.4f}")
    rec = res.get("reward") or {}
    if not rec.get("legacy"):
        print(f"reward: the env's per-input {rec.get('rule')} reward (tau {rec.get('tau')}, quality "
              f"{rec.get('quality')}), as recorded in the dataset")
    if "loss_ips" in res:
        snips = "n/a" if res["loss_snips"] is None else f"{res['loss_snips']:.4f}"
        on = "" if res["on_policy_loss"] is None else f", on-policy {res['on_policy_loss']:.4f}"
        print(f"expected constraint: target's mean quality loss IPS {res['loss_ips']:.4f}, SNIPS {snips}{on} "
              f"(tau {res['tau']})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"saved: {args.out}")
    return 0
