"""The span head of SwitchDec-DisflQA-v2 (issue 23): states, span choice, fitting, FLOPs, identity checks."""

from __future__ import annotations

import numpy as np
import pytest

from skipenv.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_best_span_by_hand():
    from skipenv.tasks.span_head import best_span

    # 5 passage tokens, token 2 does not start a word ("ab" = tokens 1, 2)
    word_start = np.array([True, True, False, True, True])
    scores = np.array([[0.0, 0.0], [5.0, 0.0], [9.0, 1.0], [0.0, 3.0], [0.0, 0.0]])
    # start 2 is not a word start; best start 1; end 1 is not a word end (2 continues it): end 2 (1) or 3 (3)
    assert best_span(scores, np.arange(5), word_start, max_tokens=5) == (1, 3)
    assert best_span(scores, np.arange(5), word_start, max_tokens=2) == (1, 2)  # length cap: 2 tokens
    # token 3 dropped by the plan: the span may not end there
    assert best_span(scores[[0, 1, 2, 4]], np.array([0, 1, 2, 4]), word_start, max_tokens=5) == (1, 2)
    with pytest.raises(ValueError, match="kept passage tokens"):
        best_span(np.zeros((0, 2)), np.zeros(0), word_start, 3)


@pytest.fixture(scope="module")
def fitted(tiny_llama, tmp_path_factory):
    from skipenv.envs.span_head import fit_span_head

    task = make_task("disflqa_head", max_input_tokens=300, span_head="disflqa_smollm2")
    train = task.examples("train")[:3]
    head = fit_span_head(tiny_llama, task, train, plans_per_example=1, max_answer_tokens=6, max_iter=20)
    path = tmp_path_factory.mktemp("head") / "head.npz"
    head.save(path)
    return head, path


def test_passage_states_equal_the_hf_models_hidden_states(tiny_llama):
    import torch

    from skipenv import SkipPlan
    from skipenv.envs.span_head import passage_states

    task = make_task("disflqa_head", max_input_tokens=300)
    prompt = task.format(task.examples("test")[0], tiny_llama.tokenizer, encoder_decoder=False)
    layers = (1, tiny_llama.num_decoder_layers)
    plan = SkipPlan.from_skips(tiny_llama.plan_spec(4), attention=[0], tokens=[1])
    pos, feats = passage_states(tiny_llama, prompt, plan, layers)
    kept = prompt.kept_positions(plan.tokens)
    a, b = prompt.document_span
    with tiny_llama.skipping(plan), torch.inference_mode():  # the plain HF forward over the kept ids
        hs = tiny_llama.model(input_ids=torch.tensor([list(prompt.apply_token_skips(plan.tokens))]),
                              output_hidden_states=True).hidden_states
    cols = [k for k, p in enumerate(kept) if a <= p < b]
    want = torch.cat([hs[i][0, cols] for i in layers], -1).numpy()
    assert list(pos) == [kept[c] - a for c in cols] and len(pos) < b - a  # segment 1 of the passage dropped
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)


def test_fitted_head_is_deterministic_and_round_trips(tiny_llama, fitted):
    from skipenv.envs.cache import model_fingerprint
    from skipenv.envs.span_head import fit_span_head
    from skipenv.tasks.span_head import NUM_LEXICAL, SpanHead

    head, path = fitted
    assert head.fingerprint == model_fingerprint(tiny_llama)
    assert head.weight.shape == (tiny_llama.hidden_size + NUM_LEXICAL, 2) and head.num_lexical == NUM_LEXICAL
    assert head.layers == (tiny_llama.num_decoder_layers,)
    again = SpanHead.load(path)
    assert again.digest() == head.digest()
    np.testing.assert_array_equal(again.weight, head.weight)
    task = make_task("disflqa_head", max_input_tokens=300)
    refit = fit_span_head(tiny_llama, task, task.examples("train")[:3], plans_per_example=1, max_answer_tokens=6,
                          max_iter=20)
    assert refit.digest() == head.digest()


