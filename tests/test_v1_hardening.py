"""Adversarial checks of what SwitchDec-XSum-v1 brought: the main job's argument checks, the ids' registered
defaults under overrides, and the probe / benchmark defaults (tiny models only)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kwargs, match", [
    # 1-3 menu documents: the probe policy behind the static baselines needs >= 4 (failed after loading the model)
    (dict(env_id="SwitchDec-XSum-v0", static_examples=1), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", static_examples=3), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", train_examples=2), "min\\(static_examples, train_examples\\) = 2"),
    (dict(algo="ppo", static_examples=2), "needs >= 4 train documents"),
    (dict(total_timesteps=0), "total_timesteps must be an integer >= 1"),
    (dict(train_examples=0, static_examples=0, algo="ppo"), "train_examples must be an integer >= 1"),
    (dict(test_examples=0), "test_examples must be an integer >= 1"),
    (dict(test_examples=2.5), "test_examples must be an integer >= 1"),
])
def test_main_job_refuses_menu_and_size_arguments_before_loading(kwargs, match, tmp_path):
    from skipenv.evaluation.main_job import run_main_job

    with pytest.raises(ValueError, match=match):
        run_main_job(tmp_path / "never", model="no-such-model-is-loaded", progress_bar=False, **kwargs)
    assert not (tmp_path / "never").exists()


def test_expected_margins_pair_the_table_and_refuse_episodes_of_another_env(tiny_xsum_env_factory):
    """The margins pair the learned episodes with the table's test documents by example id; episodes from an env
    with another quality signal (same ids, other units) are refused instead of mixed into the differences."""
    import numpy as np
    import pandas as pd

    from skipenv.envs import SwitchDecEnv
    from skipenv.evaluation.probe import evaluate_menu
    from skipenv.evaluation.main_job import expected_margins

    table = evaluate_menu(tiny_xsum_env_factory, num_train=4, num_test=3, progress=False)
    te = table.matrices("test")
    j = table.plans.index("skip nothing")
    # "learned" = skip nothing, in reversed order with one extra document the table lacks
    learned = pd.DataFrame({"example_id": [*te["example_id"][::-1], "not-in-table"],
                            "quality": [*te["quality"][::-1, j], 0.0], "quality_full": [*te["quality_full"][::-1, j], 1.0],
                            "flops_saved": [*te["saved"][::-1, j], 0.5]})
    em = expected_margins(table, learned, 0.1)
    assert em["documents"] == 3
    assert em["learned"]["mean_quality_loss"] == pytest.approx(te["loss"][:, j].mean())
    assert em["learned"]["mean_flops_saved"] == pytest.approx(te["saved"][:, j].mean())
    # the same documents and plan, but scored by the probability signal: refused
    gen = tiny_xsum_env_factory("test", 3)._evaluator.generator
    other = SwitchDecEnv("xsum", generator=gen, split="test", num_examples=3, max_new_tokens=6, max_input_tokens=96,
                         disk_cache=False, quality="probability")
    rows = []
    for i in range(3):
        other.reset(options={"index": i})
        *_, info = other.step(np.zeros(other.action_space.n, dtype=np.int8))
        rows.append({k: info[k] for k in ("example_id", "quality", "quality_full", "flops_saved")})
    with pytest.raises(ValueError, match="disagree on the full model's quality of 3 of 3"):
        expected_margins(table, pd.DataFrame(rows), 0.1)


def test_main_job_per_input_static_plan_follows_the_envs_reward(tmp_path):
    """Under per_input the best static plan is the menu plan with the highest mean train reward *of the env the
    learner trains on*: with ``reward_mode="weighted"`` and no cost weight that is the plan of highest quality,
    not the lexicographic choice (the cheapest plan within tau)."""
    import json

    import pandas as pd

    from _tiny_local import write_tiny_assets
    from skipenv.evaluation.probe import ProbeTable, _rewards
    from skipenv.evaluation.main_job import run_main_job

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    run_main_job(out, total_timesteps=4, train_examples=4, test_examples=2, model=model_dir,
                 env_id="SwitchDec-XSum-v0", progress_bar=False,
                 env_kwargs=dict(max_new_tokens=4, max_input_tokens=96, disk_cache=False, reward_mode="weighted",
                                 cost_weight=0.0))
    meta = json.loads((out / "summary.json").read_text())
    table = ProbeTable.load(out / "menu")
    o = table.outcomes[table.outcomes["split"] == "train"]
    tr = table.matrices("train")
    # the weighted reward recomputed from the outcomes, quality - 0 * cost, per plan
    weighted = pd.Series(tr["quality"].mean(0), index=table.plans)
    assert weighted.to_numpy() == pytest.approx(o.pivot(index="doc", columns="plan", values="reward")[table.plans]
                                                .mean(0).to_numpy())
    best = weighted.idxmax()
    lexicographic = pd.Series(_rewards(tr["quality"], tr["quality_full"], tr["cost"], meta["tau"]).mean(0),
                              index=table.plans).idxmax()
    assert best != lexicographic  # the two rewards choose differently here, so the check can fail
    assert meta["best_static"]["policy"] == f"best static: {best}"


def test_compare_algorithms_layerwise_envs_share_the_one_shot_tau(tmp_path, monkeypatch):
    """``--env SwitchDec-XSum-v1 --formulation per_input`` with another quality signal: the one-shot envs keep v1's
    registered tau (0.01); the layerwise envs DQN trains on must use that tau too, not their signal's default."""

    import skipenv
    from _tiny_local import write_tiny_assets

    from _scripts import load_benchmark

    C = load_benchmark("compare_algorithms")

    model_dir, _ = write_tiny_assets(tmp_path)
    made, make = [], skipenv.make

    def spy(env_id, **kw):
        env = make(env_id, **kw)
        made.append((env_id, env.unwrapped.tau, env.unwrapped.quality))
        return env

    monkeypatch.setattr(skipenv, "make", spy)
    C.main(["--env", "SwitchDec-XSum-v1", "--formulation", "per_input", "--algos", "dqn-layerwise", "--seeds", "0",
            "--timesteps", "1", "--train-examples", "2", "--test-examples", "2", "--reps", "10",
            "--out", str(tmp_path / "cmp"), "--env-kwargs",
            f'{{"model": "{model_dir}", "quality": "agreement", "max_new_tokens": 3, "max_input_tokens": 96, '
            f'"disk_cache": false}}'])
    assert made == [("SwitchDec-XSum-Layerwise-v0", 0.01, "agreement")] * 2


