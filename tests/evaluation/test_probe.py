"""Learnability probe (skipenv.evaluation.probe) end to end on a tiny random-weight Llama (6 train / 4 test XSum
documents): the menu table, the analysis and its report, observation kinds, and the main job's use of the table."""

from __future__ import annotations

import numpy as np
import pytest

from skipenv.evaluation import probe
from skipenv.envs.rewards import lexicographic_reward
from skipenv.envs import SwitchDecEnv
from skipenv.testing import tiny_generator
import skipenv
from skipenv.envs.observations import (
    attention_features,
)


@pytest.fixture(scope="module")
def tiny_table(tiny_xsum_env_factory):
    make_env = tiny_xsum_env_factory
    return make_env, probe.evaluate_menu(make_env, num_train=6, num_test=4, progress=False)


def test_probe_end_to_end(tiny_table, tmp_path):
    _, t = tiny_table
    assert len(t.outcomes) == (6 + 4) * len(t.plans) and t.empty == "skip nothing"
    assert t.observations.filter(like="obs_").shape == (10, 32 + 2)
    loaded = probe.ProbeTable.load(t.save(tmp_path / "table"))
    assert loaded.outcomes.equals(t.outcomes) and loaded.observations.equals(t.observations)

    tau = 0.5
    rep = probe.analyse(loaded, tau, learning_curve=[4], repeats=2)
    s = rep.summary.set_index("policy")
    te = t.outcomes[t.outcomes["split"] == "test"]
    # the per-input oracle's reward, computed independently: per document, the best lexicographic reward
    best = te.assign(r=[lexicographic_reward(q, f, c, tau) for q, f, c in
                        zip(te["quality"], te["quality_full"], te["cost"])]).groupby("doc")["r"].max()
    assert s.loc["oracle (per-input)", "mean_reward"] == pytest.approx(best.mean())
    assert s.loc["oracle (per-input)", "constraint_met_rate"] == 1.0  # skip nothing is always within tau
    # each static plan's row is the plain test mean of that plan
    for name, g in te.groupby("plan"):
        assert s.loc[f"static: {name}", "mean_flops_saved"] == pytest.approx(g["flops_saved"].mean())
    # the expected oracle and the static mixture respect tau on the documents they were solved on
    assert s.loc["oracle (expected)", "mean_quality_loss"] <= tau + 1e-9
    for name in ("best static (per-input)", "best static mixture (expected)", "probe (per-input)",
                 "probe (expected)"):
        assert s.loc[name, "mean_reward"] <= s.loc["oracle (per-input)", "mean_reward"] + 1e-9
        assert s.loc[name, "mean_flops_saved"] <= s.loc["oracle (expected)", "mean_flops_saved"] + 1e-9 or \
            s.loc[name, "mean_quality_loss"] > tau
    for w in rep.weights.values():  # every policy is a plan distribution per test document
        assert w.shape == (4, len(t.plans)) and np.allclose(w.sum(1), 1.0) and (w >= 0).all()
    d = rep.differences
    assert {"reward", "flops_saved", "quality_loss"} == set(d["metric"]) and (d["ci_low"] <= d["diff"] + 1e-12).all()
    assert list(rep.learning_curve["train_documents"]) == [4, 6]
    assert "### Test policies" in rep.to_markdown()
    png = probe.plot_probe(rep, tmp_path / "pareto.png")
    assert png.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ observation kinds