def test_fitting_lowers_the_training_loss_against_a_zero_head(tiny_llama, fitted):
    """The fitted head gives the gold start / end tokens more probability than the untrained (uniform) head."""
    from skipenv.envs.span_head import answer_token_span, passage_states
    from skipenv.envs.spans import passage_tokens
    from skipenv.tasks.span_head import lexical_features

    head, _ = fitted
    task = make_task("disflqa_head", max_input_tokens=300)
    nll, uniform = 0.0, 0.0
    for ex in task.examples("train")[:3]:
        prompt = task.format(ex, tiny_llama.tokenizer, encoder_decoder=False)
        doc = passage_tokens(prompt)
        i, j = answer_token_span(tiny_llama.tokenizer, doc, ex.answers)
        assert tiny_llama.tokenizer.decode(doc[i: j + 1]).strip().startswith(ex.answers[0].split()[0])
        pos, feats = passage_states(tiny_llama, prompt, None, head.layers)
        feats = np.concatenate([feats, lexical_features(tiny_llama.tokenizer, doc, ex.question)[pos]], 1)
        s = head.scores(feats).astype(np.float64)
        logp = s - np.log(np.exp(s - s.max(0)).sum(0)) - s.max(0)
        nll -= logp[i, 0] + logp[j, 1]
        uniform += 2 * np.log(len(pos))
    assert nll < uniform


