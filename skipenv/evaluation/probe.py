"""Learnability probe: how much can a contextual policy gain over the best static policy, before training anyone?

For one env configuration the probe

1. evaluates a *menu* of candidate plans (:func:`default_menu`, or your own) on every one of ``N`` train and
   ``M`` test documents through the public Gymnasium API (``reset(options={"index": i})`` + ``step``), collecting
   a (documents x plans) table of quality, quality_full and cost, plus each document's observation
   (:func:`evaluate_menu`; the table is cached as CSV so re-analysis runs no forward pass);
2. fits, on the train documents only, the static and contextual policies below, and evaluates them on the test
   documents under the per-input and the expected formulation (:mod:`skipenv.envs.wrappers`) (:func:`analyse`):

   - best static plan — per-input: highest mean lexicographic reward; expected: most FLOPs saved with mean quality
     loss ``<= tau`` (train means);
   - best static mixture (expected) — a distribution ``pi`` over menu plans from the LP
     ``max_pi sum_p pi_p S_p  s.t.  sum_p pi_p L_p <= tau, sum_p pi_p = 1, pi >= 0`` (``S``/``L``: train mean FLOPs
     saved / quality loss per plan; :func:`mixture_lp`, ``scipy.optimize.linprog``);
   - per-input oracle — on each test document the menu plan with the highest lexicographic reward (the cheapest
     plan within tau); expected oracle — the LP over per-document plan distributions on the test documents
     (:func:`expected_oracle`). Oracles see the test outcomes: they bound what any policy over the menu reaches;
   - probe policy — ridge regressions (``RidgeCV``, regularisation by efficient leave-one-out CV) of every plan's
     quality loss and FLOPs saved from the observation (standardised; the pooled hidden state PCA-reduced to 8
     components, the length features passed through). Per-input rule: the plan with
     the most predicted savings among those with predicted loss ``<= t``; expected rule: ``argmax_p S^_p - lam
     L^_p``, randomised between two ``lam`` like the static mixture. ``t`` and the ``lam`` distribution are
     calibrated on out-of-fold predictions of the train documents (best mean reward; the LP of the static mixture
     over the rules' train means).

   Differences contextual - best static come with paired percentile-bootstrap CIs over test documents, and a
   learning curve repeats the fit on subsets of the train documents;
3. draws the test policies in a quality-vs-FLOPs-saved plot (:func:`plot_probe`).

Command line: ``skipenv probe`` (README, "Constraint formulations and the learnability probe", has a measured run).

The menu itself and the choices over it (:func:`~skipenv.policies.menu.default_menu`,
:func:`~skipenv.policies.menu.parse_plan`, :func:`~skipenv.policies.menu.mixture_lp`, the oracles and
:class:`~skipenv.policies.menu.ProbePolicy`) live in :mod:`skipenv.policies.menu` (issue 19); this module evaluates
them.

Why this module is long: the evaluated table, the analysis of every policy over it, the observation comparison,
the plot and the driver are one report that reads the same table; each part is a few screens.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from .formulation_metrics import formulation_metrics
from ..envs.registration import DEFAULT_ENV_ID
from .stats import bootstrap_ci, markdown_table
from ..plan import SkipPlan
from ..policies.menu import (ProbePolicy, _one_hot, _rewards, default_menu, expected_oracle, mixture_lp,
                             parse_plan, per_input_oracle)

if TYPE_CHECKING:  # annotations only; pandas is imported where it is used
    import pandas as pd

__all__ = ["ProbeTable", "ProbeTableError", "evaluate_menu", "ProbeReport", "analyse", "compare_observations",
           "plot_probe", "run_probe"]


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class ProbeTable:
    """The evaluated (documents x plans) table.

    Attributes:
        outcomes: one row per (split, document, plan): ``split, doc, example_id, plan, quality, quality_full,
            cost, flops_saved, flops_full, reward`` (``doc`` = index in the split, ``reward`` = the env's reward).
        observations: one row per (split, document): ``split, doc, example_id, obs_0 … obs_{n-1}``.
        plans: menu plan names in order; ``empty``: name of the skip-nothing plan or None.
        config: what was evaluated (env id, kwargs, menu JSON, sizes).
    """

    outcomes: pd.DataFrame
    observations: pd.DataFrame
    plans: list[str]
    empty: str | None
    config: dict = field(default_factory=dict)

    def matrices(self, split: str, features: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """Arrays of one split, documents in split order: ``quality``, ``quality_full``, ``cost``, ``loss``
        (quality_full - quality), ``saved`` (1 - cost), each ``[D, P]`` in :attr:`plans` order, and ``X`` the
        observation ``[D, n]`` (or the ``f_*`` columns of ``features`` — rows keyed by ``split, doc``).

        Raises:
            ValueError: the split is missing or a document lacks a plan.
        """
        o = self.outcomes[self.outcomes["split"] == split]
        if o.empty:
            raise ValueError(f"the probe table has no documents of split {split!r}")
        out = {}
        for col in ("quality", "quality_full", "cost"):
            m = o.pivot(index="doc", columns="plan", values=col)
            if m.isna().any().any():
                raise ValueError(f"split {split!r}: some documents lack an outcome for some plan")
            out[col] = m[self.plans].to_numpy(float)
        out["loss"], out["saved"] = out["quality_full"] - out["quality"], 1.0 - out["cost"]
        obs = self.observations[self.observations["split"] == split].sort_values("doc")
        if features is not None:
            cols = [c for c in features.columns if c.startswith(("f_", "obs_"))]
            obs = obs[["split", "doc"]].merge(features, on=["split", "doc"], how="left")
        else:
            cols = [c for c in obs.columns if c.startswith("obs_")]
        out["X"] = obs[cols].to_numpy(float)
        out["example_id"] = obs["example_id"].to_numpy() if "example_id" in obs else np.arange(len(obs))
        return out

    def save(self, folder: str | Path, identity: dict | None = None) -> Path:
        """Write ``outcomes.csv``, ``observations.csv``, ``config.json`` and ``identity.json`` into ``folder``.

        ``identity.json`` holds the SHA-256 of each of the three files (so that :meth:`load` refuses a file edited
        or damaged afterwards) and ``identity`` (the model identity and configuration of
        :func:`skipenv.envs.cache.model_identity`, checked by :func:`run_probe` before it reuses the table; ``None``
        when the caller keeps no identity).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / IDENTITY_FILE).unlink(missing_ok=True)  # an interrupted save leaves no valid identity behind
        self.outcomes.to_csv(folder / "outcomes.csv", index=False)
        self.observations.to_csv(folder / "observations.csv", index=False)
        (folder / "config.json").write_text(json.dumps(dict(self.config, plans=self.plans, empty=self.empty),
                                                       indent=1, default=str))
        _write_identity(folder, identity, TABLE_FILES)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, fix: str = "delete the folder and rerun") -> "ProbeTable":
        """Read a table written by :meth:`save` (floats round-trip exactly).

        When ``identity.json`` is there, every file's SHA-256 must match the one stored at :meth:`save` (a table
        edited by hand, e.g. test qualities set to 5.0, or truncated, is refused). The columns, the finiteness of
        the numbers and the plan names are checked in any case.

        Args:
            fix: what the user should do, appended to every error message.

        Raises:
            ProbeTableError: a missing, damaged (unreadable, truncated, garbled) or edited file; the message names
                the file and ``fix``.
        """
        import pandas as pd

        folder = Path(folder)
        if (folder / IDENTITY_FILE).exists():
            _check_files(folder, TABLE_FILES, fix)
        for name in TABLE_FILES:
            if not (folder / name).is_file():
                raise ProbeTableError(f"probe table {folder}: {name} is missing; {fix}")
        try:
            cfg = json.loads((folder / "config.json").read_text())
            plans, empty = list(cfg.pop("plans")), cfg.pop("empty")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ProbeTableError(f"probe table {folder / 'config.json'} is damaged ({type(e).__name__}: {e}); "
                                  f"{fix}") from None
        frames = {}
        for name in ("outcomes.csv", "observations.csv"):
            try:
                frames[name] = pd.read_csv(folder / name, dtype={"example_id": str}, float_precision="round_trip")
            except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise ProbeTableError(f"probe table {folder / name} is damaged ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}); {fix}") from None
        _check_columns(folder, frames["outcomes.csv"], frames["observations.csv"], plans, fix)
        return cls(frames["outcomes.csv"], frames["observations.csv"], plans, empty, cfg)