def test_segment_features_agree_with_the_env_observation(tiny_table):
    from skipenv.envs.observations import extra_observation_flops, observation_features

    make_env, _ = tiny_table
    env = make_env("train", 2)
    g, task = env.generator, env.task
    prompt = task.format(env.examples[1], g.tokenizer, encoder_decoder=False)
    pooled = g.observe([prompt])[0].numpy()  # the env's own observation path (forward hook on the first layer)
    np.testing.assert_allclose(observation_features(g, prompt, "layer:1")[:-2], pooled, rtol=1e-4, atol=1e-5)
    k, d = 8, g.hidden_size
    f = observation_features(g, prompt, "segments", token_segments=k, max_input_tokens=task.max_input_tokens)
    assert f.shape == ((k + 1) * d + 2 * k,)
    sizes = np.array([e - s for s, e in prompt.segment_bounds(k)] + [len(prompt) - prompt.num_document_tokens])
    pools = f[: (k + 1) * d].reshape(k + 1, d)
    # the length-weighted mean of the segment pools and the rest of the prompt is the pooled first layer
    np.testing.assert_allclose((sizes[:, None] * pools).sum(0) / len(prompt), pooled, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f[(k + 1) * d: (k + 1) * d + k], sizes[:k] / task.max_input_tokens)
    assert np.all(np.abs(f[-k:]) <= 1 + 1e-6)  # cosine similarities
    # the tiny Llama's layers are identical in shape: layer:3 costs two layers more than the env, layer:2 one
    one = extra_observation_flops(g, prompt, "layer:2")
    assert one > 0 and extra_observation_flops(g, prompt, "layer:3") == 2 * one
    assert extra_observation_flops(g, prompt, "segments") == 0
    with pytest.raises(ValueError, match="observation kind"):
        observation_features(g, prompt, "layer:0")


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_segment_observation_wrapper(tiny_table):
    from gymnasium.utils.env_checker import check_env

    from skipenv.envs.observations import SegmentObservation

    make_env, _ = tiny_table
    env = SegmentObservation(make_env("train", 3))
    check_env(env, skip_render_check=True)
    plain = make_env("train", 3)
    o1, _ = plain.reset(options={"index": 2})
    o2, _ = env.reset(options={"index": 2})
    assert o2.shape == env.observation_space.shape == (34 + 9 * 32 + 16,)
    np.testing.assert_array_equal(o1, o2[:34])


def test_compare_observations(tiny_table):
    from skipenv.envs.observations import feature_table

    make_env, t = tiny_table
    feats = {"pooled (env)": None, "layer:2": feature_table(make_env, t, "layer:2", progress=False)}
    assert len(feats["layer:2"]) == 10 and (feats["layer:2"]["extra_flops"] > 0).all()
    cmp = probe.compare_observations(t, 0.5, feats)
    assert list(cmp["observation"]) == ["pooled (env)", "layer:2"]
    assert cmp.loc[0, "extra_cost"] == 0.0 and 0 < cmp.loc[1, "extra_cost"] < 1
    base = probe.analyse(t, 0.5, learning_curve=[])  # the env-observation row is the plain analysis
    assert cmp.loc[0, "mean_test_r2"] == pytest.approx(np.nanmean(base.prediction["test_r2_quality"]), nan_ok=True)


def test_learning_curve_sizes_outside_the_range_are_reported(tiny_table):
    """``--learning-curve 2 5 100`` on 6 train documents silently used only 5 (and 6)."""
    _, t = tiny_table
    with pytest.warns(UserWarning, match=r"sizes \[2, 100\] left out"):
        rep = probe.analyse(t, 0.1, learning_curve=[2, 5, 100], repeats=1)
    assert list(rep.learning_curve["train_documents"]) == [5, 6]


def test_main_job_best_static_plan_matches_the_menu_table(tiny_table):
    # skipenv train's static baseline: the menu plan with the best mean train reward, here recomputed from the
    # probe table, whose rewards came from env.step (another code path than env.evaluate)
    from skipenv.evaluation.main_job import best_static_plan

    make_env, t = tiny_table
    env = make_env("train", 6)
    name, plan, means = best_static_plan(env, env.examples[:6], progress=False)
    by_plan = t.outcomes[t.outcomes["split"] == "train"].groupby("plan")["reward"].mean()
    for n, m in means.items():
        assert m == pytest.approx(by_plan[n], abs=1e-12), n
    assert means[name] == pytest.approx(by_plan.max(), abs=1e-12)
    assert plan == probe.default_menu(env.plan_spec)[name]


def test_main_job_paired_margin_hand_computed():
    import pandas as pd

    from skipenv.evaluation.main_job import paired_margin

    ep = pd.DataFrame({"policy": ["a", "a", "a", "b", "b", "b", "b"],
                       "example_id": ["x", "y", "z", "x", "y", "z", "w"],
                       "reward": [1.0, 0.5, 0.2, 0.9, 0.5, 0.5, 7.0],
                       "flops_saved": [0.3, 0.1, 0.0, 0.0, 0.0, 0.1, 0.9]})
    m = paired_margin(ep, "a", "b")  # "w" has no partner and is left out
    assert m["documents"] == 3
    assert m["reward"] == pytest.approx((0.1 + 0.0 - 0.3) / 3)
    assert m["flops_saved"] == pytest.approx((0.3 + 0.1 - 0.1) / 3)
    assert m["reward_ci"][0] <= m["reward"] <= m["reward_ci"][1]


