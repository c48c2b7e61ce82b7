"""``skipenv profile``: where the saving is on a model — each skip candidate on its own, per skip mode.

For one env configuration (model, task, quality signal, tau, ...) the profile runs every *one-bit plan* — the
attention sublayer of one layer, the FFN sublayer of one layer, or one of the ``K`` token segments, all else kept
(:func:`candidates`) — on each of the first ``N`` documents of a split (the train split by default, so that the
profile never looks at the documents a policy is tested on), once per skip mode (``"identity"``: the paper's skip,
the residual stream passes unchanged; other modes through the env kwarg ``skip_mode``, when the installed env has
it). Each (document, candidate, mode) is one :meth:`SwitchDecEnv.outcome <skipenv.envs.switchdec.SwitchDecEnv.outcome>`
call, so its numbers are exactly what an episode with that action would report.

Per (candidate, mode) it reports (:func:`summarize`):

- ``flops_saved``: the FLOPs the bit removes, as a fraction of the full model's FLOPs, mean over documents:
  ``1 - (flops - observation) / flops_full`` per document (``flops``, ``flops_full`` of the outcome; the
  observation's FLOPs, which every plan pays alike, are left out so that the number is the bit's own saving; the
  env's ``info["flops_saved"]`` is ``1 - cost`` with the observation charged). FLOPs come from the analytic model
  (:mod:`skipenv.generators.flops`, 2 FLOPs per multiply-accumulate, checked against ``FlopCounterMode``);
- the quality loss ``quality_full - quality`` over documents: mean, median, 10 % and 90 % quantiles (in the
  quality signal's units, e.g. mean token probability for ``"probability"``);
- ``within_tau``: the share of documents whose outcome meets the constraint ``quality >= quality_full - tau``
  (:func:`skipenv.envs.rewards.constraint_satisfied`, the env's own rule).

Resumable: one CSV row per (document, candidate, mode) is appended as soon as it is computed; a rerun with the same
folder skips the rows present (a row cut off by a kill is dropped). The folder's ``profile.json`` holds the
:func:`~skipenv.envs.cache.model_identity` (model fingerprint and configuration) the rows were made under; a rerun
with another model, other weights or another configuration is refused (:class:`~skipenv.envs.cache.
IdentityMismatchError`) instead of mixing rows. Rows of more documents, candidates or modes may be added to a folder
later: they are rows of the same configuration.

Command line: ``skipenv profile`` (docs/profile.md has the measured table of the embedded SmolLM2).

Why this module is long: the resumable rows, the identity check that decides whether a folder's rows may be reused
and the summary of those rows are one contract (a row is summarised only under the identity it was written under),
and the checks of every input before the model loads belong to it; the table and plot are small.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..envs.registration import DEFAULT_ENV_ID
from ..plan import PlanSpec, SkipPlan

if TYPE_CHECKING:  # annotations only; pandas is imported where it is used
    import pandas as pd

__all__ = ["CANDIDATE_FAMILIES", "IDENTITY", "SPLITS", "ROW_COLUMNS", "Candidate", "candidates",
           "parse_families", "parse_skip_modes", "check_env_kwargs", "profile_config", "ProfileResult",
           "run_profile", "summarize", "sublayers_within_tau", "format_table", "plot_profile"]

#: candidate families, in table order (the flat action's order: attention, FFN, token segments)
CANDIDATE_FAMILIES = ("attention", "ffn", "tokens")
#: the skip mode of today's envs (the paper's skip): passed to the env as no kwarg at all
IDENTITY = "identity"
#: the splits a profile may read (those of :meth:`skipenv.tasks.base.Task.examples`)
SPLITS = ("train", "validation", "test", "all")
#: env kwargs the profile sets itself (or that do not apply to it), with the option to use instead
RESERVED_ENV_KWARGS = {
    "split": "--split (split=)", "num_examples": "--docs (num_docs=)", "skip_mode": "--skip-modes (skip_modes=)",
    "formulation": "nothing: the profile reports outcomes, which no formulation changes",
    "formulation_kwargs": "nothing: the profile reports outcomes, which no formulation changes",
    "generator": "model= (the profile loads it)", "evaluator": "model= (the profile builds its own)",
}
#: columns of the per-row CSV, in order
ROW_COLUMNS = ("split", "doc", "example_id", "mode", "candidate", "family", "index", "quality", "quality_full",
               "loss", "within_tau", "cost", "flops", "flops_full", "observation_flops", "flops_saved",
               "num_generated")
#: file names inside the output folder
ROWS_CSV, IDENTITY_JSON, SUMMARY_CSV, TABLE_MD, PLOT_PNG = \
    "profile.csv", "profile.json", "summary.csv", "profile.md", "profile.png"


# ---------------------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One skip candidate: one bit of the flat action.

    Attributes:
        label: the action label (``"decoder.attention.3"``, ``"encoder.ffn.0"``, ``"tokens.7"``).
        family: ``"attention"``, ``"ffn"`` or ``"tokens"``.
        stack: ``"encoder"``, ``"decoder"`` or ``""`` (token segments).
        index: layer index in its stack, or segment index (0-based).
    """

    label: str
    family: str
    stack: str
    index: int

    def plan(self, spec: PlanSpec) -> SkipPlan:
        """The one-bit plan that skips this candidate and nothing else."""
        a = np.zeros(spec.action_size, dtype=np.int8)
        a[spec.action_labels().index(self.label)] = 1
        return SkipPlan.from_action(a, spec)


