"""One model identity through every cache (issue 20 H1, H2): after any kind of weight edit, the prefix store, the
evaluator's memos, the outcome LRU and the disk references give what a fresh computation with reuse and caches off
gives — on a tiny random Llama saved with ``save_pretrained`` and the embedded XSum rows. Also the identity helpers
for derived tables and the low-severity validation items of the issue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import skipenv
from skipenv.envs import SwitchDecEnv
from skipenv.envs.cache import IdentityMismatchError, check_identity, model_fingerprint, model_identity
from skipenv.generators.reuse import PrefixStore

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("one_thread")]

KW = dict(split="train", num_examples=2, max_new_tokens=6, max_input_tokens=96, token_segments=4)
NEGATED = ("model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight")


def load(folder):
    """A fresh generator from a saved folder (its own model object, so its fingerprint is computed anew)."""
    return skipenv.load_generator(folder)


@pytest.fixture(scope="module")
def neg_model_dir(tiny_model_dir, tmp_path_factory):
    """``tiny_model_neg``: the saved tiny model with layers 2-3 ``down_proj`` negated, saved with save_pretrained."""
    g = load(tiny_model_dir)
    with torch.no_grad():
        for name in NEGATED:
            g.model.get_parameter(name).neg_()
    folder = tmp_path_factory.mktemp("tiny_model_neg")
    g.model.save_pretrained(str(folder))
    g.tokenizer.save_pretrained(str(folder))
    return str(folder)


def plans(env, n=2, seed=0):
    """The empty plan, a late-sublayer plan, a token plan and random plans (actions of the one-shot env)."""
    rng = np.random.default_rng(seed)
    size = env.action_space.shape[0]
    late = np.zeros(size, np.int8)
    late[size - 5] = 1  # a late sublayer: the reused path starts from the stored states
    tokens = np.zeros(size, np.int8)
    tokens[-1] = 1  # the last token segment
    return [np.zeros(size, np.int8), late, tokens] + [(rng.random(size) < 0.2).astype(np.int8) for _ in range(n)]


def episodes(env, actions) -> list[tuple]:
    """``(example id, quality, quality_full, cost)`` of every (document, action) pair."""
    out = []
    for i in range(len(env.unwrapped.examples)):
        for a in actions:
            env.reset(options={"index": i})
            *_, info = env.step(a)
            out.append((info["example_id"], info["quality"], info["quality_full"], info["cost"]))
    return out


def assert_same(got, want):
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose(np.array([g[1:] for g in got]), np.array([w[1:] for w in want]), atol=1e-5)


def env_of(g, quality, **evaluator_kwargs):
    """An env on ``g`` through an evaluator built with ``evaluator_kwargs`` (``reuse``, ``cache_root``, ...)."""
    from skipenv.envs import Evaluator
    from skipenv.tasks import make_task

    ev = Evaluator(g, make_task("xsum", max_input_tokens=KW["max_input_tokens"]), quality=quality,
                   token_segments=KW["token_segments"], max_new_tokens=KW["max_new_tokens"], **evaluator_kwargs)
    return SwitchDecEnv("xsum", evaluator=ev, split=KW["split"], num_examples=KW["num_examples"])


def uncached(g, quality):
    """An env on ``g`` with reuse and every cache off."""
    return env_of(g, quality, disk_cache=False, lru_size=0, reuse=False)


def fresh(folder, quality, actions):
    """The reference: a fresh generator of ``folder``, reuse and every cache off."""
    return episodes(uncached(load(folder), quality), actions)


def warm(g, quality, **kw):
    """An env on ``g`` with a prefix store that keeps every input's state from its first request."""
    g.prefix_store = PrefixStore(admit_after=1)
    return SwitchDecEnv("xsum", generator=g, quality=quality, **{"disk_cache": False, **KW, **kw})


# ---------------------------------------------------------------------------------------------------------------
# the fingerprint notices every kind of edit


