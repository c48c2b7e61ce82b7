"""The main job: train stable-baselines3 PPO on ``SwitchDec-XSum-v0`` (embedded SmolLM2, real XSum train split),
save the policy, evaluate it on the XSum test split against the random policy and "skip nothing", and write a
table (CSV + JSON) and a quality-vs-FLOPs scatter plot next to the policy.

Command line: ``skipenv train`` (see ``skipenv train --help``). Default budget (384 PPO episodes, the best static
plan chosen on 16 train documents), assets and references already cached: about 5 minutes on 2 lightly loaded CPU
cores (measured: 5.1 min), ~5 more the first time to compute the references — the printed estimate tells. The job states torch's thread setting
and the machine's load first (warning when the load average exceeds the cores), prints a time estimate after the
first 8 PPO episodes (and checks the load again then), and labels every progress bar; with standard error
redirected to a file, bars become periodic plain lines (:mod:`skipenv.progress`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["train_ppo", "run_main_job", "best_static_plan", "paired_margin", "configure_parser", "main"]


def train_ppo(env, *, total_timesteps: int, seed: int = 0, out_dir: str | Path | None = None,
              device: str = "cpu", progress_bar: bool = True, on_early_speed=None, **overrides):
    """Train PPO (``MlpPolicy``, :data:`skipenv.sb3.ALGORITHMS` defaults) on a one-shot env and return the model.

    Episodes are one step long, so ``gamma`` and ``gae_lambda`` do not matter; the advantage is the reward minus
    the value baseline. ``learning_rate=1e-3`` (3× SB3's default) because budgets here are a few hundred
    episodes. Logs ``monitor.csv`` (per-episode reward, quality, cost) and TensorBoard under ``out_dir`` and saves
    ``policy.zip`` there.

    Args:
        progress_bar: a tqdm bar labelled ``train ppo`` (episodes, rate, time left, mean reward of the last 64
            episodes); it prints plain periodic lines when standard error is a log file (see :mod:`skipenv.progress`).
        on_early_speed: called once as ``on_early_speed(episodes_done, seconds)`` after the first 8 episodes (or
            the first rollout, if shorter), e.g. to print a time estimate.
    """
    from .sb3 import make_sb3

    model = make_sb3("ppo", env, seed=seed, device=device, out_dir=out_dir, total_timesteps=total_timesteps,
                     **overrides)
    model.learn(total_timesteps=total_timesteps,
                callback=_TrainingProgress.make("train ppo", total_timesteps, progress_bar, on_early_speed))
    if out_dir is not None:
        model.save(Path(out_dir) / "policy.zip")
    return model


class _TrainingProgress:
    """Factory of an SB3 callback with a labelled tqdm bar (SB3's own ``progress_bar=True`` bar has no label and is
    redrawn only on a terminal). Built lazily so that importing this module does not import SB3 / torch."""

    @staticmethod
    def make(label: str, total: int, show: bool, on_early_speed=None, after: int = 8):
        from collections import deque

        from stable_baselines3.common.callbacks import BaseCallback
        from tqdm import tqdm

        class Progress(BaseCallback):
            def _on_training_start(self) -> None:
                self.t0 = time.perf_counter()
                self.rewards = deque(maxlen=64)
                self.reported = on_early_speed is None
                self.bar = tqdm(total=total, desc=label, unit="episode", disable=not show, dynamic_ncols=False)

            def _on_step(self) -> bool:
                for info in self.locals.get("infos", ()):
                    if "episode" in info:
                        self.rewards.append(float(info["episode"]["r"]))
                self.bar.update(self.training_env.num_envs)
                if self.rewards and self.n_calls % 8 == 0:
                    self.bar.set_postfix(reward=f"{sum(self.rewards) / len(self.rewards):.3f}", refresh=False)
                if not self.reported and self.num_timesteps >= after:
                    self._report()
                return True

            def _on_rollout_end(self) -> None:
                if not self.reported:
                    self._report()

            def _report(self) -> None:
                self.reported = True
                on_early_speed(self.num_timesteps, time.perf_counter() - self.t0)

            def _on_training_end(self) -> None:
                self.bar.close()

        return Progress()


def _threads_line() -> tuple[str, str | None]:
    """One line stating torch's thread setting and the machine's load; and a warning if it looks oversubscribed."""
    import os

    import torch

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        load = float("nan")
    line = (f"skipenv train: torch uses {threads} thread(s) (OMP_NUM_THREADS={omp if omp else 'unset'}); "
            f"{cores} CPU core(s); load average {load:.1f}")
    warning = None
    if load > cores:
        advice = ("torch already uses one thread, so expect the job to be slower until the load drops"
                  if threads == 1 else
                  "if several PyTorch processes share the machine, give each fewer threads, e.g. "
                  "`OMP_NUM_THREADS=1 skipenv train ...` (README, \"Speed\")")
        warning = (f"skipenv train: warning: the load average ({load:.1f}) exceeds the {cores} CPU core(s): other "
                   f"processes compete for the CPU, and this job may take several times longer than usual; "
                   f"{advice}.")
    return line, warning


def _say(msg: str) -> None:
    """Print a status line to standard error on a line of its own, also while a tqdm bar is drawn there."""
    import sys

    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def best_static_plan(env, examples, *, progress: bool = True):
    """The plan of the probe's default menu (:func:`skipenv.probe.default_menu`: skip nothing, drop the last 1–4
    token segments, drop segment 3 or 5, skip one attention sublayer) with the highest mean reward of ``env`` (its
    reward rule and tau) over ``examples`` — the static baseline a learned policy has to beat, chosen on train
    documents only.

    Returns:
        ``(name, plan, mean_rewards)`` with ``mean_rewards`` = menu name → mean reward over ``examples``.

    Raises:
        ValueError: no ``examples`` (there is no mean reward to choose by).
    """
    from tqdm import tqdm

    from .probe import default_menu

    examples = list(examples)
    if not examples:
        raise ValueError("best_static_plan needs at least one train example to choose the plan on")
    menu = default_menu(env.plan_spec)
    means = {}
    bar = tqdm(total=len(menu) * len(examples), desc="best static plan (train)", unit="episode",
               disable=not progress)
    for name, plan in menu.items():
        rewards = []
        for ex in examples:
            rewards.append(float(env.evaluate(plan, ex)["reward"]))
            bar.update(1)
        means[name] = sum(rewards) / len(rewards)
    bar.close()
    best = max(means, key=lambda n: (means[n], n == next(iter(menu))))  # ties: skip nothing
    return best, menu[best], means


def paired_margin(episodes: pd.DataFrame, a: str, b: str) -> dict:
    """Mean per-document difference ``a − b`` of reward and FLOPs saved over the test documents both policies ran,
    with 95 % percentile-bootstrap CIs over documents (:func:`skipenv.formulations.bootstrap_ci`).

    Returns:
        ``{"documents", "reward", "reward_ci", "flops_saved", "flops_saved_ci"}``.

    Raises:
        ValueError: ``a`` and ``b`` share no test document (e.g. a misspelt policy name), instead of a NaN margin.
    """
    from .formulations import bootstrap_ci

    x = episodes[episodes["policy"] == a].drop_duplicates("example_id").set_index("example_id")
    y = episodes[episodes["policy"] == b].drop_duplicates("example_id").set_index("example_id")
    common = x.index.intersection(y.index)
    if not len(common):
        raise ValueError(f"policies {a!r} ({len(x)} documents) and {b!r} ({len(y)} documents) share no document; "
                         f"policies in the table: {sorted(episodes['policy'].unique())}")
    out = {"documents": int(len(common))}
    for col in ("reward", "flops_saved"):
        d = (x.loc[common, col] - y.loc[common, col]).to_numpy(float)
        out[col] = float(d.mean()) if len(d) else float("nan")
        out[f"{col}_ci"] = list(bootstrap_ci(d))
    return out


def run_main_job(out_dir: str | Path = "runs/ppo-xsum", *, total_timesteps: int = 384, train_examples: int = 32,
                 test_examples: int = 20, seed: int = 0, device: str = "cpu", model: str = "smollm2-135m-instruct",
                 env_id: str = "SwitchDec-XSum-v0", progress_bar: bool = True, algo: str = "ppo",
                 static_examples: int = 16) -> pd.DataFrame:
    """Train PPO (or another learner of :data:`skipenv.learners.LEARNERS` without warm start, ``algo``), evaluate
    against baselines on the test split, save policy / tables / plot. Returns the summary.

    Baselines: random (each bit skipped with probability 0.5), skip nothing, and the best static plan of the probe's
    menu chosen on the first ``static_examples`` train documents (:func:`best_static_plan`; 0 = leave it out). The
    learned policy's margin over that plan (reward and FLOPs saved, paired over test documents, bootstrap CI) is
    printed and stored in ``summary.json`` under ``margin_over_best_static``.

    Defaults fit the budget in the module docstring: the full-model reference (one greedy summary) of each of the
    ``train_examples`` + ``test_examples`` documents is computed once and cached on disk; a PPO step is then one
    teacher-forced forward pass; evaluation generates one summary per (policy, test document) for ROUGE-L.

    Raises:
        ValueError: ``static_examples`` not an integer ``>= 0`` (checked before anything loads).
    """
    import gymnasium as gym
    import pandas as pd

    import skipenv  # noqa: F401  (registers the ids)
    from .baselines import RandomPolicy, SB3Policy, SkipNothing, StaticPlan
    from .benchmark import evaluate_policy, plot_pareto, summarize

    if isinstance(static_examples, bool) or not isinstance(static_examples, int) or static_examples < 0:
        raise ValueError(f"static_examples must be an integer >= 0 (0 = no best-static baseline), got "
                         f"{static_examples!r}")
    say = _say
    from .threads import configure_torch_threads

    configure_torch_threads()  # as loading the generator would, so that the line below states the real count
    line, warning = _threads_line()
    say(line)
    if warning:
        say(warning)
    gym.spec(env_id)  # an unknown id fails here, before the output folder is created
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env_kwargs = {"model": model, "device": device}
    say(f"skipenv train: [1/3] full-model references of {train_examples} train documents (cached on disk)")
    train_env = gym.make(env_id, split="train", num_examples=train_examples, **env_kwargs).unwrapped
    t_ref0 = time.perf_counter()
    computed = train_env.prefetch(progress=progress_bar)  # batched references
    s_per_ref = (time.perf_counter() - t_ref0) / computed if computed else None
    train_env.reset(seed=seed)
    # episodes of the evaluation: 3 or 4 policies × test documents, one generation each
    n_eval = (4 if static_examples else 3) * test_examples
    n_static = 8 * min(static_examples, train_examples)  # menu plans × train documents (teacher-forced only)

    def eta(done: int, seconds: float) -> None:
        s_step = seconds / max(done, 1)
        s_gen = max(s_per_ref or 0.0, 3 * s_step)  # one ROUGE generation per evaluation episode
        left_train = (total_timesteps - done + n_static) * s_step
        left_eval = n_eval * (s_step + s_gen) + test_examples * s_gen  # + references of the test documents
        say(f"skipenv train: first {done} episodes in {seconds:.0f} s ({s_step:.2f} s/episode); estimated time left: "
            f"training ~{_minutes(left_train)}, then evaluation of {n_eval} episodes up to ~{_minutes(left_eval)} "
            f"(much less when the test references are already cached)")
        late_warning = _threads_line()[1]  # the load again, now that this job has run for a while
        if late_warning and not warning:
            say(late_warning)

    if algo == "ppo":
        say(f"skipenv train: [2/3] training PPO for {total_timesteps} episodes (monitor.csv and tensorboard/ in "
            f"{out})")
        learned = SB3Policy(train_ppo(train_env, total_timesteps=total_timesteps, seed=seed, out_dir=out,
                                      device=device, progress_bar=progress_bar, on_early_speed=eta), name="ppo")
    else:
        from .learners import train_learner

        say(f"skipenv train: [2/3] training {algo} for {total_timesteps} episodes (logs and policy in {out})")
        learned, _ = train_learner(algo, train_env, total_timesteps=total_timesteps, seed=seed, out_dir=out,
                                   progress_bar=progress_bar, device=device)
    t_train = time.perf_counter() - t0

    static = None
    if static_examples:
        n_static = min(static_examples, len(train_env.examples))
        say(f"skipenv train: choosing the best static plan of the probe's menu on {n_static} train documents")
        static_name, static_plan, static_means = best_static_plan(train_env, train_env.examples[:n_static],
                                                                  progress=progress_bar)
        static = (f"best static: {static_name}", static_plan, static_means, n_static)

    say(f"skipenv train: [3/3] evaluating {algo}, random:0.5, skip-nothing"
        f"{' and the best static plan' if static else ''} on {test_examples} test documents")
    test_env = gym.make(env_id, split="test", num_examples=test_examples, **env_kwargs).unwrapped
    policies = [learned, RandomPolicy(test_env, 0.5, seed=seed), SkipNothing(test_env)]
    if static is not None:
        policies.append(StaticPlan(test_env, static[1], name=static[0]))
    episodes = pd.concat([evaluate_policy(p, test_env, seed=seed, extra_quality=("rouge",), progress=progress_bar)
                          for p in policies], ignore_index=True)
    summary = summarize(episodes)
    episodes.to_csv(out / "episodes.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    meta = {"env_id": env_id, "algo": algo, "model": model, "total_timesteps": total_timesteps,
            "train_examples": train_examples,
            "test_examples": test_examples, "seed": seed, "train_seconds": round(t_train, 1),
            "total_seconds": round(time.perf_counter() - t0, 1), "tau": test_env.tau,
            "quality": test_env.quality, "summary": summary.to_dict(orient="records")}
    if static is not None:
        margin = paired_margin(episodes, learned.name, static[0])
        meta["best_static"] = {"policy": static[0], "train_documents": static[3], "train_mean_reward": static[2]}
        meta["margin_over_best_static"] = margin
        say(f"skipenv train: {learned.name} minus {static[0]} (chosen on {static[3]} train documents), paired over "
            f"{margin['documents']} test documents: reward {margin['reward']:+.3f} "
            f"[{margin['reward_ci'][0]:+.3f}, {margin['reward_ci'][1]:+.3f}], FLOPs saved "
            f"{margin['flops_saved']:+.3f} [{margin['flops_saved_ci'][0]:+.3f}, {margin['flops_saved_ci'][1]:+.3f}] "
            f"(95 % bootstrap CIs)")
    (out / "summary.json").write_text(json.dumps(meta, indent=2, default=float))
    plot_pareto(summary, out / "quality_vs_flops.png", quality_col="quality", episodes=episodes,
                tau=meta["tau"], quality_name=meta["quality"],
                title=f"{env_id}: {meta['quality']} vs FLOPs saved (test split)")
    say(f"skipenv train: done in {_minutes(time.perf_counter() - t0)}")
    return summary


def format_table(summary: pd.DataFrame) -> str:
    """The main job's printed table."""
    cols = {"policy": "policy", "quality": "agreement", "quality_rouge": "ROUGE-L",
            "quality_full_rouge": "ROUGE-L (full)", "flops_saved": "FLOPs saved",
            "constraint_satisfied": "constraint ok", "reward_mean": "reward mean", "reward_std": "reward std"}
    t = summary[[c for c in cols if c in summary.columns]].rename(columns=cols)
    return t.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``skipenv train`` (every one with help text; ``skipenv train --help`` shows the defaults)."""
    from .cli import nonnegative_int, positive_int

    p.add_argument("--out", default="runs/ppo-xsum",
                   help="output folder: policy.zip, summary.csv/json, episodes.csv, quality_vs_flops.png, "
                        "monitor.csv (one row per training episode) and tensorboard/")
    p.add_argument("--total-timesteps", type=positive_int, default=384, help="PPO environment steps (= episodes)")
    p.add_argument("--train-examples", type=positive_int, default=32, help="XSum train documents cycled during training")
    p.add_argument("--test-examples", type=positive_int, default=20, help="XSum test documents evaluated")
    p.add_argument("--static-examples", type=nonnegative_int, default=16,
                   help="train documents on which the best static plan of the probe's menu is chosen (the baseline "
                        "the learned policy's margin is reported against; 0 = leave it out)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of PPO, the env and the random baseline")
    p.add_argument("--device", default="cpu", help="torch device of the generator and PPO (e.g. cpu, cuda)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="generator: the embedded short name, a Hugging Face Hub id or a local model folder")
    p.add_argument("--env", default="SwitchDec-XSum-v0", help="environment id (one-shot)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (phase lines and the time estimate are still printed to stderr)")
    from .learners import LEARNERS, WARM_STARTED

    p.add_argument("--algo", default="ppo", choices=[a for a in LEARNERS if a not in WARM_STARTED],
                   help="learner (skipenv.learners): ppo, a2c, the ConstrainedPG handlers, or the group-baseline "
                        "rloo / grpo (policy.pt instead of policy.zip)")


def main(args: argparse.Namespace) -> int:
    summary = run_main_job(args.out, total_timesteps=args.total_timesteps, train_examples=args.train_examples,
                           test_examples=args.test_examples, seed=args.seed, device=args.device, model=args.model,
                           env_id=args.env, progress_bar=not args.no_progress, algo=args.algo,
                           static_examples=args.static_examples)
    print(format_table(summary))
    sb3 = args.algo in ("ppo", "a2c")
    logs = (f"monitor.csv, tensorboard/ (view: tensorboard --logdir {Path(args.out) / 'tensorboard'})" if sb3 else
            "progress.csv (one row per training episode)")
    print(f"\nsaved: {Path(args.out) / ('policy.zip' if sb3 else 'policy.pt')}, summary.csv, summary.json, "
          f"episodes.csv, quality_vs_flops.png, {logs}")
    return 0
