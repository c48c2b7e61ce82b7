"""RT-v2 (issue 23): the logistic label head on the final hidden state — its arithmetic and file format, fitting under
plans, exactness against the unmodified Hugging Face model, the FLOPs charged (FlopCounterMode), the cache key, and
the refusal of a head fitted on another model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import skipenv
from skipenv import SkipPlan
from skipenv.envs import Evaluator
from skipenv.envs.label_head import fit_label_head, training_plans
from skipenv.tasks import Example, make_task
from skipenv.tasks.heads import LabelHead, LabelHeadError, fit_logistic_head

pytestmark = pytest.mark.usefixtures("one_thread")

REVIEWS = [Example("r1", "A warm, funny and sharply acted film.", "positive", label="positive"),
           Example("r2", "Dull, overlong and badly written.", "negative", label="negative"),
           Example("r3", "Wonderful performances and a moving story.", "positive", label="positive"),
           Example("r4", "A tedious mess with no laughs at all.", "negative", label="negative")]


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    """A head fitted on the tiny model's features of the four reviews under the full model and three plans."""
    ev = Evaluator(tiny_llama, make_task("rotten_tomatoes", scoring="verbalizer"), quality="label_agreement", disk_cache=False)
    plans = training_plans(ev.spec, 3, seed=1)
    return fit_label_head(ev, REVIEWS, plans, per_plan=2, C=100.0), plans


def _hf_final_hidden(gen, prompt, plan=None) -> np.ndarray:
    """The unmodified HF model's last hidden state (after the final norm) at the last kept input position."""
    plan = plan if plan is not None else gen.empty_plan()
    ids = torch.tensor([prompt.apply_token_skips(plan.tokens)])
    with gen.skipping(plan), torch.inference_mode():
        out = gen.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1][0, -1].double().numpy()


def test_head_arithmetic_file_round_trip_and_bad_heads(tmp_path):
    w = np.array([0.5, -2.0, 1.0])
    head = LabelHead(w, 0.25, "abc")
    assert head.logit([1.0, 1.0, 1.0]) == pytest.approx(0.5 - 2.0 + 1.0 + 0.25)
    np.testing.assert_allclose(head.logit(np.eye(3)), [0.75, -1.75, 1.25])
    assert head.flops == 6 and head.hidden_size == 3
    path = tmp_path / "h.json"
    head.save(path)
    back = LabelHead.load(path)
    assert back == head and back.digest == head.digest and np.array_equal(back.weight, head.weight)
    assert LabelHead(w, 0.26, "abc").digest != head.digest and LabelHead(w, 0.25, "abd").digest != head.digest
    with pytest.raises(LabelHeadError, match="hidden size 3"):
        head.logit(np.ones(4))
    with pytest.raises(LabelHeadError, match="finite"):
        LabelHead([np.nan, 1.0], 0.0, "abc")
    with pytest.raises(LabelHeadError, match="fingerprint"):
        LabelHead(w, 0.0, "")
    path.write_text('{"format": "something else"}')
    with pytest.raises(LabelHeadError, match="not a skipenv label head"):
        LabelHead.load(path)
    with pytest.raises(LabelHeadError, match="fitted on the features of model abc"):
        head.check_model("def")