def test_v2_env_charges_the_head_and_scores_fidelity(tiny_llama, fitted):
    import skipenv
    from skipenv import SkipPlan
    from skipenv.metrics import f1

    head, path = fitted
    task = make_task("disflqa_head", max_input_tokens=300, span_head=str(path))
    env = skipenv.make("SwitchDec-DisflQA-v2", generator=tiny_llama, task=task, num_examples=2, token_segments=4,
                       disk_cache=False)
    ev = env.unwrapped.evaluator
    assert env.spec.kwargs["quality"] == "fidelity" and ev.span_head_scoring
    env.reset(options={"index": 0})
    ex = env.unwrapped.example
    full = ev.full_output(ex)
    prompt = ev.prompt(ex)
    passage = tiny_llama.tokenizer.decode(list(prompt.input_ids[slice(*prompt.document_span)]))
    assert full.text and full.text in passage
    plan = SkipPlan.from_skips(ev.spec, ffn=[0], tokens=[3])
    out = ev.outcome(ex, plan)
    want = 1.0 if out.text == full.text else f1(out.text, [full.text])
    assert out.quality == pytest.approx(want) and out.quality_full == 1.0
    # cost: one prefill (LM head on the last position, no decoding) + the head on the kept passage tokens, by hand
    a, b = prompt.document_span
    n_kept = sum(1 for p in prompt.kept_positions(plan.tokens) if a <= p < b)
    cap, F = min(head.max_answer_tokens, n_kept), head.num_features
    head_flops = 4 * F * n_kept + 2 * n_kept + (cap * n_kept - cap * (cap - 1) // 2)
    assert out.flops_breakdown["per_candidate"]["span_head"] == head_flops
    gen_flops = tiny_llama.flops(plan, prompt, 0, observation=True).total
    assert out.flops == gen_flops + head_flops
    full_flops = tiny_llama.flops(None, prompt, 0).total + head.flops(b - a)
    assert out.flops_full == full_flops
    env.close()


def test_head_matmul_flops_match_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from skipenv.tasks.span_head import SpanHead

    head = SpanHead((2,), np.ones((16, 2), np.float32), np.zeros(2, np.float32), 4, "f")
    x = torch.randn(10, 16)
    with FlopCounterMode(display=False) as counter:
        torch.from_numpy(head.weight).T.matmul(x.T)
    assert counter.get_total_flops() == 4 * 16 * 10  # the matmul part of head.flops(10)
    assert head.flops(10) == 4 * 16 * 10 + 20 + (4 * 10 - 6)


def test_another_models_head_is_refused(tiny_llama, fitted, tmp_path):
    from skipenv.envs import Evaluator
    from skipenv.tasks.span_head import SpanHead, SpanHeadError

    head, path = fitted
    other = SpanHead(head.layers, head.weight, head.bias, head.max_answer_tokens, "0" * 16, {}, head.num_lexical)
    other_path = tmp_path / "other.npz"
    other.save(other_path)
    task = make_task("disflqa_head", max_input_tokens=300, span_head=str(other_path))
    with pytest.raises(SpanHeadError, match="fitted on the model with fingerprint 0000"):
        Evaluator(tiny_llama, task, quality="fidelity", disk_cache=False)
    # the shipped head belongs to the embedded SmolLM2, not to this tiny model
    with pytest.raises(SpanHeadError, match="not on this one"):
        Evaluator(tiny_llama, make_task("disflqa_head", max_input_tokens=300), quality="fidelity", disk_cache=False)
    good = make_task("disflqa_head", max_input_tokens=300, span_head=str(path))
    with pytest.raises(ValueError, match="teacher-forces"):
        Evaluator(tiny_llama, good, quality="agreement", disk_cache=False)
    garbled = tmp_path / "garbled.npz"
    garbled.write_bytes(b"not a zip")
    with pytest.raises(SpanHeadError, match="not a span head file"):
        make_task("disflqa_head", span_head=str(garbled)).load_span_head()
    with pytest.raises(SpanHeadError, match="neither a shipped head"):
        make_task("disflqa_head", span_head=str(tmp_path / "missing.npz")).load_span_head()


def test_a_changed_head_is_a_new_cache_key(fitted, tmp_path):
    from skipenv.tasks.span_head import SpanHead

    head, path = fitted
    other = SpanHead(head.layers, head.weight * 2, head.bias, head.max_answer_tokens, head.fingerprint, {},
                     head.num_lexical)
    other.save(tmp_path / "h2.npz")
    a = make_task("disflqa_head", span_head=str(path)).cache_tag()
    b = make_task("disflqa_head", span_head=str(tmp_path / "h2.npz")).cache_tag()
    assert a != b and a.startswith("span-head:1:")


def test_lexical_features_by_hand(smollm2_tokenizer):
    from skipenv.tasks.span_head import NUM_LEXICAL, lexical_features

    passage = "Tesla was born in 1856 . Edison lived in Ohio ."
    doc = smollm2_tokenizer(passage, add_special_tokens=False)["input_ids"]
    lex = lexical_features(smollm2_tokenizer, doc, "When was Tesla uh born ?")
    assert lex.shape == (len(doc), NUM_LEXICAL)
    words = passage.split()
    first = [smollm2_tokenizer.decode(doc[:k + 1]).count(" ") for k in range(len(doc))]  # word index per token
    per_word = {first[k]: lex[k] for k in range(len(doc))}
    q_words = {"tesla", "born"}  # "when", "was", "uh" are stop words
    for w, (word, row) in enumerate(zip(words, (per_word[i] for i in range(len(words))))):
        assert row[0] == float(word.lower() in q_words), word
        assert row[1] == pytest.approx(1.0 if w <= 5 else 0.0)  # sentence 1 (its "." included) holds both
        assert row[2] == float(w <= 5) and row[4] == float(word[:1].isupper()) and row[7] == float(word == ".")
    assert per_word[4][14] == 1.0 and per_word[4][5] == 1.0  # "1856": a digit, and the question asks "when"
    assert per_word[3][3] == pytest.approx(1 / 2)  # "in": 1 word after "born"
    assert per_word[1][8] == 1.0  # "was" follows the question word "Tesla"


def test_v2_rows_whose_answer_is_not_in_the_passage_are_dropped_and_counted(tmp_path, tiny_llama):
    import json

    from skipenv.envs.span_head import fit_span_head

    path = tmp_path / "qa.jsonl"
    rows = [{"passage": "Paris is the capital of France .", "question": "What is the capital ?", "answer": "Paris"},
            {"passage": "The Nile is long .", "question": "Which river ?", "answer": "Amazon"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="answer"):
        task = make_task("disflqa_head", source=path)
        kept = task.examples("all")
    assert [e.target for e in kept] == ["Paris"]
    assert task.load_stats["all"]["dropped_answer_not_in_document"] == 1
    # a row given to the fit directly whose answer is not in its passage is left out, counted and warned about
    from dataclasses import replace

    bad = replace(kept[0], answers=("Berlin",), reference="Berlin")
    with pytest.warns(UserWarning, match="1 of 2 examples left out"):
        head = fit_span_head(tiny_llama, task, [kept[0], bad], plans_per_example=0, max_iter=5)
    assert head.meta["no_answer_span"] == 1 and head.meta["rows"] == 1
