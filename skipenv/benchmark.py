"""Evaluate policies on a split and compare them: per-episode CSV, summary table with bootstrap confidence
intervals (scipy) over *distinct* episodes and the interquartile mean across seeds, and a quality-vs-FLOPs Pareto plot.

A *policy* is any callable ``observation -> action`` for the env's action space (see :mod:`skipenv.baselines`;
stable-baselines3 models via :class:`~skipenv.baselines.SB3Policy`). Policies that need the current example (the
oracle) read ``env.example``.

Importing this module is cheap (no torch, no pandas).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .envs.registration import DEFAULT_ENV_ID

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["evaluate_policy", "distinct_episodes", "summarize", "format_summary", "bootstrap_ci", "iqm",
           "pareto_front", "pareto_figure", "plot_pareto", "learning_curves_figure", "plot_learning_curves",
           "QUALITY_LABELS"]

#: axis / table label of each quality signal (``quality=`` of the env)
QUALITY_LABELS = {
    "agreement": "agreement with the full model's greedy tokens",
    "reference": "task metric vs the gold target (ROUGE-L / F1 / accuracy)",
    "rouge": "task metric vs the gold target (ROUGE-L / F1 / accuracy)",
    "fidelity": "task metric vs the full model's output",
    "likelihood": "likelihood of the reference relative to the full model",
}


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

    from .envs.evaluator import Evaluator
    from .envs.quality import get_signal

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


def bootstrap_ci(values: Iterable[float], *, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (Efron & Tibshirani 1993), computed by
    ``scipy.stats.bootstrap`` (:func:`skipenv.formulations.bootstrap_ci`).

    Pass *distinct* observations (see :func:`distinct_episodes`): repeating identical episodes narrows the interval
    without adding information. Returns ``(nan, nan)`` for no values and ``(v, v)`` when all values equal ``v``
    (a single value included).

    This per-policy interval is what ``skipenv train`` and ``skipenv leaderboard`` print, so it uses scipy (a core
    dependency). Comparisons of learners over seeds × documents — IQM with stratified-bootstrap CIs, probability of
    improvement, performance profiles — use ``rliable`` in :mod:`skipenv.stats` (the ``stats`` extra: rliable 1.2
    pins ``arch < 8``, which does not import under pandas 3, so that extra caps pandas).
    """
    from .formulations import bootstrap_ci as _scipy_bootstrap_ci

    x = np.asarray(list(values), dtype=float)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    return _scipy_bootstrap_ci(x, n_resamples=resamples, confidence=confidence, seed=seed)


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % of values (Agarwal et al., NeurIPS 2021, "Deep RL at the
    edge of the statistical precipice"), ``scipy.stats.trim_mean(values, 0.25)`` — what
    ``rliable.metrics.aggregate_iqm`` computes (:func:`skipenv.stats.iqm` calls rliable itself). Equals the mean
    for fewer than 4 values; NaN for none."""
    from scipy.stats import trim_mean

    x = np.asarray(list(values), dtype=float)
    return float(trim_mean(x, 0.25)) if len(x) else float("nan")


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


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated points when both coordinates are maximised, sorted by the first coordinate.

    Point ``q`` dominates ``p`` when ``q >= p`` in both coordinates and ``q > p`` in at least one; equal points do
    not dominate each other (both are on the front). Rows with a NaN are never on the front.

    Args:
        points: array-like of shape ``(n, 2)``, e.g. ``(flops_saved, quality)`` per policy.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = ~np.isnan(pts).any(axis=1)
    front = []
    for i, p in enumerate(pts):
        if not ok[i]:
            continue
        dominated = ok & (pts >= p).all(axis=1) & (pts > p).any(axis=1)
        if not dominated.any():
            front.append(i)
    return sorted(front, key=lambda i: (pts[i, 0], -pts[i, 1]))


def _coincident_groups(xy: np.ndarray, rel_tol: float = 0.012) -> list[list[int]]:
    """Groups of points closer than ``rel_tol`` of the axis span in both coordinates (their markers would overlap)."""
    span = np.nanmax(xy, axis=0) - np.nanmin(xy, axis=0) if len(xy) else np.ones(2)
    tol = np.maximum(span * rel_tol, 1e-3)
    groups: list[list[int]] = []
    for i in range(len(xy)):
        for g in groups:
            if (np.abs(xy[g[0]] - xy[i]) <= tol).all():
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def plot_pareto(summary: pd.DataFrame, path: str | Path, *, quality_col: str = "quality",
                episodes: pd.DataFrame | None = None, title: str | None = None, tau: float | None = None,
                quality_name: str | None = None) -> Path:
    """Save :func:`pareto_figure` (same arguments) as a PNG at ``path`` (folders created) and return the path."""
    fig = pareto_figure(summary, quality_col=quality_col, episodes=episodes, title=title, tau=tau,
                        quality_name=quality_name)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def pareto_figure(summary: pd.DataFrame, *, quality_col: str = "quality", episodes: pd.DataFrame | None = None,
                  title: str | None = None, tau: float | None = None, quality_name: str | None = None):
    """Scatter of mean ``quality_col`` against mean FLOPs saved per policy, with the Pareto front and the constraint.

    * Each policy is one marker (colour + shape, named in the legend); policies whose points coincide are drawn
      side by side on a small circle around the shared point and marked "(same point as a)" in the legend, so
      none is hidden.
    * With ``episodes``, every episode is a faint small marker of its policy's style ("one episode" in the legend).
    * The Pareto front (:func:`pareto_front`) is drawn as the attainment staircase (for each FLOPs saving, the best
      quality reached by a policy saving at least as much); its policies get a thick black outline.
    * With ``tau``, a dashed line at the mean full-model quality minus ``tau``: points below it miss the constraint
      ``q ≥ q_full − tau`` on average (exact for agreement, where ``q_full = 1``).
    * The y-axis and the default title name the quality signal (``quality_name``, e.g. ``"agreement"``; inferred
      from ``quality_col="quality_<signal>"``).

    Args:
        summary: rows of :func:`summarize` (``policy, flops_saved, <quality_col>``, optionally ``quality_full``).

    Returns:
        A :class:`matplotlib.figure.Figure` built with matplotlib's object API (the user's backend, e.g. a
        notebook's, is left alone).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    if quality_name is None and quality_col.startswith("quality_"):
        quality_name = quality_col[len("quality_"):]
    metric = QUALITY_LABELS.get(quality_name or "", quality_name or "quality")
    fig = Figure(figsize=(8.8, 4.8))
    ax = fig.subplots()
    colors = colormaps["tab20"].colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    style = {name: (colors[(2 * i) % 20 + (2 * i // 20) % 2], markers[i % len(markers)])
             for i, name in enumerate(summary["policy"])}
    handles: list = []
    if episodes is not None:
        for name, g in episodes.groupby("policy", sort=False):
            c, m = style.get(name, ("grey", "o"))
            ax.scatter(g["flops_saved"], g[quality_col], s=12, alpha=0.25, color=c, marker=m, linewidths=0)
    names = list(summary["policy"])
    xy = summary[["flops_saved", quality_col]].to_numpy(dtype=float)
    front = pareto_front(xy)
    offsets = {i: (0.0, 0.0) for i in range(len(xy))}
    labels = list(names)
    for g in _coincident_groups(xy):
        if len(g) < 2:
            continue
        radius = max(6.0, 2.2 * len(g))  # points: markers (~9 pt wide) around the circle do not overlap
        for k, i in enumerate(g):  # spread the markers on a small circle around the shared point
            angle = np.pi / 2 + 2 * np.pi * k / len(g)
            offsets[i] = (radius * np.cos(angle), radius * np.sin(angle))
            if k:
                labels[i] = f"{names[i]} (same point as {names[g[0]]})"
    for i, name in enumerate(names):
        c, m = style[name]
        tr = (offset_copy(ax.transData, fig=fig, x=offsets[i][0], y=offsets[i][1], units="points")
              if offsets[i] != (0.0, 0.0) else ax.transData)
        ax.scatter([xy[i, 0]], [xy[i, 1]], s=70, color=c, marker=m, edgecolor="k", zorder=3, transform=tr,
                   linewidths=1.8 if i in front else 0.6)
        handles.append(Line2D([], [], ls="", marker=m, markersize=8, markerfacecolor=c, markeredgecolor="k",
                              label=labels[i]))
    finite = xy[~np.isnan(xy).any(axis=1)]
    if len(finite):  # offset markers do not enter matplotlib's automatic limits: add every point explicitly
        ax.update_datalim(finite)
        ax.autoscale_view()
    if front:
        f = xy[front]
        ax.step(f[:, 0], f[:, 1], where="pre", color="k", lw=1, alpha=0.6, zorder=2)
        handles.append(Line2D([], [], color="k", lw=1, alpha=0.6, label="Pareto front (its policies: thick outline)"))
    if tau is not None:
        full_col = quality_col.replace("quality", "quality_full", 1)
        q_full = float(summary[full_col].mean()) if full_col in summary else 1.0
        ax.axhline(q_full - tau, color="tab:red", ls="--", lw=1, zorder=1)
        what = "constraint q ≥ q_full − τ" if quality_name == "agreement" else "mean q_full − τ (constraint per input)"
        handles.append(Line2D([], [], color="tab:red", ls="--", lw=1, label=f"{what}, τ = {tau:g}"))
    if episodes is not None:
        handles.append(Line2D([], [], ls="", marker="o", markersize=4, color="grey", alpha=0.4,
                              label="faint small markers: one episode each"))
    ax.set_xlabel("FLOPs saved (fraction of the full model's FLOPs)")
    ax.set_ylabel(f"quality: {metric}")
    ax.set_title(title or f"{quality_name or 'quality'} vs FLOPs saved")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_learning_curves(curves: dict[str, pd.DataFrame], path: str | Path, *, window: int = 32,
                         title: str = "training: episode reward") -> Path:
    """Save :func:`learning_curves_figure` (same arguments) as a PNG at ``path`` and return the path."""
    return _save(learning_curves_figure(curves, window=window, title=title), path)


def learning_curves_figure(curves: dict[str, pd.DataFrame], *, window: int = 32,
                           title: str = "training: episode reward"):
    """Episode reward (moving average over ``window`` episodes) against timesteps, one labelled line per run.

    A run whose curve equals an earlier one's is drawn with hollow markers on top and labelled "(same curve as
    ...)", so it is not hidden.

    Args:
        curves: run name → DataFrame with columns ``timestep`` and ``reward``.
        title: the figure's title.

    Returns:
        A :class:`matplotlib.figure.Figure` (object API; no pyplot state).
    """
    from matplotlib.figure import Figure

    from matplotlib import colormaps

    fig = Figure(figsize=(7.4, 4.0))
    ax = fig.subplots()
    # one colour per algorithm (the part of the run name before the first space), one line style per run of it
    algos = list(dict.fromkeys(name.split(" ")[0] for name in curves))
    colors = {a: colormaps["tab10"].colors[i % 10] for i, a in enumerate(algos)}
    seen: dict[str, int] = {}
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, c in curves.items():
        if len(c) == 0:
            continue
        algo = name.split(" ")[0]
        k = seen[algo] = seen.get(algo, -1) + 1
        x, y = c["timestep"].to_numpy(float), c["reward"].rolling(window, min_periods=1).mean().to_numpy(float)
        same = next((n for n, x0, y0 in drawn if len(x0) == len(x) and np.allclose(x0, x) and np.allclose(y0, y)),
                    None)
        style = dict(color=colors[algo], ls=["-", "--", ":", "-."][k % 4], lw=1.3)
        if same is not None:  # a curve equal to an earlier one: hollow markers on top keep both visible
            style.update(marker="o", markersize=5, markerfacecolor="none", markevery=max(len(x) // 12, 1))
        ax.plot(x, y, label=name if same is None else f"{name} (same curve as {same})", **style)
        drawn.append((name, x, y))
    ax.set_xlabel("timestep")
    ax.set_ylabel(f"episode reward (moving average over {window} episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# leaderboard


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

    from .envs import SwitchDecEnv
    from .envs.registration import registered_formulation
    from .policies import STOCHASTIC_KINDS, check_policy_spec, load_policy

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
        plot_pareto(summary, out / "pareto.png", episodes=episodes_df, tau=env.tau, quality_name=quality,
                    title=f"{env_id} ({split} split): {quality} vs FLOPs saved")
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