def test_unversioned_id_resolves_to_the_latest_version_in_the_tools(tmp_path):
    """``gym.make("SwitchDec-XSum")`` builds v1; ``skipenv train`` / ``probe`` / compare_algorithms read the id's
    registered kwargs (gym.spec, which has no unversioned lookup) and said "No registered env" for it."""
    import gymnasium as gym

    from skipenv.envs.registration import resolve_env_id
    from skipenv.evaluation.probe import run_probe
    from skipenv.evaluation.main_job import run_main_job

    assert resolve_env_id("SwitchDec-XSum") == "SwitchDec-XSum-v1"
    assert resolve_env_id("SwitchDec-XSum-v0") == "SwitchDec-XSum-v0"
    with pytest.raises(gym.error.Error, match="doesn.t exist"):
        resolve_env_id("SwitchDec-Nope")
    # the default learner under v1's expected formulation (ppo-bc) is chosen, then refused before loading
    with pytest.raises(ValueError, match="ppo-bc clones the probe policy"):
        run_main_job(tmp_path / "never", env_id="SwitchDec-XSum", static_examples=2, model="no-such-model")
    with pytest.raises(ValueError, match="formulation"):  # the probe got past the id to its own checks
        run_probe("SwitchDec-XSum", env_kwargs={"formulation": "expected"}, out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_main_job_reports_the_multiplier_constrainedpg_used(tmp_path):
    """pg-lagrangian enforces the mean constraint with its own handler and ignores ExpectedConstraint's reward: the
    multiplier in summary.json is its handler's (recomputed here from progress.csv), not the unused wrapper's."""
    import json

    import numpy as np
    import pandas as pd

    from _tiny_local import write_tiny_assets
    from skipenv.policies.pg import PGConfig
    from skipenv.evaluation.main_job import run_main_job

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    run_main_job(out, algo="pg-lagrangian", static_examples=0, total_timesteps=32, train_examples=4,
                 test_examples=2, model=model_dir, progress_bar=False,
                 env_kwargs=dict(max_new_tokens=3, max_input_tokens=96, disk_cache=False))
    meta = json.loads((out / "summary.json").read_text())
    hist = pd.read_csv(out / "progress.csv")
    cfg = PGConfig()
    last = hist.iloc[-cfg.batch_size:]  # the last batch: its multiplier, then one dual step on its mean loss
    lam = max(0.0, last["lam"].iloc[0] + cfg.lagrangian_lr * ((last["quality_full"] - last["quality"]).mean() - 0.01))
    assert meta["lagrange_multiplier"] == {"handler": "lagrangian", "final": pytest.approx(lam)}
    assert np.all(last["lam"] == last["lam"].iloc[0])


def test_v1_envs_share_an_evaluator(tiny_llama):
    """v1 registers quality="probability": envs built on a shared evaluator of that signal (skipenv.make(...,
    evaluator=), sharing(), make_vec) used to be refused as if the caller had passed quality; another signal's
    evaluator is still refused."""
    import gymnasium as gym
    import numpy as np

    import skipenv
    from skipenv.envs import Evaluator

    small = dict(max_new_tokens=5, max_input_tokens=96, disk_cache=False)
    first = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, num_examples=3, **small)
    ev = first.unwrapped.evaluator
    second = skipenv.make("SwitchDec-XSum-v1", evaluator=ev, num_examples=3)
    assert second.unwrapped.evaluator is ev and second.unwrapped.quality == "probability"
    assert second.unwrapped.tau == 0.01
    a = np.zeros(first.action_space.n, dtype=np.int8)
    a[-2:] = 1
    infos = []
    for env in (first, second):
        env.reset(options={"index": 2})
        infos.append(env.step(a)[-1])
    assert infos[0]["quality"] == infos[1]["quality"] and infos[0]["cost"] == infos[1]["cost"]
    with skipenv.sharing(evaluator=ev):
        v = gym.make_vec("SwitchDec-XSum-v1", num_envs=2, vectorization_mode="sync", num_examples=3)
    assert all(e.unwrapped.evaluator is ev for e in v.envs)
    agreement = Evaluator(tiny_llama, ev.task, quality="agreement", max_new_tokens=5, disk_cache=False)
    with pytest.raises(ValueError, match="quality 'probability' differs from the evaluator's 'agreement'"):
        skipenv.make("SwitchDec-XSum-v1", evaluator=agreement, num_examples=3)
    assert skipenv.make("SwitchDec-XSum-v1", evaluator=agreement, quality=None, num_examples=3).unwrapped.quality == \
        "agreement"


