"""The main job: train a learner on ``SwitchDec-XSum-v1`` (embedded SmolLM2, real XSum train split; default
``ppo-bc`` under v1's expected constraint, PPO under ``SwitchDec-XSum-v0``'s per-input one), save the policy,
evaluate it on the XSum test split against the random policy, "skip nothing" and the best static plan of the probe's
menu, and write a table (CSV + JSON), the margins and a quality-vs-FLOPs scatter plot next to the policy
(:func:`run_main_job`).

Command line: ``skipenv train`` (:mod:`skipenv.cli.train`; see ``skipenv train --help``). Measured at the defaults (v1, 96 train / 40 test
documents, 7 menu plans, 384 episodes), references already cached, from a fresh clone on 2 lightly loaded CPU cores:
7.2 minutes, 6.2 of them evaluating the menu; computing the references the first time adds ~1.5-3 s per document.
The job states torch's thread
setting and the machine's load first (warning when the load average exceeds the cores), prints a time estimate after
the first 8 training episodes (and checks the load again then), and labels every progress bar; with standard error
redirected to a file, bars become periodic plain lines (:mod:`skipenv.util.progress`).

The job is a sequence of named steps over one :class:`MainJob` (issue 19): :func:`check_args` (everything checked
before anything loads), then :data:`MAIN_JOB_STEPS` = :func:`compute_references`, :func:`evaluate_job_menu`,
:func:`prepare_warm_start`, :func:`train_job_learner`, :func:`evaluate_job_policies` and :func:`write_report`.

Why this module is long: the main job's steps share one :class:`MainJob` (the run folder, the envs, the menu
table, the learned policy) and their printed progress lines; they sit next to the job's own helpers (PPO training,
the best static plan, the paired and expected-constraint margins, the printed table), which only the job uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..envs.registration import DEFAULT_ENV_ID

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["train_ppo", "run_main_job", "main_job_menu", "expected_margins", "best_static_plan",
           "paired_margin", "format_table", "MainJob", "MAIN_JOB_STEPS", "check_args", "compute_references",
           "evaluate_job_menu", "prepare_warm_start", "train_job_learner", "evaluate_job_policies", "write_report"]


def train_ppo(env, *, total_timesteps: int, seed: int = 0, out_dir: str | Path | None = None,
              device: str = "cpu", progress_bar: bool = True, on_early_speed=None, warm_start=None,
              bc_epochs: int = 300, **overrides):
    """Train PPO (``MlpPolicy``, :data:`skipenv.policies.sb3.ALGORITHMS` defaults) on a one-shot env and return the model.

    Episodes are one step long, so ``gamma`` and ``gae_lambda`` do not matter; the advantage is the reward minus
    the value baseline. ``learning_rate=1e-3`` (3× SB3's default) because budgets here are a few hundred
    episodes. Logs ``monitor.csv`` (per-episode reward, quality, cost) and TensorBoard under ``out_dir`` and saves
    ``policy.zip`` there.

    Args:
        progress_bar: a tqdm bar labelled ``train ppo`` (episodes, rate, time left, mean reward of the last 64
            episodes); it prints plain periodic lines when standard error is a log file (see :mod:`skipenv.util.progress`).
        on_early_speed: called once as ``on_early_speed(episodes_done, seconds)`` after the first 8 episodes (or
            the first rollout, if shorter), e.g. to print a time estimate.
        warm_start: :class:`~skipenv.policies.warm_start.WarmStartTargets` cloned into the policy's action distribution
            before PPO starts (:func:`skipenv.policies.warm_start.behaviour_cloning`, ``bc_epochs`` epochs): the
            ``ppo-bc`` learner.
    """
    from ..policies.sb3 import make_sb3

    model = make_sb3("ppo", env, seed=seed, device=device, out_dir=out_dir, total_timesteps=total_timesteps,
                     **overrides)
    if warm_start is not None:
        from ..policies.warm_start import behaviour_cloning

        behaviour_cloning(model, warm_start.observations, warm_start.actions, weights=warm_start.weights,
                          epochs=bc_epochs, seed=seed)
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


def _threads_line(running: bool = False) -> tuple[str, str | None]:
    """One line stating torch's thread setting and the machine's load; and a warning if it looks oversubscribed.

    Args:
        running: this job is already computing, so its own torch threads are part of the load average; the warning
            then needs at least half a core's worth of load from other processes (without it, a job using both
            cores of an otherwise idle 2-core machine warned about "other processes" at load 2.0).
    """
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
    others = load - threads if running else load  # the load of other processes (this job's threads excluded)
    if load > cores and others >= 0.5:
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
    """The plan of the probe's default menu (:func:`skipenv.policies.menu.default_menu`: skip nothing, drop the last 1–4
    token segments, drop segment 3 or 5, skip one attention sublayer) with the highest mean reward of ``env`` (its
    reward rule and tau) over ``examples`` — the per-input static baseline a learned policy has to beat, chosen on
    train documents only. (:func:`run_main_job` makes the same choice from its evaluated menu table, over
    :func:`main_job_menu`, without stepping the plans again.)

    Returns:
        ``(name, plan, mean_rewards)`` with ``mean_rewards`` = menu name → mean reward over ``examples``.

    Raises:
        ValueError: no ``examples`` (there is no mean reward to choose by).
    """
    from tqdm import tqdm

    from ..policies.menu import default_menu

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
    with 95 % percentile-bootstrap CIs over documents (:func:`skipenv.evaluation.stats.bootstrap_ci`).

    Returns:
        ``{"documents", "reward", "reward_ci", "flops_saved", "flops_saved_ci"}``.

    Raises:
        ValueError: ``a`` and ``b`` share no test document (e.g. a misspelt policy name), instead of a NaN margin.
    """
    from .stats import bootstrap_ci

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
        out[f"{col}_ci"] = list(bootstrap_ci(d, one_value="nan"))
    return out