def _negate_with(g, how):
    m = g.model
    for name in NEGATED:
        w = m.get_parameter(name)
        if how == "load_state_dict":
            pass
        elif how == "mul_":
            with torch.no_grad():
                w.mul_(-1)
        elif how == ".data =":
            w.data = -w.data
        elif how == "new Parameter":
            module_name, _, attr = name.rpartition(".")
            setattr(m.get_submodule(module_name), attr, torch.nn.Parameter(-w.detach().clone(), requires_grad=False))
        elif how == ".data.mul_":
            w.data.mul_(-1)  # bypasses the version counter: the sampled elements notice it
        elif how == "numpy":
            arr = w.detach().numpy()
            arr *= -1  # likewise
    if how == "load_state_dict":
        sd = {k: (-v if k in NEGATED else v) for k, v in m.state_dict().items()}
        m.load_state_dict(sd)


EDITS = ["load_state_dict", "mul_", ".data =", "new Parameter", ".data.mul_", "numpy"]


@pytest.mark.parametrize("how", EDITS)
def test_fingerprint_follows_every_kind_of_weight_edit(how, tiny_model_dir, neg_model_dir):
    g = load(tiny_model_dir)
    before = model_fingerprint(g)
    assert model_fingerprint(g) == before == model_fingerprint(load(tiny_model_dir))  # stable, remembered
    _negate_with(g, how)
    assert model_fingerprint(g) == model_fingerprint(load(neg_model_dir)) != before  # = a fresh digest of the edit
    assert g.fingerprint == model_fingerprint(g)


def test_fingerprint_follows_a_replaced_submodule_and_a_dtype_change(tiny_model_dir):
    g = load(tiny_model_dir)
    before = model_fingerprint(g)
    layer = g.model.model.layers[1]
    old = layer.mlp
    layer.mlp = type(old)(g.config)  # new random weights
    changed = model_fingerprint(g)
    assert changed != before
    layer.mlp = old
    assert model_fingerprint(g) == before  # the same weights again: the same identity
    g.model.to(torch.float64)
    assert model_fingerprint(g) not in (before, changed)


# ---------------------------------------------------------------------------------------------------------------
# H1: the prefix store outlives a weight edit


@pytest.mark.parametrize("how,quality", [("load_state_dict", "probability"), ("mul_", "agreement"),
                                         pytest.param("mul_", "probability", marks=pytest.mark.slow),
                                         pytest.param("load_state_dict", "agreement", marks=pytest.mark.slow)])
def test_prefix_store_is_dropped_after_a_weight_edit(how, quality, tiny_model_dir, neg_model_dir):
    g = load(tiny_model_dir)
    actions = plans(warm(g, quality))
    episodes(warm(g, quality), actions)  # fills the store with the original weights' states
    assert len(g.prefix_store) > 0
    _negate_with(g, how)
    after = episodes(SwitchDecEnv("xsum", generator=g, quality=quality, disk_cache=False, **KW), actions)
    assert_same(after, fresh(neg_model_dir, quality, actions))
    assert g.prefix_store.invalidations == 1 and g.prefix_store.hits > 0  # dropped once, then reused again


def test_no_wrong_reference_is_written_under_the_edited_fingerprint(tiny_model_dir, neg_model_dir, tmp_path):
    g = load(tiny_model_dir)
    actions = plans(warm(g, "probability"))
    g.prefix_store = PrefixStore(admit_after=1)
    episodes(env_of(g, "probability", cache_root=tmp_path), actions)
    _negate_with(g, "load_state_dict")
    episodes(env_of(g, "probability", cache_root=tmp_path), actions)
    assert len(list((tmp_path / "full").iterdir())) == 2  # one namespace per fingerprint
    # a fresh generator of the saved edited model reads the references written after the edit
    reader = env_of(load(neg_model_dir), "probability", cache_root=tmp_path)
    calls = []
    original = reader.unwrapped.generator.generate
    reader.unwrapped.generator.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    ref = fresh(neg_model_dir, "probability", actions)
    for ex, (_, _, quality_full, _) in zip(reader.unwrapped.examples, ref[:: len(actions)]):
        assert reader.unwrapped.evaluator.full_output(ex).output_probability == pytest.approx(quality_full, abs=1e-5)
    assert not calls  # read from disk, and equal to the fresh computation