def test_train_cli_without_menu_does_not_claim_to_save_one(tmp_path, capsys):
    """``skipenv train --static-examples 0`` evaluates no menu: the closing line must not list menu/ as saved."""
    import json

    from _tiny_local import write_tiny_assets
    from skipenv.cli import main

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--algo", "ppo", "--static-examples", "0", "--total-timesteps", "4", "--train-examples",
                 "2", "--test-examples", "2", "--model", model_dir, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = next(line for line in printed.splitlines() if line.startswith("saved:"))
    assert "menu/" not in saved and not (out / "menu").exists()
    meta = json.loads((out / "summary.json").read_text())
    assert "best_static" not in meta and "expected_constraint" not in meta
    assert "probability" in printed.splitlines()[0]  # v1's quality names the table's column


def test_make_without_objects_keeps_an_enclosing_sharing_block(tiny_llama):
    """``skipenv.make(id)`` with no objects inside ``with sharing(generator=g)`` used to open its own empty block,
    which hid ``g``: the env loaded the default model instead (or failed on a shape mismatch)."""
    import skipenv

    with skipenv.sharing(generator=tiny_llama):
        env = skipenv.make("SwitchDec-XSum-v0", num_examples=2, max_new_tokens=5, max_input_tokens=96,
                           disk_cache=False)
    assert env.unwrapped.generator is tiny_llama
