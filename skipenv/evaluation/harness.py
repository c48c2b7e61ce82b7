"""Evaluate policies on a split and compare them: per-episode rows, a summary table with bootstrap confidence
intervals (scipy, :mod:`.stats`) over *distinct* episodes and the interquartile mean across seeds, and the
leaderboard (which also draws the quality-vs-FLOPs Pareto plot of :mod:`.plots`).

A *policy* is any callable ``observation -> action`` for the env's action space (see :mod:`skipenv.policies.baselines`;
stable-baselines3 models via :class:`~skipenv.policies.baselines.SB3Policy`). Policies that need the current example (the
oracle) read ``env.example``.

Importing this module is cheap (no torch, no pandas).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..envs.registration import DEFAULT_ENV_ID
from .stats import bootstrap_ci, iqm

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["evaluate_policy", "distinct_episodes", "summarize", "format_summary", "leaderboard"]

def evaluate_policy(policy, env, *, episodes: int | None = None, seed: int = 0,
                    extra_quality: Sequence[str] = (), progress: bool = True,
                    name: str | None = None, label: str | None = None) -> pd.DataFrame:
    """Run ``policy`` for one episode per example of ``env``'s split (in split order) and collect the results.

    Args:
        policy: callable ``observation -> action`` with a ``name`` attribute (optional).
        env: a :class:`~skipenv.envs.SwitchDecEnv` (one-shot).
        episodes: evaluate only the first ``episodes`` examples of the split.
        seed: passed to ``env.reset`` once (policies that sample should be seeded themselves).
        extra_quality: further quality signals to report for the same plan, e.g. ``("rouge",)`` adds a column
            ``quality_rouge`` (generation scored against the reference) — costs one generation per episode.
        progress: show a tqdm bar (labelled ``eval <name>``).
        name: the ``policy`` column and bar label; default ``policy.name`` (or the class name).
        label: the bar label instead of ``eval <name>`` (the leaderboard adds the seed of stochastic policies).

    Returns:
        One row per episode: ``policy, seed, example_id, reward, quality, quality_full, constraint_satisfied,
        cost, flops_saved, num_skipped, plan`` plus ``quality_<signal>`` / ``quality_full_<signal>`` columns.
    """
    import pandas as pd
    from tqdm import tqdm

    from ..envs.evaluator import Evaluator
    from ..envs.quality import get_signal

    n = len(env.examples) if episodes is None else min(int(episodes), len(env.examples))
    extra = {q: Evaluator(env.generator, env.task, quality=q, token_segments=env.plan_spec.token_segments,
                          max_new_tokens=env.max_new_tokens)
             for q in extra_quality if get_signal(q).name != env.quality}
    rows = []
    name = name or getattr(policy, "name", type(policy).__name__)
    env.prefetch(env.examples[:n], progress=progress)  # batched full-model outputs
    env.reset(seed=seed)
    for i in tqdm(range(n), desc=label or f"eval {name}", unit="episode", disable=not progress, leave=False):
        obs, _ = env.reset(options={"index": i})
        action = policy(obs)
        _, reward, _, _, info = env.step(action)
        row = {"policy": name, "seed": seed, "example_id": info["example_id"], "reward": reward,
               **{k: info[k] for k in ("quality", "quality_full", "constraint_satisfied", "cost", "flops_saved",
                                       "num_skipped", "plan")}}
        for q, ev in extra.items():
            extra_outcome = ev.outcome(env.example, env.action_to_plan(action))
            row[f"quality_{q}"] = extra_outcome.quality
            row[f"quality_full_{q}"] = extra_outcome.quality_full
        rows.append(row)
    return pd.DataFrame(rows)


def distinct_episodes(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the repeats of a policy that acted deterministically across seeds.

    A policy evaluated under several seeds whose plan is identical on every example for every seed (a deterministic
    baseline or a deterministic learned policy) produced the same episodes several times; only the rows of its first
    seed are kept. Policies whose plans differ between seeds for some example keep all rows (their episodes are
    distinct samples), even where two seeds happen to choose the same plan.

    Args:
        df: rows of :func:`evaluate_policy` (columns ``policy, seed, example_id, plan``, ...).

    Returns:
        The rows to count, in the original order.
    """
    keep = []
    for _, g in df.groupby("policy", sort=False):
        seeds = list(dict.fromkeys(g["seed"]))
        if len(seeds) > 1 and (g.groupby("example_id")["plan"].nunique() == 1).all():
            g = g[g["seed"] == seeds[0]]
        keep.append(g)
    import pandas as pd

    return pd.concat(keep).sort_index() if keep else df


