"""One reward per Minari dataset (issue 20 H4): a dataset recorded on SwitchDec-XSum-v1 (expected constraint) logs
the env's per-input reward with the constraint's loss, records which reward that is, and ``dataset evaluate``
scores the target on that same reward or refuses. Values are recomputed independently (the bare env stepped by
hand, IPS by hand)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari", reason='Minari is not installed: pip install -e ".[offline]"')
pytest.importorskip("sklearn", reason='scikit-learn is not installed: pip install -e ".[offline]"')

import skipenv  # noqa: E402,F401
from skipenv.evaluation.offline import (REWARD_METADATA_KEY, dataset_id, evaluate_off_policy,  # noqa: E402
                                        load_bandit_data, record_dataset, reward_record)

from _tiny_local import tiny_env_kwargs, write_tiny_assets  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
V1 = "SwitchDec-XSum-v1"


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offline_v1")
    model, data = write_tiny_assets(folder, num_documents=8)
    kw = tiny_env_kwargs(model, data, disk_cache=False)
    split = kw.pop("split")
    root = folder / "datasets"
    ds = record_dataset(V1, "random:0.2", 16, "v1-random", env_kwargs=kw, split=split, root=root, progress=False)
    return {"kw": kw, "split": split, "root": root, "ds": ds, "model": model}


def test_a_v1_dataset_logs_the_per_input_reward_and_records_it(v1):
    ds = v1["ds"]
    rec = reward_record(ds)
    assert rec["formulation"] == "per_input" and rec["multiplier"] is None and rec["rule"] == "lexicographic"
    assert rec["tau"] == 0.01 and rec["quality"] == "probability" and rec["env_id"] == V1
    assert rec["constraint"] == {"formulation": "expected", "tau": 0.01, "loss": "quality_full - quality",
                                 "formulation_kwargs": None}
    assert json.loads(ds.storage.metadata[REWARD_METADATA_KEY])["identity"]["model_fingerprint"]
    # every logged reward is the bare env's reward of that (document, action), stepped again by hand
    bare = gym.make(V1, split=v1["split"], formulation="per_input", **v1["kw"]).unwrapped
    data = load_bandit_data(ds)
    for ex_id, action, reward, q, qf in zip(data["example_ids"], data["actions"], data["rewards"], data["quality"],
                                             data["quality_full"]):
        bare.reset(options={"example_id": str(ex_id)})
        _, r, _, _, info = bare.step(action)
        assert r == pytest.approx(reward, abs=1e-9)
        assert info["quality_full"] - info["quality"] == pytest.approx(qf - q, abs=1e-9)
    # not the Lagrangian reward the wrapped v1 env pays while its multiplier moves
    assert "lagrange_multiplier" not in ds.spec.env_spec.kwargs and ds.spec.env_spec.kwargs["formulation"] == \
        "per_input"


def test_evaluate_scores_the_target_on_the_recorded_reward(v1):
    res = evaluate_off_policy(["v1-random"], "skip-nothing", root=v1["root"], progress=False)
    data = load_bandit_data(v1["ds"])
    pi = (data["actions"].sum(1) == 0).astype(float)  # skip-nothing picks the all-zero action
    w = pi / data["propensities"]
    assert res["ips"] == pytest.approx(np.mean(w * data["rewards"]))
    assert res["loss_ips"] == pytest.approx(np.mean(w * (data["quality_full"] - data["quality"])))
    assert res["tau"] == 0.01 and res["on_policy_loss"] == pytest.approx(0.0, abs=1e-12)  # skip nothing loses 0
    bare = gym.make(V1, split=v1["split"], formulation="per_input", **v1["kw"]).unwrapped
    values = []
    for ex_id in data["example_ids"]:
        bare.reset(options={"example_id": str(ex_id)})
        values.append(bare.step(np.zeros(bare.action_space.shape, np.int8))[1])
    assert res["on_policy"] == pytest.approx(np.mean(values))
    assert res["reward"]["formulation"] == "per_input"


def _write_record(v1, name, record):
    ds = record_dataset(V1, "skip-nothing", 2, name, env_kwargs=v1["kw"], split=v1["split"], root=v1["root"],
                        progress=False)
    if record is None:  # as written before the reward record existed, on the wrapped v1 env
        import os

        path = ds.storage.data_path / "metadata.json"
        meta = json.loads(path.read_text())
        meta.pop(REWARD_METADATA_KEY)
        spec = json.loads(meta["env_spec"])
        spec["kwargs"]["formulation"] = "expected"
        meta["env_spec"] = json.dumps(spec)
        path.write_text(json.dumps(meta))
        assert os.path.exists(path)
    else:
        ds.storage.update_metadata({REWARD_METADATA_KEY: json.dumps(record)})
    return ds


def test_a_dataset_of_lagrangian_rewards_is_refused(v1):
    _write_record(v1, "v1-legacy", None)
    with pytest.raises(ValueError, match="records no reward definition.*'expected' formulation.*record it again"):
        evaluate_off_policy(["v1-legacy"], "skip-nothing", root=v1["root"], on_policy=False, progress=False)


def test_another_reward_or_model_is_refused(v1):
    from skipenv.envs.cache import IdentityMismatchError

    rec = reward_record(v1["ds"])
    _write_record(v1, "v1-tau", {**rec, "tau": 0.5})
    with pytest.raises(ValueError, match="another reward than the recorded one.*'tau': \\(0.5, 0.01\\)"):
        evaluate_off_policy(["v1-tau"], "skip-nothing", root=v1["root"], progress=False)
    with pytest.raises(ValueError, match="record different rewards"):
        evaluate_off_policy(["v1-random", "v1-tau"], "skip-nothing", root=v1["root"], progress=False)
    other = dict(rec["identity"], model_fingerprint="0123456789abcdef")
    _write_record(v1, "v1-model", {**rec, "identity": other})
    with pytest.raises(IdentityMismatchError, match="another model"):
        evaluate_off_policy(["v1-model"], "skip-nothing", root=v1["root"], progress=False)


def test_record_refuses_the_budget_formulation_and_bad_kwargs(v1):
    with pytest.raises(ValueError, match="budget-conditioned"):
        record_dataset(V1, "skip-nothing", 2, "never", env_kwargs={**v1["kw"], "formulation": "budget"},
                       root=v1["root"], progress=False)
    with pytest.raises(ValueError, match="env_kwargs must be a dict"):
        record_dataset(V1, "skip-nothing", 2, "never", env_kwargs=[1], root=v1["root"], progress=False)
    assert not (v1["root"] / "skipenv" / "never-v0").exists() and (v1["root"] / "skipenv" / "v1-random-v0").exists()