def candidates(spec: PlanSpec, families: Sequence[str] = CANDIDATE_FAMILIES) -> list[Candidate]:
    """Every candidate of ``spec`` in the given families, in flat-action order (attention of each layer — encoder
    stack first —, FFN of each layer, token segments): for SmolLM2-135M with ``K = 8``, 30 + 30 + 8 = 68.

    Raises:
        ValueError: an unknown family (see :func:`parse_families`).
    """
    families = parse_families(list(families))
    out = []
    for label in spec.action_labels():
        parts = label.split(".")
        stack, family, index = ("", parts[0], parts[1]) if parts[0] == "tokens" else parts
        if family in families:
            out.append(Candidate(label, family, stack, int(index)))
    return out


def parse_families(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"attention,ffn"`` (or a list) → ``("attention", "ffn")``, in :data:`CANDIDATE_FAMILIES` order.

    Raises:
        ValueError: an empty list or an unknown family (the message lists the known ones).
    """
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CANDIDATE_FAMILIES]
    if unknown or not names:
        what = f"unknown candidate kind(s) {unknown}" if unknown else "no candidate kind given"
        raise ValueError(f"{what}; choose from {', '.join(CANDIDATE_FAMILIES)} (comma-separated, e.g. "
                         f"'attention,ffn')")
    return tuple(f for f in CANDIDATE_FAMILIES if f in names)


def parse_skip_modes(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"identity,mean"`` (or a list) → ``("identity", "mean")`` in the given order, duplicates refused.

    Only the form is checked here; whether the installed env knows a mode is checked by :func:`check_env_kwargs`.

    Raises:
        ValueError: an empty list, an empty or repeated name, or a name with characters other than letters,
            digits, ``_`` and ``-``.
    """
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    bad = [n for n in names if not n or not n.replace("_", "").replace("-", "").isalnum()]
    if not names or bad:
        raise ValueError(f"bad skip mode list {value!r}: expected comma-separated names such as 'identity,mean'")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"skip mode(s) {repeated} given more than once in {value!r}")
    return tuple(names)


# ---------------------------------------------------------------------------------------------- env kwargs
def _env_class(env_id: str):
    """The env class ``gym.make(env_id)`` builds (``env.unwrapped``'s type) for a skipenv id, else ``None`` (an id
    registered elsewhere: not inspected); :func:`skipenv.envs.registration.env_class_of`."""
    from ..envs.registration import env_class_of

    return env_class_of(env_id)


