"""The full-output disk cache (skipenv.envs.cache, the evaluator's store): the key covers the input budget and the model,
bad or unreadable entries are dropped and recomputed, and a cache that cannot be written falls back to memory
with one warning."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from skipenv.assets import CacheLocationError
from skipenv.envs import Evaluator, model_fingerprint
from skipenv.envs.cache import CacheWarning, value_checksum
from skipenv.testing import tiny_generator

# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


from _tiny_env import make  # noqa: E402  (the shared tiny env; its generator fixture: conftest.py)


@pytest.mark.hardening
@pytest.mark.assets
def test_uncreatable_cache_folder_falls_back_to_memory(generator, tmp_path, monkeypatch):
    """``SKIPENV_CACHE`` names a folder that cannot be created (read-only parent) and the data is a local file: the
    env still works, keeping full outputs in memory with one warning (``skipenv.assets.cache_dir`` raises
    ``AssetError`` for it)."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "a", "document": "The council approved a new park on Monday.",
                                "summary": "Council approves park."}) + "\n")
    target = tmp_path / "read-only" / "cache"
    original_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "read-only")):
            raise PermissionError(13, "Permission denied", str(self))
        return original_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setenv("SKIPENV_CACHE", str(target))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        env = make(generator, disk_cache=True, task_source=str(data), split="all")
        env.reset(seed=0)
        _, reward, *_ = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert np.isfinite(reward) and env.evaluator.disk.in_memory
    assert len([w for w in seen if issubclass(w.category, CacheWarning)]) == 1
    assert not target.exists()


@pytest.fixture(scope="module")
def task():
    from skipenv.tasks import make_task

    return make_task("xsum", max_input_tokens=96)


def _write_failure(kind, evaluator, example, monkeypatch):
    import skipenv.envs.cache as cache_module

    if kind == "disk full":
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cache_module.json, "dump", full)
    else:  # a folder sits where the entry's file goes
        evaluator.disk._path(evaluator._disk_key(example)).mkdir(parents=True)


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("kind", ["disk full", "folder at the entry path"])
def test_failed_cache_write_falls_back_to_memory(kind, generator, task, tmp_path, monkeypatch):
    from skipenv.envs import Evaluator

    reference = Evaluator(generator, task, max_new_tokens=4, disk_cache=False)
    ev = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path)
    a, b = task.examples("train")[:2]
    _write_failure(kind, ev, a, monkeypatch)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs = [ev.full_output(x) for x in (a, b, a)]
    assert outs == [reference.full_output(x) for x in (a, b, a)]
    assert ev.disk.in_memory and not [p for p in tmp_path.rglob("*.json") if p.is_file()]
    assert any("in memory" in str(w.message) for w in seen if issubclass(w.category, CacheWarning))


@pytest.mark.hardening
@pytest.mark.assets
def test_absurdly_nested_cache_entry_is_dropped(generator, task, tmp_path):
    from skipenv.envs import Evaluator

    ex = task.examples("train")[0]
    good = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path).full_output(ex)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("[" * 100_000)  # json raises RecursionError, not ValueError
    with pytest.warns(CacheWarning, match="unreadable: RecursionError"):
        again = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path).full_output(ex)
    assert again == good and json.loads(entry.read_text())["value"]["tokens"] == list(good.tokens)


# ----------------------------------------------------------------------------------------------------
# moved here from the guarantees campaign (tests/test_guarantees.py, dissolved by issue 19)


