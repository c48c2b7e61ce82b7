"""``skipenv generate`` and :class:`skipenv.policies.deploy.PolicyGenerator` on a tiny random-weight Llama (SmolLM2
tokenizer) saved to disk: outputs, FLOPs and observations checked against the generator and the env directly."""

from __future__ import annotations

import json
import gymnasium as gym
import numpy as np
import pytest

import skipenv  # noqa: F401
from skipenv.cli import main
from skipenv.policies.deploy import PolicyGenerator, describe_plan, read_documents
from skipenv.plan import SkipPlan

from _tiny_local import tiny_env_kwargs, write_tiny_assets

NEW_TEXT = ("Residents of a small coastal village voted on Tuesday to build a wind turbine on the hill above the "
            "harbour, after a two-year campaign by the local school. The turbine will power the school and the "
            "lifeboat station.")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kwargs(tmp_path_factory):
    model, data = write_tiny_assets(tmp_path_factory.mktemp("tiny"))
    return tiny_env_kwargs(model, data, disk_cache=False)


def test_describe_plan_words():
    from skipenv.plan import PlanSpec

    spec = PlanSpec(model_type="llama", num_encoder_layers=0, num_decoder_layers=6, token_segments=8)
    plan = SkipPlan.from_skips(spec, attention=[1, 2, 3, 5], ffn=[4], tokens=[5, 6, 7])
    assert describe_plan(plan) == ("skips attention in decoder layers 1-3, 5; FFN in decoder layer 4; "
                                   "document segments 6-8 of 8 (the document's tail)")
    assert describe_plan(spec.empty_plan()) == "skips nothing (the full model)"


def test_observation_equals_the_envs(kwargs):
    pg = PolicyGenerator("skip-nothing", env_kwargs=kwargs)
    env = gym.make("SwitchDec-XSum-v0", **kwargs).unwrapped
    for i in (0, 3):
        obs, _ = env.reset(options={"index": i})
        ours = pg.observation(pg.prompt(env.example))
        np.testing.assert_array_equal(ours, obs)


def test_static_policy_on_new_text_matches_the_generator(kwargs):
    pg = PolicyGenerator("lead:2", env_kwargs=kwargs)
    r = pg.generate(NEW_TEXT, compare=True)
    gen, task = pg.generator, pg.task
    # independent path: the Example -> prompt -> plan -> generate by hand
    from skipenv.tasks import Example

    prompt = task.format(Example(id="x", document=NEW_TEXT, reference=""), gen.tokenizer, encoder_decoder=False,
                         max_input_tokens=kwargs["max_input_tokens"])
    plan = SkipPlan.from_skips(gen.plan_spec(4), tokens=[2, 3])
    out = gen.generate([prompt], plan, max_new_tokens=kwargs["max_new_tokens"], stop=task.output_complete)
    full = gen.generate([prompt], None, max_new_tokens=kwargs["max_new_tokens"], stop=task.output_complete)
    # the printed / stored output is what the env scores (the task's post-processing), the raw text is kept too
    assert r.raw_text == out.texts[0] and r.text == task.post_process(out.texts[0])
    assert r.full_raw_text == full.texts[0] and r.full_text == task.post_process(full.texts[0])
    assert task.post_process("Tidal power grew with underwater turbines. The") == \
        "Tidal power grew with underwater turbines."  # the stop rule's one token past the sentence is dropped
    assert r.plan == plan.to_json() and r.plan_words == "skips document segments 3-4 of 4 (the document's tail)"
    assert r.flops == gen.flops(plan, prompt, out.num_generated[0], observation=True).total
    assert r.flops_full == gen.flops(None, prompt, full.num_generated[0]).total
    assert r.flops_saved == pytest.approx(1 - r.flops / r.flops_full)
    assert r.time_s > 0 and r.full_time_s > 0 and r.speedup == pytest.approx(r.full_time_s / r.time_s)
    assert r.document_id not in {ex.id for ex in pg.env.task.examples("all")}