#: the files of a saved :class:`ProbeTable`; ``identity.json`` holds their SHA-256 and the model identity
TABLE_FILES = ("outcomes.csv", "observations.csv", "config.json")
IDENTITY_FILE = "identity.json"
_OUTCOME_COLUMNS = ("split", "doc", "plan", "quality", "quality_full", "cost")  # what the analysis reads


class ProbeTableError(ValueError):
    """A stored probe table that cannot be reused: a file missing, damaged (truncated, garbled), edited after it
    was written (its SHA-256 differs from ``identity.json``), or without a model identity."""


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_identity_file(folder: Path, fix: str) -> dict:
    path = folder / IDENTITY_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise ProbeTableError(f"probe table {path} is damaged ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("sha256"), dict):
        raise ProbeTableError(f"probe table {path} is damaged (no 'sha256' map of the table's files); {fix}")
    return stored


def _write_identity(folder: Path, identity: dict | None, files: Sequence[str], *, update: bool = False) -> None:
    """Write (or, with ``update``, extend) ``identity.json``: the SHA-256 of ``files`` and ``identity``."""
    stored = _read_identity_file(folder, "delete the folder and rerun") if update else {}
    sha = dict(stored.get("sha256", {}))
    sha.update({name: _file_sha256(folder / name) for name in files})
    out = {"identity": stored.get("identity") if update else identity, "sha256": sha}
    tmp = folder / (IDENTITY_FILE + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True, default=str))
    tmp.replace(folder / IDENTITY_FILE)


def _check_files(folder: Path, files: Sequence[str], fix: str) -> dict:
    """Compare each of ``files`` with its SHA-256 in ``identity.json``; returns the stored identity metadata.

    Raises:
        ProbeTableError: ``identity.json`` missing or damaged, a file missing, not listed, or changed."""
    stored = _read_identity_file(folder, fix)
    if not stored:
        raise ProbeTableError(f"probe table {folder}: no {IDENTITY_FILE} (written by an older skipenv, or removed), "
                              f"so neither its model nor its contents can be checked; {fix}")
    for name in files:
        path = folder / name
        want = stored["sha256"].get(name)
        if not path.is_file():
            raise ProbeTableError(f"probe table {folder}: {name} is missing; {fix}")
        if want is None:
            raise ProbeTableError(f"probe table {path}: not listed in {IDENTITY_FILE}; {fix}")
        if _file_sha256(path) != want:
            raise ProbeTableError(f"probe table {path} was changed after it was written (edited by hand, truncated "
                                  f"or damaged: its SHA-256 differs from the one in {IDENTITY_FILE}); {fix}")
    return stored


