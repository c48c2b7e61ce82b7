"""The statistics of skipenv's reports, in one place: the per-policy :func:`bootstrap_ci` and :func:`iqm` (scipy,
core dependencies) that ``skipenv train`` and ``skipenv leaderboard`` print, :func:`markdown_table`, and the
comparison statistics of learners with ``rliable`` (Agarwal et al., "Deep reinforcement learning at the edge of
the statistical precipice", NeurIPS 2021) below.

Scores are arranged as rliable expects: per policy a matrix ``[runs, tasks]`` — here runs = training seeds and
tasks = test documents (or (document, tolerance) pairs for budget-conditioned policies); a deterministic
baseline has one run (or identical rows).

- :func:`interval_estimates` — IQM (or mean) over all runs × tasks with stratified-bootstrap 95 % CIs
  (``rliable.library.get_interval_estimates``; with ``task_bootstrap=True`` the tasks are resampled as well as
  the runs, so the interval also covers the choice of test documents);
- :func:`probability_of_improvement` — ``P(X > Y)``: for each task the Mann-Whitney probability that a run of X
  scores above a run of Y (ties count one half), averaged over tasks (``rliable.metrics.probability_of_improvement``),
  with stratified-bootstrap CIs over runs and (by default) tasks. A difference is called significant when the CI
  excludes 0.5;
- :func:`performance_profile_figure` — the fraction of runs × tasks scoring above each threshold, with CIs
  (``rliable.library.create_performance_profile`` / ``rliable.plot_utils.plot_performance_profiles``).

The rliable functions need the ``stats`` extra (``pip install "skipenv[stats]"``): rliable 1.2 pins ``arch < 8``, and arch 7 does not
import under pandas 3, hence pandas < 3 there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "iqm", "markdown_table", "interval_estimates", "poi_statistic",
           "probability_of_improvement", "performance_profile_figure", "score_matrix"]


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as e:  # rliable missing, or arch failing under pandas 3
        raise ImportError(f"skipenv.evaluation.stats needs rliable ({e}); install the stats extra: pip install "
                          f"\"skipenv[stats]\" (rliable>=1.2 with pandas<3, see pyproject.toml)") from e
    return library, metrics


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable draws bootstrap indices from numpy's global generator: seed it for the block, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"scores must be a non-empty mapping policy -> [runs, tasks] matrix, got {scores!r}")
    out = {}
    tasks = None
    for name, s in scores.items():
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"scores of {name!r} must be a [runs, tasks] matrix, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"scores of {name!r} contain NaN or inf")
        if tasks is not None and a.shape[1] != tasks:
            raise ValueError(f"every policy needs the same tasks: {name!r} has {a.shape[1]}, others {tasks}")
        tasks = a.shape[1]
        out[name] = a
    return out


def score_matrix(episodes, policy: str, score: str = "reward", *, task: Sequence[str] = ("example_id",),
                 run: str = "seed") -> np.ndarray:
    """The ``[runs, tasks]`` matrix of one policy from a table of episodes (rows sorted by run, columns by task).

    Raises:
        ValueError: no rows for ``policy``, a missing or non-finite ``score`` value, or some run lacks a task (or
            has it twice).
    """
    df = episodes[episodes["policy"] == policy]
    if df.empty:
        raise ValueError(f"no episodes of policy {policy!r}")
    bad = ~np.isfinite(df[score].to_numpy(float))
    if bad.any():
        raise ValueError(f"policy {policy!r}: {int(bad.sum())} episodes have a NaN or infinite {score!r}")
    key = df[list(task)].astype(str).agg("|".join, axis=1)
    m = df.assign(_task=key).pivot_table(index=run, columns="_task", values=score, aggfunc="count")
    if (m != 1).any().any() or m.isna().any().any():
        raise ValueError(f"policy {policy!r}: every run needs exactly one episode per task")
    return df.assign(_task=key).pivot(index=run, columns="_task", values=score).sort_index(axis=1).to_numpy(float)


def iqm(scores) -> float:
    """Interquartile mean of all entries: the mean of the middle 50 % (Agarwal et al., NeurIPS 2021, "Deep RL at
    the edge of the statistical precipice"), ``scipy.stats.trim_mean(x, 0.25)`` over the flattened scores, which is
    what ``rliable.metrics.aggregate_iqm`` computes (without needing rliable). Equals the mean for fewer than 4
    values.

    Raises:
        ValueError: no scores, or a NaN / infinite one (the IQM would silently be NaN).
    """
    from scipy.stats import trim_mean

    a = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64).ravel()
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"iqm needs at least one score, all finite; got {a.size} scores"
                         f"{'' if a.size == 0 else ', some NaN or infinite'}")
    return float(trim_mean(a, 0.25))


def _check_bootstrap(reps, confidence) -> None:
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps (bootstrap replications) must be an integer >= 1, got {reps!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a fraction strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def interval_estimates(scores: Mapping[str, np.ndarray], *, metric: str = "iqm", reps: int = 2000,
                       confidence: float = 0.95, task_bootstrap: bool = True, seed: int = 0):
    """Point estimate and stratified-bootstrap percentile CI of ``metric`` for each policy.

    Args:
        scores: policy → ``[runs, tasks]`` scores (same tasks for all).
        metric: ``"iqm"`` or ``"mean"`` over runs × tasks.
        reps: bootstrap replications.
        confidence: CI coverage.
        task_bootstrap: also resample tasks (documents) within the bootstrap (rliable's option).
        seed: seeds the bootstrap.

    Returns:
        DataFrame ``policy, runs, tasks, <metric>, ci_low, ci_high``.

    Raises:
        ValueError: bad score matrices (an empty mapping, NaN / inf, different task counts), an unknown metric,
            ``reps < 1`` or ``confidence`` outside (0, 1).
    """
    import pandas as pd

    library, metrics = _rliable()
    fn = {"iqm": metrics.aggregate_iqm, "mean": metrics.aggregate_mean}.get(metric)
    if fn is None:
        raise ValueError(f"metric must be 'iqm' or 'mean', got {metric!r}")
    _check_bootstrap(reps, confidence)
    scores = _check(scores)
    rows = []
    for name, s in scores.items():
        if np.ptp(s) == 0:  # a constant matrix: the bootstrap distribution is a point
            lo = hi = point = float(s.flat[0])
        else:
            with _seeded(seed):
                points, cis = library.get_interval_estimates({name: s}, lambda x: np.array([fn(x)]), reps=reps,
                                                             confidence_interval_size=confidence,
                                                             task_bootstrap=task_bootstrap)
            point, (lo, hi) = float(points[name][0]), (float(cis[name][0, 0]), float(cis[name][1, 0]))
        rows.append({"policy": name, "runs": s.shape[0], "tasks": s.shape[1], metric: point, "ci_low": lo,
                     "ci_high": hi})
    return pd.DataFrame(rows)


def poi_statistic(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """``P(X > Y)`` averaged over tasks: for each task (column) the Mann-Whitney ``U / (n_x · n_y)`` of X's runs
    against Y's (a pair of runs counts 1 when X scores higher, 1/2 on a tie), then the mean over tasks.

    The same statistic as ``rliable.metrics.probability_of_improvement`` (which loops over tasks calling
    ``scipy.stats.mannwhitneyu``), computed in one broadcast comparison, so a 2,000-replication bootstrap over
    36 tasks takes milliseconds per pair instead of minutes; ``tests/evaluation/test_stats.py`` checks it against
    rliable's function on random and tied matrices.

    Args:
        scores_x: ``[n_x, tasks]`` scores of X; scores_y: ``[n_y, tasks]`` scores of Y.
    Returns:
        a fraction in [0, 1].
    """
    x, y = np.asarray(scores_x, dtype=float), np.asarray(scores_y, dtype=float)
    diff = x[:, None, :] - y[None, :, :]
    return float(np.mean((diff > 0).mean(axis=(0, 1)) + 0.5 * (diff == 0).mean(axis=(0, 1))))


def probability_of_improvement(scores: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], *,
                               reps: int = 2000, confidence: float = 0.95, task_bootstrap: bool = True,
                               seed: int = 0):
    """``P(X > Y)`` with a stratified-bootstrap percentile CI for each ``(X, Y)`` in ``pairs``.

    The point estimate is ``rliable.metrics.probability_of_improvement``'s statistic, computed by
    :func:`poi_statistic` (vectorised; equal to rliable's). The interval:

    - ``task_bootstrap=True`` (default): ``rliable.library.StratifiedBootstrap(x, y, task_bootstrap=True)`` — runs
      resampled within each task *and* the tasks (test documents) resampled, the same documents for X and Y
      (paired). The two matrices need the same number of runs, so each is repeated row-wise to the least common
      multiple of the two run counts (repeating every run ``k`` times changes neither ``P(X > Y)`` nor the
      distribution of a resampled run). Without task resampling, two policies that act the same way under every
      seed (deterministic baselines, learners that converged to one plan) get an interval of zero width, and any
      difference on a single document would look significant;
    - ``task_bootstrap=False``: rliable's own ``get_interval_estimates`` on the pair (runs resampled
      independently for X and Y, tasks fixed), as in Agarwal et al. 2021.

    Returns:
        DataFrame ``x, y, poi, ci_low, ci_high, significant`` — ``significant`` is ``"X > Y"`` / ``"X < Y"`` when
        the CI lies above / below 0.5, else ``""``.

    Raises:
        ValueError: an entry of ``pairs`` that is not an ``(X, Y)`` pair (e.g. a bare ``("a", "b")`` instead of
            ``[("a", "b")]``), a name without scores, bad score matrices, ``reps < 1`` or ``confidence`` outside
            (0, 1).
    """
    import math

    import pandas as pd

    library, _ = _rliable()
    _check_bootstrap(reps, confidence)
    scores = _check(scores)
    pairs = list(pairs) if not isinstance(pairs, str) else [pairs]
    for pair in pairs:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"pairs must be a list of (X, Y) policy-name pairs such as [('ppo', 'random')], got "
                             f"the entry {pair!r}")
    rows = []
    for x, y in pairs:
        missing = [n for n in (x, y) if n not in scores]
        if missing:
            raise ValueError(f"no scores for {missing}; known: {sorted(scores)}")
        sx, sy = scores[x], scores[y]
        point = poi_statistic(sx, sy)
        with _seeded(seed):
            if task_bootstrap:
                runs = math.lcm(len(sx), len(sy))
                bs = library.StratifiedBootstrap(np.repeat(sx, runs // len(sx), axis=0),
                                                 np.repeat(sy, runs // len(sy), axis=0), task_bootstrap=True)
                ci = bs.conf_int(poi_statistic, reps=reps, size=confidence,
                                 method="percentile")
            else:
                _, cis = library.get_interval_estimates({"pair": (sx, sy)}, poi_statistic,
                                                        reps=reps, confidence_interval_size=confidence)
                ci = cis["pair"]
        lo, hi = float(np.min(ci[0])), float(np.max(ci[1]))
        sig = f"{x} > {y}" if lo > 0.5 else (f"{x} < {y}" if hi < 0.5 else "")
        rows.append({"x": x, "y": y, "poi": point, "ci_low": lo, "ci_high": hi, "significant": sig})
    return pd.DataFrame(rows)


def performance_profile_figure(scores: Mapping[str, np.ndarray], *, thresholds: Sequence[float] | None = None,
                               path: str | Path | None = None, xlabel: str = "score threshold",
                               reps: int = 2000, seed: int = 0):
    """Performance profiles (fraction of runs × tasks scoring above each threshold, 95 % CI bands) of every policy;
    saved as PNG at ``path`` when given. Returns the matplotlib figure.

    Args:
        thresholds: default 61 points spanning all scores.

    Raises:
        ValueError: bad score matrices (as :func:`interval_estimates`), empty or non-finite ``thresholds``,
            ``reps < 1``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    library, _ = _rliable()
    scores = _check(scores)
    if thresholds is None:
        allv = np.concatenate([s.ravel() for s in scores.values()])
        thresholds = np.linspace(allv.min(), allv.max(), 61)
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.isfinite(thresholds).all():
        raise ValueError(f"thresholds must be a non-empty 1-D list of finite numbers, got {thresholds.tolist()!r}")
    _check_bootstrap(reps, 0.95)
    with _seeded(seed):
        profiles, cis = library.create_performance_profile(scores, thresholds, reps=reps)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plot_utils.plot_performance_profiles(profiles, thresholds, performance_profile_cis=cis, ax=ax, xlabel=xlabel,
                                         ylabel="fraction of runs × tasks with score > threshold",
                                         labelsize="medium", ticklabelsize="medium")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def bootstrap_ci(values: Iterable[float], *, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0, one_value: str = "point") -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (shape ``[n]``; Efron & Tibshirani 1993),
    computed by ``scipy.stats.bootstrap`` (``method="percentile"``, ``resamples`` resamples of the ``n`` entries
    with replacement, ``numpy.random.default_rng(seed)``). skipenv's one bootstrap interval: the per-policy
    reports, the probe's and the main job's paired differences and
    :func:`skipenv.evaluation.formulation_metrics.formulation_metrics` all call it.

    Pass *distinct* observations (see :func:`skipenv.evaluation.harness.distinct_episodes`): repeating identical
    episodes narrows the interval without adding information. Returns ``(nan, nan)`` for no values and ``(v, v)``
    when all of two or more values equal ``v``. A single value ``v`` gives ``(v, v)`` with ``one_value="point"``
    (the per-policy reports of ``skipenv train`` / ``leaderboard``) and ``(nan, nan)`` with ``one_value="nan"``
    (differences or losses over documents, where one document gives no interval).

    Raises:
        ValueError: ``one_value`` is neither ``"point"`` nor ``"nan"``.

    This per-policy interval is what ``skipenv train`` and ``skipenv leaderboard`` print, so it uses scipy (a core
    dependency). Comparisons of learners over seeds × documents — IQM with stratified-bootstrap CIs, probability of
    improvement, performance profiles — use ``rliable`` (the functions below) (the ``stats`` extra: rliable 1.2
    pins ``arch < 8``, which does not import under pandas 3, so that extra caps pandas).
    """
    from scipy.stats import bootstrap

    if one_value not in ("point", "nan"):
        raise ValueError(f"one_value must be 'point' ((v, v) for a single value) or 'nan', got {one_value!r}")
    v = np.asarray(list(values), dtype=float)
    if v.size == 1 and one_value == "point":
        return float(v[0]), float(v[0])
    if v.size < 2:
        return float("nan"), float("nan")
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    res = bootstrap((v,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def markdown_table(df, floatfmt: str = ".3f") -> str:
    """A pandas DataFrame as a GitHub markdown table (floats formatted with ``floatfmt``, e.g. ``".3f"``; no
    ``tabulate`` needed)."""
    def cell(v):
        return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