def test_fit_logistic_head_equals_sklearn_on_standardised_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + [0.0, 5.0, -1.0, 0.0, 2.0]
    s = X @ [1.0, -0.5, 2.0, 0.0, 0.3] + rng.normal(scale=0.5, size=80)
    y = s > np.median(s)
    head = fit_logistic_head(X, y, "fp", C=0.5)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000)).fit(X, y)
    np.testing.assert_allclose(head.logit(X), ref.decision_function(X), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic_head(X, np.ones(80), "fp")
    with pytest.raises(ValueError, match="one label per row"):
        fit_logistic_head(X, y[:10], "fp")


def test_training_plans_are_seeded_distinct_and_of_the_spec(tiny_llama):
    spec = tiny_llama.plan_spec(8)
    a, b = training_plans(spec, 6, seed=3), training_plans(spec, 6, seed=3)
    assert list(a) == list(b) and len(set(a.values())) == 6
    assert all(p.spec == spec and not p.is_empty for p in a.values())
    assert list(training_plans(spec, 6, seed=4)) != list(a)
    with pytest.raises(ValueError, match="count"):
        training_plans(spec, 0)


@pytest.mark.parametrize("skips", [{}, {"attention": [0]}, {"ffn": [1], "tokens": [7]}])
def test_head_margin_features_and_flops_equal_the_hf_model(tiny_llama, fitted, skips):
    head, _ = fitted
    task = make_task("rotten_tomatoes_head", head=head)
    ev = Evaluator(tiny_llama, task, quality="label_probability", disk_cache=False)
    plan = SkipPlan.from_skips(ev.spec, **skips)
    for ex in REVIEWS[:2]:
        prompt = ev.prompt(ex)
        h = _hf_final_hidden(tiny_llama, prompt, plan)
        np.testing.assert_allclose(ev.label_features(ex, plan), h, rtol=1e-4, atol=1e-5)
        z = float(h @ head.weight + head.bias)
        assert ev.label_margin(ex, plan) == pytest.approx(z, abs=1e-4)
        # FLOPs: the layers over the kept input (FlopCounterMode on the base model, no LM head) + the head's matmul
        ids = torch.tensor([prompt.apply_token_skips(plan.tokens)])
        with tiny_llama.skipping(plan), torch.inference_mode(), FlopCounterMode(display=False) as fc:
            hid = tiny_llama.model.model(input_ids=ids).last_hidden_state[:, -1]
            _ = hid.double() @ torch.tensor(head.weight)[:, None]
        o = ev.outcome(ex, plan)
        assert o.flops - o.flops_breakdown["observation"] == fc.get_total_flops()
        assert o.flops_breakdown["per_candidate"]["label_head"] == 2 * tiny_llama.hidden_size
        assert o.flops_breakdown["per_candidate"]["lm_head"] == 0
        # quality: the sigmoid probability of the full model's label, computed here from the HF hidden states
        z_full = float(_hf_final_hidden(tiny_llama, prompt) @ head.weight + head.bias)
        full_label = "positive" if z_full > 0 else "negative"
        p = 1.0 / (1.0 + math.exp(-z))
        assert ev.full_output(ex).text == full_label
        assert o.quality == pytest.approx(p if full_label == "positive" else 1 - p, abs=1e-4)


def test_head_fitted_under_plans_separates_its_training_reviews(tiny_llama, fitted):
    head, plans = fitted
    ev = Evaluator(tiny_llama, make_task("rotten_tomatoes_head", head=head), quality="label_agreement",
                   disk_cache=False)
    assert head.fingerprint == ev.fingerprint and head.info["plans"] == 3
    # weakly regularised (C = 100) on 4 reviews x (full + 2 plans) = 10 rows in d = 32: its training rows are
    # separated, under the full model and under the plans they were drawn under
    assert [ev.full_output(ex).text for ex in REVIEWS] == [ex.label for ex in REVIEWS]
    assert head.info["rows"] == 4 + 3 * 2


def test_a_head_of_another_model_is_refused(tiny_llama, fitted, smollm2_tokenizer):
    from skipenv.testing import tiny_generator

    head, _ = fitted
    other = tiny_generator("llama", smollm2_tokenizer, seed=1)
    with pytest.raises(LabelHeadError, match=f"fitted on the features of model {head.fingerprint}"):
        Evaluator(other, make_task("rotten_tomatoes_head", head=head), quality="label_agreement", disk_cache=False)
    # the shipped head belongs to the embedded SmolLM2, not to a tiny model
    with pytest.raises(LabelHeadError, match="fitted on the features of model"):
        skipenv.make("SwitchDec-RottenTomatoes-v2", generator=tiny_llama, num_examples=2, disk_cache=False)
    # a model changed in place after the evaluator was built: refused at the next use
    ev = Evaluator(other, make_task("rotten_tomatoes", scoring="verbalizer"), quality="label_agreement", disk_cache=False)
    head_other = fit_label_head(ev, REVIEWS, [], C=1.0)
    ev = Evaluator(other, make_task("rotten_tomatoes_head", head=head_other), quality="label_agreement",
                   disk_cache=False)
    with torch.no_grad():
        other.model.model.norm.weight.mul_(1.5)
    with pytest.raises(LabelHeadError, match="fitted on the features of model"):
        ev.label_margin(REVIEWS[0], None)


def test_full_label_cache_is_keyed_by_the_head(tiny_llama, fitted, tmp_path):
    """A label cached under one head must never be served under another (a stale reward)."""
    head, _ = fitted
    flipped = LabelHead(-head.weight, -head.bias, head.fingerprint)
    labels = []
    for h in (head, flipped):
        ev = Evaluator(tiny_llama, make_task("rotten_tomatoes_head", head=h), quality="label_agreement",
                       cache_root=tmp_path)
        labels.append(ev.full_output(REVIEWS[0]).text)
    assert labels == ["positive", "negative"] and any(tmp_path.rglob("*"))


def test_head_task_arguments():
    with pytest.raises(ValueError, match="needs head="):
        make_task("rotten_tomatoes", scoring="head")
    with pytest.raises(ValueError, match="head= is a setting of scoring='head'"):
        make_task("rotten_tomatoes", head="rotten_tomatoes")
    with pytest.raises(LabelHeadError, match="existing head JSON file"):
        make_task("rotten_tomatoes_head", head="/nonexistent/head.json")


# ------------------------------------------------------------------------------------- the embedded model (slow)
#: docs/tasks.md (RT-v2): full-model accuracy 0.81 against 0.53 for the train-majority label on the first 100 test
#: reviews; asserted with slack on the first 30
RT_V2_TEST_MARGIN = 0.10


@pytest.mark.slow
@pytest.mark.assets
def test_rt_v2_full_model_beats_the_majority_label():
    """The shipped head on the embedded SmolLM2: test accuracy above the train-majority label's by
    RT_V2_TEST_MARGIN on 30 test reviews (one forward pass each), and the head belongs to this model."""
    import gymnasium as gym

    env = gym.make("SwitchDec-RottenTomatoes-v2", split="test", num_examples=30, disk_cache=False).unwrapped
    assert env.task.head.fingerprint == env.evaluator.fingerprint
    acc = np.mean([env.evaluator.full_output(ex).target_score for ex in env.examples])
    train = [e.label for e in env.task.examples("train")]
    majority = max(("positive", "negative"), key=train.count)
    base = np.mean([ex.label == majority for ex in env.examples])
    assert acc - base >= RT_V2_TEST_MARGIN, (acc, base)
    env.close()


def test_label_head_on_an_id_without_one_is_one_clear_error(tiny_llama):
    """label_head= belongs to RT-v2's task: on XSum it is refused by name, on QA-v2 (a span head) with the route
    that works (task=make_task('disflqa_head', span_head=PATH)); never a task constructor's raw TypeError."""
    import skipenv

    with pytest.raises(ValueError, match="label_head= is a setting of head-scored classification ids"):
        skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, label_head="x.json", num_examples=1)
    with pytest.raises(ValueError, match=r"make_task\('disflqa_head', span_head=PATH\)"):
        skipenv.make("SwitchDec-DisflQA-v2", generator=tiny_llama, label_head="x.json", num_examples=1)


def test_a_binary_file_as_label_head_is_a_label_head_error(tmp_path):
    from skipenv.tasks.heads import LabelHead, LabelHeadError

    f = tmp_path / "span.npz"
    f.write_bytes(b"PK\x03\x04\xb3\xff\x00binary")
    with pytest.raises(LabelHeadError, match="cannot read a label head"):
        LabelHead.load(f)