# ---------------------------------------------------------------------------------------------------------------
# H2: `.data =` and a replaced Parameter change the disk namespace


@pytest.mark.parametrize("how", [".data =", pytest.param("new Parameter", marks=pytest.mark.slow),
                                 pytest.param(".data.mul_", marks=pytest.mark.slow)])
def test_disk_references_of_the_old_weights_are_not_served(how, tiny_model_dir, neg_model_dir, tmp_path):
    g = load(tiny_model_dir)
    env = env_of(g, "agreement", cache_root=tmp_path)
    actions = plans(env)
    episodes(env, actions)  # references of the original weights on disk
    _negate_with(g, how)
    after = env_of(g, "agreement", cache_root=tmp_path)
    assert after.fingerprint != env.fingerprint or env.unwrapped.evaluator.identity_changes == 1
    assert_same(episodes(after, actions), fresh(neg_model_dir, "agreement", actions))
    assert_same(episodes(env, actions), fresh(neg_model_dir, "agreement", actions))  # the old env follows too


def test_evaluator_memos_follow_the_weights(tiny_model_dir, neg_model_dir):
    """The observation memo, the full outputs and the outcome LRU of a live env are dropped after an edit."""
    g = load(tiny_model_dir)
    env = warm(g, "probability")
    obs_before, _ = env.reset(options={"index": 0})
    with torch.no_grad():
        g.model.model.layers[0].mlp.down_proj.weight.mul_(-1)  # changes the observation (first layer's output)
    obs_after, _ = env.reset(options={"index": 0})
    g_ref = load(tiny_model_dir)
    with torch.no_grad():
        g_ref.model.model.layers[0].mlp.down_proj.weight.mul_(-1)
    ref = uncached(g_ref, "probability")
    obs_ref, _ = ref.reset(options={"index": 0})
    np.testing.assert_allclose(obs_after, obs_ref, atol=1e-6)
    assert not np.allclose(obs_after, obs_before)
    a = plans(env)[1]
    *_, info = env.step(a)
    *_, info_ref = ref.step(a)
    assert info["quality"] == pytest.approx(info_ref["quality"], abs=1e-5)
    assert info["quality_full"] == pytest.approx(info_ref["quality_full"], abs=1e-5)