def summarize(df: pd.DataFrame, *, formulation: str = "per_input", tau: float | None = None) -> pd.DataFrame:
    """Summary per policy over its distinct episodes (:func:`distinct_episodes`): mean quality (and extra quality
    columns), constraint-satisfied rate, mean FLOPs saved, mean reward ± std with a 95 % bootstrap CI over episodes,
    and the IQM of per-seed mean rewards.

    Columns ``episodes`` and ``seeds`` count distinct episodes and the seeds they came from (1 for a policy that
    acted deterministically); ``seeds_run`` is the number of seeds evaluated.

    Args:
        df: rows of :func:`evaluate_policy`.
        formulation: the constraint formulation the policies are judged by (the env id's,
            :func:`skipenv.envs.registration.registered_formulation`). Under ``"expected"`` the summary adds what
            that formulation is judged by: ``mean_quality_loss`` (mean of ``quality_full - quality``, quality
            units) with its 95 % bootstrap CI (``mean_quality_loss_ci_low/high``), ``tau`` and ``mean_loss_within_tau``
            (``mean_quality_loss <= tau``); :func:`format_summary` then shows those instead of the per-input reward.
        tau: the tolerance (quality units); needed for ``"expected"``.

    Raises:
        ValueError: ``formulation="expected"`` without ``tau``.
    """
    import pandas as pd

    if formulation == "expected" and tau is None:
        raise ValueError("summarize(formulation='expected') needs tau (the mean quality loss is judged against it)")

    out = []
    seeds_run = df.groupby("policy", sort=False)["seed"].nunique()
    for name, g in distinct_episodes(df).groupby("policy", sort=False):
        lo, hi = bootstrap_ci(g["reward"])
        row = {"policy": name, "episodes": len(g), "seeds": g["seed"].nunique(), "seeds_run": int(seeds_run[name]),
               "quality": g["quality"].mean(), "quality_full": g["quality_full"].mean()}
        for c in g.columns:
            if c.startswith("quality_") and c != "quality_full" and not c.startswith("quality_full_"):
                row[c] = g[c].mean()
                row[c.replace("quality_", "quality_full_")] = g[c.replace("quality_", "quality_full_")].mean()
        row.update({
            "constraint_satisfied": g["constraint_satisfied"].mean(),
            "flops_saved": g["flops_saved"].mean(),
            "reward_mean": g["reward"].mean(), "reward_std": g["reward"].std(ddof=0),
            "reward_ci_low": lo, "reward_ci_high": hi,
            "reward_iqm_over_seeds": iqm(g.groupby("seed")["reward"].mean()),
        })
        if formulation == "expected":
            loss = g["quality_full"] - g["quality"]
            loss_lo, loss_hi = bootstrap_ci(loss)
            row.update({"mean_quality_loss": loss.mean(), "mean_quality_loss_ci_low": loss_lo,
                        "mean_quality_loss_ci_high": loss_hi, "tau": float(tau),
                        "mean_loss_within_tau": bool(loss.mean() <= tau + 1e-12)})
        out.append(row)
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame, *, max_name: int = 22) -> str:
    """The summary as a plain-text table of at most ~120 columns (the CSV keeps every column).

    Columns: policy (names longer than ``max_name`` are shortened with "…"), seeds and distinct episodes,
    quality, each extra quality signal with the full model's value, constraint-satisfied rate, FLOPs saved, reward
    mean with its 95 % bootstrap CI, IQM over seeds. A summary of the expected formulation (it has
    ``mean_quality_loss``, see :func:`summarize`) shows the mean quality loss with its CI and whether it is within
    tau instead of the per-input reward, its CI and IQM (the per-input reward does not rank policies under that
    formulation).
    """
    import pandas as pd

    def f3(v):
        return f"{v:.3f}"

    t = pd.DataFrame({
        "policy": [n if len(n) <= max_name else n[: max_name - 1] + "…" for n in summary["policy"]],
        "seeds": summary["seeds"], "episodes": summary["episodes"], "quality": summary["quality"].map(f3)})
    for c in summary.columns:
        if c.startswith("quality_") and c != "quality_full" and not c.startswith("quality_full_"):
            sig = c[len("quality_"):]
            t[sig] = summary[c].map(f3)
            t[f"{sig} full"] = summary[c.replace("quality_", "quality_full_")].map(f3)
    t["constraint ok"] = summary["constraint_satisfied"].map(f3)
    t["FLOPs saved"] = summary["flops_saved"].map(f3)
    if "mean_quality_loss" in summary.columns:  # the expected constraint: mean loss against tau
        t["mean loss"] = summary["mean_quality_loss"].map(lambda v: f"{v:.4f}")
        t["95% CI"] = [f"{lo:.4f} – {hi:.4f}" for lo, hi in zip(summary["mean_quality_loss_ci_low"],
                                                                 summary["mean_quality_loss_ci_high"])]
        t["<= tau"] = [f"{'yes' if ok else 'no'} ({tau:g})" for ok, tau in zip(summary["mean_loss_within_tau"],
                                                                           summary["tau"])]
    else:
        t["reward"] = summary["reward_mean"].map(f3)
        t["95% CI"] = [f"{lo:.3f} – {hi:.3f}" for lo, hi in zip(summary["reward_ci_low"], summary["reward_ci_high"])]
        t["IQM"] = summary["reward_iqm_over_seeds"].map(f3)
    width = max([len("policy"), *map(len, t["policy"])])
    t = t.rename(columns={"policy": "policy".ljust(width)})
    t.iloc[:, 0] = [n.ljust(width) for n in t.iloc[:, 0]]
    return t.to_string(index=False)