def expected_margins(table, learned: pd.DataFrame, tau: float, *, seed: int = 0, passthrough: int = 2) -> dict:
    """Margins of a learned policy under the expected constraint (mean quality loss ``<= tau``), on the test
    documents of a menu ``table`` (:func:`skipenv.evaluation.probe.evaluate_menu`, train part used to fit the baselines).

    The learned policy's per-document quality loss and FLOPs saved (``learned``: rows ``example_id, quality,
    quality_full, flops_saved`` of its test episodes) are compared, paired over the test documents, with

    - ``best_static_mixture``: the static mixture of menu plans chosen on the train documents
      (:func:`skipenv.policies.menu.mixture_lp`; its exact expectation per document, no sampling);
    - ``static_front_at_equal_quality``: the static mixture fitted *on the test documents* at the learned policy's
      own mean test loss — the strongest static policy of equal quality (favours the static side);
    - and the same two for the supervised probe policy (:class:`skipenv.policies.menu.ProbePolicy`, fitted on the train
      documents; ``probe``: its randomised expected-constraint rule, ``probe_deterministic``: the single-multiplier
      rule the ``-bc`` learners clone): the headroom a contextual policy over the menu reached, for scale.

    Returns:
        ``{"documents", "tau", "learned": {mean_quality_loss, mean_flops_saved, mean_constraint_holds},
        "best_static_mixture": {...}, "probe": {...}, "probe_deterministic": {...}, "margins": [...]}`` where each
        margin is ``{"policy",
        "baseline", "flops_saved", "flops_saved_ci", "quality_loss", "quality_loss_ci"}`` (means of per-document
        differences, 95 % percentile-bootstrap CIs over documents, :func:`skipenv.evaluation.stats.bootstrap_ci`), and
        ``share_of_probe_margin`` / ``share_of_probe_deterministic_margin`` = the learned policy's margin over the
        static front at equal quality divided by that probe rule's (None when the rule has no positive margin).
        FLOPs saved are fractions of the full model's FLOPs, losses in the quality signal's units.

    Raises:
        ValueError: the learned episodes share no document with the table's test split, or report another
            full-model quality for a shared document than the table (episodes of a different env).
    """
    import numpy as np

    from .stats import bootstrap_ci
    from ..policies.menu import mixture_lp
    from .probe import _fit_policies

    train, test = tuple(table.config.get("splits", ("train", "test")))
    tr, te = table.matrices(train), table.matrices(test)
    empty = table.plans.index(table.empty) if table.empty is not None else None
    _, _, mix, probe = _fit_policies(tr, tau, empty, passthrough, seed)
    ids = [str(i) for i in te["example_id"]]
    ep = learned.drop_duplicates("example_id").set_index(learned["example_id"].astype(str).drop_duplicates())
    keep = [j for j, i in enumerate(ids) if i in ep.index]
    if not keep:
        raise ValueError(f"the learned policy's episodes ({len(ep)}) share no document with the table's "
                         f"{len(ids)} test documents")
    te = {k: v[keep] for k, v in te.items()}
    rows = ep.loc[[ids[j] for j in keep]]
    # same document, same full-model quality: else the episodes come from another env (quality signal, model,
    # input budget) than the table, and the paired differences would mix units
    full = rows["quality_full"].to_numpy(float)
    off = ~np.isclose(full, te["quality_full"][:, 0], rtol=1e-6, atol=1e-9)
    if off.any():
        j = int(np.argmax(off))
        raise ValueError(f"the learned policy's episodes and the table disagree on the full model's quality of "
                         f"{int(off.sum())} of {len(off)} shared test documents (e.g. {ids[keep[j]]!r}: "
                         f"{full[j]!r} vs {te['quality_full'][j, 0]!r}): they come from different envs (quality "
                         f"signal, model or input budget); evaluate both on the same env")
    per_doc = {"learned": ((rows["quality_full"] - rows["quality"]).to_numpy(float),
                           rows["flops_saved"].to_numpy(float))}
    D = len(keep)

    def weights(w):
        return (w * te["loss"]).sum(1), (w * te["saved"]).sum(1)

    per_doc["best_static_mixture"] = weights(np.tile(mix, (D, 1)))
    per_doc["probe"] = weights(probe.plan_probabilities(te["X"], "expected"))
    per_doc["probe_deterministic"] = weights(probe.plan_probabilities(te["X"], "expected", deterministic=True))
    out = {"documents": D, "tau": float(tau)}
    for name, (loss, saved) in per_doc.items():
        out[name] = {"mean_quality_loss": float(loss.mean()), "mean_flops_saved": float(saved.mean()),
                     "mean_constraint_holds": bool(loss.mean() <= tau + 1e-12)}
    out["best_static_mixture"]["plans"] = {table.plans[j]: float(p) for j, p in enumerate(mix) if p > 1e-6}
    margins = []
    for name in ("learned", "probe", "probe_deterministic"):
        loss, saved = per_doc[name]
        baselines = {"best static mixture (train)": per_doc["best_static_mixture"]}
        try:  # the static front at this policy's own mean test loss, fitted on the test documents
            eq = mixture_lp(te["loss"].mean(0), te["saved"].mean(0), max(float(loss.mean()), 0.0))
            baselines["static front at equal quality (test)"] = weights(np.tile(eq, (D, 1)))
        except ValueError:  # no static mixture is that good (e.g. a loss below skip nothing's)
            pass
        for base, (b_loss, b_saved) in baselines.items():
            d_s, d_l = saved - b_saved, loss - b_loss
            margins.append({"policy": name, "baseline": base, "flops_saved": float(d_s.mean()),
                            "flops_saved_ci": list(bootstrap_ci(d_s, seed=seed, one_value="nan")),
                            "quality_loss": float(d_l.mean()),
                            "quality_loss_ci": list(bootstrap_ci(d_l, seed=seed, one_value="nan"))})
    out["margins"] = margins
    eq_margin = {m["policy"]: m["flops_saved"] for m in margins
                 if m["baseline"] == "static front at equal quality (test)"}
    for name in ("probe", "probe_deterministic"):
        out[f"share_of_{name}_margin"] = (eq_margin.get("learned", 0.0) / eq_margin[name]
                                          if eq_margin.get(name, 0.0) > 0 else None)
    return out