def test_a_folder_resaved_at_the_same_path_is_loaded_again(tiny_model_dir, neg_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    first = SwitchDecEnv("xsum", model=str(folder), disk_cache=False, **KW)
    assert SwitchDecEnv("xsum", model=str(folder), disk_cache=False, **KW).generator is first.generator  # shared
    load(neg_model_dir).model.save_pretrained(str(folder))  # other weights, same path
    second = SwitchDecEnv("xsum", model=str(folder), disk_cache=False, **KW)
    assert second.generator is not first.generator
    assert second.fingerprint == model_fingerprint(load(neg_model_dir)) != first.fingerprint


# ---------------------------------------------------------------------------------------------------------------
# the API derived tables use


def test_identity_metadata_is_checked(tiny_model_dir):
    g = load(tiny_model_dir)
    config = {"env_id": "SwitchDec-XSum-v1", "train_docs": 4}
    stored = model_identity(g, config)
    assert stored["model_fingerprint"] == model_fingerprint(g) and stored["dtype"] == "float32"
    check_identity(stored, g, config, what="probe table")  # same model and settings: accepted
    with pytest.raises(IdentityMismatchError, match=r"^probe table: made with another configuration .*train_docs \(4 -> 8\).*rerun"):
        check_identity(stored, g, {**config, "train_docs": 8}, what="probe table")
    with pytest.raises(IdentityMismatchError, match="^probe table: no model identity stored"):
        check_identity({"config": config}, g, config, what="probe table")
    with torch.no_grad():
        g.model.model.layers[1].self_attn.q_proj.weight.mul_(2)
    with pytest.raises(IdentityMismatchError, match=f"^probe table: made by another model .*{stored['model_fingerprint']}.*"
                                                    f"{model_fingerprint(g)}"):
        check_identity(stored, g, config, what="probe table")


# ---------------------------------------------------------------------------------------------------------------
# low-severity validation items of the issue


@pytest.mark.parametrize("kw", [{"cost_weight": -1e9, "reward_mode": "weighted"},
                                {"cost_weight": -0.5, "reward_mode": "weighted"}])
def test_negative_cost_weight_is_refused(kw):
    from skipenv.envs.rewards import WeightedReward, weighted_reward

    with pytest.raises(ValueError, match="cost_weight must be a finite number >= 0"):
        SwitchDecEnv("xsum", model="/no/such/model", **kw)  # before anything loads
    with pytest.raises(ValueError, match="cost_weight must be >= 0"):
        WeightedReward(kw["cost_weight"])
    with pytest.raises(ValueError, match="cost_weight must be >= 0"):
        weighted_reward(0.5, 0.5, kw["cost_weight"])
    assert WeightedReward(0.0).cost_weight == 0.0


def test_budget_conditioned_range_must_fit_the_observation(tiny_model_dir):
    from skipenv.envs.wrappers import BudgetConditioned

    env = SwitchDecEnv("xsum", generator=load(tiny_model_dir), disk_cache=False, **KW)
    with pytest.raises(ValueError, match="does not fit the observation's dtype float32"):
        BudgetConditioned(env, tau_range=(0, 1e39))
    w = BudgetConditioned(env, tau_range=(0, 3e38))  # finite in float32
    assert np.isfinite(w.observation_space.high).all()


def test_budget_conditioned_refused_tau_leaves_the_episode(tiny_model_dir):
    from skipenv.envs.wrappers import BudgetConditioned

    w = BudgetConditioned(SwitchDecEnv("xsum", generator=load(tiny_model_dir), disk_cache=False, **KW),
                          tau_range=(0.0, 0.3))
    w.reset(seed=0, options={"index": 0, "tau": 0.1})
    example = w.unwrapped.example
    for bad in (5.0, "x", float("nan")):
        with pytest.raises(ValueError, match=r"options\['tau'\]"):
            w.reset(options={"index": 1, "tau": bad})
        assert w.unwrapped.example is example and w.tau == 0.1  # the inner env was not reset
    *_, info = w.step(np.zeros(w.action_space.shape, np.int8))  # the episode goes on
    assert info["example_id"] == example.id and info["tau"] == 0.1


def test_a_non_persistent_buffer_edit_drops_the_in_memory_caches(tiny_model_dir):
    """The rotary ``inv_freq`` is not in the state dict (so not in the fingerprint, the disk namespace), but the
    watch sees its edit: the prefix store and the evaluator's memos are dropped (identity_token changes)."""
    from skipenv.envs.cache import identity_token

    def halve(g):
        with torch.no_grad():
            g.model.model.rotary_emb.inv_freq.mul_(0.5)

    g = load(tiny_model_dir)
    env = warm(g, "agreement")
    actions = plans(env)
    episodes(env, actions)
    fp, token = model_fingerprint(g), identity_token(g)
    halve(g)
    assert model_fingerprint(g) == fp and identity_token(g) != token
    ref = load(tiny_model_dir)
    halve(ref)
    assert_same(episodes(env, actions), episodes(uncached(ref, "agreement"), actions))
    assert env.unwrapped.evaluator.identity_changes == 1 and g.prefix_store.invalidations == 1