def count_generate(generator, monkeypatch) -> Counter:
    calls: Counter = Counter()
    original = generator.generate

    def counted(*args, **kwargs):
        calls["generate"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(generator, "generate", counted)
    return calls


@pytest.mark.hardening
@pytest.mark.assets
def test_cache_key_covers_input_budget_and_model(tiny_llama, smollm2_tokenizer, xsum_task, tmp_path, monkeypatch):
    from skipenv.tasks import make_task

    ex = xsum_task.examples("train")[0]
    first = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    calls = count_generate(tiny_llama, monkeypatch)
    assert Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex) == first
    assert calls["generate"] == 0  # same input, budget and model: read from disk
    other_instruction = make_task("xsum", max_input_tokens=96, instruction="Summarise the article in five words.")
    Evaluator(tiny_llama, other_instruction, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    assert calls["generate"] == 1  # a changed prompt is a new key
    Evaluator(tiny_llama, xsum_task, max_new_tokens=5, cache_root=tmp_path).full_output(ex)
    assert calls["generate"] == 2  # a changed budget is a new key
    edited = dataclasses.replace(ex, document="Breaking news. " + ex.document)  # the lead survives truncation
    Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(edited)  # same id, new text
    assert calls["generate"] == 3


@pytest.mark.hardening
@pytest.mark.assets
def test_model_fingerprint_covers_every_weight_and_is_remembered(smollm2_tokenizer):
    a, b = tiny_generator("llama", smollm2_tokenizer), tiny_generator("llama", smollm2_tokenizer)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():  # a late layer only, embeddings untouched (the old fingerprint read the first 4096 numbers)
        b.model.model.layers[-1].mlp.down_proj.weight.neg_()
    assert model_fingerprint(a) != model_fingerprint(b)  # in-place edit noticed (tensor version counters)
    c = tiny_generator("llama", smollm2_tokenizer)
    with torch.no_grad():
        c.model.model.layers[-1].mlp.down_proj.weight.neg_()
    assert model_fingerprint(c) == model_fingerprint(b)


def _stored_file(root):
    files = list((root / "full").glob("*/*.json"))
    assert len(files) == 1
    return files[0]


def _rewrite(path, edit, fix_checksum: bool):
    record = json.loads(path.read_text())
    edit(record["value"])
    if fix_checksum:
        record["sha256"] = value_checksum(record["value"])
    path.write_text(json.dumps(record))


def _set(key, value):
    return lambda v: v.__setitem__(key, value)


def _bump_first_token(v):
    v["tokens"][0] = (v["tokens"][0] + 1) % 100


BAD_ENTRIES = [
    ("empty tokens", _set("tokens", []), True, "non-empty"),
    ("token ids as strings", lambda v: v.__setitem__("tokens", [str(t) for t in v["tokens"]]), True, "token id"),
    ("negative token id", lambda v: v["tokens"].__setitem__(0, -5), True, "token id"),
    ("token id past the vocabulary", lambda v: v["tokens"].__setitem__(0, 10**9), True, "token id"),
    ("text not a string", _set("text", 3), True, "text"),
    ("score a string", _set("target_score", "high"), True, "target_score"),
    ("prompt length of another input", _set("prompt_length", 57), True, "prompt_length"),
    ("one token changed, checksum stale", _bump_first_token, False, "checksum"),
]


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("name,edit,fix_checksum,reason", BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_bad_cache_entry_is_dropped_and_recomputed(name, edit, fix_checksum, reason, tiny_llama, xsum_task, tmp_path,
                                                   monkeypatch):
    ex = xsum_task.examples("train")[0]
    clean = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    _rewrite(_stored_file(tmp_path), edit, fix_checksum)
    calls = count_generate(tiny_llama, monkeypatch)
    with pytest.warns(CacheWarning, match=reason):
        again = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    assert again == clean and calls["generate"] == 1
    assert json.loads(_stored_file(tmp_path).read_text())["value"]["tokens"] == list(clean.tokens)  # repaired


@pytest.mark.hardening
@pytest.mark.assets
def test_cache_folder_removed_mid_run_is_recreated(tiny_llama, xsum_task, tmp_path):
    ev = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path)
    a, b = xsum_task.examples("train")[:2]
    ev.full_output(a)
    shutil.rmtree(tmp_path / "full")
    ev.full_output(b)
    assert len(list((tmp_path / "full").glob("*/*.json"))) == 1


@pytest.mark.hardening
@pytest.mark.assets
def test_read_only_cache_falls_back_to_memory_with_one_warning(tiny_llama, xsum_task, tmp_path, monkeypatch):
    import skipenv.envs.cache as cache_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", refuse)  # root ignores chmod: refuse writes instead
    ev = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for ex in xsum_task.examples("train")[:3]:
            ev.full_output(ex)
    assert [str(w.message) for w in seen if issubclass(w.category, CacheWarning)].__len__() == 1
    assert ev.disk.in_memory and not list(tmp_path.glob("full/*/*.json"))


@pytest.mark.hardening
@pytest.mark.assets
def test_cache_path_that_is_a_file_is_one_clear_error(tiny_llama, tmp_path, monkeypatch):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("SKIPENV_CACHE", str(f))
    with pytest.raises(CacheLocationError, match="SKIPENV_CACHE") as err:
        make(tiny_llama, disk_cache=True)
    assert "\n" not in str(err.value) and err.value.__cause__ is None


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=3))


kwargs = st.fixed_dictionaries({}, optional={
    "tau": scalars, "max_new_tokens": scalars, "num_examples": scalars, "token_segments": scalars,
    "cost_weight": scalars, "reward_mode": st.sampled_from(["lexicographic", "weighted", "vector", "other"]),
    "quality": st.sampled_from(["agreement", "rouge", "reference", "fidelity", "likelihood", "x"]),
    "layer_block": scalars})
