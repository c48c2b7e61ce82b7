"""Helpers shared by the scale-out / offline / generate tests: a tiny random-weight Llama saved with
``save_pretrained`` (with the embedded SmolLM2 tokenizer, so real chat formatting applies) and a small local
summarization file, so that ``gym.make(id, model=<folder>, task_source=<file>)`` builds an env in any process
(Ray workers, ``skipenv`` subprocesses) without the embedded SmolLM2 weights."""

from __future__ import annotations

import json
from pathlib import Path

#: kwargs that make a tiny, fast env from the files written by :func:`write_tiny_assets`
TINY_ENV_KWARGS = dict(split="all", max_new_tokens=6, max_input_tokens=96, token_segments=4)

_WORDS = ("the council said the new bridge over the river would open next spring after years of delays "
          "local people welcomed the plan but some shops worried about traffic during the works").split()


def documents(n: int) -> list[dict]:
    """``n`` deterministic made-up articles (10-40 words) with one-line summaries (XSum columns)."""
    rows = []
    for i in range(n):
        words = [_WORDS[(7 * i + 3 * j) % len(_WORDS)] for j in range(10 + (5 * i) % 31)]
        rows.append({"id": f"doc{i:03d}", "document": " ".join(words).capitalize() + ".",
                     "summary": " ".join(words[:6]) + "."})
    return rows


def write_tiny_assets(folder: Path, num_documents: int = 12) -> tuple[str, str]:
    """Write ``folder/model`` (tiny Llama + SmolLM2 tokenizer) and ``folder/docs.jsonl``; return their paths."""
    from transformers import AutoTokenizer

    from skipenv.assets import embedded_model_dir
    from skipenv.testing import tiny_generator

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False)))
    gen = tiny_generator("llama", tok)
    model_dir = folder / "model"
    gen.model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in documents(num_documents)))
    return str(model_dir), str(data)


def tiny_env_kwargs(model_dir: str, data: str, **overrides) -> dict:
    """``gym.make`` kwargs of ``SwitchDec-XSum-v0`` over the tiny model and the local file."""
    return {**TINY_ENV_KWARGS, "model": model_dir, "task_source": data, **overrides}