def _check_columns(folder: Path, outcomes, observations, plans: list, fix: str) -> None:
    """Columns, finite numbers and plan names of a table read back (a table without ``identity.json`` too)."""
    missing = [c for c in _OUTCOME_COLUMNS if c not in outcomes.columns]
    if missing:
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} lacks the columns {missing}; {fix}")
    numeric = [c for c in ("doc", "quality", "quality_full", "cost", "flops_saved", "reward") if c in outcomes]
    try:
        values = outcomes[numeric].to_numpy(float)
    except (ValueError, TypeError):
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} holds non-numbers in {numeric}; {fix}") from None
    if not np.isfinite(values).all():
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} holds empty, NaN or infinite values; {fix}")
    if (outcomes["cost"].to_numpy(float) < 0).any():
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} holds a negative cost (a fraction of the "
                              f"full model's FLOPs); {fix}")
    unknown = sorted(set(outcomes["plan"].astype(str)) - set(map(str, plans)))
    if unknown:
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} names plans {unknown} that config.json does "
                              f"not list; {fix}")
    per_doc = outcomes.groupby(["split", "doc"])["plan"].agg(lambda x: sorted(map(str, x)))
    if any(v != sorted(map(str, plans)) for v in per_doc):
        raise ProbeTableError(f"probe table {folder / 'outcomes.csv'} lacks or repeats some (document, plan) rows "
                              f"(cut short or edited); {fix}")
    try:
        obs_ok = {"split", "doc"} <= set(observations.columns) and \
            bool(np.isfinite(observations.filter(like="obs_").to_numpy(float)).all())
    except (ValueError, TypeError):
        obs_ok = False
    if not obs_ok:
        raise ProbeTableError(f"probe table {folder / 'observations.csv'} lacks split / doc columns or holds "
                              f"non-finite observations; {fix}")


def _menu_json(menu: Mapping[str, SkipPlan]) -> dict:
    return {name: plan.to_json() for name, plan in menu.items()}


def evaluate_menu(make_env: Callable[[str, int], object], menu: Mapping[str, SkipPlan] | None = None, *,
                  num_train: int = 40, num_test: int = 20, splits: tuple[str, str] = ("train", "test"),
                  config: dict | None = None, progress: bool = True) -> ProbeTable:
    """Evaluate every menu plan on the first ``num_train`` / ``num_test`` documents of the two splits.

    Args:
        make_env: ``(split, num_examples) -> env`` building a one-shot SwitchDec env (e.g. a ``gym.make`` call).
        menu: name → plan (default :func:`default_menu` of the env's plan spec).
        num_train, num_test: documents per split (the first ones of each split).
        splits: the (train, test) split names.
        config: stored with the table (what was evaluated).
        progress: tqdm bars.

    Returns:
        The :class:`ProbeTable`.

    Raises:
        ValueError: a plan the env's action space cannot express (e.g. with ``layer_block > 1``), or sizes < 2.
    """
    import pandas as pd
    from tqdm import tqdm

    from ..envs.wrappers import action_for_bits

    if num_train < 2 or num_test < 2:
        raise ValueError(f"the probe needs >= 2 train and >= 2 test documents, got {num_train} / {num_test}")
    rows, obs_rows, names, empty = [], [], None, None
    for split, n in zip(splits, (num_train, num_test)):
        env = make_env(split, n)
        base = env.unwrapped
        if menu is None:
            menu = default_menu(base.plan_spec)
        names = list(menu)
        empty = next((k for k, p in menu.items() if p.is_empty), None)
        actions = {}
        for name, plan in menu.items():
            a = base.plan_to_action(plan)
            if base.action_to_plan(a) != plan:
                raise ValueError(f"menu plan {name!r} cannot be expressed by this env's action space "
                                 f"({len(a)} bits: {base.action_labels}); use layer_block=1 and all candidates")
            actions[name] = action_for_bits(env, a)  # skip scores on an id with skip_threshold (v2)
        n = min(n, len(base.examples))
        evaluator = getattr(base, "evaluator", None)  # batched full-model references when the env offers them
        if hasattr(evaluator, "prefetch"):
            evaluator.prefetch(base.examples[:n], progress=progress)
        env.reset(seed=0)
        bar = tqdm(total=n * len(menu), desc=f"probe {split}", disable=not progress)
        for i in range(n):
            for name, a in actions.items():
                obs, _ = env.reset(options={"index": i})
                _, reward, _, _, info = env.step(a)
                rows.append({"split": split, "doc": i, "example_id": str(info["example_id"]), "plan": name,
                             "quality": info["quality"], "quality_full": info["quality_full"],
                             "cost": info["cost"], "flops_saved": info["flops_saved"],
                             "flops_full": info.get("flops_full", np.nan), "reward": float(reward)})
                bar.update(1)
            obs_rows.append({"split": split, "doc": i, "example_id": str(info["example_id"]),
                             **{f"obs_{j}": float(v) for j, v in enumerate(np.asarray(obs).ravel())}})
        bar.close()
        env.close()
    cfg = dict(config or {}, menu=_menu_json(menu), num_train=num_train, num_test=num_test, splits=list(splits))
    return ProbeTable(pd.DataFrame(rows), pd.DataFrame(obs_rows), names, empty, cfg)


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class ProbeReport:
    """Results of :func:`analyse`.

    Attributes:
        summary: one row per test policy: ``policy, formulation, mean_quality, mean_quality_loss,
            constraint_met_rate, mean_flops_saved, mean_reward, quality_loss_ci_low/high, mean_constraint_holds``.
        differences: paired bootstrap CIs over test documents of ``contextual - static`` (``metric`` =
            ``flops_saved``, ``reward`` or ``quality_loss``; ``diff``, ``ci_low``, ``ci_high``). The row against
            "static mixture at the probe's test quality (fit on test)" compares at equal mean quality loss with a
            static mixture fitted on the test documents themselves (favouring the static side).
        prediction: held-out (test) R² of each plan's predicted quality loss.
        learning_curve: per number of train documents: mean (and std over repeats) of the probe's advantage over
            the best static policy (per-input reward; expected FLOPs saved vs the train-fitted mixture, and vs the
            static mixture at the probe's own test quality).
        weights: policy name → ``[D_test, P]`` plan probabilities (for re-analysis / plots).
        tau, plans: the tolerance and the menu.
        observations: the observation-kind comparison of :func:`run_probe` (or None).
        folder: where :func:`run_probe` wrote the results (or None).
    """

    summary: pd.DataFrame
    differences: pd.DataFrame
    prediction: pd.DataFrame
    learning_curve: pd.DataFrame
    weights: dict
    tau: float
    plans: list
    observations: pd.DataFrame | None = None
    folder: Path | None = None

    def to_markdown(self) -> str:
        """The summary, differences, prediction and learning-curve tables as GitHub markdown."""
        fmt = markdown_table
        parts = [f"### Test policies (tau = {self.tau})", fmt(self.summary),
                 "### Contextual - static (paired bootstrap, 95 % CI over test documents)", fmt(self.differences),
                 "### Held-out R² of per-plan quality loss", fmt(self.prediction)]
        if len(self.learning_curve):
            parts += ["### Learning curve (advantage of the probe on the test documents)", fmt(self.learning_curve)]
        return "\n\n".join(parts) + "\n"