def leaderboard(policies: Sequence[str], *, env_id: str = DEFAULT_ENV_ID, split: str = "test",
                episodes: int | None = 20, seeds: Sequence[int] = (0, 1, 2), out_dir: str | Path | None = None,
                extra_quality: Sequence[str] = (), env_kwargs: dict | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every policy spec on ``split``; write ``episodes.csv``, ``summary.csv`` and ``pareto.png`` to
    ``out_dir``; return ``(episodes, summary)``.

    Stochastic baselines (:data:`STOCHASTIC_KINDS`) are re-seeded and evaluated once per seed; deterministic policies
    give the same episodes under every seed, so they are evaluated once (with the first seed) and their confidence
    intervals count each episode once. Rows are named by the policy's short name (see
    :func:`skipenv.policies.load_policy`). Policies act in ``env_id``'s unwrapped env (a frozen policy: no
    multiplier to learn); the summary reports the metrics of the id's formulation (:func:`summarize`: under
    ``SwitchDec-XSum-v1``'s expected constraint, the mean quality loss against tau).
    """
    import gymnasium as gym
    import pandas as pd

    import skipenv  # noqa: F401

    from ..envs import SwitchDecEnv
    from ..envs.registration import registered_formulation
    from ..policies import STOCHASTIC_KINDS, check_policy_spec, load_policy

    for spec in policies:  # every spec (and saved policy file) is checked before anything loads
        kind, arg = check_policy_spec(spec)
        path = {"file": arg, "sb3": arg.partition(":")[2], "pg": arg}.get(kind)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"policy spec {spec!r}: no file {path}")
    repeated = sorted({p for p in policies if list(policies).count(p) > 1})
    if repeated:  # the same episodes twice under one name would double their count in the CIs
        raise ValueError(f"policy spec(s) {repeated} given more than once; list each policy once")
    kwargs = dict(env_kwargs or {})
    kwargs.pop("split", None)
    episodes = kwargs.pop("num_examples", episodes)
    env = gym.make(env_id, split=split, num_examples=episodes, **kwargs).unwrapped
    if not isinstance(env, SwitchDecEnv):
        raise ValueError(f"the leaderboard evaluates one-shot envs (SwitchDecEnv); {env_id!r} is a "
                         f"{type(env).__name__}: use the id without '-Layerwise'")
    calib = None
    rows = []
    used: set[str] = set()
    for spec in policies:
        run_seeds = list(seeds) if spec.partition(":")[0] in STOCHASTIC_KINDS else list(seeds)[:1]
        name = None
        for seed in run_seeds:
            if spec.startswith("calibrated") and calib is None:
                calib = gym.make(env_id, split="train", num_examples=16, **kwargs).unwrapped
            policy = load_policy(spec, env, seed=seed, calibration_env=calib)
            if name is None:  # two specs with the same short name (agents in same-named folders): use the spec
                name = policy.name if policy.name not in used else spec
            label = f"eval {name} seed {seed}" if len(run_seeds) > 1 else None  # one bar per seed: tell them apart
            df = evaluate_policy(policy, env, seed=seed, extra_quality=extra_quality, progress=progress, name=name,
                                 label=label)
            rows.append(df)
        used.add(name)
    episodes_df = pd.concat(rows, ignore_index=True)
    summary = summarize(episodes_df, formulation=registered_formulation(env_id, env_kwargs), tau=env.tau)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        episodes_df.to_csv(out / "episodes.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        quality = env.quality
        from .plots import plot_pareto

        plot_pareto(summary, out / "pareto.png", episodes=episodes_df, tau=env.tau, quality_name=quality,
                    title=f"{env_id} ({split} split): {quality} vs FLOPs saved")
    return episodes_df, summary