def _accepted_kwargs(cls) -> set[str]:
    """Keyword names ``gym.make`` of an id of env class ``cls`` accepts
    (:func:`skipenv.envs.registration.env_class_keywords`, the check ``gym.make`` runs)."""
    from ..envs.registration import env_class_keywords

    return env_class_keywords(cls)


def _known_skip_modes(cls) -> tuple[str, ...] | None:
    """The skip modes the installed env declares (a ``SKIP_MODES`` tuple in the env's module or in
    :mod:`skipenv.generators`), or ``None`` when it declares none (the env then checks the value itself)."""
    import importlib

    for module in (cls.__module__, "skipenv.generators"):
        modes = getattr(importlib.import_module(module), "SKIP_MODES", None)
        if isinstance(modes, (tuple, list)) and all(isinstance(m, str) for m in modes):
            return tuple(modes)
    return None


def check_env_kwargs(env_id: str, env_kwargs: dict, skip_modes: Sequence[str] = (IDENTITY,)) -> str:
    """Check an env id, the env kwargs and the skip modes of a profile without building an env (no model loads).

    Returns:
        the registered id ``gym.make(env_id)`` builds (an unversioned name resolved to its latest version).

    Raises:
        gymnasium.error.Error: an unknown env id.
        ValueError: a kwarg the profile sets itself (:data:`RESERVED_ENV_KWARGS`: the message names the option to
            use), a kwarg the env does not take (the message lists those it takes), a layerwise env, a skip mode
            other than ``"identity"`` when the installed env has no ``skip_mode`` kwarg, or a mode the env does not
            declare. Bad *values* of the other kwargs are the env's to report: it checks every kwarg before
            anything loads.
    """
    from ..envs.registration import resolve_env_id

    env_id = resolve_env_id(env_id)
    if not isinstance(env_kwargs, dict):
        raise ValueError(f"env kwargs must be a JSON object / dict, got {type(env_kwargs).__name__}")
    reserved = sorted(set(env_kwargs) & set(RESERVED_ENV_KWARGS))
    if reserved:
        raise ValueError("; ".join(f"env kwarg {k!r} is set by the profile: use {RESERVED_ENV_KWARGS[k]}"
                                   for k in reserved))
    cls = _env_class(env_id)
    if cls is None:
        return env_id
    from ..envs.switchdec import SwitchDecEnv

    if not issubclass(cls, SwitchDecEnv):
        built_from = (_spec_kwargs(env_id).get("expect") or {}).get("env_id")
        live = f"profile {built_from}, the live id its table was built from" if built_from else \
            "profile a live SwitchDec id such as SwitchDec-XSum-v1"
        raise ValueError(f"{env_id} builds a {cls.__name__}, not a live SwitchDec env: the profile computes each "
                         f"candidate's outcome with the model, which a replay-table or mixed env does not do; {live}")
    accepted = _accepted_kwargs(cls)
    if "Layerwise" in cls.__name__:
        raise ValueError(f"{env_id} is a layerwise env: profile its one-shot id (without '-Layerwise'); the "
                         f"outcomes are the same")
    unknown = sorted(set(env_kwargs) - accepted)
    if unknown:
        raise ValueError(f"env kwarg(s) {unknown} not taken by {env_id} ({cls.__name__}); it takes "
                         f"{', '.join(sorted(accepted - set(RESERVED_ENV_KWARGS) - {'task'}))}")
    others = [m for m in skip_modes if m != IDENTITY]
    if others and "skip_mode" not in accepted:
        raise ValueError(f"skip mode(s) {others}: the installed {cls.__name__} has no skip_mode kwarg (this skipenv "
                         f"knows only the identity skip); use --skip-modes identity")
    known = _known_skip_modes(cls)
    if known is not None:
        unknown_modes = [m for m in skip_modes if m not in known]
        if unknown_modes:
            raise ValueError(f"unknown skip mode(s) {unknown_modes}; the installed env knows {', '.join(known)}")
    return env_id


