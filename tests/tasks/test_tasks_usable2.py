"""Issue 23, second round: bad task input never becomes a silent zero, the repaired QA task (span answers), the
mixed-traffic env ``SwitchDec-Mix-v0``, and (slow, embedded model) each embedded task's full model beating its
trivial baseline by the margin docs/tasks.md states."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skipenv.tasks import DataFileError, make_task

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ bad task input
def test_label_map_to_a_third_class_is_refused(tmp_path):
    """A label word other than positive / negative would score 0.0 on every row of its class: refused at make."""
    with pytest.raises(ValueError, match=r"label_map must map raw label values to 'positive' or 'negative'.*"
                                         r"'neutral'"):
        make_task("rotten_tomatoes", label_map={0: "negative", 1: "positive", 2: "neutral"})


def test_three_class_file_drops_and_counts_the_third_class(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": "Great fun.", "label": "pos"}, {"text": "Awful.", "label": "neg"},
            {"text": "It is a film.", "label": "neutral"}, {"text": "Fine.", "label": "neutral"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = make_task("rotten_tomatoes", source=path, label_column="label")
    with pytest.warns(UserWarning, match=r"'neutral' \(2 rows\)"):
        exs = task.examples("all")
    assert [e.label for e in exs] == ["positive", "negative"]
    assert task.load_stats["all"] == {"rows": 4, "dropped_unlabeled": 2, "kept": 2}
    # only one class left after the mapping: a clear error, not an env whose every label is the same
    pd.DataFrame({"text": ["a", "b"], "label": ["neutral", "pos"]}).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(DataFileError, match="needs both labels"):
        make_task("rotten_tomatoes", source=tmp_path / "one.csv", label_column="label").examples("all")


# ------------------------------------------------------------------------------------------ QA: passage spans
def test_passage_span_by_hand():
    from skipenv.tasks.qa import passage_span

    passage = "The tower was built in 1889. It was designed by Gustave Eiffel, for the fair."
    assert passage_span("It was designed by Gustave Eiffel", passage) == "It was designed by Gustave Eiffel"
    # "built in 1889." has F1 2*2/(3+2) = 0.8 against "built 1889"; "built" or "1889." alone 2*1/(1+2) = 0.667
    assert passage_span("Eiffel", passage) == "Eiffel"  # trailing comma stripped, the shortest best run
    assert passage_span("built 1889", passage) == "built in 1889."
    assert passage_span("nothing here", passage) == ""
    assert passage_span("", passage) == ""


def test_shots_are_chat_turns_outside_the_document_span(smollm2_tokenizer):
    from skipenv.tasks import Example

    task = make_task("disflqa", shots=(("Passage: Rome is old.\n\nQuestion: What is old?", "Rome"),))
    ex = Example("q1", "Paris is the capital of France.", "Paris", question="What is the capital?",
                 answers=("Paris",))
    p = task.format(ex, smollm2_tokenizer, encoder_decoder=False)
    a, b = p.document_span
    assert smollm2_tokenizer.decode(list(p.input_ids[a:b])) == ex.document
    before = smollm2_tokenizer.decode(list(p.input_ids[:a]))
    assert "<|im_start|>user\nPassage: Rome is old.\n\nQuestion: What is old?<|im_end|>\n<|im_start|>assistant\n" \
           "Rome<|im_end|>" in before
    with pytest.raises(ValueError, match="shots must be"):
        make_task("disflqa", shots=("just a string",))


# ------------------------------------------------------------------------------------------ the mixed-traffic env
MIX_SMALL = dict(num_examples=2, token_segments=4, max_input_tokens=400, max_new_tokens=4, disk_cache=False)


@pytest.fixture(scope="module")
def mix(tiny_llama):
    import skipenv

    env = skipenv.make("SwitchDec-Mix-v0", generator=tiny_llama, **MIX_SMALL)
    yield env
    env.close()


def test_mix_resets_and_steps_across_tasks(mix):
    from skipenv.envs.mix import MIX_TASKS
    from skipenv.envs.rewards import lexicographic_reward

    u = mix.unwrapped
    assert u.tasks == MIX_TASKS and len(u.examples) == 2 * len(MIX_TASKS)
    d = u.generator.hidden_size
    assert mix.observation_space.shape == (d + 2 + len(MIX_TASKS),)
    seen = set()
    for i, (t, ex) in enumerate(u.examples):
        obs, info = mix.reset(options={"index": i})
        assert (info["task"], info["task_index"], info["example_id"]) == (MIX_TASKS[t], t, ex.id)
        onehot = np.zeros(len(MIX_TASKS), dtype=np.float32)
        onehot[t] = 1
        np.testing.assert_array_equal(obs[-len(MIX_TASKS):], onehot)
        member = u.members[t]  # the observation is the member env's own, with the indicator appended
        np.testing.assert_array_equal(obs[:-len(MIX_TASKS)], member._observation())
        _, reward, terminated, truncated, info = mix.step(mix.action_space.sample())
        assert terminated and not truncated and info["task"] == MIX_TASKS[t]
        assert info["quality_full"] == 1.0 and 0.0 <= info["quality"] <= 1.0  # one scale: fraction kept
        assert reward == info["reward"] == pytest.approx(
            lexicographic_reward(info["quality"], 1.0, info["cost"], u.tau), abs=1e-12)
        seen.add(info["task"])
    assert seen == set(MIX_TASKS) and u.tau == 0.10


def test_mix_is_deterministic_under_a_seed(mix):
    def run(seed):
        mix.action_space.seed(seed)
        out, obs = [], None
        for k in range(8):
            obs, info = mix.reset(seed=seed if k == 0 else None)
            _, r, *_ = mix.step(mix.action_space.sample())
            out.append((info["task"], info["example_id"], r))
        return out, obs

    a, obs_a = run(3)
    b, obs_b = run(3)
    assert a == b and np.array_equal(obs_a, obs_b)
    assert len({t for t, _, _ in a}) > 1  # 8 draws over 3 tasks visit more than one
    assert run(4)[0] != a


def test_mix_options_and_bad_arguments(mix, tiny_llama):
    from skipenv.envs.mix import SwitchDecMixEnv

    _, info = mix.reset(options={"task": "rotten_tomatoes_scored"})
    assert info["task"] == "rotten_tomatoes_scored"
    ex = mix.unwrapped.members[0].examples[1]
    _, info = mix.reset(options={"task": "xsum", "example_id": ex.id})
    assert info["example_id"] == ex.id
    with pytest.raises(ValueError, match="needs 'task' too"):
        mix.reset(options={"example_id": ex.id})
    with pytest.raises(ValueError, match="not in this mix's tasks"):
        mix.reset(options={"task": "cnndm"})
    with pytest.raises(ValueError, match="unknown task"):
        SwitchDecMixEnv(["xsum", "nope"], generator=tiny_llama)
    with pytest.raises(ValueError, match="fixed per task"):
        SwitchDecMixEnv(["xsum"], generator=tiny_llama, quality="reference")
    with pytest.raises(ValueError, match="weights must be 2"):
        SwitchDecMixEnv(["xsum", "rotten_tomatoes_scored"], generator=tiny_llama, weights=[1.0])


def test_mix_gym_make_offline_in_a_sharing_block(tiny_llama):
    import gymnasium as gym

    import skipenv

    with skipenv.sharing(generator=tiny_llama):
        env = gym.make("SwitchDec-Mix-v0", tasks=["xsum", "rotten_tomatoes_scored"], weights=[0.0, 1.0],
                       **MIX_SMALL)
    assert env.unwrapped.generator is tiny_llama
    for _ in range(3):  # weight 0: XSum is never drawn
        _, info = env.reset()
        assert info["task"] == "rotten_tomatoes_scored"
    env.close()


def _brute_force_span(gen, prompt, plan, max_new_tokens, exclude):
    """Passage-constrained greedy decoding recomputed from scratch: the whole kept sequence through the HF model
    at every step (no KV cache, no prefix reuse), the allowed tokens rebuilt from the passage by hand."""
    import torch

    from skipenv.metrics import normalize_answer

    a, b = prompt.document_span
    doc = list(prompt.input_ids[a:b])
    pieces = gen.tokenizer.convert_ids_to_tokens(doc)
    starts = [i == 0 or p[:1] in ("Ġ", "▁", " ", "Ċ") or not p[:1].isalnum() for i, p in enumerate(pieces)]
    idx = [i for i, s in enumerate(starts) if s] + [len(doc)]
    ok = [False] * len(doc)
    for s, e in zip(idx, idx[1:]):
        w = normalize_answer(gen.tokenizer.decode(doc[s:e]))
        ok[s] = bool(w) and w not in exclude
    plan = plan if plan is not None else gen.empty_plan()
    kept = list(prompt.apply_token_skips(plan.tokens))
    out = []
    while len(out) < max_new_tokens + 1:
        cands = set()
        for j in range(len(doc) - len(out)):
            if ok[j] and doc[j: j + len(out)] == out:
                cands.add(doc[j + len(out)])
        if out:
            cands.add(gen.eos_token_id)
        with gen.skipping(plan), torch.inference_mode():
            logits = gen.model(input_ids=torch.tensor([kept + out])).logits[0, -1]
        token = max(sorted(cands), key=lambda t: float(logits[t]))
        out.append(token)
        if token == gen.eos_token_id or len(out) == max_new_tokens:
            break
    return out


@pytest.mark.parametrize("skips", [{}, {"attention": [1], "ffn": [0]}, {"tokens": [0, 2]}])
def test_pointer_decoding_equals_a_brute_force_constrained_greedy(tiny_llama, skips):
    from skipenv import SkipPlan
    from skipenv.envs import Evaluator
    from skipenv.envs.spans import pointer_decode

    task = make_task("disflqa_span", max_input_tokens=400)
    ev = Evaluator(tiny_llama, task, quality="fidelity", disk_cache=False, token_segments=4)
    for ex in task.examples("test")[:1]:
        prompt = ev.prompt(ex)
        plan = SkipPlan.from_skips(ev.spec, **skips) if skips else None
        exclude = task.start_exclusions(ex)
        tokens, text = pointer_decode(tiny_llama, prompt, plan, max_new_tokens=6, exclude_start_words=exclude)
        assert tokens == _brute_force_span(tiny_llama, prompt, plan, 6, exclude)
        assert text and text in tiny_llama.tokenizer.decode(list(prompt.input_ids[slice(*prompt.document_span)]))
        assert normalize_first(text) not in exclude


def normalize_first(text):
    from skipenv.metrics import normalize_answer

    return (normalize_answer(text).split() or [""])[0]


def test_disflqa_v1_env_scores_spans_with_fidelity(tiny_llama):
    import skipenv

    env = skipenv.make("SwitchDec-DisflQA-v1", generator=tiny_llama, num_examples=2, max_input_tokens=400,
                       token_segments=4, disk_cache=False)
    assert env.spec.kwargs["quality"] == "fidelity" and env.unwrapped.task.scoring == "pointer"
    _, info = env.reset(options={"index": 0})
    ex = env.unwrapped.example
    full = env.unwrapped.full_output()
    assert full.text in ex.document.replace(" ", "") or full.text.replace(" ", "") in ex.document.replace(" ", "")
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert terminated and 0.0 <= info["quality"] <= 1.0 and info["quality_full"] == 1.0
    # the quality is the SQuAD F1 of the plan's span against the full model's span, recomputed here
    from skipenv.metrics import f1

    want = 1.0 if info["text"] == full.text else f1(info["text"], [full.text])
    assert info["quality"] == pytest.approx(want)
    env.close()


def test_eos_bias_shortens_spans_as_the_trace_predicts(tiny_llama):
    """The trace of one decode (margin of the best continuation over EOS, per step) gives the span under any
    eos_bias: it stops at the first step whose margin is below the bias."""
    from skipenv.envs import Evaluator
    from skipenv.envs.spans import pointer_decode

    task = make_task("disflqa_span", max_input_tokens=400)
    ex = task.examples("test")[1]
    prompt = Evaluator(tiny_llama, task, quality="fidelity", disk_cache=False).prompt(ex)
    eos = tiny_llama.eos_token_id
    trace = []
    base, _ = pointer_decode(tiny_llama, prompt, None, max_new_tokens=8, eos_bias=-1e4, trace=trace)
    # at -1e4 EOS is chosen only where no passage continuation is left (the span reached the passage's end)
    assert trace and len(trace) == len([t for t in base if t != eos]) - 1
    margins = [m for _, m in trace]
    assert [t for t, _ in trace] == base[1: len(trace) + 1]
    for bias in sorted(margins)[:3] + [1e4]:
        stop = next((k for k, m in enumerate(margins) if m < bias), None)
        want = base if stop is None else base[: stop + 1] + [eos]
        got, _ = pointer_decode(tiny_llama, prompt, None, max_new_tokens=8, eos_bias=bias)
        assert got == want, (bias, got, want)
    with pytest.raises(ValueError, match="eos_bias must be a finite number"):
        make_task("disflqa_span", eos_bias=float("nan"))


# ------------------------------------------------------------------------------------- the embedded model (slow)
#: docs/tasks.md: DisflQA-v1's full model is 0.093 SQuAD F1 *below* the best heuristic on the first 16 test rows
#: (not usable); the test fails if it falls further (a regression of the span decoding) — slack 0.007
QA_V1_TEST_MARGIN = -0.10


@pytest.mark.slow
@pytest.mark.assets
def test_disflqa_v1_full_model_against_the_best_heuristic():
    """16 test rows: every full-model answer is a span of its passage, and the full model's SQuAD F1 minus the best
    heuristic's is at least QA_V1_TEST_MARGIN (one pointer decode per row)."""
    import gymnasium as gym

    from _scripts import load_benchmark
    from skipenv.metrics import normalize_answer

    tb = load_benchmark("task_baselines")
    env = gym.make("SwitchDec-DisflQA-v1", split="test", num_examples=16).unwrapped
    task, rows = env.task, env.examples
    fulls = [env.evaluator.full_output(ex) for ex in rows]
    for f, ex in zip(fulls, rows):
        assert normalize_answer(f.text) in normalize_answer(ex.document), (f.text, ex.id)
    full = np.mean([f.target_score for f in fulls])
    heuristics = []
    for pick in (lambda s, q: s, lambda s, q: tb.first_words(s), tb.capitalised_run):
        heuristics.append(np.mean([task.score(pick(tb.overlap_sentence(ex.document, ex.question), ex.question), ex)
                                   for ex in rows]))
    assert full - max(heuristics) >= QA_V1_TEST_MARGIN, (full, heuristics)