def _fit_policies(tr: dict, tau: float, empty: int | None, passthrough: int, seed: int):
    """Train-split fits: best static per formulation, mixture, probe policy."""
    r = _rewards(tr["quality"], tr["quality_full"], tr["cost"], tau)
    static_pi = int(r.mean(0).argmax())
    m_loss, m_saved = tr["loss"].mean(0), tr["saved"].mean(0)
    feasible = np.where(m_loss <= tau + 1e-12)[0]
    static_ex = int(feasible[m_saved[feasible].argmax()]) if len(feasible) else int(m_loss.argmin())
    mix = mixture_lp(m_loss, m_saved, tau) if len(feasible) else _one_hot(np.array([static_ex]), len(m_loss))[0]
    probe = ProbePolicy(passthrough=passthrough, empty=empty, seed=seed).fit(
        tr["X"], tr["loss"], tr["saved"], tr["quality_full"], tau)
    return static_pi, static_ex, mix, probe


def _weights_metrics(te: dict, w: np.ndarray, tau: float, seed: int) -> dict:
    import pandas as pd

    D, P = w.shape
    rows = pd.DataFrame({"document": np.repeat(np.arange(D), P), "weight": w.ravel(),
                         "quality": te["quality"].ravel(), "quality_full": te["quality_full"].ravel(),
                         "cost": te["cost"].ravel()})
    return formulation_metrics(rows[rows["weight"] > 0], tau, seed=seed)


def _per_doc(te: dict, w: np.ndarray, tau: float, metric: str) -> np.ndarray:
    if metric == "flops_saved":
        return (w * te["saved"]).sum(1)
    if metric == "quality_loss":
        return (w * te["loss"]).sum(1)
    return (w * _rewards(te["quality"], te["quality_full"], te["cost"], tau)).sum(1)