def _spec_kwargs(env_id: str) -> dict:
    """The kwargs ``env_id`` is registered with (``gym.spec(env_id).kwargs``)."""
    import gymnasium as gym

    return dict(gym.spec(env_id).kwargs)


def profile_config(env_id: str, env_kwargs: dict, split: str) -> dict:
    """What every row of a profile depends on besides the model: the env id, its kwargs and the split (plain JSON;
    its SHA-256 is stored in ``profile.json`` and compared on resume). The number of documents, the candidate
    families and the skip modes only choose *which* rows exist, so a folder may grow in any of them."""
    return {"env_id": env_id, "env_kwargs": dict(sorted(env_kwargs.items())), "split": split, "rows_version": 1}


# ---------------------------------------------------------------------------------------------- resumable rows
def _read_rows(path: Path) -> "pd.DataFrame":
    """The rows of a profile CSV; a last line cut off by a kill (no final newline) is removed from the file first.

    Raises:
        ValueError: the file cannot be parsed, its columns are not :data:`ROW_COLUMNS` (not a profile CSV, or
            another version), a row misses a value, or a (document, candidate, mode) row appears twice.
    """
    import pandas as pd

    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    fix = "delete it, or write the profile to another folder (--out)"
    try:
        rows = pd.read_csv(path, dtype={"example_id": str, "mode": str, "candidate": str},
                           float_precision="round_trip")
    except (ValueError, pd.errors.ParserError) as e:  # empty file, garbled line, non-numeric value
        raise ValueError(f"{path} cannot be read as a profile CSV ({e}); {fix}") from None
    if tuple(rows.columns) != ROW_COLUMNS:
        raise ValueError(f"{path} is not a profile CSV of this skipenv (columns {list(rows.columns)}, expected "
                         f"{list(ROW_COLUMNS)}); {fix}")
    key = ["doc", "candidate", "mode"]
    if rows[key].isna().any().any() or rows[["loss", "flops_saved"]].isna().any().any():
        raise ValueError(f"{path} has rows with missing values (an edited or garbled file); {fix}")
    if rows.duplicated(key).any():
        d = rows[rows.duplicated(key, keep=False)].iloc[0]
        raise ValueError(f"{path} holds (document {d['doc']}, {d['candidate']}, {d['mode']}) more than once (two "
                         f"processes on one folder, or an edited file), which would weigh it twice; {fix}")
    return rows


def _check_stored_config(folder: Path, config: dict) -> dict | None:
    """The identity stored in ``folder/profile.json`` if its configuration equals ``config`` (``None``: no rows
    yet); checked before the model loads.

    Raises:
        IdentityMismatchError: rows without a ``profile.json``, or written for another configuration.
    """
    from ..envs.cache import IdentityMismatchError, value_checksum

    rows = folder / ROWS_CSV
    if not rows.exists():
        return None
    what, fix = f"profile rows {rows}", "write this profile to another folder (--out) or delete that one"
    try:
        stored = json.loads((folder / IDENTITY_JSON).read_text())
    except (OSError, ValueError):
        raise IdentityMismatchError(f"{what}: no readable {IDENTITY_JSON} next to them, so they may come from another "
                                    f"model or configuration; {fix}") from None
    if not isinstance(stored, dict) or stored.get("config_sha256") != value_checksum(config):
        old = stored.get("config") if isinstance(stored, dict) else None
        keys = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k)) \
            if isinstance(old, dict) else ["<unreadable>"]
        detail = ", ".join(f"{k} ({(old or {}).get(k, '<absent>')!r} -> {config.get(k, '<absent>')!r})" for k in keys)
        raise IdentityMismatchError(f"{what}: made with another configuration (differing settings: {detail}); {fix}")
    return stored


