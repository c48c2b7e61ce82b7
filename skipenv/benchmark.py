"""Evaluate policies on a split and compare them: per-episode CSV, summary table with bootstrap confidence
intervals and the interquartile mean across seeds, and a quality-vs-FLOPs Pareto plot.

A *policy* is any callable ``observation -> action`` for the env's action space (see :mod:`skipenv.baselines`;
stable-baselines3 models via :class:`~skipenv.baselines.SB3Policy`). Policies that need the current example (the
oracle) read ``env.example``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .envs.evaluator import Evaluator
from .envs.quality import get_signal

__all__ = ["evaluate_policy", "summarize", "bootstrap_ci", "iqm", "plot_pareto", "plot_learning_curves"]


def evaluate_policy(policy, env, *, episodes: int | None = None, seed: int = 0,
                    extra_quality: Sequence[str] = (), progress: bool = True) -> pd.DataFrame:
    """Run ``policy`` for one episode per example of ``env``'s split (in split order) and collect the results.

    Args:
        policy: callable ``observation -> action`` with a ``name`` attribute (optional).
        env: a :class:`~skipenv.envs.SwitchDecEnv` (one-shot).
        episodes: evaluate only the first ``episodes`` examples of the split.
        seed: passed to ``env.reset`` once (policies that sample should be seeded themselves).
        extra_quality: further quality signals to report for the same plan, e.g. ``("rouge",)`` adds a column
            ``quality_rouge`` (generation scored against the reference) — costs one generation per episode.
        progress: show a tqdm bar.

    Returns:
        One row per episode: ``policy, seed, example_id, reward, quality, quality_full, constraint_satisfied,
        cost, flops_saved, num_skipped, plan`` plus ``quality_<signal>`` / ``quality_full_<signal>`` columns.
    """
    n = len(env.examples) if episodes is None else min(int(episodes), len(env.examples))
    extra = {q: Evaluator(env.generator, env.task, quality=q, token_segments=env.plan_spec.token_segments,
                          max_new_tokens=env.max_new_tokens)
             for q in extra_quality if get_signal(q).name != env.quality}
    rows = []
    name = getattr(policy, "name", type(policy).__name__)
    env.prefetch(env.examples[:n], progress=progress)  # batched full-model outputs
    env.reset(seed=seed)
    for i in tqdm(range(n), desc=f"eval {name}", disable=not progress, leave=False):
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


def bootstrap_ci(values: Iterable[float], *, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (Efron & Tibshirani 1993)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % of values (Agarwal et al., NeurIPS 2021, "Deep RL at the
    edge of the statistical precipice"); equals the mean for fewer than 4 values."""
    x = np.sort(np.asarray(list(values), dtype=float))
    if len(x) < 4:
        return float(x.mean()) if len(x) else float("nan")
    q = len(x) // 4
    return float(x[q: len(x) - q].mean())


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Summary per policy: mean quality (and extra quality columns), constraint-satisfied rate, mean FLOPs saved,
    mean reward ± std with a 95 % bootstrap CI over episodes, and the IQM of per-seed mean rewards."""
    out = []
    for name, g in df.groupby("policy", sort=False):
        lo, hi = bootstrap_ci(g["reward"])
        row = {"policy": name, "episodes": len(g), "seeds": g["seed"].nunique(),
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
        out.append(row)
    return pd.DataFrame(out)


def plot_pareto(summary: pd.DataFrame, path: str | Path, *, quality_col: str = "quality",
                episodes: pd.DataFrame | None = None, title: str = "quality vs FLOPs saved") -> Path:
    """Scatter of mean ``quality_col`` against mean FLOPs saved per policy (and, if given, every episode faintly),
    with the Pareto front of the policies drawn as a step line. Saves a PNG and returns its path."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's (e.g. notebook) backend alone

    from matplotlib import colormaps

    fig = Figure(figsize=(8.4, 4.6))
    ax = fig.subplots()
    colors = colormaps["tab20"].colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    style = {name: (colors[(2 * i) % 20 + (2 * i // 20) % 2], markers[i % len(markers)])
             for i, name in enumerate(summary["policy"])}
    if episodes is not None:
        for name, g in episodes.groupby("policy", sort=False):
            c, m = style.get(name, ("grey", "o"))
            ax.scatter(g["flops_saved"], g[quality_col], s=10, alpha=0.2, color=c, marker=m, linewidths=0)
    for _, r in summary.iterrows():
        c, m = style[r["policy"]]
        ax.scatter(r["flops_saved"], r[quality_col], s=70, color=c, marker=m, edgecolor="k", label=r["policy"],
                   zorder=3)
    pts = summary[["flops_saved", quality_col]].to_numpy()
    front = [p for p in pts if not any((q[0] >= p[0]) and (q[1] >= p[1]) and (q != p).any() for q in pts)]
    if front:
        # attainment staircase: between two front points only the quality of the cheaper-to-run one is reachable
        front = np.array(sorted(front, key=lambda p: p[0]))
        ax.step(front[:, 0], front[:, 1], where="pre", color="k", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xlabel("FLOPs saved (fraction of the full model)")
    ax.set_ylabel(quality_col.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: hides no point
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_learning_curves(curves: dict[str, pd.DataFrame], path: str | Path, *, window: int = 32) -> Path:
    """Plot episode reward (moving average over ``window`` episodes) against timesteps, one line per run.

    Args:
        curves: run name → DataFrame with columns ``timestep`` and ``reward``.
    """
    from matplotlib.figure import Figure

    from matplotlib import colormaps

    fig = Figure(figsize=(7.4, 4.0))
    ax = fig.subplots()
    # one colour per algorithm (the part of the run name before the first space), one line style per run of it
    algos = list(dict.fromkeys(name.split(" ")[0] for name in curves))
    colors = {a: colormaps["tab10"].colors[i % 10] for i, a in enumerate(algos)}
    seen: dict[str, int] = {}
    for name, c in curves.items():
        if len(c) == 0:
            continue
        algo = name.split(" ")[0]
        k = seen[algo] = seen.get(algo, -1) + 1
        ax.plot(c["timestep"], c["reward"].rolling(window, min_periods=1).mean(), label=name, color=colors[algo],
                ls=["-", "--", ":", "-."][k % 4], lw=1.3)
    ax.set_xlabel("timestep")
    ax.set_ylabel(f"episode reward (moving average, {window})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------------------------------------------
# leaderboard

POLICY_SPECS = ("skip-nothing", "random:RATE", "lead:KEEP_SEGMENTS", "every-other:attention|ffn|both",
                "calibrated:NUM_SUBLAYERS", "oracle[:MAX_SKIPS]", "sb3:ppo|a2c:PATH.zip", "pg:PATH.pt")


def make_policy(spec: str, env, *, seed: int = 0, calibration_env=None):
    """Build a policy from a short spec string (see :data:`POLICY_SPECS`), e.g. ``"random:0.25"``, ``"lead:4"``,
    ``"sb3:ppo:runs/ppo/policy.zip"``.

    Args:
        spec: the policy spec.
        env: the evaluation env (one-shot).
        seed: seed of stochastic baselines.
        calibration_env: env over the *train* split for ``calibrated:N`` (default: ``env``).

    Raises:
        ValueError: an unknown spec (the message lists the valid forms).
    """
    from . import baselines as B

    kind, _, arg = spec.partition(":")
    if kind == "skip-nothing":
        return B.SkipNothing(env)
    if kind == "random":
        return B.RandomPolicy(env, float(arg or 0.5), seed=seed)
    if kind == "lead":
        return B.lead_truncation(env, int(arg))
    if kind == "every-other":
        return B.every_other_layer(env, arg or "attention")
    if kind == "calibrated":
        policy = B.calibrate_static_drop(calibration_env or env, int(arg))
        return B.StaticPlan(env, policy.plan, name=policy.name)
    if kind == "oracle":
        return B.OraclePolicy(env, max_skips=int(arg) if arg else None)
    if kind == "sb3":
        from .sb3 import load_sb3

        algo, _, path = arg.partition(":")
        return B.SB3Policy(load_sb3(algo, path), name=f"{algo}:{Path(path).parent.name}")
    if kind == "pg":
        from .algorithms import ConstrainedPG

        agent = ConstrainedPG.load(arg, env)
        agent.name = f"pg:{Path(arg).parent.name}"
        return agent
    raise ValueError(f"unknown policy spec {spec!r}; valid forms: {', '.join(POLICY_SPECS)}")


def leaderboard(policies: Sequence[str], *, env_id: str = "SwitchDec-XSum-v0", split: str = "test",
                episodes: int | None = 20, seeds: Sequence[int] = (0, 1, 2), out_dir: str | Path | None = None,
                extra_quality: Sequence[str] = (), env_kwargs: dict | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every policy spec on ``split`` for each seed; write ``episodes.csv``, ``summary.csv`` and
    ``pareto.png`` to ``out_dir``; return ``(episodes, summary)``.

    Deterministic policies give the same numbers for every seed; stochastic baselines are re-seeded per seed.
    """
    import gymnasium as gym

    import skipenv  # noqa: F401

    kwargs = dict(env_kwargs or {})
    kwargs.pop("split", None)
    episodes = kwargs.pop("num_examples", episodes)
    env = gym.make(env_id, split=split, num_examples=episodes, **kwargs).unwrapped
    calib = None
    rows = []
    for spec in policies:
        for seed in seeds:
            if spec.startswith("calibrated") and calib is None:
                calib = gym.make(env_id, split="train", num_examples=16, **kwargs).unwrapped
            policy = make_policy(spec, env, seed=seed, calibration_env=calib)
            df = evaluate_policy(policy, env, seed=seed, extra_quality=extra_quality, progress=progress)
            df["policy"] = spec
            rows.append(df)
    episodes_df = pd.concat(rows, ignore_index=True)
    summary = summarize(episodes_df)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        episodes_df.to_csv(out / "episodes.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        plot_pareto(summary, out / "pareto.png", title=f"{env_id} ({split})")
    return episodes_df, summary


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-markdown table of ``df`` (floats rounded to ``digits``), without needing ``tabulate``."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