def test_read_documents_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        read_documents(text="a", file="b")
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="d.jsonl:1: no 'document'"):
        read_documents(jsonl=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents(file=tmp_path / "missing.txt")


def test_cli_sb3_policy_zip_on_a_file_with_compare(kwargs, tmp_path, capsys):
    from skipenv.policies.sb3 import train_sb3

    env = gym.make("SwitchDec-XSum-v0", **kwargs).unwrapped
    model = train_sb3("ppo", env, total_timesteps=8, seed=0, out_dir=tmp_path / "ppo", progress_bar=False)
    doc = tmp_path / "article.txt"
    doc.write_text(NEW_TEXT)
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--policy", str(tmp_path / "ppo" / "policy.zip"), "--file", str(doc), "--compare",
            "--out", str(out), "--env-kwargs", json.dumps(kwargs)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "measured speed-up" in printed and "full     " in printed
    row = json.loads(out.read_text().splitlines()[0])
    assert row["document_id"] == "article" and row["policy"] == "ppo:ppo"
    # the action is the saved model's deterministic action on the same observation
    pg = PolicyGenerator("skip-nothing", env_kwargs=kwargs)
    obs = pg.observation(pg.prompt(pg.example(NEW_TEXT)))
    expected, _ = model.predict(obs, deterministic=True)
    assert row["action"] == np.asarray(expected).astype(int).tolist()
    assert row["full_text"] is not None and row["speedup"] > 0
    assert row["text"] == pg.task.post_process(row["raw_text"]) and f"output   {row['text']!r}" in printed


def test_cli_bad_input_exits_1_with_reason(kwargs, tmp_path, capsys):
    argv = ["generate", "--policy", str(tmp_path / "nope.zip"), "--text", "hi", "--env-kwargs", json.dumps(kwargs)]
    assert main(argv) == 1
    assert "nope.zip' does not exist" in capsys.readouterr().err
    assert main(["generate", "--policy", "lead:2", "--text", "  ", "--env-kwargs", json.dumps(kwargs)]) == 1
    assert "the document is empty" in capsys.readouterr().err


def test_cli_is_registered_and_needs_a_source():
    with pytest.raises(SystemExit) as e:
        main(["generate", "--policy", "lead:4"])
    assert e.value.code == 2


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_policy_zip_algorithm_is_read_from_the_file(kwargs, tmp_path, algo):
    import stable_baselines3 as sb3

    from skipenv.policies.spec import _sb3_class, load_policy
    from skipenv.policies.sb3 import train_sb3

    env = gym.make("SwitchDec-XSum-v0", **kwargs).unwrapped
    train_sb3(algo, env, total_timesteps=4, out_dir=tmp_path, progress_bar=False)
    assert _sb3_class(tmp_path / "policy.zip") is {"ppo": sb3.PPO, "a2c": sb3.A2C}[algo]
    policy = load_policy(str(tmp_path / "policy.zip"), env)
    obs, _ = env.reset(options={"index": 0})
    assert env.action_space.contains(policy(obs))
    other = gym.make("SwitchDec-XSum-v0", **{**kwargs, "token_segments": 8}).unwrapped
    with pytest.raises(ValueError, match="pass the --env / env kwargs it was trained with"):
        load_policy(str(tmp_path / "policy.zip"), other)


def test_repository_agent_policy_pt(kwargs, tmp_path):
    from skipenv.policies.pg import ConstrainedPG

    env = gym.make("SwitchDec-XSum-v0", **kwargs).unwrapped
    agent = ConstrainedPG(env, seed=3)
    agent.save(tmp_path / "policy.pt")
    pg = PolicyGenerator(str(tmp_path / "policy.pt"), env_kwargs=kwargs)
    r = pg.generate(NEW_TEXT)
    obs = pg.observation(pg.prompt(pg.example(NEW_TEXT)))
    assert r.action == agent(obs).astype(int).tolist() and r.policy.startswith("pg:")


def test_a_saved_policy_is_named_the_same_way_in_every_command(kwargs, tmp_path):
    """A bare ``policy.zip`` / ``policy.pt`` and the leaderboard's ``sb3:ALGO:PATH.zip`` / ``pg:PATH.pt`` load the
    same policy through :func:`load_policy`, the front door of generate, dataset and leaderboard."""
    from stable_baselines3 import DQN

    from skipenv.policies.pg import ConstrainedPG
    from skipenv.policies import load_policy
    from skipenv.policies.sb3 import train_sb3

    env = gym.make("SwitchDec-XSum-v0", **kwargs).unwrapped
    model = train_sb3("ppo", env, total_timesteps=4, seed=0, out_dir=tmp_path / "ppo-run", progress_bar=False)
    agent = ConstrainedPG(env, seed=3)
    agent.save(tmp_path / "cpg" / "policy.pt")
    zip_path, pt_path = str(tmp_path / "ppo-run" / "policy.zip"), str(tmp_path / "cpg" / "policy.pt")
    obs, _ = env.reset(options={"index": 0})
    expected, _ = model.predict(obs, deterministic=True)
    build = load_policy  # the one front door of generate, dataset and leaderboard
    for spec in (zip_path, f"sb3:ppo:{zip_path}"):
        policy = build(spec, env)
        assert policy.name == "ppo:ppo-run", (build, spec)
        np.testing.assert_array_equal(policy(obs), expected)
    for spec in (pt_path, f"pg:{pt_path}"):
        policy = build(spec, env)
        assert policy.name == "pg:cpg", (build, spec)
        np.testing.assert_array_equal(policy(obs), agent(obs))
    with pytest.raises(ValueError, match="saved by PPO, not 'a2c'"):
        build(f"sb3:a2c:{zip_path}", env)
    with pytest.raises(FileNotFoundError, match="nope.zip' does not exist"):
        build(str(tmp_path / "nope.zip"), env)
    # a layerwise policy (Discrete per layer) is refused by name, not with a shape mismatch
    layerwise = gym.make("SwitchDec-XSum-Layerwise-v0", **kwargs).unwrapped
    (tmp_path / "dqn").mkdir()
    DQN("MlpPolicy", layerwise, learning_starts=0, buffer_size=16, device="cpu").save(tmp_path / "dqn" / "policy.zip")
    with pytest.raises(ValueError, match="is a layerwise policy"):
        load_policy(str(tmp_path / "dqn" / "policy.zip"), env)