@dataclass
class ProfileResult:
    """What :func:`run_profile` returns.

    Attributes:
        rows: one row per (document, candidate, mode), :data:`ROW_COLUMNS` (the CSV's content).
        summary: one row per (candidate, mode) (:func:`summarize`).
        tau: the tolerance ``within_tau`` was judged at.
        folder: the output folder (``profile.csv``, ``profile.json``, ``summary.csv``, ``profile.md``,
            ``profile.png``).
        computed: rows computed by this call (the others were read back from the folder).
    """

    rows: "pd.DataFrame"
    summary: "pd.DataFrame"
    tau: float
    folder: Path
    computed: int


def run_profile(env_id: str = DEFAULT_ENV_ID, *, env_kwargs: dict | None = None, skip_modes: Sequence[str] = (IDENTITY,),
                families: Sequence[str] = CANDIDATE_FAMILIES, split: str = "train", num_docs: int = 20,
                out_dir: str | Path = "runs/profile", progress: bool = True) -> ProfileResult:
    """Profile every one-bit plan of ``families`` on the first ``num_docs`` documents of ``split``, per skip mode;
    append the rows to ``out_dir/profile.csv`` (resuming) and write ``summary.csv``, ``profile.md`` and
    ``profile.png`` there.

    Args:
        env_id: a registered one-shot SwitchDec id (default ``SwitchDec-XSum-v1``).
        env_kwargs: ``gym.make`` kwargs (``model``, ``quality``, ``tau``, ``token_segments``, ...; not those of
            :data:`RESERVED_ENV_KWARGS`). An id whose registered formulation wraps the env is built bare
            (``formulation="per_input"``): the profile reads outcomes, not rewards.
        skip_modes: skip modes; ``"identity"`` builds the env without ``skip_mode``, any other passes
            ``skip_mode=<mode>``.
        families: candidate families (:data:`CANDIDATE_FAMILIES`).
        split: the documents' split (:data:`SPLITS`; default ``"train"``).
        num_docs: the first ``num_docs`` documents of the split (fewer if the split has fewer, with a line on
            stderr); under a calibrated skip mode the calibration documents of every mode are left out first, so
            every mode is profiled on the same documents, none of which fitted a bypass.
        out_dir: output folder.
        progress: a tqdm bar (with ETA) over the rows still to compute.

    Returns:
        The :class:`ProfileResult`.

    Raises:
        ValueError: ``num_docs < 1``, an unknown split, family or skip mode, or a bad env kwarg (all before the
            model loads; see :func:`check_env_kwargs`); the folder's rows name other documents than the split's.
        IdentityMismatchError: the folder holds rows of another configuration (before the model loads) or of
            another model (after it loads).
    """
    import gymnasium as gym
    import pandas as pd
    from tqdm import tqdm

    from ..envs.cache import check_identity, model_identity
    from ..envs.registration import env_tau
    from ..envs.rewards import constraint_satisfied

    if isinstance(num_docs, bool) or not isinstance(num_docs, (int, np.integer)) or num_docs < 1:
        raise ValueError(f"num_docs (--docs) must be an integer >= 1, got {num_docs!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    families = parse_families(families)
    skip_modes = parse_skip_modes(skip_modes)
    env_kwargs = dict(env_kwargs or {})
    env_id = check_env_kwargs(env_id, env_kwargs, skip_modes)
    tau = env_tau(env_id, env_kwargs)
    config = profile_config(env_id, env_kwargs, split)
    folder = Path(out_dir)
    stored = _check_stored_config(folder, config)  # before the model loads
    bare = {"formulation": "per_input"} if gym.spec(env_id).kwargs.get("formulation", "per_input") != "per_input" \
        else {}

    envs = {}
    try:
        for mode in skip_modes:  # every env before any row: a bad kwarg value fails before the work starts
            # the mode itself, whatever the id registers (v2 registers linear): settings of another mode are
            # cleared unless the user gave them (then the env refuses the combination)
            registered = gym.spec(env_id).kwargs
            extra = {} if mode == IDENTITY and "skip_mode" not in registered else {"skip_mode": mode}
            if mode != "linear" and "linear_rank" in registered and "linear_rank" not in env_kwargs:
                extra["linear_rank"] = None
            if mode == IDENTITY and "calibration_documents" in registered \
                    and "calibration_documents" not in env_kwargs:
                extra["calibration_documents"] = None
            envs[mode] = gym.make(env_id, split=split, **env_kwargs, **bare, **extra)
        first = envs[skip_modes[0]].unwrapped
        generator, spec = first.generator, first.plan_spec
        identity = model_identity(generator, config)
        if stored is not None:
            check_identity(stored, generator, config, what=f"profile rows {folder / ROWS_CSV}",
                           fix="write this profile to another folder (--out) or delete that one")
        # a calibrated mode's bypasses were fitted on its calibration documents: no mode is profiled on them, so
        # that every mode is measured on the same documents, all of them out of sample for the bypasses
        reserved = set().union(*(set(e.unwrapped.evaluator.calibration_ids) for e in envs.values()))
        pool = [ex for ex in first.examples if ex.id not in reserved]
        examples = pool[: int(num_docs)]
        if len(examples) < num_docs:
            print(f"skipenv profile: split {split!r} has {len(examples)} documents; profiling those (not {num_docs})",
                  file=sys.stderr)
        cands = candidates(spec, families)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ROWS_CSV
        done: set = set()
        if path.exists():
            old = _read_rows(path)
            ids = dict(zip(old["doc"].astype(int), old["example_id"]))
            wrong = {d: e for d, e in ids.items() if d < len(pool) and pool[d].id != e}
            if wrong:
                d, e = next(iter(wrong.items()))
                raise ValueError(f"profile rows {path}: document {d} is {e!r} there but "
                                 f"{pool[d].id!r} in split {split!r} now (the task's data changed, or a calibrated "
                                 f"skip mode now reserves its calibration documents); write "
                                 f"this profile to another folder (--out)")
            done = set(zip(old["doc"].astype(int), old["candidate"], old["mode"]))
        (folder / IDENTITY_JSON).write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
        todo = [(mode, i, c) for mode in skip_modes for i in range(len(examples)) for c in cands
                if (i, c.label, mode) not in done]
        computed = 0
        if todo:
            if not path.exists():
                path.write_text(",".join(ROW_COLUMNS) + "\n")
            bar = tqdm(total=len(todo), desc="profile", unit="row", disable=not progress)
            for mode in skip_modes:
                env = envs[mode].unwrapped
                docs = sorted({i for m, i, _ in todo if m == mode})
                if docs:
                    env.prefetch([examples[i] for i in docs], progress=progress)  # batched full-model references
                with open(path, "a", encoding="utf-8") as f:
                    for m, i, c in todo:
                        if m != mode:
                            continue
                        ex = examples[i]
                        o = env.outcome(c.plan(spec), ex)
                        obs = int(o.flops_breakdown["observation"])
                        row = {"split": split, "doc": i, "example_id": str(ex.id), "mode": mode,
                               "candidate": c.label, "family": c.family, "index": c.index,
                               "quality": float(o.quality), "quality_full": float(o.quality_full),
                               "loss": float(o.quality_full - o.quality),
                               "within_tau": bool(constraint_satisfied(o.quality, o.quality_full, tau)),
                               "cost": float(o.cost), "flops": int(o.flops), "flops_full": int(o.flops_full),
                               "observation_flops": obs, "flops_saved": float(1.0 - (o.flops - obs) / o.flops_full),
                               "num_generated": int(o.num_generated)}
                        pd.DataFrame([row], columns=list(ROW_COLUMNS)).to_csv(f, header=False, index=False)
                        f.flush()  # one complete line per row: a kill loses at most the row being written
                        computed += 1
                        bar.update(1)
            bar.close()
    finally:
        for env in envs.values():
            env.close()
    rows = _read_rows(path) if path.exists() else pd.DataFrame(columns=list(ROW_COLUMNS))
    wanted = {c.label for c in cands}
    rows_now = rows[rows["mode"].isin(skip_modes) & rows["candidate"].isin(wanted) & (rows["doc"] < len(examples))]
    summary = summarize(rows_now, tau, modes=skip_modes)
    summary.to_csv(folder / SUMMARY_CSV, index=False)
    title = (f"{env_id} {json.dumps(env_kwargs)}: {len(examples)} {split} documents, tau = {tau}, "
             f"model {identity['model_fingerprint']}")
    (folder / TABLE_MD).write_text(f"# Profile: {title}\n\n" + format_table(summary, tau) + "\n")
    plot_profile(summary, folder / PLOT_PNG, tau=tau, title=f"{env_id}: one bit at a time ({len(examples)} {split} "
                                                             f"documents, tau = {tau})")
    return ProfileResult(rows_now.reset_index(drop=True), summary, float(tau), folder, computed)


# ---------------------------------------------------------------------------------------------- analysis
def summarize(rows: "pd.DataFrame", tau: float, modes: Sequence[str] | None = None) -> "pd.DataFrame":
    """One row per (candidate, mode), sorted by family (:data:`CANDIDATE_FAMILIES` order; encoder before decoder),
    then index, then mode (``modes`` order, else alphabetical).

    Args:
        rows: per-document rows (:data:`ROW_COLUMNS`).
        tau: the tolerance (stored in the ``tau`` column; ``within_tau`` was judged per row at it).

    Returns:
        Columns ``candidate, family, index, mode, documents, flops_saved`` (mean fraction of the full model's FLOPs
        the bit removes), ``env_flops_saved`` (mean ``1 - cost``, observation charged, as ``info["flops_saved"]``),
        ``loss_mean, loss_median, loss_q10, loss_q90`` (quality loss over documents; quantiles by numpy's default
        linear interpolation), ``within_tau`` (share of documents meeting the constraint), ``tau``.
    """
    import pandas as pd

    cols = ["candidate", "family", "index", "mode", "documents", "flops_saved", "env_flops_saved", "loss_mean",
            "loss_median", "loss_q10", "loss_q90", "within_tau", "tau"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    modes = list(modes) if modes is not None else sorted(rows["mode"].unique())
    out = []
    for (cand, mode), g in rows.groupby(["candidate", "mode"], sort=False):
        loss = g["loss"].to_numpy(float)
        out.append({"candidate": cand, "family": g["family"].iloc[0], "index": int(g["index"].iloc[0]),
                    "mode": mode, "documents": int(len(g)), "flops_saved": float(g["flops_saved"].mean()),
                    "env_flops_saved": float((1.0 - g["cost"]).mean()), "loss_mean": float(loss.mean()),
                    "loss_median": float(np.median(loss)), "loss_q10": float(np.quantile(loss, 0.1)),
                    "loss_q90": float(np.quantile(loss, 0.9)),
                    "within_tau": float(g["within_tau"].astype(bool).mean()), "tau": float(tau)})
    df = pd.DataFrame(out, columns=cols)
    stack = df["candidate"].map(lambda s: 0 if s.startswith("encoder.") else 1)
    order = df["family"].map(CANDIDATE_FAMILIES.index)
    mode_rank = df["mode"].map(lambda m: modes.index(m) if m in modes else len(modes))
    df = df.assign(_f=order, _s=stack, _m=mode_rank).sort_values(["_f", "_s", "index", "_m"], kind="stable")
    return df.drop(columns=["_f", "_s", "_m"]).reset_index(drop=True)


def sublayers_within_tau(summary: "pd.DataFrame", share: float = 0.5) -> dict[str, tuple[int, int]]:
    """Per mode: ``(sublayer bits within tau on >= share of the documents, sublayer bits profiled)`` (attention and
    FFN candidates; token segments are not sublayers)."""
    out = {}
    sub = summary[summary["family"].isin(("attention", "ffn"))]
    for mode, g in sub.groupby("mode", sort=False):
        out[str(mode)] = (int((g["within_tau"] >= share - 1e-12).sum()), int(len(g)))
    return out


def format_table(summary: "pd.DataFrame", tau: float) -> str:
    """The summary as a markdown table (FLOPs saved and within-tau shares in %, losses with 4 decimals), then one
    line per mode with the count of :func:`sublayers_within_tau`."""
    from .stats import markdown_table

    if summary.empty:
        return "(no rows)"
    t = summary[["candidate", "mode", "documents"]].copy()
    t["FLOPs saved %"] = (100 * summary["flops_saved"]).map(lambda v: f"{v:.2f}")
    for col, name in (("loss_mean", "mean loss"), ("loss_median", "median loss"), ("loss_q10", "loss q10"),
                      ("loss_q90", "loss q90")):
        t[name] = summary[col].map(lambda v: f"{v:.4f}")
    t[f"within tau {tau:g} %"] = (100 * summary["within_tau"]).map(lambda v: f"{v:.0f}")
    lines = [markdown_table(t)]
    for mode, (k, n) in sublayers_within_tau(summary).items():
        lines.append(f"\n{mode}: {k} of {n} sublayer bits within tau on >= 50 % of documents")
    return "\n".join(lines)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLOURS = {"attention": "tab:blue", "ffn": "tab:orange", "tokens": "tab:green"}


def plot_profile(summary: "pd.DataFrame", path: str | Path, *, tau: float, title: str = "") -> Path:
    """Mean quality loss vs FLOPs saved per candidate: x = mean FLOPs saved by the bit (% of the full model), y =
    mean quality loss (log axis; symmetric-log, linear within ``tau / 10``, when a mean loss is <= 0), one marker shape per skip mode, one colour
    per family, each point labelled by family initial and index (``a3``: attention of layer 3, ``t7``: token segment 7);
    the dashed line marks ``tau``. Saved as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    modes = list(dict.fromkeys(summary["mode"]))
    for m, mode in enumerate(modes):
        for family, colour in _COLOURS.items():
            g = summary[(summary["mode"] == mode) & (summary["family"] == family)]
            if g.empty:
                continue
            ax.scatter(100 * g["flops_saved"], g["loss_mean"], marker=_MARKERS[m % len(_MARKERS)], s=36,
                       c=colour, edgecolors="k", linewidths=0.5, alpha=0.85, label=f"{family}, {mode}")
            if len(summary) <= 4 * 100:  # each point named by family initial and index: a3 = attention 3
                for x, y, i in zip(100 * g["flops_saved"], g["loss_mean"], g["index"]):
                    ax.annotate(f"{family[0]}{i}", (x, y), textcoords="offset points", xytext=(4, 2), fontsize=6,
                                color="0.3")
    ax.axhline(tau, ls="--", c="tab:red", lw=1, label=f"tau = {tau:g}")
    lowest = float(summary["loss_mean"].min()) if len(summary) else 0.0
    if lowest > 0:
        ax.set_yscale("log")
    else:  # a bit that improves quality on average: symmetric log, linear near 0
        ax.set_yscale("symlog", linthresh=max(tau / 10, 1e-6))
        ax.set_ylim(bottom=min(1.5 * lowest, -tau / 10))
    ax.set_xlabel("FLOPs saved by the bit (% of the full model, mean over documents)")
    ax.set_ylabel("mean quality loss (quality_full - quality)")
    ax.set_title(title or "profile: one bit at a time")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