def analyse(table: ProbeTable, tau: float, *, passthrough: int = 2, learning_curve: Sequence[int] | None = None,
            repeats: int = 5, seed: int = 0, features: pd.DataFrame | None = None,
            splits: tuple[str, str] | None = None) -> ProbeReport:
    """Fit on the train documents, evaluate on the test documents (see the module docstring).

    Args:
        table: the evaluated menu.
        tau: quality tolerance (quality units).
        passthrough: trailing observation columns kept out of the PCA (2 for the SwitchDec observation).
        learning_curve: numbers of train documents to refit on (default: 1/4, 1/2, 3/4 of them when >= 8 each;
            ``[]`` for none); each size is repeated ``repeats`` times on random subsets.
        seed: folds, bootstrap and subsets.
        features: replace the observation by these columns (rows keyed by ``split, doc``) — to compare
            observation kinds.
        splits: (train, test) names (default: the table's).

    Raises:
        ValueError: too few documents, or no static mixture meets tau on the train documents.
    """
    import pandas as pd

    train, test = splits or tuple(table.config.get("splits", ("train", "test")))
    tr, te = table.matrices(train, features), table.matrices(test, features)
    P = len(table.plans)
    empty = table.plans.index(table.empty) if table.empty is not None else None
    static_pi, static_ex, mix, probe = _fit_policies(tr, tau, empty, passthrough, seed)
    D = len(te["loss"])
    names = table.plans
    W = {f"static: {n}": _one_hot(np.full(D, j), P) for j, n in enumerate(names)}
    W["best static (per-input)"] = _one_hot(np.full(D, static_pi), P)
    W["best static (expected)"] = _one_hot(np.full(D, static_ex), P)
    W["best static mixture (expected)"] = np.tile(mix, (D, 1))
    W["probe (per-input)"] = probe.plan_probabilities(te["X"], "per_input")
    W["probe (expected)"] = probe.plan_probabilities(te["X"], "expected")
    W["oracle (per-input)"] = _one_hot(per_input_oracle(te["quality"], te["quality_full"], te["cost"], tau), P)
    W["oracle (expected)"] = expected_oracle(te["loss"], te["saved"], tau)
    # the static front at the probe's own test quality, fitted on the test documents (favours the static side):
    # the contextual policy has learnable headroom only if it beats this at equal mean quality loss
    probe_loss = float(_per_doc(te, W["probe (expected)"], tau, "quality_loss").mean())
    try:
        eq = mixture_lp(te["loss"].mean(0), te["saved"].mean(0), probe_loss)
        W["static mixture at the probe's test quality (fit on test)"] = np.tile(eq, (D, 1))
    except ValueError:  # no static mixture reaches that quality
        eq = None
    formulation = {"per-input": "per_input", "expected": "expected"}
    rows = []
    for name, w in W.items():
        kind = next((v for k, v in formulation.items() if f"({k})" in name),
                    "expected" if "mixture" in name else "static plan")
        if name == "best static (per-input)":
            detail = names[static_pi]
        elif name == "best static (expected)":
            detail = names[static_ex]
        elif "mixture" in name:
            pi = mix if name == "best static mixture (expected)" else eq
            detail = ", ".join(f"{names[j]} {p:.2f}" for j, p in enumerate(pi) if p > 1e-6)
        else:
            detail = ""
        rows.append({"policy": name, "formulation": kind, "detail": detail,
                     **_weights_metrics(te, w, tau, seed)})
    summary = pd.DataFrame(rows).drop(columns=["num_documents", "mean_constraint_holds_ci"])

    comparisons = [("per_input", "reward", "probe (per-input)", "best static (per-input)"),
                   ("per_input", "flops_saved", "probe (per-input)", "best static (per-input)"),
                   ("per_input", "reward", "oracle (per-input)", "best static (per-input)"),
                   ("expected", "flops_saved", "probe (expected)", "best static mixture (expected)"),
                   ("expected", "flops_saved", "probe (expected)", "best static (expected)"),
                   ("expected", "quality_loss", "probe (expected)", "best static mixture (expected)"),
                   ("expected", "flops_saved", "oracle (expected)", "best static mixture (expected)")]
    if eq is not None:
        comparisons.insert(4, ("expected", "flops_saved", "probe (expected)",
                               "static mixture at the probe's test quality (fit on test)"))
    diffs = []
    for form, metric, a, b in comparisons:
        d = _per_doc(te, W[a], tau, metric) - _per_doc(te, W[b], tau, metric)
        lo, hi = bootstrap_ci(d, seed=seed, one_value="nan")
        diffs.append({"formulation": form, "metric": metric, "contextual": a, "static": b, "diff": float(d.mean()),
                      "ci_low": lo, "ci_high": hi})

    from sklearn.metrics import r2_score

    l_hat, _ = probe.predict_outcomes(te["X"])
    pred = pd.DataFrame({"plan": names, "test_r2_quality": [
        float(r2_score(te["loss"][:, j], l_hat[:, j])) if j != empty and np.ptp(te["loss"][:, j]) > 0 else np.nan
        for j in range(P)]})

    n_tr = len(tr["loss"])
    if learning_curve is None:
        learning_curve = [n for n in (n_tr // 4, n_tr // 2, (3 * n_tr) // 4) if n >= 8]
    else:
        outside = sorted({int(n) for n in learning_curve if not 4 <= int(n) < n_tr})
        if outside:
            warnings.warn(f"learning-curve sizes {outside} left out: each must be >= 4 and below the {n_tr} train "
                          f"documents (the full {n_tr} is always included)", UserWarning, stacklevel=2)
    sizes = sorted({int(n) for n in learning_curve if 4 <= int(n) < n_tr}) + [n_tr]
    rng = np.random.default_rng(seed)
    lc = []
    for n in sizes:
        adv_pi, adv_ex, adv_eq = [], [], []
        for rep in range(repeats if n < n_tr else 1):
            idx = np.sort(rng.choice(n_tr, n, replace=False)) if n < n_tr else np.arange(n_tr)
            sub = {k: v[idx] for k, v in tr.items()}
            try:
                s_pi, _, m, pr = ((static_pi, static_ex, mix, probe) if n == n_tr else
                                  _fit_policies(sub, tau, empty, passthrough, seed + rep))
            except ValueError:  # e.g. no static mixture meets tau on this subset
                continue
            a = _per_doc(te, pr.plan_probabilities(te["X"], "per_input"), tau, "reward")
            b = _per_doc(te, _one_hot(np.full(D, s_pi), P), tau, "reward")
            adv_pi.append(float((a - b).mean()))
            w = pr.plan_probabilities(te["X"], "expected")
            a = _per_doc(te, w, tau, "flops_saved")
            b = _per_doc(te, np.tile(m, (D, 1)), tau, "flops_saved")
            adv_ex.append(float((a - b).mean()))
            try:  # against the static front at the probe's own test quality (fitted on test)
                eq_n = mixture_lp(te["loss"].mean(0), te["saved"].mean(0), _per_doc(te, w, tau, "quality_loss").mean())
                adv_eq.append(float(a.mean() - eq_n @ te["saved"].mean(0)))
            except ValueError:
                adv_eq.append(np.nan)
        if adv_pi:
            lc.append({"train_documents": n, "repeats": len(adv_pi),
                       "per_input_reward_gain": float(np.mean(adv_pi)), "per_input_std": float(np.std(adv_pi)),
                       "expected_flops_saved_gain": float(np.mean(adv_ex)), "expected_std": float(np.std(adv_ex)),
                       "expected_gain_at_equal_quality": float(np.nanmean(adv_eq)) if np.isfinite(adv_eq).any()
                       else np.nan})
    return ProbeReport(summary, pd.DataFrame(diffs), pred, pd.DataFrame(lc), W, float(tau), list(names))


def compare_observations(table: ProbeTable, tau: float, features: Mapping[str, "pd.DataFrame | None"],
                         passthrough: Mapping[str, int] | None = None, *, seed: int = 0) -> "pd.DataFrame":
    """Compare observation kinds on one probe table: for each kind refit the probe policy on its features and
    report the held-out R² of per-plan quality loss (mean and max over the non-empty plans) and the probe's test
    gains over the best static policies (no learning curve).

    Args:
        features: kind name → feature table of :func:`skipenv.envs.observations.feature_table` (``None`` = the
            table's own observation).
        passthrough: kind → trailing columns kept out of the PCA (default 2).

    Returns:
        One row per kind: ``observation, mean_test_r2, max_test_r2, per_input_reward_gain,
        expected_flops_saved_gain`` and ``extra_cost`` (mean extra observation FLOPs / full-model FLOPs, when the
        table has ``flops_full``).
    """
    import pandas as pd

    rows = []
    for kind, f in features.items():
        rep = analyse(table, tau, passthrough=(passthrough or {}).get(kind, 2), learning_curve=[], seed=seed,
                      features=f)
        d = rep.differences.set_index(["contextual", "static", "metric"])
        r2 = rep.prediction["test_r2_quality"].to_numpy(float)
        extra = np.nan
        if f is not None and "extra_flops" in f and "flops_full" in f:
            extra = float((f["extra_flops"] / f["flops_full"]).mean())
        elif f is None:
            extra = 0.0
        rows.append({"observation": kind, "mean_test_r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else np.nan,
                     "max_test_r2": float(np.nanmax(r2)) if np.isfinite(r2).any() else np.nan,
                     "per_input_reward_gain": float(d.loc[("probe (per-input)", "best static (per-input)", "reward"),
                                                          "diff"]),
                     "expected_flops_saved_gain": float(d.loc[("probe (expected)", "best static mixture (expected)",
                                                               "flops_saved"), "diff"]),
                     "extra_cost": extra})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- plot
def plot_probe(report: ProbeReport, path: str | Path, *, title: str = "") -> Path:
    """Quality-vs-FLOPs plot of the test policies: x = mean FLOPs saved (% of the full model, observation
    included), y = mean quality; static menu plans as small grey circles (labelled), the other policies with one
    marker each, sized so that coinciding policies stay visible (nested markers); the dashed line marks
    ``mean quality_full - tau`` (the expected constraint). Saved as PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report.summary.set_index("policy")
    q_full = float((s["mean_quality"] + s["mean_quality_loss"]).iloc[0])
    fig, ax = plt.subplots(figsize=(8.5, 5))
    statics = s[s["formulation"] == "static plan"].sort_values("mean_flops_saved")
    # markers nest where policies coincide: large open squares, then filled markers, small ones on top
    styles = {  # name: (marker, colour, size, filled, zorder)
        "best static (per-input)": ("s", "tab:blue", 320, False, 3),
        "best static (expected)": ("s", "tab:orange", 320, False, 3),
        "best static mixture (expected)": ("*", "tab:orange", 260, True, 4),
        "oracle (per-input)": ("^", "tab:blue", 170, True, 4),
        "oracle (expected)": ("^", "tab:orange", 170, True, 4),
        "probe (per-input)": ("D", "tab:blue", 120, True, 5),
        "probe (expected)": ("D", "tab:orange", 120, True, 5),
        "static mixture at the probe's test quality (fit on test)": ("*", "tab:green", 90, True, 6)}
    for name, (marker, color, size, filled, z) in styles.items():
        if name in s.index:
            row = s.loc[name]
            ax.scatter(100 * row["mean_flops_saved"], row["mean_quality"], marker=marker, s=size,
                       c=color if filled else "none", edgecolors=color if not filled else "k",
                       linewidths=2.0 if not filled else 0.8, zorder=z, label=name)
    ax.scatter(100 * statics["mean_flops_saved"], statics["mean_quality"], s=22, c="0.55", edgecolors="k",
               linewidths=0.6, zorder=7, label="static menu plans")
    xs, ys = 100 * statics["mean_flops_saved"].to_numpy(), statics["mean_quality"].to_numpy()
    dx, dy = max(np.ptp(xs), 1e-9) * 0.04, max(np.ptp(ys), 1e-9) * 0.04
    for i, name in enumerate(statics.index):  # labels of nearby plans are stacked downwards, one line each
        clashes = int(np.sum((np.abs(xs[:i] - xs[i]) < dx) & (np.abs(ys[:i] - ys[i]) < dy)))
        ax.annotate(name.removeprefix("static: "), (xs[i], ys[i]), textcoords="offset points",
                    xytext=(5, 4 - 9 * clashes), fontsize=7, color="0.25")
    ax.axhline(q_full - report.tau, ls="--", c="tab:red", lw=1, label="expected constraint (quality_full - tau)")
    ax.set_xlabel("mean FLOPs saved on the test documents (% of the full model, observation included)")
    ax.set_ylabel("mean quality on the test documents")
    ax.set_title(title or f"learnability probe (tau = {report.tau})")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=0.6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- driver
def config_key(config: dict) -> str:
    """A short hash of a probe configuration (names the cache folder)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def outcome_tags(env) -> dict:
    """What a SwitchDec env's outcomes depend on beyond its kwargs' text, for the probe table's key: the task's
    ``cache_tag`` (a label / span head's *digest*, so another head file at the same path gets a table of its own)
    and the evaluator's ``skip_mode_tag`` (the calibration's digest). Both are in the evaluator's outcome keys too.
    ``{}`` for identity skips and a task without a tag (the key of such a table is what it was before)."""
    tag = getattr(env.task, "cache_tag", "")
    tags = {"task": (tag() if callable(tag) else tag) or "", "skip_mode": env.evaluator.skip_mode_tag}
    return tags if tags["task"] or tags["skip_mode"] != "identity" else {}


def run_probe(env_id: str = DEFAULT_ENV_ID, *, env_kwargs: dict | None = None,
              menu: Mapping[str, SkipPlan] | Sequence[str] | None = None, num_train: int = 40, num_test: int = 20,
              tau: float | None = None, out_dir: str | Path = "runs/probe", progress: bool = True,
              learning_curve: Sequence[int] | None = None, observations: Sequence[str] = (),
              seed: int = 0, cache: bool = True) -> tuple[ProbeTable, ProbeReport]:
    """Evaluate (or load from ``out_dir/<hash of the configuration and the model fingerprint>``) the menu table, analyse it and write ``report.md``,
    ``summary.csv``, ``differences.csv``, ``learning_curve.csv`` and ``pareto.png`` into that folder.

    Args:
        env_id: a registered one-shot SwitchDec id.
        env_kwargs: ``gym.make`` kwargs (``quality``, ``tau``, ``observation``, ``max_input_tokens``, ...; not
            ``formulation``: the probe analyses every formulation itself).
        menu: name → plan, or plan strings for :func:`parse_plan` (default :func:`default_menu`).
        tau: tolerance of the analysis (default the env's: ``env_kwargs["tau"]``, else the id's registered tau,
            else the quality signal's default).
        out_dir: parent folder of the cache / results.
        observations: further observation kinds to compare with the env's (:mod:`skipenv.envs.observations`, e.g.
            ``("segments", "layer:4")``); adds ``observation_kinds.csv`` and a table to ``report.md``. Their
            features are cached next to the table.
        cache: reuse a table evaluated before for the same configuration and model (default); ``False``
            evaluates the menu again and overwrites it (``--no-cache``).

    The cached table is reused only if it was made by the same model (:func:`skipenv.envs.cache.model_fingerprint`:
    config and every weight; the folder name includes it, so other weights, also re-saved under the same path,
    get their own table) with the same configuration (env id, env kwargs, menu, document counts), and only if no
    file changed since it was written (SHA-256 in ``identity.json``). Loading the model to fingerprint it is the
    price of a reuse (about 2 s of digest for SmolLM2-135M).

    Raises:
        ValueError: see :func:`evaluate_menu` and :func:`analyse`; :class:`ProbeTableError` (a ``ValueError``) for
            a cached table that was edited, damaged or lacks its identity file (the message names the file and the
            fix: delete the folder or ``cache=False`` / ``--no-cache``).
        skipenv.envs.cache.IdentityMismatchError: the cached table's stored model identity or configuration differs
            from the one in use.
    """
    import gymnasium as gym

    # the ids are registered: importing any skipenv submodule runs skipenv/__init__.py first

    from ..envs import SwitchDecEnv
    from ..envs.observations import passthrough_columns
    from ..envs.observations import _parse as _parse_observation_kind

    from ..envs.registration import resolve_env_id

    env_id = resolve_env_id(env_id)  # "SwitchDec-XSum": its latest version, as gym.make does
    env_kwargs = dict(env_kwargs or {})
    if isinstance(num_train, int) and not isinstance(num_train, bool) and 0 < num_train < 4:
        # refused here, before the menu is evaluated (the probe policy's ridge fit needs them; policies/menu.py)
        raise ValueError(f"the probe policy needs >= 4 training documents, got num_train={num_train} "
                         f"(--train-docs): use 4 or more")
    reserved = sorted({"split", "num_examples"} & set(env_kwargs))
    if reserved:
        raise ValueError(f"env_kwargs {reserved} are set by the probe itself; choose the documents with "
                         f"num_train / num_test (--train-docs / --test-docs)")
    wrapped = sorted({"formulation", "formulation_kwargs"} & set(env_kwargs))
    if wrapped:
        raise ValueError(f"env_kwargs {wrapped}: the probe evaluates the env's own outcomes and analyses every "
                         f"formulation (per-input, expected) itself; drop them")
    env_observation = env_kwargs.get("observation", "pooled")
    for kind in (env_observation, *observations):  # checked before anything is evaluated
        _parse_observation_kind(kind)
    # the bare env's outcomes: an id whose registered formulation wraps the env (v1: expected) is built unwrapped
    bare = {"formulation": "per_input"} if gym.spec(env_id).kwargs.get("formulation", "per_input") != "per_input" \
        else {}

    def make_env(split: str, n: int):
        env = gym.make(env_id, split=split, num_examples=n, **env_kwargs, **bare)
        if not isinstance(env.unwrapped, SwitchDecEnv):
            raise ValueError(f"the probe needs a one-shot env (SwitchDecEnv); {env_id!r} is a "
                             f"{type(env.unwrapped).__name__}: use the id without '-Layerwise'")
        return env

    # one env of one document lends the plan spec (for --plan strings) and the model, whose identity keys the table
    env = make_env("train", 1)
    if menu is not None and not isinstance(menu, Mapping):
        parsed = [parse_plan(t, env.unwrapped.plan_spec) for t in menu]
        names = [n for n, _ in parsed]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            env.close()
            raise ValueError(f"plan name(s) {repeated} given more than once in the menu; give each plan its own "
                             f"NAME: prefix")
        menu = dict(parsed)
    from ..envs.cache import check_identity, model_identity

    from ..envs.registration import env_tau

    tau = float(tau if tau is not None else env_tau(env_id, env_kwargs))
    menu_cfg = _menu_json(menu) if menu is not None else "default"
    cfg = {"env_id": env_id, "env_kwargs": env_kwargs, "menu": menu_cfg, "num_train": num_train,
           "num_test": num_test}
    tags = outcome_tags(env.unwrapped)
    if tags:
        cfg["outcome_tags"] = tags
    generator = env.unwrapped.generator
    identity = model_identity(generator, config=json.loads(json.dumps(cfg, default=str)))
    env.close()
    # the folder is keyed by the configuration *and* the model: other weights (also re-saved under the same model
    # path) get a table of their own, computed afresh; the identity stored inside is checked again when reused
    folder = Path(out_dir) / config_key({**cfg, "model_fingerprint": identity["model_fingerprint"]})
    fix = (f"delete the folder {folder} or rerun with --no-cache (run_probe(..., cache=False)) to evaluate the "
           f"menu again")
    if cache and (folder / "outcomes.csv").exists():
        stored = _check_files(folder, TABLE_FILES, fix)
        check_identity(stored.get("identity"), generator, identity["config"], what=f"probe table {folder}",
                       fix=fix)
        table = ProbeTable.load(folder, fix=fix)
    else:
        table = evaluate_menu(make_env, menu, num_train=num_train, num_test=num_test,
                              config={"env_id": env_id, "env_kwargs": env_kwargs}, progress=progress)
        for stale in folder.glob("features_*.csv") if folder.is_dir() else ():
            stale.unlink()  # derived from the table being replaced
        table.save(folder, identity=identity)
    k = json.loads(next(iter(table.config["menu"].values())))["spec"]["token_segments"]
    report = analyse(table, tau, learning_curve=learning_curve, seed=seed,
                     passthrough=passthrough_columns(env_observation, k))
    text = report.to_markdown()
    if observations:
        import pandas as pd

        from ..envs.observations import feature_table

        feats: dict = {f"{env_observation} (env)": None}
        passthrough = {f"{env_observation} (env)": passthrough_columns(env_observation, k)}
        for kind in observations:
            path = folder / f"features_{kind.replace(':', '_')}.csv"
            if path.name in _read_identity_file(folder, fix).get("sha256", {}):
                _check_files(folder, [path.name], fix)  # made with this table; refused if changed since
                try:
                    f = pd.read_csv(path, float_precision="round_trip")
                except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
                    raise ProbeTableError(f"probe features {path} are damaged ({type(e).__name__}); {fix}") from None
            else:  # not yet computed, or left by an interrupted run (no digest): computed again
                f = feature_table(make_env, table, kind, progress=progress)
                f.to_csv(path, index=False)
                _write_identity(folder, None, [path.name], update=True)
            feats[kind], passthrough[kind] = f, passthrough_columns(kind, k)
        comparison = compare_observations(table, tau, feats, passthrough, seed=seed)
        comparison.to_csv(folder / "observation_kinds.csv", index=False)
        report.observations = comparison
        text += "\n### Observation kinds (held-out R² of per-plan quality loss; probe gains on test)\n\n" + \
            markdown_table(comparison) + "\n"
    (folder / "report.md").write_text(f"# Learnability probe: {env_id} {json.dumps(env_kwargs)}, "
                                      f"{num_train} train / {num_test} test documents\n\n" + text)
    report.summary.to_csv(folder / "summary.csv", index=False)
    report.differences.to_csv(folder / "differences.csv", index=False)
    report.learning_curve.to_csv(folder / "learning_curve.csv", index=False)
    plot_probe(report, folder / "pareto.png", title=f"{env_id}: learnability probe (tau = {tau})")
    report.folder = folder
    return table, report
