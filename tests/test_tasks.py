"""skipenv.tasks: embedded data, deterministic splits, formatting with exact document spans, local and Hub sources."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from skipenv.inputs import PromptInput
from skipenv.tasks import (
    SPLITS,
    DatasetUnavailableError,
    Example,
    TASKS,
    make_task,
    parse_label,
    split_of,
)
from skipenv.tasks.summarization import first_sentences

# ---- embedded data -------------------------------------------------------------------------------------------------


@pytest.mark.assets
def test_xsum_embedded_rows_and_splits():
    task = make_task("xsum")
    everything = task.examples("all")
    assert task.load_stats["all"] == {"rows": 1000, "dropped_empty_document": 1, "kept": 999}
    assert len(everything) == 999 and len({e.id for e in everything}) == 999
    assert all(e.id.isdigit() and e.document and e.reference for e in everything)  # genuine XSum ids
    parts = {s: task.examples(s) for s in SPLITS}
    assert {s: len(v) for s, v in parts.items()} == {"train": 797, "validation": 105, "test": 97}
    ids = [{e.id for e in v} for v in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {e.id for e in everything}
    again = make_task("xsum").examples("validation")  # a fresh task object: same examples, same order
    assert [e.id for e in again] == [e.id for e in parts["validation"]]


def test_split_of_is_deterministic_and_near_80_10_10():
    ids = [f"doc-{i}" for i in range(5000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in SPLITS}
    assert abs(frac["train"] - 0.8) < 0.02 and abs(frac["validation"] - 0.1) < 0.015
    with pytest.raises(ValueError):
        split_of("x", (50, 10, 10))


@pytest.mark.assets
def test_disflqa_keeps_answers_in_passage():
    task = make_task("disflqa")
    exs = task.examples()
    assert len(exs) == 600 and task.load_stats["all"]["dropped_answer_not_in_document"] == 400
    assert all(e.reference in e.document and e.question and e.answers == (e.reference,) for e in exs)
    assert all(re.fullmatch(r"[0-9a-f]{16}", e.id) for e in exs) and len({e.id for e in exs}) == 600
    assert {s: len(task.examples(s)) for s in SPLITS} == {"train": 478, "validation": 53, "test": 69}
    assert len(make_task("disflqa", require_answer_in_document=False).examples()) == 1000


@pytest.mark.assets
def test_rotten_tomatoes_fresh_and_rotten_only():
    task = make_task("rotten_tomatoes")
    exs = task.examples()
    assert len(exs) == 12808 and task.load_stats["all"]["dropped_unlabeled"] == 1097  # the "plot" rows
    labels = [e.label for e in exs]
    assert labels.count("positive") == 7403 and labels.count("negative") == 5405
    assert all(e.reference == e.label for e in exs) and len({e.id for e in exs}) == 12808
    assert {s: len(task.examples(s)) for s in SPLITS} == {"train": 10244, "validation": 1257, "test": 1307}


def test_registry_and_errors():
    assert set(TASKS) == {"xsum", "cnndm", "squad", "disflqa", "sst2", "rotten_tomatoes"}
    with pytest.raises(KeyError, match="registered tasks"):
        make_task("nope")
    with pytest.raises(ValueError, match="disflqa"):
        make_task("squad", source="embedded")
    with pytest.raises(ValueError, match="neither"):
        make_task("xsum", source="/no/such/file.jsonl")
    assert make_task("squad").source == "hub" and make_task("xsum").source == "embedded"
    with pytest.raises(ValueError, match="unknown split"):
        make_task("xsum").examples("dev")


# ---- formatting ---------------------------------------------------------------------------------------------------

DOC = "The council approved the new bridge on Tuesday. Work will start next spring and cost 3 million pounds."


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.assets
@pytest.mark.parametrize("name", ["xsum", "disflqa", "rotten_tomatoes"])
def test_chat_format_document_span_is_exact(name, smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = make_task(name)
    ex = Example(id="t1", document=DOC, reference="x", question="When will work start?", label="positive")
    p = task.format(ex, tok, encoder_decoder=False)
    assert isinstance(p, PromptInput) and p.example_id == "t1"
    s, e = p.document_span
    assert list(p.input_ids[s:e]) == _ids(tok, DOC)  # exactly the document's tokens
    assert tok.decode(p.input_ids[s:e]) == DOC
    before, after = tok.decode(p.input_ids[:s]), tok.decode(p.input_ids[e:])
    assert before.startswith("<|im_start|>") and task.instruction in before and "<|im_start|>user" in before
    assert after.endswith("<|im_start|>assistant\n")
    if name == "disflqa":
        assert "When will work start?" in after  # the question is never inside the span
    assert p.extra == {"truncated": False, "original_document_tokens": e - s}
    # the same text the tokenizer's own chat template renders
    rendered = tok.apply_chat_template([{"role": "user", "content": task.user_message(ex, DOC)}], tokenize=False,
                                       add_generation_prompt=True)
    assert tok.decode(p.input_ids) == rendered


@pytest.mark.assets
def test_truncation_keeps_the_lead_and_fits(smollm2_tokenizer):
    tok = smollm2_tokenizer
    task = make_task("xsum", max_input_tokens=80)
    long_doc = " ".join([DOC] * 20)
    p = task.format(Example("long", long_doc, "r"), tok, encoder_decoder=False)
    s, e = p.document_span
    assert len(p) == 80 and p.extra["truncated"] is True
    assert p.extra["original_document_tokens"] == len(_ids(tok, long_doc)) > e - s
    assert long_doc.startswith(tok.decode(p.input_ids[s:e]))
    assert tok.decode(p.input_ids[e:]).endswith("<|im_start|>assistant\n")  # template kept intact
    # a smaller context wins, leaving room for max_new_tokens (48) of a decoder-only model
    q = make_task("xsum").format(Example("long", long_doc, "r"), tok, encoder_decoder=False, context_length=128)
    assert len(q) == 128 - 48
    with pytest.raises(ValueError, match="no room for the document"):
        task.format(Example("long", long_doc, "r"), tok, encoder_decoder=False, max_input_tokens=20)


@pytest.mark.assets
def test_embedded_xsum_formats_within_budget(smollm2_tokenizer):
    task = make_task("xsum")
    for ex in task.examples("validation")[:20]:
        p = task.format(ex, smollm2_tokenizer, encoder_decoder=False)
        assert len(p) <= task.max_input_tokens and p.num_document_tokens > 0


def test_empty_document_or_question_raises_with_id(tiny_bart_tokenizer):
    with pytest.raises(ValueError, match="'empty-1'.*empty document"):
        make_task("xsum").format(Example("empty-1", "  \n ", "r"), tiny_bart_tokenizer, encoder_decoder=True)
    with pytest.raises(ValueError, match="'q-7'.*empty question"):
        make_task("squad").format(Example("q-7", "A passage.", "r", question=" "), tiny_bart_tokenizer,
                                  encoder_decoder=True)


@pytest.mark.assets
def test_drop_invalid_false_keeps_the_empty_xsum_row(tiny_bart_tokenizer):
    exs = make_task("xsum", drop_invalid=False).examples()
    assert len(exs) == 1000
    (empty,) = [e for e in exs if not e.document.strip()]
    with pytest.raises(ValueError, match=re.escape(repr(empty.id))):
        make_task("xsum").format(empty, tiny_bart_tokenizer, encoder_decoder=True)


def test_encoder_decoder_formats(tiny_bart_tokenizer):
    tok = tiny_bart_tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    doc_ids = _ids(tok, DOC)
    p = make_task("xsum").format(Example("a", DOC, "r"), tok, encoder_decoder=True)
    assert list(p.input_ids) == [bos, *doc_ids, eos] and p.document_span == (1, 1 + len(doc_ids))
    q = make_task("squad").format(Example("b", DOC, "r", question="When?"), tok, encoder_decoder=True)
    q_ids = _ids(tok, "When?")
    # BART pair form: <s> question </s></s> passage </s>; the span is the passage only
    assert list(q.input_ids) == [bos, *q_ids, eos, eos, *doc_ids, eos]
    assert q.document_span == (len(q_ids) + 3, len(q_ids) + 3 + len(doc_ids))
    short = make_task("xsum", max_input_tokens=10).format(Example("a", DOC, "r"), tok, encoder_decoder=True)
    assert list(short.input_ids) == [bos, *doc_ids[:8], eos] and short.extra["truncated"]
    t5_style = make_task("xsum", encoder_instruction="summarize: ").format(Example("a", DOC, "r"), tok,
                                                                          encoder_decoder=True)
    s, e = t5_style.document_span
    assert tok.decode(t5_style.input_ids[1:s]) == "summarize: " and list(t5_style.input_ids[s:e]) == doc_ids


# ---- scoring ------------------------------------------------------------------------------------------------------


def test_post_process_and_score():
    xsum = make_task("xsum", source="hub")  # no data is loaded to score
    assert first_sentences("Summary: A bridge was approved. It costs 3m.\nMore text.") == "A bridge was approved."
    assert first_sentences("\n\nFirst line without stop\nsecond") == "First line without stop"
    assert first_sentences("One. Two. Three. Four.", 3) == "One. Two. Three."
    ex = Example("x", DOC, "the council approved a new bridge")
    assert xsum.score("The council approved a new bridge. Extra sentence.", ex) == pytest.approx(1.0)
    squad = make_task("squad")
    qa = Example("q", DOC, "next spring", question="When?", answers=("next spring", "spring"))
    assert squad.score("Next spring.\nBecause...", qa) == 1.0
    assert squad.score("The answer is:\nspring", qa) == 1.0
    import dataclasses

    as_full_output = dataclasses.replace(qa, reference="in the spring")  # scored against the new reference only
    assert squad.score("spring", as_full_output) == pytest.approx(2 / 3)
    sst = make_task("sst2")
    pos = Example("s", "Great film", "positive", label="positive")
    assert sst.score("Positive", pos) == 1.0 and sst.score("negative, not positive", pos) == 0.0
    assert sst.score("I cannot tell", pos) == 0.0
    assert parse_label("The sentiment is NEGATIVE.") == "negative" and parse_label("meh") is None
    assert xsum.mean_score(["the council approved a new bridge"], [ex]) == pytest.approx(1.0)


# ---- local files ------------------------------------------------------------------------------------------------

ROWS = [{"uid": f"u{i}", "text": f"Article number {i}. It has words.", "gist": f"Summary {i}."} for i in range(40)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
def test_local_files_with_column_mapping(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    task = make_task("xsum", source=str(path), id_column="uid", document_column="text", reference_column="gist")
    exs = task.examples()
    assert [e.id for e in exs] == [r["uid"] for r in ROWS] and exs[3].reference == "Summary 3."
    assert sum(len(task.examples(s)) for s in SPLITS) == 40
    assert all(split_of(e.id) == "test" for e in task.examples("test"))


def test_local_file_missing_column_and_no_id(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"context": "Paris is in France.", "q": "Where is Paris?", "answer": "France"},
            {"context": "Paris is in France.", "q": "Where is Paris?", "answer": "France"},  # duplicate row
            {"context": "Rome is in Italy.", "q": "Where is Rome?", "answer": "Spain"}]  # answer not in passage
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"columns present: \['answer', 'context', 'q'\].*question_column"):
        make_task("squad", source=path, reference_column="answer").examples()
    task = make_task("squad", source=path, question_column="q", reference_column="answer", id_column=None)
    exs = task.examples()
    assert len(exs) == 2 and exs[1].id == exs[0].id + "#2" and re.fullmatch(r"[0-9a-f]{16}", exs[0].id)
    assert task.load_stats["all"]["dropped_answer_not_in_document"] == 1


def test_local_split_column_and_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [dict(r, part="train" if i < 30 else "test") for i, r in enumerate(ROWS)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    kw = dict(id_column="uid", document_column="text", reference_column="gist")
    task = make_task("xsum", source=path, split_column="part", **kw)
    assert len(task.examples("train")) == 30 and len(task.examples("test")) == 10 and not task.examples("validation")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:25]),
                               "validation": datasets.Dataset.from_list(ROWS[25:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    task = make_task("xsum", source=tmp_path / "dd", **kw)
    assert len(task.examples("train")) == 25 and len(task.examples("validation")) == 15
    with pytest.raises(ValueError, match="has splits"):
        task.examples("test")


# ---- Hub code path (never touches the network) --------------------------------------------------------------------


def _fake_hub(monkeypatch, tables):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(tables[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_squad_via_monkeypatched_load_dataset(monkeypatch):
    val = [{"id": f"s{i}", "title": "T", "context": f"Context {i} mentions Denver Broncos.",
            "question": f"Who {i}?", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [17, 24]}}
           for i in range(60)]
    calls = _fake_hub(monkeypatch, {"validation": val, "train": val[:5]})
    task = make_task("squad", source="hub")
    v, t = task.examples("validation"), task.examples("test")
    assert calls == [("rajpurkar/squad", None, "validation")]  # loaded once, halved into validation / test
    assert len(v) + len(t) == 60 and not {e.id for e in v} & {e.id for e in t} and v and t
    assert v[0].reference == "Denver Broncos" and v[0].answers == ("Denver Broncos", "Broncos")
    assert len(task.examples("train")) == 5 and len(task.examples("all")) == 65


def test_hub_sst2_drops_hidden_test_labels(monkeypatch):
    rows = [{"sentence": f"film {i}", "label": i % 2, "idx": i} for i in range(20)]
    rows += [{"sentence": "hidden", "label": -1, "idx": 99}]
    calls = _fake_hub(monkeypatch, {"validation": rows})
    task = make_task("sst2")
    exs = task.examples("validation") + task.examples("test")
    assert calls == [("glue", "sst2", "validation")] and len(exs) == 20
    assert {e.label for e in exs} == {"positive", "negative"} and task.load_stats["validation"]["dropped_unlabeled"] == 1


def test_hub_xsum_and_cnndm_columns(monkeypatch):
    _fake_hub(monkeypatch, {"test": [{"id": "1", "document": "Doc.", "summary": "Sum."}],
                            "validation": [{"id": "c1", "article": "Art.", "highlights": "High.\nLights."}]})
    assert make_task("xsum", source="hub").examples("test") == [Example("1", "Doc.", "Sum.")]
    assert make_task("cnndm").examples("validation")[0].reference == "High.\nLights."


def test_hub_unavailable_error_names_dataset_and_embedded_alternative(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        make_task("squad").examples("validation")
    msg = str(info.value)
    assert "'rajpurkar/squad'" in msg and "make_task('disflqa')" in msg and "source=<path>" in msg


def test_hub_offline_real_datasets_call(hf_offline):
    pytest.importorskip("datasets")
    with pytest.raises(DatasetUnavailableError, match=r"'glue' \(config 'sst2'\).*rotten_tomatoes"):
        make_task("sst2").examples("validation")


def test_output_complete_is_the_stop_rule():
    """Generation may stop once more text cannot change what the task scores."""
    from skipenv.tasks import make_task

    xsum = make_task("xsum", source="embedded")
    assert not xsum.output_complete("The cat sat on the mat.")          # nothing written past the sentence yet
    assert xsum.output_complete("The cat sat on the mat. The")          # a second sentence started
    assert not xsum.output_complete("The U.S. economy grew")            # abbreviation: same sentence
    assert xsum.output_complete("The U.S. economy grew. It")
    assert xsum.output_complete("The cat sat.\nMore")                   # first line done
    qa = make_task("disflqa", source="embedded")
    assert not qa.output_complete("Paris") and qa.output_complete("Paris\nThe passage")
    sentiment = make_task("rotten_tomatoes", source="embedded")
    assert sentiment.output_complete("Positive.") and not sentiment.output_complete("The review")


def test_generation_stops_at_the_rule():
    from skipenv import PromptInput
    from skipenv.testing import tiny_generator

    g = tiny_generator("llama")
    inp = [PromptInput(tuple(range(2, 30)), (3, 20), "a"), PromptInput(tuple(range(7, 25)), (2, 10), "b")]
    free = g.generate(inp, max_new_tokens=10)
    stopped = g.generate(inp, max_new_tokens=10, stop=lambda text: len(text.split()) >= 3)
    words = lambda ids: len(g.tokenizer.decode(ids).split())  # noqa: E731
    for f, s in zip(free.tokens, stopped.tokens):
        assert s == f[: len(s)]
        if words(f) >= 3:  # the rule fired: right after the token that completed it
            assert words(s) >= 3 and words(s[:-1]) < 3
        else:
            assert s == f
