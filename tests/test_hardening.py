"""Hardening: inputs a hostile user or a careful RL researcher tries, found after the pipeline, generator and
newcomer work was merged — each test is one kind of defect that was found, on a tiny random-weight Llama with the
embedded SmolLM2 tokenizer and real XSum rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from skipenv.envs import SwitchDecEnv, SwitchDecLayerwiseEnv
from skipenv.envs.cache import CacheWarning
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.assets  # the embedded tokenizer and XSum rows


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    return tiny_generator("llama", smollm2_tokenizer)


KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**KW, **kw})


# ---------------------------------------------------------------------------------------------------------------
# cache folder that cannot be created


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
