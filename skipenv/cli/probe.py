"""``skipenv probe`` (and ``benchmarks/learnability.py``): the learnability probe (:func:`skipenv.evaluation.probe.run_probe`)
from the command line."""

from __future__ import annotations

from .args import DEFAULT_ENV_ID, check_env_kwargs, finite_float, json_object, nonnegative_int, output_folder, \
    plan_text, positive_int

__all__ = ["configure_parser", "main"]


def configure_parser(p) -> None:
    """Arguments of ``skipenv probe`` / ``benchmarks/learnability.py``."""
    p.add_argument("--env", default=DEFAULT_ENV_ID, help="a one-shot SwitchDec env id")
    p.add_argument("--train-docs", type=positive_int, default=96,
                   help="first N documents of the train split (the probe policy's calibration needs about this many "
                        "on XSum: README, \"Choosing the defaults\")")
    p.add_argument("--test-docs", type=positive_int, default=40, help="first M documents of the test split")
    p.add_argument("--quality", default=None,
                   help="quality signal (gym.make kwarg; default the env's: probability for SwitchDec-XSum-v1, "
                        "agreement for v0): agreement, probability, likelihood, reference, fidelity")
    p.add_argument("--tau", type=finite_float, default=None,
                   help="quality tolerance (quality units; default the env's: 0.01 for v1, 0.1 for v0, else the "
                        "quality signal's default)")
    p.add_argument("--observation", default=None, metavar="KIND",
                   help="the env's observation (gym.make kwarg; default the env's, pooled): pooled, segments, "
                        "layer:m, attention:m")
    p.add_argument("--plan", action="append", type=plan_text, default=None, metavar="NAME:KIND=I,J;KIND=I",
                   help="a menu plan (repeatable; replaces the default menu), e.g. 'lead:tokens=6,7'")
    p.add_argument("--learning-curve", type=positive_int, nargs="*", default=None,
                   help="train-document counts of the learning curve (default 1/4, 1/2, 3/4 of --train-docs)")
    p.add_argument("--env-kwargs", type=json_object, default={}, help="further gym.make kwargs as JSON")
    p.add_argument("--observations", nargs="*", default=[], metavar="KIND",
                   help="observation kinds to compare with the env's: segments, layer:m, attention:m "
                        "(skipenv.envs.observations)")
    p.add_argument("--out", type=output_folder, default="runs/probe",
                   help="parent folder of the cached table and the results")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the analysis (fold shuffling, learning-curve subsets, randomised policies)")
    p.add_argument("--no-cache", action="store_true",
                   help="evaluate the menu again even if --out holds a table of this configuration and model "
                        "(overwrites it); the env's cache of full-model references is disk_cache in --env-kwargs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args) -> int:
    """Run the probe from parsed :func:`configure_parser` arguments; prints the report; returns 0."""
    from ..evaluation.probe import run_probe

    both = sorted({"quality", "tau"} & set(args.env_kwargs))
    if both:
        raise ValueError(f"set {' and '.join(both)} with --{' / --'.join(both)}, not in --env-kwargs (the analysis "
                         f"uses the flag's value)")
    observation = getattr(args, "observation", None)
    if observation is not None and "observation" in args.env_kwargs:
        raise ValueError("set the observation with --observation or in --env-kwargs, not both")
    env_kwargs = {**{k: v for k, v in (("quality", args.quality), ("tau", args.tau)) if v is not None},
                  **args.env_kwargs}
    if observation is not None:
        env_kwargs["observation"] = observation
    check_env_kwargs(args.env, env_kwargs, reserved={  # before the model loads
        "split": "is set by the probe (train and test); choose the documents with --train-docs / --test-docs",
        "num_examples": "is set by the probe; use --train-docs / --test-docs",
        "formulation": "is not for the probe: it evaluates the env's own outcomes and analyses every formulation",
        "formulation_kwargs": "is not for the probe: it analyses every formulation itself"})
    from ..envs.observations import parse_observation_kind

    for kind in args.observations:
        parse_observation_kind(kind)
    _, report = run_probe(args.env, env_kwargs=env_kwargs, menu=args.plan, num_train=args.train_docs,
                          num_test=args.test_docs, tau=args.tau, out_dir=args.out, progress=not args.no_progress,
                          learning_curve=args.learning_curve, observations=args.observations, seed=args.seed,
                          cache=not args.no_cache)
    print((report.folder / "report.md").read_text())
    print(f"saved: {report.folder}/ (outcomes.csv, observations.csv, report.md, summary.csv, pareto.png)")
    return 0
