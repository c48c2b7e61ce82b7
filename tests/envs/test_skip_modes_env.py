"""Skip modes in the environment (issue 22 item 1-2): calibration from train documents only, cached on disk, part of
the outcome key, the records and the replay tables; one clear error per misuse."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from skipenv.envs import Evaluator, SwitchDecEnv
from skipenv.envs.records import EpisodeRecord, _settings_differ
from skipenv.envs.skip_modes import calibration_examples, load_or_calibrate
from skipenv.generators.bypass import SkipModeError, calibrate
from skipenv.plan import SkipPlan
from skipenv.testing import tiny_generator

KW = dict(quality="probability", token_segments=4, max_new_tokens=5)


@pytest.fixture(scope="module")
def gen(smollm2_tokenizer):
    return tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("skipcache")


def _evaluator(gen, xsum_task, cache, mode, **kw):
    return Evaluator(gen, xsum_task, cache_root=cache, skip_mode=mode, **KW, **kw)


def test_calibration_uses_train_documents_and_env_leaves_them_out(gen, xsum_task, cache):
    ev = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    train = xsum_task.examples("train")
    assert ev.calibration_ids == tuple(ex.id for ex in train[:3])
    env = SwitchDecEnv(xsum_task, evaluator=ev, split="train", num_examples=2)
    assert [ex.id for ex in env.examples] == [ex.id for ex in train[3:5]]
    assert env.skip_mode == "mean"
    with pytest.raises(ValueError, match="is a calibration document of this env's skip mode"):
        env.reset(options={"example_id": train[0].id})  # in the split, but reserved: say so, not "not in split"
    test_env = SwitchDecEnv(xsum_task, evaluator=ev, split="test", num_examples=2)
    assert [ex.id for ex in test_env.examples] == [ex.id for ex in xsum_task.examples("test")[:2]]
    # the statistics are the mean sublayer update over exactly those documents' formatted inputs
    ref = calibrate(gen, [ev.prompt(ex) for ex in train[:3]], "mean", progress=False)
    for label, p in ref.params.items():
        torch.testing.assert_close(ev.bypasses.params[label]["mean"], p["mean"])


def test_outcome_depends_on_the_mode_and_is_charged_its_flops(gen, xsum_task, cache):
    ident = _evaluator(gen, xsum_task, cache, "identity")
    mean = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    linear = _evaluator(gen, xsum_task, cache, "linear", calibration_documents=3, linear_rank=4)
    ex = xsum_task.examples("train")[5]
    plan = SkipPlan.from_skips(ident.spec, attention=[1], ffn=[2])
    outs = {name: e.outcome(ex, plan) for name, e in (("identity", ident), ("mean", mean), ("linear", linear))}
    assert len({round(o.quality, 9) for o in outs.values()}) == 3  # three different computations
    # the mode's quality is the probability of the full output under the bypassed model (computed here directly)
    full = mean.full_output(ex)
    with gen.bypassing(mean.bypasses):
        lp = gen.score([mean.prompt(ex)], [list(full.tokens)], plan, reuse=False)[0].logprobs
    assert outs["mean"].quality == pytest.approx(float(torch.exp(lp).mean()), abs=1e-5)
    # FLOPs: each of the 2 skipped sublayers costs its bypass per processed token (prompt + decoding steps)
    tokens = len(mean.prompt(ex)) + full.num_generated - 1
    d = gen.hidden_size
    assert outs["mean"].flops - outs["identity"].flops == 2 * tokens * d
    assert outs["linear"].flops - outs["identity"].flops == 2 * tokens * 4 * d * 4
    assert outs["mean"].cost == pytest.approx(outs["mean"].flops / outs["mean"].flops_full)
    # the outcome cache keys name the calibration statistics
    assert mean._outcome_key(ex.id, plan) != ident._outcome_key(ex.id, plan)
    assert mean._outcome_key(ex.id, plan)[-1] == f"mean:{mean.bypasses.digest}"
    assert ident._outcome_key(ex.id, plan) == (ex.id, plan, "pooled")  # identity keeps its earlier key


def test_batched_outcomes_equal_pair_by_pair(gen, xsum_task, cache):
    a = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    b = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    exs = xsum_task.examples("train")[5:7]
    plans = [SkipPlan.from_skips(a.spec, attention=[0], tokens=[3]), SkipPlan.from_skips(a.spec, ffn=[1, 3])]
    together = a.outcomes_together(exs * 2, plans * 2)
    single = [b.outcome(ex, p) for ex, p in zip(exs * 2, plans * 2)]
    for x, y in zip(together, single):
        assert x.quality == pytest.approx(y.quality, abs=1e-4) and x.flops == y.flops


def test_disk_cache_is_read_back_and_a_bad_file_is_recalibrated(gen, xsum_task, cache, monkeypatch):
    first = load_or_calibrate(gen, xsum_task, "mean", documents=3, cache_root=cache, progress=False)
    import skipenv.envs.skip_modes as sm

    def boom(*a, **k):
        raise AssertionError("recalibrated although cached")

    monkeypatch.setattr(sm, "calibrate", boom)
    again = load_or_calibrate(gen, xsum_task, "mean", documents=3, cache_root=cache, progress=False)
    assert again.digest == first.digest
    monkeypatch.undo()
    files = list((cache / "skip_modes" / gen.fingerprint).glob("*.pt"))
    assert files
    for f in files:
        f.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="dropping calibration file"):
        redone = load_or_calibrate(gen, xsum_task, "mean", documents=3, cache_root=cache, progress=False)
    assert redone.digest == first.digest
    other = load_or_calibrate(gen, xsum_task, "mean", documents=4, cache_root=cache, progress=False)
    assert other.digest != first.digest


def test_errors(gen, xsum_task, cache, smollm2_tokenizer):
    from skipenv.tasks import make_task

    with pytest.raises(SkipModeError, match="unknown skip_mode 'zero'"):
        SwitchDecEnv("xsum", model="/nonexistent/model", skip_mode="zero")  # before anything loads
    with pytest.raises(SkipModeError, match="train split only"):
        calibration_examples(xsum_task, 3, split="test")
    b = load_or_calibrate(gen, xsum_task, "mean", documents=3, cache_root=cache, progress=False)
    other = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5, seed=3)
    with pytest.raises(SkipModeError, match="belong to model"):
        Evaluator(other, xsum_task, cache_root=cache, skip_mode="mean", bypasses=b, **KW)
    qa = make_task("disflqa", max_input_tokens=96)
    with pytest.raises(SkipModeError, match="belong to task 'xsum'"):
        Evaluator(gen, qa, cache_root=cache, skip_mode="mean", bypasses=b, **KW)
    with pytest.raises(SkipModeError, match="bypasses of skip mode 'mean' given with skip_mode='linear'"):
        Evaluator(gen, xsum_task, cache_root=cache, skip_mode="linear", bypasses=b, **KW)
    with pytest.raises(SkipModeError, match="needs no calibration"):
        Evaluator(gen, xsum_task, cache_root=cache, calibration_documents=3, **KW)
    # statistics calibrated on test documents cannot score those documents
    test_docs = xsum_task.examples("test")[:3]
    ev = Evaluator(gen, xsum_task, cache_root=cache, **KW)
    leaked = calibrate(gen, [ev.prompt(ex) for ex in test_docs], "mean", progress=False,
                       source={**b.source, "document_ids": ",".join(ex.id for ex in test_docs)})
    bad = Evaluator(gen, xsum_task, cache_root=cache, skip_mode="mean", bypasses=leaked, **KW)
    with pytest.raises(SkipModeError, match="are calibration documents"):
        SwitchDecEnv(xsum_task, evaluator=bad, split="test")
    with pytest.raises(SkipModeError, match="differs from the evaluator's 'mean'"):
        SwitchDecEnv(xsum_task, evaluator=bad, split="validation", skip_mode="identity")
    with pytest.raises(SkipModeError, match="encoder-decoder"):
        load_or_calibrate(tiny_generator("bart"), xsum_task, "mean", documents=3, cache_root=cache)


def test_records_and_validate_name_the_skip_mode(gen, xsum_task, cache):
    mean = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    env = SwitchDecEnv(xsum_task, evaluator=mean, split="train", num_examples=1)
    env.reset(options={"index": 0})
    info = env.step(env.plan_to_action(SkipPlan.from_skips(env.plan_spec, attention=[2])))[4]
    rec = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={})
    assert rec.skip_mode == f"mean:{mean.bypasses.digest}"
    assert rec.env_kwargs["skip_mode"] == "mean" and rec.env_kwargs["calibration_documents"] == 3
    assert EpisodeRecord.from_json(rec.to_json()) == rec
    same = SwitchDecEnv(xsum_task, evaluator=_evaluator(gen, xsum_task, cache, "mean", calibration_documents=3),
                        split="train", num_examples=1)
    assert not [n for n in _settings_differ(rec, same) if "skip" in n]
    ident = SwitchDecEnv(xsum_task, evaluator=_evaluator(gen, xsum_task, cache, "identity"), split="train",
                         num_examples=1)
    assert any("skip_mode differs: recorded 'mean', replay 'identity'" in n for n in _settings_differ(rec, ident))
    four = SwitchDecEnv(xsum_task, evaluator=_evaluator(gen, xsum_task, cache, "mean", calibration_documents=4),
                        split="train", num_examples=1)
    assert any("calibration statistics differ" in n for n in _settings_differ(rec, four))
    # an identity record keeps its earlier JSON form
    ident.reset(options={"index": 0})
    info = ident.step(ident.plan_to_action(SkipPlan.from_skips(ident.plan_spec, attention=[2])))[4]
    assert "skip_mode" not in EpisodeRecord.from_step(ident, info, env_id="SwitchDec-XSum-v0").to_json()


def test_tables_refuse_another_skip_mode():
    from skipenv.tables.build import skip_mode_kwargs, table_config
    from skipenv.tables.envs import TableFactorialEnv
    from skipenv.tables.store import TableError

    assert table_config()["skip_mode"] == "identity"
    cfg = table_config(skip_mode="linear", linear_rank=32)
    assert skip_mode_kwargs(cfg) == {"skip_mode": "linear", "linear_rank": 32}
    assert skip_mode_kwargs({"skip_mode": "mean:0123abcd"}) == {"skip_mode": "mean"}
    TableFactorialEnv("xsum-v1", skip_mode="identity")
    with pytest.raises(TableError, match="built under skip_mode 'identity', not 'mean'"):
        TableFactorialEnv("xsum-v1", skip_mode="mean")


def test_layerwise_env_observes_the_bypassed_hidden_state(gen, xsum_task, cache):
    """The layerwise env's per-layer observation is the hidden state the plan's run computes, bypass included:
    after skipping layer 0's attention under mean, the pooled state equals the hooked HF model's layer-0 output."""
    from skipenv.envs import SwitchDecLayerwiseEnv

    ev = _evaluator(gen, xsum_task, cache, "mean", calibration_documents=3)
    env = SwitchDecLayerwiseEnv(xsum_task, evaluator=ev, split="train", num_examples=1)
    env.reset(options={"index": 0})
    env.step(0)  # keep every token
    obs = env.step(1)[0]  # layer 0: skip attention
    skip_attn, skip_ffn = env._attn[0], env._ffn[0]
    prompt = ev.prompt(env.example)
    layer = gen._decoder_layers()[0]
    seen = []
    handles = [layer.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))]
    mods = gen.sublayer_modules("decoder", 0)
    for skipped, seq, label in ((skip_attn, mods.attention, "decoder.attention.0"),
                                (skip_ffn, mods.ffn, "decoder.ffn.0")):
        if skipped:
            mean = ev.bypasses.params[label]["mean"]
            handles.append(seq[-1].register_forward_hook(
                lambda m, a, o, mean=mean: ((mean.expand_as(o[0]).clone(), *o[1:]) if isinstance(o, tuple)
                                            else mean.expand_as(o).clone())))
    try:
        with torch.inference_mode():
            ids = torch.tensor([prompt.input_ids])
            gen.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert skip_attn or skip_ffn
    pooled = seen[0][0].float().mean(0).numpy()
    np.testing.assert_allclose(obs[: gen.hidden_size], pooled, atol=1e-4, rtol=1e-4)