def main_job_menu(spec) -> dict:
    """The main job's menu: the token-segment plans of :func:`skipenv.policies.menu.default_menu` (skip nothing, drop the
    last 1–4 segments, drop segment 3 or 5), without its one sublayer plan (skip attention 6). Measured on XSum
    (96 and 150 train documents): the probe's rules never chose that plan, and it is the costliest to evaluate (a
    sublayer skipped in layer 6 recomputes layers 6–30 over the whole input, ~0.8 of a forward pass, where a
    lead-N plan recomputes only the target), so leaving it out cuts the menu's time by about a third.

    Returns:
        name → :class:`~skipenv.plan.SkipPlan`, in the default menu's order.
    """
    from ..policies.menu import default_menu

    return {name: plan for name, plan in default_menu(spec).items()
            if not any(plan.encoder_attention + plan.encoder_ffn + plan.decoder_attention + plan.decoder_ffn)}


#: what :func:`run_main_job` writes into its output folder; a run removes these first, so that a folder never mixes
#: the outputs of two runs (also after an interrupted one)
RUN_OUTPUTS = ("policy.zip", "policy.pt", "policy.json", "summary.csv", "summary.json", "episodes.csv",
               "monitor.csv", "progress.csv", "quality_vs_flops.png", "menu", "tensorboard")
#: marker file present while a run writes the folder: ``{"run_id", "started", "pid"}``; left behind by an
#: interrupted run (the folder's outputs are then partial), removed when the run finishes
RUNNING_MARKER = "RUNNING"