def test_main_job_static_baseline_bad_input(tiny_table):
    # no train examples: a ZeroDivisionError before; a negative count slipped through min() and chose the plan on
    # all train documents but the last; no shared document gave a NaN margin
    import pandas as pd

    from skipenv.evaluation.main_job import best_static_plan, paired_margin, run_main_job

    make_env, _ = tiny_table
    with pytest.raises(ValueError, match="at least one train example"):
        best_static_plan(make_env("train", 2), [], progress=False)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="static_examples must be an integer >= 0"):
            run_main_job("unused-dir-never-created", static_examples=bad)
    ep = pd.DataFrame({"policy": ["a", "b"], "example_id": ["x", "y"], "reward": [1.0, 0.0],
                       "flops_saved": [0.0, 0.0]})
    with pytest.raises(ValueError, match="share no document"):
        paired_margin(ep, "a", "b")
    with pytest.raises(ValueError, match="share no document"):
        paired_margin(ep, "a", "typo")


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    return tiny_generator("llama", smollm2_tokenizer)


@pytest.mark.hardening
@pytest.mark.assets
def test_probe_menu_with_a_repeated_name_is_refused(generator, tmp_path):
    from skipenv.envs.registration import sharing
    from skipenv.evaluation.probe import run_probe

    with sharing(generator=generator), pytest.raises(ValueError, match=r"\['a'\] given more than once"):
        run_probe(env_kwargs={"max_new_tokens": 4, "max_input_tokens": 96, "disk_cache": False},
                  menu=["a:tokens=1", "a:tokens=2"], num_train=4, num_test=2, out_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------------------------------
# moved here from SwitchDec-XSum-v1 (tests/test_v1.py, dissolved by issue 19)


SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


@pytest.mark.usefixtures("one_thread")
def test_probe_deterministic_expected_rule_is_the_best_single_rule_within_tau(tiny_xsum_env_factory):
    """The deterministic rule re-derived by hand from out-of-fold predictions: the single lam of the grid with the
    most train FLOPs saved among those whose train mean loss is within tau; its plan per document is
    argmax S^ - lam L^; the warm-start targets of the expected formulation are exactly those plans."""
    from sklearn.model_selection import KFold, cross_val_predict

    from skipenv.evaluation import probe
    from skipenv.policies.warm_start import warm_start_targets

    make_env = tiny_xsum_env_factory
    table = probe.evaluate_menu(make_env, num_train=10, num_test=2, progress=False)
    m = table.matrices("train")
    D, P = m["loss"].shape
    tau = float(np.quantile(m["loss"][:, 1:].mean(0), 0.5))  # some plans meet it on average, some do not
    pol = probe.ProbePolicy(empty=0, seed=3).fit(m["X"], m["loss"], m["saved"], m["quality_full"], tau)
    oof = cross_val_predict(pol._model(D - int(np.ceil(D / 5)), m["X"].shape[1]), m["X"],
                            np.hstack([m["loss"], m["saved"]]), cv=KFold(5, shuffle=True, random_state=3))
    l_hat, s_hat = oof[:, :P].copy(), oof[:, P:]
    l_hat[:, 0] = 0.0
    best = None
    for lam in pol.lams:
        c = l_hat.argmin(1) if np.isinf(lam) else (s_hat - lam * l_hat).argmax(1)
        loss, saved = m["loss"][np.arange(D), c].mean(), m["saved"][np.arange(D), c].mean()
        if loss <= tau + 1e-12 and (best is None or saved > best[1]):
            best = (lam, saved)
    assert best is not None and pol.lam_deterministic == best[0]
    assert pol.expected_multiplier() == (best[0] if np.isfinite(best[0]) else 1000.0)
    W = pol.plan_probabilities(m["X"], "expected", deterministic=True)
    lt, st = pol.predict_outcomes(m["X"])
    expected_choice = lt.argmin(1) if np.isinf(best[0]) else (st - best[0] * lt).argmax(1)
    np.testing.assert_array_equal(W.argmax(1), expected_choice)
    assert set(np.unique(W)) <= {0.0, 1.0}
    targets = warm_start_targets(table, tau, env=make_env("train", 10), source="probe", formulation="expected",
                                 seed=3)
    assert targets.plans == [table.plans[j] for j in expected_choice] and (targets.weights == 1).all()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("env_id, kwargs", [("SwitchDec-XSum-v1", {}), ("SwitchDec-XSum-v0", {}),
                                            ("SwitchDec-XSum-v0", {"quality": "probability"}),
                                            ("SwitchDec-XSum-v1", {"tau": 0.05}),
                                            ("SwitchDec-XSum-v1", {"quality": "agreement"}),
                                            ("SwitchDec-XSum-v0", {"quality": "rouge"})])
def test_probe_reads_the_env_tau_without_building_the_env(env_id, kwargs, tiny_llama):
    """The probe's default tau (no model load) equals the tau of the env gym.make builds."""
    from skipenv.envs.registration import env_tau

    built = skipenv.make(env_id, generator=tiny_llama, **SMALL, **kwargs).unwrapped.tau
    assert env_tau(env_id, kwargs) == built


# ----------------------------------------------------------------------------------------------------
# moved here from env options (tests/test_env_options.py, dissolved by issue 19)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_probe_options_and_attention_features(smollm2_tokenizer, tmp_path):
    import argparse

    from skipenv.evaluation import probe
    from skipenv.cli.probe import configure_parser
    from skipenv.envs.observations import feature_table

    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(["--quality", "probability", "--observation", "attention:4", "--observations", "layer:2",
                         "attention:2"])
    assert (args.quality, args.observation, args.observations) == ("probability", "attention:4",
                                                                   ["layer:2", "attention:2"])
    with pytest.raises(ValueError, match="formulation"):
        probe.run_probe(env_kwargs={"formulation": "expected"}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown observation kind"):
        probe.run_probe(env_kwargs={"observation": "attention"}, out_dir=tmp_path)

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)

    def make_env(split, n):
        return SwitchDecEnv("xsum", generator=g, split=split, num_examples=n, max_new_tokens=5,
                            max_input_tokens=96, disk_cache=False, observation="attention:2", quality="probability")

    table = probe.evaluate_menu(make_env, num_train=4, num_test=3, progress=False)
    assert table.observations.filter(like="obs_").shape == (7, 32 + 2 * 8 + 3)
    feats = feature_table(make_env, table, "attention:3", progress=False)
    assert feats.filter(like="f_").shape == (7, 32 + 19)
    env = make_env("train", 4)
    prompt = env.prompt(env.examples[0])
    row = feats[(feats["split"] == "train") & (feats["doc"] == 0)].iloc[0]
    assert row["extra_flops"] == 2 * g.flops_model.first_layer(len(prompt))
    np.testing.assert_allclose(row.filter(like="f_").to_numpy(float),
                               attention_features(g, prompt, 3, token_segments=8, max_input_tokens=96), atol=1e-6)
    cmp = probe.compare_observations(table, 0.05, {"attention:2 (env)": None, "attention:3": feats},
                                     {"attention:2 (env)": 19, "attention:3": 19})
    assert list(cmp["observation"]) == ["attention:2 (env)", "attention:3"]


def test_probe_table_key_follows_the_head_file_contents_not_its_path(tiny_llama, tmp_path):
    """The probe's table folder is keyed by its configuration, whose kwargs name a head by *path*: the head's digest
    (the task's cache_tag) goes into the key too, so a head file overwritten in place gets a table of its own
    instead of the old head's outcomes; identity skips without a head keep the old key (no tags)."""
    import json

    from skipenv.envs.label_head import fit_label_head
    from skipenv.envs import Evaluator
    from skipenv.tasks import make_task

    task = make_task("rotten_tomatoes", scoring="verbalizer")
    train = task.examples("train")
    reviews = [e for e in train if e.label == "positive"][:2] + [e for e in train if e.label == "negative"][:2]
    path = tmp_path / "head.json"
    fit_label_head(Evaluator(tiny_llama, task, quality="label_agreement", disk_cache=False), reviews, []).save(path)

    def tags():
        env = skipenv.make("SwitchDec-RottenTomatoes-v2", generator=tiny_llama, label_head=str(path),
                           num_examples=2, max_input_tokens=160, disk_cache=False)
        return probe.outcome_tags(env.unwrapped)

    first = tags()
    d = json.loads(path.read_text())
    d["weight"] = [2 * w for w in d["weight"]]  # the same path, other contents
    path.write_text(json.dumps(d))
    second = tags()
    assert first["task"].startswith("head:") and second["task"].startswith("head:") and first != second
    v1 = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, num_examples=2, max_new_tokens=3,
                      max_input_tokens=96, disk_cache=False)
    assert probe.outcome_tags(v1.unwrapped) == {}


def test_too_few_train_documents_are_refused_before_the_menu_is_evaluated(tmp_path, monkeypatch):
    """``num_train`` 1-3 cannot fit the probe policy: refused before any env is built (it used to evaluate the whole
    menu first and leave a partial cache folder)."""
    import gymnasium as gym

    monkeypatch.setattr(gym, "make", lambda *a, **k: pytest.fail("an env was built"))
    with pytest.raises(ValueError, match="needs >= 4 training documents, got num_train=3"):
        probe.run_probe("SwitchDec-XSum-v1", num_train=3, num_test=2, out_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()
