"""Minari datasets of logged skip decisions and off-policy evaluation, on a tiny random-weight Llama saved to disk:
stored propensities, rewards and estimates are recomputed independently (by hand and by stepping the env)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari", reason='Minari is not installed: pip install -e ".[offline]"')
pytest.importorskip("sklearn", reason='scikit-learn is not installed: pip install -e ".[offline]"')

import skipenv  # noqa: E402,F401
from skipenv.cli import main  # noqa: E402
from skipenv.evaluation.offline import dataset_id, evaluate_off_policy, load_bandit_data, record_dataset  # noqa: E402

from _tiny_local import tiny_env_kwargs, write_tiny_assets  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = "SwitchDec-XSum-v0"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny assets, env kwargs and two recorded datasets (random:0.1 x 24 episodes, skip-nothing x 12)."""
    folder = tmp_path_factory.mktemp("offline")
    model, data = write_tiny_assets(folder, num_documents=12)
    kw = tiny_env_kwargs(model, data, disk_cache=False)
    split = kw.pop("split")
    root = folder / "datasets"
    record_dataset(ENV, "random:0.1", 24, "tiny-random", env_kwargs=kw, split=split, root=root, progress=False)
    record_dataset(ENV, "skip-nothing", 12, "tiny-nothing", env_kwargs=kw, split=split, root=root, progress=False)
    env = gym.make(ENV, split=split, **kw).unwrapped
    return {"kw": kw, "split": split, "root": root, "env": env}


def _load(setup, name, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(setup["root"]))
    return minari.load_dataset(dataset_id(name))


def test_dataset_loads_with_minari_and_holds_the_logged_rounds(setup, monkeypatch):
    ds = _load(setup, "tiny-random", monkeypatch)
    env = setup["env"]
    assert ds.total_episodes == 24 and ds.spec.action_space == env.action_space
    d = load_bandit_data(ds)
    n_bits = env.action_space.n
    # documents cycle in split order
    assert list(d["example_ids"]) == [env.examples[i % len(env.examples)].id for i in range(24)]
    k = d["actions"].sum(1)
    np.testing.assert_allclose(d["propensities"], 0.1 ** k * 0.9 ** (n_bits - k), rtol=1e-12)
    assert 0 < k.mean() < n_bits  # the logging policy explored
    # rewards, quality and cost are what the env gives for the same document and action
    for i in (0, 5, 17):
        obs, _ = env.reset(options={"example_id": d["example_ids"][i]})
        np.testing.assert_array_equal(obs, d["observations"][i])
        _, reward, _, _, info = env.step(d["actions"][i])
        assert reward == pytest.approx(d["rewards"][i]) and info["cost"] == pytest.approx(d["cost"][i])
        assert info["quality"] == pytest.approx(d["quality"][i])
    ep = next(ds.iterate_episodes())
    assert ep.observations.shape == (2, env.observation_space.shape[0]) and ep.actions.shape == (1, n_bits)


def test_ips_and_on_policy_value_by_hand(setup, monkeypatch):
    res = evaluate_off_policy(["tiny-random"], "random:0.05", root=setup["root"], progress=False)
    d = load_bandit_data(_load(setup, "tiny-random", monkeypatch))
    n_bits, k = setup["env"].action_space.n, d["actions"].sum(1)
    w = (0.05 ** k * 0.95 ** (n_bits - k)) / (0.1 ** k * 0.9 ** (n_bits - k))
    assert res["ips"] == pytest.approx(np.mean(w * d["rewards"]))
    assert res["snips"] == pytest.approx(np.sum(w * d["rewards"]) / np.sum(w))
    assert res["ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    # deterministic target: on-policy value = mean env reward of its action over the logged documents
    res = evaluate_off_policy(["tiny-random"], "skip-nothing", root=setup["root"], progress=False)
    env = setup["env"]
    values = []
    for ex_id in d["example_ids"]:
        env.reset(options={"example_id": ex_id})
        values.append(env.step(np.zeros(env.action_space.n, np.int8))[1])
    assert res["on_policy"] == pytest.approx(np.mean(values))
    assert res["support"] == pytest.approx(np.mean(k == 0))
    assert res["error_dr"] == pytest.approx(res["dr"] - res["on_policy"])


def test_pooled_random_and_skip_nothing_logs_estimate_a_third_policy(setup):
    res = evaluate_off_policy(["tiny-random", "tiny-nothing"], "random:0.05", root=setup["root"], progress=False)
    assert res["logging"] == ["random:0.1", "skip-nothing"] and res["episodes"] == 36
    assert res["support"] == 1.0 and res["ess"] > 5
    # the reward model + correction stays close to the on-policy value on these documents
    assert abs(res["error_dr"]) < 0.05 and abs(res["error_snips"]) < 0.05


def test_cli_record_and_evaluate(setup, tmp_path, capsys, monkeypatch):
    root = tmp_path / "ds"
    argv = ["dataset", "record", "--policy", "random:0.2", "--episodes", "6", "--out", "cli-rand", "--root", str(root),
            "--split", setup["split"], "--env-kwargs", json.dumps(setup["kw"]), "--no-progress"]
    assert main(argv) == 0
    assert "skipenv/cli-rand-v0 (6 episodes)" in capsys.readouterr().out
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert minari.load_dataset("skipenv/cli-rand-v0").total_episodes == 6
    out = tmp_path / "ope.json"
    assert main(["dataset", "evaluate", "--dataset", "cli-rand", "--policy", "random:0.1", "--root", str(root),
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "DR" in printed and "on-policy" in printed
    assert json.loads(out.read_text())["episodes"] == 6
    assert main(argv) == 1  # the same name again
    assert "already exists" in capsys.readouterr().err


def test_bad_input():
    with pytest.raises(ValueError, match="use letters, digits"):
        dataset_id("bad name!")
    assert dataset_id("xsum-random") == "skipenv/xsum-random-v0" and dataset_id("me/x-v3") == "me/x-v3"
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        record_dataset(ENV, "random:0.1", 0, "zero")