def _refuse_if_running(marker: Path, out: Path) -> None:
    """Raise when ``marker`` (:data:`RUNNING_MARKER`) names a process of this host that is still alive: another
    run is writing ``out``, and starting here would delete its outputs under it. A marker of a dead process (an
    interrupted run), of another host or that cannot be parsed is left to :func:`_start_run` to replace.

    Raises:
        ValueError: the run named by the marker is alive (the message names its pid, run id and the fix).
    """
    import os
    import socket

    try:
        info = json.loads(marker.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid == os.getpid() or info.get("host", socket.gethostname()) != socket.gethostname():
        return
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # it exists, owned by another user
    raise ValueError(f"{out} is being written by another run (pid {pid}, run id {info.get('run_id')!r}, started "
                     f"{info.get('started')}); wait for it to finish or choose another --out (if pid {pid} is not a "
                     f"skipenv run, delete {marker})")


def _start_run(out: Path) -> str:
    """Mark ``out`` as being written by a new run (:data:`RUNNING_MARKER`) and remove an earlier run's
    :data:`RUN_OUTPUTS` (one line on stderr names them); returns the new run id. Files the job does not write are
    kept."""
    import os
    import shutil
    import uuid
    from datetime import datetime, timezone

    import socket

    marker = out / RUNNING_MARKER
    interrupted = marker.is_file()
    if interrupted:
        _refuse_if_running(marker, out)
    run_id = uuid.uuid4().hex[:12]
    marker.write_text(json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    old = [name for name in RUN_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    for name in old:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if old or interrupted:
        _say(f"skipenv train: {out} held the outputs of {'an interrupted' if interrupted else 'an earlier'} run "
             f"({', '.join(old) or 'no outputs yet'}): removed, so the folder holds this run's outputs only")
    return run_id


@dataclass
class MainJob:
    """What the main job's steps share (:func:`run_main_job`): the checked arguments, then what each step adds.

    :func:`check_args` fills the arguments; each step of :data:`MAIN_JOB_STEPS` reads what the steps before it
    wrote and adds its own fields (named after the step under "Filled by"). Times are wall-clock seconds.

    Filled by :func:`compute_references`: ``out`` (the run folder), ``train_env`` / ``test_env`` (unwrapped
    one-shot envs under the per-input formulation; the job applies the id's formulation itself), ``tau``,
    ``n_menu`` (menu documents), ``s_per_ref`` (seconds per computed reference, ``None`` when all were cached),
    ``threads_warning``, ``t0`` (the job's start, :func:`time.perf_counter`).
    :func:`evaluate_job_menu`: ``table`` (:class:`~skipenv.evaluation.probe.ProbeTable`, ``None`` without a menu),
    ``menu``, ``s_menu`` (seconds per teacher-forced menu episode), ``t_menu``, ``static_name`` / ``static_plan``
    (the best static plan), ``probe`` (the probe policy fitted on the menu's train documents).
    :func:`prepare_warm_start`: ``warm`` (warm-start targets or ``None``), ``lam_init``.
    :func:`train_job_learner`: ``learn_env`` (the env the learner trained on), ``learned`` (the policy),
    ``t_train``.
    :func:`evaluate_job_policies`: ``episodes`` (one row per (policy, test document)), ``summary`` (one row per
    policy, :func:`skipenv.evaluation.harness.summarize`), ``static_label``.
    :func:`write_report`: ``meta`` (the contents of ``summary.json``).
    """

    out_dir: str | Path
    env_id: str
    formulation: str
    algo: str
    total_timesteps: int
    train_examples: int
    test_examples: int
    static_examples: int
    env_kwargs: dict
    seed: int = 0
    device: str = "cpu"
    model: str = "smollm2-135m-instruct"
    progress_bar: bool = True
    rouge: bool = False
    out: Path | None = None
    train_env: Any = None
    test_env: Any = None
    tau: float | None = None
    n_menu: int = 0
    s_per_ref: float | None = None
    threads_warning: str | None = None
    t0: float = 0.0
    table: Any = None
    menu: dict | None = None
    s_menu: float | None = None
    t_menu: float = 0.0
    static_name: str | None = None
    static_plan: Any = None
    probe: Any = None
    warm: Any = None
    lam_init: float = 0.0
    learn_env: Any = None
    learned: Any = None
    t_train: float = 0.0
    episodes: Any = None
    summary: Any = None
    static_label: str | None = None
    meta: dict = field(default_factory=dict)
    run_id: str | None = None


def check_args(out_dir: str | Path = "runs/ppo-xsum", *, total_timesteps: int = 384, train_examples: int = 96,
               test_examples: int = 40, seed: int = 0, device: str = "cpu", model: str = "smollm2-135m-instruct",
               env_id: str = DEFAULT_ENV_ID, progress_bar: bool = True, algo: str | None = None,
               static_examples: int | None = None, env_kwargs: dict | None = None,
               rouge: bool = False) -> MainJob:
    """Step 0 of the main job: check every argument of :func:`run_main_job` before anything loads and return the
    job with its resolved id, formulation, learner and menu size. Nothing is created on disk.

    Raises:
        ValueError: as listed under :func:`run_main_job`; ``gymnasium.error.Error`` for an unknown id.
    """
    import skipenv  # noqa: F401  (registers the ids)
    from ..policies.learners import LEARNERS, WARM_STARTED

    from ..envs.registration import resolve_env_id

    env_id = resolve_env_id(env_id)  # an unknown id fails here, before the output folder is created
    from ..envs.registration import _ONE_SHOT, SPECS

    if env_id in SPECS and SPECS[env_id][0] != _ONE_SHOT:
        raise ValueError(f"skipenv train needs a one-shot env (SwitchDecEnv); {env_id!r} is "
                         f"{SPECS[env_id][0].rsplit(':', 1)[-1]}: use the id without '-Layerwise'")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch finds no CUDA GPU on this machine; use --device cpu "
                             f"(device='cpu')")
    from ..envs.registration import registered_formulation

    import gymnasium as gym

    if {**gym.spec(env_id).kwargs, **(env_kwargs or {})}.get("skip_threshold") is not None:
        raise ValueError(f"{env_id} takes real-valued skip scores (skip_threshold, Box actions); skipenv train's "
                         f"warm start and baselines step 0 / 1 skip bits: train on SwitchDec-XSum-v1 (the default, "
                         f"--env SwitchDec-XSum-v1), or train a Box policy on {env_id} yourself (README, 'SB3's "
                         f"defaults')")
    formulation = registered_formulation(env_id)
    if formulation not in ("per_input", "expected"):
        raise ValueError(f"{env_id} applies the {formulation!r} formulation; skipenv train runs per_input and "
                         f"expected ids")
    algo = algo or ("ppo-bc" if formulation == "expected" else "ppo")
    if algo not in LEARNERS:
        raise ValueError(f"unknown learner {algo!r}; choose one of {sorted(LEARNERS)}")
    for name, v in (("total_timesteps", total_timesteps), ("train_examples", train_examples),
                    ("test_examples", test_examples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    static_given = static_examples is not None
    if static_examples is None:
        static_examples = train_examples
    if isinstance(static_examples, bool) or not isinstance(static_examples, int) or static_examples < 0:
        raise ValueError(f"static_examples must be an integer >= 0 (0 = no best-static baseline), got "
                         f"{static_examples!r}")
    n_menu = min(static_examples, train_examples)
    if algo in WARM_STARTED and n_menu < 4:
        got = (f"static_examples={static_examples} (--static-examples), train_examples={train_examples}"
               if static_given else f"train_examples={train_examples} (--train-examples; the menu uses all of "
                                    f"them by default)")
        fix = ("static_examples >= 4 and train_examples >= 4 (--static-examples / --train-examples)" if static_given
               else "train_examples >= 4 (--train-examples)")
        raise ValueError(f"{algo} clones the probe policy fitted on the menu's train documents, which needs >= 4 "
                         f"of them; got {got}. Use {fix}, or a learner without warm start (--algo ppo, "
                         f"algo='ppo'; warm-started: {sorted(WARM_STARTED)})")
    if 0 < n_menu < 4:  # the menu's static baselines come with the probe policy, fitted on >= 4 documents
        raise ValueError(f"the probe's menu (best static plan, probe policy) needs >= 4 train documents, got "
                         f"min(static_examples, train_examples) = {n_menu}; use static_examples >= 4 and "
                         f"train_examples >= 4 (--static-examples / --train-examples), or static_examples=0 "
                         f"(--static-examples 0) to leave the static baseline out")
    env_kwargs = dict(env_kwargs or {})
    reserved = sorted({"split", "num_examples", "model", "device", "formulation", "formulation_kwargs"}
                      & set(env_kwargs))
    if reserved:
        raise ValueError(f"env_kwargs {reserved} are set by the main job itself (its own arguments, or the id's "
                         f"registered formulation); drop them")
    return MainJob(out_dir=out_dir, env_id=env_id, formulation=formulation, algo=algo,
                   total_timesteps=total_timesteps, train_examples=train_examples, test_examples=test_examples,
                   static_examples=static_examples, env_kwargs=env_kwargs, seed=seed, device=device, model=model,
                   progress_bar=progress_bar, rouge=rouge, n_menu=n_menu)


def compute_references(job: MainJob) -> None:
    """Step 1: state torch's threads and the machine's load, create the run folder, build the train and test envs
    (a split smaller than asked is used whole, with a line on stderr) and compute the full-model references of the
    train documents (cached on disk)."""
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)

    say = _say
    from ..util.threads import configure_torch_threads

    configure_torch_threads()  # as loading the generator would, so that the line below states the real count
    line, warning = _threads_line()
    job.threads_warning = warning
    say(line)
    if warning:
        say(warning)
    out = job.out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job.run_id = _start_run(out)
    job.t0 = time.perf_counter()
    env_kwargs = job.env_kwargs
    env_id = job.env_id
    env_kwargs.update(model=job.model, device=job.device, formulation="per_input")  # the job applies the formulation
    train_env = job.train_env = gym.make(env_id, split="train", num_examples=job.train_examples, **env_kwargs).unwrapped
    asked_train = job.train_examples
    train_examples = job.train_examples = len(train_env.examples)  # the split may hold fewer documents than asked
    if train_examples < asked_train:
        say(f"skipenv train: the train split holds {train_examples} documents, fewer than the {asked_train} asked "
            f"(--train-examples): using {train_examples}")
    job.n_menu = min(job.static_examples, train_examples)
    say(f"skipenv train: [1/4] full-model references of {train_examples} train documents (cached on disk)")
    t_ref0 = time.perf_counter()
    computed = train_env.prefetch(progress=job.progress_bar)  # batched references
    job.s_per_ref = (time.perf_counter() - t_ref0) / computed if computed else None
    test_env = job.test_env = gym.make(env_id, split="test", num_examples=job.test_examples, **env_kwargs).unwrapped
    asked_test = job.test_examples
    test_examples = job.test_examples = len(test_env.examples)
    if test_examples < asked_test:
        say(f"skipenv train: the test split holds {test_examples} documents, fewer than the {asked_test} asked "
            f"(--test-examples): using {test_examples}")
    job.tau = train_env.tau


def evaluate_job_menu(job: MainJob) -> None:
    """Step 2 (skipped when ``n_menu`` is 0): evaluate the probe's token-segment menu (:func:`main_job_menu`) on
    ``n_menu`` train and all test documents (teacher-forced, :func:`skipenv.evaluation.probe.evaluate_menu`;
    saved as ``menu/``), fit the probe policy and choose the best static plan (the cheapest plan within tau under
    the expected formulation; the highest mean train reward of the env under per-input)."""
    from ..policies.learners import WARM_STARTED

    say, out, tau, formulation = _say, job.out, job.tau, job.formulation
    n_menu, test_examples, train_env = job.n_menu, job.test_examples, job.train_env
    if n_menu:
        from .probe import _fit_policies, evaluate_menu

        say(f"skipenv train: [2/4] the probe's menu on {n_menu} train and {test_examples} test documents "
            f"(best static plan{', static mixture' if formulation == 'expected' else ''}, probe policy"
            f"{', warm-start targets' if job.algo in WARM_STARTED else ''}; saved in {out / 'menu'})")
        envs = {"train": train_env, "test": job.test_env}
        menu = job.menu = main_job_menu(train_env.plan_spec)
        t_menu0 = time.perf_counter()
        table = job.table = evaluate_menu(lambda split, n: envs[split], menu, num_train=n_menu,
                                          num_test=max(test_examples, 2),
                                          config={"env_id": job.env_id, "tau": tau}, progress=job.progress_bar)
        job.t_menu = time.perf_counter() - t_menu0
        job.s_menu = job.t_menu / len(table.outcomes)  # seconds per uncached teacher-forced episode
        table.save(out / "menu")
        tr = table.matrices("train")
        empty = table.plans.index(table.empty) if table.empty is not None else None
        _, static_ex, _, job.probe = _fit_policies(tr, tau, empty, 2, job.seed)
        if formulation == "expected":
            static_j = static_ex
        else:  # the highest mean of the env's own reward (its reward_mode / cost_weight), as the learner sees it
            o = table.outcomes[table.outcomes["split"] == "train"]
            static_j = int(o.pivot(index="doc", columns="plan", values="reward")[table.plans].mean(0).to_numpy()
                           .argmax())  # ties: the first menu plan, skip nothing
        job.static_name = table.plans[static_j]
        job.static_plan = menu[job.static_name]
    train_env.reset(seed=job.seed)


def prepare_warm_start(job: MainJob) -> None:
    """Step 2b (warm-started learners only, :data:`skipenv.policies.learners.WARM_STARTED`): the probe policy's
    plans on the menu's train documents as behaviour-cloning targets
    (:func:`skipenv.policies.warm_start.warm_start_targets`, ``source="probe"``) and, under the expected
    formulation, the probe rule's Lagrange multiplier as the initial one."""
    from ..policies.learners import WARM_STARTED

    if job.algo in WARM_STARTED:
        from ..policies.warm_start import warm_start_targets

        job.warm = warm_start_targets(job.table, job.tau, env=job.train_env, source="probe",
                                      formulation=job.formulation, seed=job.seed)
        if job.formulation == "expected":
            job.lam_init = job.probe.expected_multiplier()


def train_job_learner(job: MainJob) -> None:
    """Step 3: train the learner for ``total_timesteps`` episodes under the id's formulation (through
    :class:`~skipenv.envs.wrappers.ExpectedConstraint` under the expected one), printing a time estimate after the
    first episodes; logs and the policy go to the run folder. ``t_train`` counts the training only (behaviour
    cloning of a warm start included)."""
    from ..policies.baselines import SB3Policy

    say, out, algo, formulation = _say, job.out, job.algo, job.formulation
    tau, train_env, lam_init, warm = job.tau, job.train_env, job.lam_init, job.warm
    total_timesteps, rouge, s_per_ref = job.total_timesteps, job.rouge, job.s_per_ref
    learn_env = train_env
    t_learn0 = time.perf_counter()  # training proper (warm start included), after the references and the menu
    if formulation == "expected":
        from ..envs.wrappers import ExpectedConstraint

        learn_env = ExpectedConstraint(train_env, tau, lam_init=lam_init)
    job.learn_env = learn_env
    n_eval = (4 if job.table is not None else 3) * job.test_examples

    def eta(done: int, seconds: float) -> None:
        s_step = seconds / max(done, 1)
        # an evaluation episode costs at most an uncached teacher-forced episode (training's may be outcome-cache
        # hits), plus one greedy generation with --rouge
        s_tf = max(s_step, job.s_menu or 0.0)
        s_gen = max(s_per_ref or 0.0, 2 * s_tf) if rouge else 0.0
        left_train = (total_timesteps - done) * s_step
        left_eval = n_eval * (s_tf + s_gen)
        say(f"skipenv train: first {done} episodes in {seconds:.0f} s ({s_step:.2f} s/episode); estimated time left: "
            f"training ~{_minutes(left_train)}, then evaluation of {n_eval} episodes up to ~{_minutes(left_eval)}")
        late_warning = _threads_line(running=True)[1]  # the load again, now that this job has run for a while
        if late_warning and not job.threads_warning:
            say(late_warning)

    say(f"skipenv train: [3/4] training {algo} for {total_timesteps} episodes under the {formulation} formulation"
        + ((f" (ConstrainedPG's own {algo[3:]} handler on the mean quality loss; the env's Lagrange multiplier "
            f"is not used)" if algo.startswith("pg-") else f" (Lagrange multiplier starts at {lam_init:.3g})")
           if formulation == "expected" else "")
        + (f", after cloning the probe policy's plans on {job.n_menu} train documents" if warm is not None else "")
        + f" (logs and policy in {out})")
    if algo in ("ppo", "ppo-bc"):
        job.learned = SB3Policy(train_ppo(learn_env, total_timesteps=total_timesteps, seed=job.seed, out_dir=out,
                                          device=job.device, progress_bar=job.progress_bar, on_early_speed=eta,
                                          warm_start=warm), name=algo)
    else:
        from ..policies.learners import train_learner

        job.learned, _ = train_learner(algo, learn_env, total_timesteps=total_timesteps, seed=job.seed,
                                       out_dir=out, progress_bar=job.progress_bar, device=job.device,
                                       warm_start=warm)
    job.t_train = time.perf_counter() - t_learn0


def evaluate_job_policies(job: MainJob) -> None:
    """Step 4: evaluate the learned policy, random (each bit skipped with probability 0.5), skip nothing and (with
    a menu) the best static plan on the test documents, one episode per (policy, document), ROUGE-L too with
    ``rouge``; write ``episodes.csv`` and ``summary.csv``."""
    import pandas as pd

    from ..policies.baselines import RandomPolicy, SkipNothing, StaticPlan
    from .harness import evaluate_policy, summarize

    test_env, seed, out = job.test_env, job.seed, job.out
    _say(f"skipenv train: [4/4] evaluating {job.algo}, random:0.5, skip-nothing"
         f"{' and the best static plan' if job.table is not None else ''} on {job.test_examples} test documents")
    policies = [job.learned, RandomPolicy(test_env, 0.5, seed=seed), SkipNothing(test_env)]
    if job.table is not None:
        job.static_label = f"best static: {job.static_name}"
        policies.append(StaticPlan(test_env, job.static_plan, name=job.static_label))
    episodes = job.episodes = pd.concat([evaluate_policy(p, test_env, seed=seed,
                                                         extra_quality=("rouge",) if job.rouge else (),
                                                         progress=job.progress_bar)
                                         for p in policies], ignore_index=True)
    summary = job.summary = summarize(episodes)
    episodes.to_csv(out / "episodes.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)


def write_report(job: MainJob) -> None:
    """Step 5: the margins against the best static plan (per-input: :func:`paired_margin`; expected:
    :func:`expected_margins`), printed and written with the run's settings and times to ``summary.json``, and the
    quality-vs-FLOPs scatter plot ``quality_vs_flops.png``."""
    from .plots import plot_pareto

    say, out, tau, formulation = _say, job.out, job.tau, job.formulation
    algo, learned, learn_env, table, episodes, summary = (job.algo, job.learned, job.learn_env, job.table,
                                                          job.episodes, job.summary)
    static_label, n_menu, seed, env_id = job.static_label, job.n_menu, job.seed, job.env_id
    meta = job.meta = {"env_id": env_id, "formulation": formulation, "algo": algo, "model": job.model,
                       "total_timesteps": job.total_timesteps, "train_examples": job.train_examples,
                       "test_examples": job.test_examples, "seed": seed, "menu_seconds": round(job.t_menu, 1),
                       "train_seconds": round(job.t_train, 1), "total_seconds": None, "tau": tau,
                       "quality": job.test_env.quality, "summary": summary.to_dict(orient="records")}
    if formulation == "expected":
        if algo.startswith("pg-"):  # ConstrainedPG ignores the wrapper's reward: its own handler's multiplier
            meta["lagrange_multiplier"] = {"handler": algo[3:], "final": float(learned.handler.lam)}
        else:
            meta["lagrange_multiplier"] = {"initial": job.lam_init, "final": learn_env.lam}
    if table is not None:
        meta["best_static"] = {"policy": static_label, "train_documents": n_menu}
        if formulation == "per_input":
            margin = paired_margin(episodes, learned.name, static_label)
            meta["margin_over_best_static"] = margin
            say(f"skipenv train: {learned.name} minus {static_label} (chosen on {n_menu} train documents), paired over "
                f"{margin['documents']} test documents: reward {margin['reward']:+.3f} "
                f"[{margin['reward_ci'][0]:+.3f}, {margin['reward_ci'][1]:+.3f}], FLOPs saved "
                f"{margin['flops_saved']:+.3f} [{margin['flops_saved_ci'][0]:+.3f}, "
                f"{margin['flops_saved_ci'][1]:+.3f}] (95 % bootstrap CIs)")
        else:
            em = expected_margins(table, episodes[episodes["policy"] == learned.name], tau, seed=seed)
            meta["expected_constraint"] = em
            for m in em["margins"]:
                who = {"learned": learned.name, "probe": "probe policy (supervised, for scale)",
                       "probe_deterministic": "probe policy, deterministic rule (what -bc clones)"}[m["policy"]]
                say(f"skipenv train: {who} minus {m['baseline']}, paired over {em['documents']} test "
                    f"documents: FLOPs saved {m['flops_saved']:+.3f} [{m['flops_saved_ci'][0]:+.3f}, "
                    f"{m['flops_saved_ci'][1]:+.3f}], quality loss {m['quality_loss']:+.4f} "
                    f"[{m['quality_loss_ci'][0]:+.4f}, {m['quality_loss_ci'][1]:+.4f}]")
            for name in ("learned", "best_static_mixture", "probe", "probe_deterministic"):
                r = em[name]
                who = {"learned": learned.name, "best_static_mixture": "best static mixture (train)",
                       "probe": "probe policy", "probe_deterministic": "probe policy, deterministic rule"}[name]
                say(f"skipenv train: {who}: mean quality loss {r['mean_quality_loss']:.4f} "
                    f"({'within' if r['mean_constraint_holds'] else 'ABOVE'} tau {tau}), FLOPs saved "
                    f"{r['mean_flops_saved']:.3f}")
    meta["total_seconds"] = round(time.perf_counter() - job.t0, 1)
    meta["run_id"] = job.run_id  # the id in the RUNNING marker while the run wrote the folder
    plot_pareto(summary, out / "quality_vs_flops.png", quality_col="quality", episodes=episodes,
                tau=tau, quality_name=meta["quality"],
                title=f"{env_id}: {meta['quality']} vs FLOPs saved (test split)")
    (out / "summary.json").write_text(json.dumps(meta, indent=2, default=float))  # last: the run is complete
    (out / RUNNING_MARKER).unlink(missing_ok=True)
    say(f"skipenv train: done in {_minutes(time.perf_counter() - job.t0)}")


#: the main job's steps after :func:`check_args`, in order; each takes the :class:`MainJob` and adds its fields
MAIN_JOB_STEPS = (compute_references, evaluate_job_menu, prepare_warm_start, train_job_learner,
                  evaluate_job_policies, write_report)


def run_main_job(out_dir: str | Path = "runs/ppo-xsum", *, total_timesteps: int = 384, train_examples: int = 96,
                 test_examples: int = 40, seed: int = 0, device: str = "cpu", model: str = "smollm2-135m-instruct",
                 env_id: str = DEFAULT_ENV_ID, progress_bar: bool = True, algo: str | None = None,
                 static_examples: int | None = None, env_kwargs: dict | None = None,
                 rouge: bool = False) -> pd.DataFrame:
    """Train a learner of :data:`skipenv.policies.learners.LEARNERS` on ``env_id`` under its registered constraint
    formulation, evaluate it against baselines on the test split, save policy / tables / plot. Returns the summary.

    Steps (:func:`check_args`, then the functions of :data:`MAIN_JOB_STEPS` over one :class:`MainJob`):
    (1) full-model references of the train documents (:func:`compute_references`); (2) the probe's token-segment
    menu (:func:`main_job_menu`) evaluated on the first ``static_examples`` train documents and on the test
    documents (teacher-forced, :func:`skipenv.evaluation.probe.evaluate_menu`; saved as ``menu/``;
    :func:`evaluate_job_menu`) and the warm start's targets (:func:`prepare_warm_start`); (3) training
    (:func:`train_job_learner`); (4) evaluation of the learned policy, random (each bit skipped with probability
    0.5), skip nothing and the best static plan of the menu chosen on the train documents, with one generation per
    (policy, test document) for ROUGE-L (:func:`evaluate_job_policies`); then the margins, ``summary.json`` and the
    plot (:func:`write_report`).

    Formulations (``gym.spec(env_id).kwargs["formulation"]``, :func:`registered_formulation`):

    - ``"per_input"`` (``SwitchDec-XSum-v0``): the learner maximises the env's reward (lexicographic unless
      ``env_kwargs`` set ``reward_mode``); the best static plan has the highest mean train reward of that env; the margin (reward and FLOPs saved, paired over test documents,
      :func:`paired_margin`) is stored under ``margin_over_best_static``.
    - ``"expected"`` (``SwitchDec-XSum-v1``, the default): the learner trains through
      :class:`~skipenv.envs.wrappers.ExpectedConstraint` (scalar Lagrangian reward, online multiplier); the best
      static plan is the cheapest menu plan whose mean train loss is within tau; margins against the best static
      mixture and against the static front at equal quality, with the probe policy's margins for scale, are
      stored under ``expected_constraint`` (:func:`expected_margins`). A warm-started learner (``ppo-bc``, the
      default here) first clones the probe policy's plans on the train documents
      (:func:`skipenv.policies.warm_start.warm_start_targets`, ``source="probe"``) and starts the Lagrange multiplier at
      the probe rule's multiplier (:meth:`skipenv.policies.menu.ProbePolicy.expected_multiplier`).

    The output folder never mixes two runs: a run first writes the marker :data:`RUNNING_MARKER` (its ``run_id``)
    and removes the :data:`RUN_OUTPUTS` of an earlier or interrupted run (files the job does not write are kept),
    writes ``summary.json`` (with the same ``run_id``) last and then removes the marker; a folder with the marker
    holds a run that was interrupted or is still running.

    ``summary.json`` times (seconds, wall clock): ``menu_seconds`` the menu's evaluation (step 2; 0 without a
    menu), ``train_seconds`` the learner's training only (step 3, behaviour cloning of a warm start included; not
    the references nor the menu), ``total_seconds`` the whole job. ``train_examples`` / ``test_examples`` there are
    the documents really used (a split smaller than asked is used whole, with a line on stderr).

    Args:
        algo: learner name (default ``"ppo-bc"`` under the expected formulation, ``"ppo"`` under per-input).
        static_examples: train documents the menu is evaluated on (default all ``train_examples``; the menu
            needs >= 4 of them, for the probe policy; 0 = no menu, no static baseline, only for learners without
            warm start).
        env_kwargs: further ``gym.make`` kwargs (plain values, e.g. ``max_input_tokens``; not ``split``,
            ``num_examples``, ``model``, ``device``, ``formulation`` or ``formulation_kwargs``).
        rouge: also generate each (policy, test document)'s output and score ROUGE-L against the reference
            (columns ``quality_rouge`` / ``quality_full_rouge``): one greedy generation per evaluation episode,
            ~4-5 more minutes at the default sizes on 2 CPU cores, so off by default.

    Raises:
        ValueError: ``total_timesteps``, ``train_examples`` or ``test_examples`` not an integer ``>= 1``,
            ``static_examples`` not an integer ``>= 0``, 1 to 3 menu documents (``min(static_examples,
            train_examples)``), a warm-started learner with fewer than 4 menu documents, reserved ``env_kwargs``,
            an unknown learner, an id that is not one-shot (``-Layerwise``), or a CUDA ``device`` on a machine
            without one (all checked before anything loads).
    """
    job = check_args(out_dir, total_timesteps=total_timesteps, train_examples=train_examples,
                     test_examples=test_examples, seed=seed, device=device, model=model, env_id=env_id,
                     progress_bar=progress_bar, algo=algo, static_examples=static_examples, env_kwargs=env_kwargs,
                     rouge=rouge)
    for step in MAIN_JOB_STEPS:
        step(job)
    return job.summary


def format_table(summary: pd.DataFrame, quality_name: str = "agreement", formulation: str = "per_input",
                 tau: float | None = None) -> str:
    """The main job's printed table, one row per policy.

    ``formulation="per_input"`` (v0): mean quality (named ``quality_name``), mean quality loss (full model minus
    plan), ROUGE-L (when scored), FLOPs saved (fraction), per-input constraint-met rate ("constraint ok") and the
    env's lexicographic reward (mean, std).

    ``formulation="expected"`` (v1): mean quality, mean quality loss next to ``tau`` ("mean loss <= tau": whether
    the expected constraint holds on these documents), FLOPs saved, and the per-input numbers renamed "per-input ok"
    / "per-input reward" (the per-input rule, which this formulation does not impose).

    Raises:
        ValueError: an unknown ``formulation``, or ``formulation="expected"`` without ``tau``.
    """
    if formulation not in ("per_input", "expected"):
        raise ValueError(f"formulation must be 'per_input' or 'expected', got {formulation!r}")
    t = summary.assign(quality_loss=summary["quality_full"] - summary["quality"])
    f3 = lambda v: f"{v:.3f}"  # noqa: E731
    if formulation == "per_input":
        cols = {"policy": "policy", "quality": quality_name, "quality_loss": "quality loss",
                "quality_rouge": "ROUGE-L", "quality_full_rouge": "ROUGE-L (full)", "flops_saved": "FLOPs saved",
                "constraint_satisfied": "constraint ok", "reward_mean": "reward mean", "reward_std": "reward std"}
        t = t[[c for c in cols if c in t.columns]].rename(columns=cols)
        return t.to_string(index=False, float_format=f3)
    if tau is None:
        raise ValueError("format_table(formulation='expected') needs tau (the bound on the mean quality loss)")
    t["within_tau"] = (t["quality_loss"] <= tau + 1e-12).map({True: "yes", False: "no"})
    cols = {"policy": "policy", "quality": quality_name, "quality_loss": "mean quality loss",
            "within_tau": f"mean loss <= tau ({tau:g})", "flops_saved": "FLOPs saved", "quality_rouge": "ROUGE-L",
            "quality_full_rouge": "ROUGE-L (full)", "constraint_satisfied": "per-input ok",
            "reward_mean": "per-input reward"}
    t = t[[c for c in cols if c in t.columns]].rename(columns=cols)
    return t.to_string(index=False, formatters={"mean quality loss": lambda v: f"{v:.4f}"}, float_format=f3)
