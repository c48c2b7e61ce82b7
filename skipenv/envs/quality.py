"""Quality signals: how good a plan's output is on one input, next to the full model's quality on it.

Each signal is one class with a :attr:`~QualitySignal.name`, a default tolerance
:attr:`~QualitySignal.default_tau` and a flag :attr:`~QualitySignal.generates` (whether measuring it runs a greedy
generation under the plan, which is several times slower than one teacher-forced forward pass). The
:class:`~skipenv.envs.evaluator.Evaluator` calls :meth:`QualitySignal.measure`; adding a signal = one subclass.

Words: the *gold target* is the dataset's answer for an example (reference summary, gold answer, label word); the
*full output* is the full model's greedy output for it (:class:`~skipenv.envs.evaluator.FullOutput`).

- :class:`Agreement` (``"agreement"``) — teacher-forced agreement with the full output: the fraction of output
  positions at which the plan's argmax equals the full model's token (one forward pass; ``quality_full = 1``).
  Cost is computed as if generating the full output's number of tokens.
- :class:`ReferenceMetric` (``"reference"``, alias ``"rouge"``) — generate under the plan and score the output
  against the gold target with the task metric: ROUGE-L F for summarization, SQuAD F1 for QA, accuracy for
  classification; ``quality_full`` = the same metric for the full output.
- :class:`Fidelity` (``"fidelity"``) — generate under the plan and score the output against the *full output* with
  the task metric (``quality_full = 1``).
- :class:`Likelihood` (``"likelihood"``) — ``exp(mean log p(target | plan) − mean log p(target | full))`` clipped
  to [0, 1]: the teacher-forced likelihood of the gold target relative to the full model (one forward pass).
- :class:`Probability` (``"probability"``) — teacher-forced on the full output ``y`` (like agreement, one forward
  pass): the mean probability the plan gives the full model's tokens, ``mean_t p_plan(y_t | x, y_<t)``;
  ``quality_full`` = the full model's own ``mean_t p_full(y_t | x, y_<t)`` (cached with the full output). Unlike
  agreement it moves smoothly with the plan (no argmax flips), so it carries less noise per input.
- :class:`LabelAgreement` (``"label_agreement"``) and :class:`LabelProbability` (``"label_probability"``) — for a
  classification task that scores its label with verbalizers (``scoring="verbalizer"``, no generation): whether the
  plan keeps the full model's label, and the calibrated probability the plan gives it (one forward pass each).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..util.registry import Registry

__all__ = ["QualitySignal", "Measurement", "Agreement", "ReferenceMetric", "Fidelity", "Likelihood", "Probability",
           "LabelAgreement", "LabelProbability", "LABEL_SIGNALS", "PROBABILITY_DEFAULT_TAU", "QUALITY_SIGNALS",
           "QUALITY_ALIASES", "QUALITY_MODES", "DEFAULT_TAU",
           "get_signal", "mean_probability"]


@dataclass(frozen=True)
class Measurement:
    """What a signal reports for one (input, plan).

    Attributes:
        quality: the plan's quality (a fraction in [0, 1] for the built-in signals).
        quality_full: the full model's quality on the same input, same unit.
        text: the plan's generated text when the signal generated (else ``None``).
        num_generated: tokens the plan generated (EOS included); ``None`` = charge the full output's length.
    """

    quality: float
    quality_full: float
    text: str | None = None
    num_generated: int | None = None


class QualitySignal:
    """Base class of quality signals.

    Attributes:
        name: the ``quality=`` string that selects it.
        default_tau: default tolerance of the constraint ``q >= q_full - tau`` (absolute, in the quality's unit).
        generates: whether :meth:`measure` runs a greedy generation under the plan.
        needs_target_logprob: whether :attr:`FullOutput.target_logprob` must be filled in.
        needs_output_probability: whether :attr:`FullOutput.output_probability` must be filled in.
    """

    name = "signal"
    default_tau = 0.1
    generates = False
    needs_target_logprob = False
    needs_output_probability = False

    def measure(self, evaluator, example, plan, full) -> Measurement:  # pragma: no cover - interface
        """Quality of ``plan`` on ``example``.

        Args:
            evaluator: the :class:`~skipenv.envs.evaluator.Evaluator` (its ``task``, ``generate``, ``score``,
                ``target_logprob`` helpers).
            example: the dataset example.
            plan: a :class:`~skipenv.plan.SkipPlan` already checked against the evaluator's spec.
            full: the example's :class:`~skipenv.envs.evaluator.FullOutput`.
        """
        raise NotImplementedError

    def scored_target(self, evaluator, example, full) -> list[int] | None:
        """The target ids that :meth:`measure` scores (teacher-forced, ``evaluator.score``) for a plan that skips
        something, so that several plans can be scored in one batch beforehand; ``None`` (the default) = it does
        not score exactly one target (e.g. it generates)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Agreement(QualitySignal):
    """Teacher-forced agreement with the full output (see module docstring)."""

    name = "agreement"
    #: Agreement of the full model with itself is 1.0 and skipping the single most redundant attention sublayer of
    #: the embedded SmolLM2 keeps ~0.9 on XSum, so 0.1 admits a few sublayer / token skips per input (README
    #: "Choosing tau", measured by ``benchmarks/bench_tau.py``).
    default_tau = 0.10

    def measure(self, evaluator, example, plan, full) -> Measurement:
        if plan.is_empty:
            return Measurement(1.0, 1.0)
        argmax = evaluator.score(example, full.tokens, plan).argmax.tolist()
        return Measurement(float(metrics.agreement(argmax, list(full.tokens))), 1.0)

    def scored_target(self, evaluator, example, full) -> list[int]:
        return list(full.tokens)


class _GeneratedOutputSignal(QualitySignal):
    """A signal that generates the plan's output (the empty plan reuses the full output) and scores its text."""

    generates = True

    def measure(self, evaluator, example, plan, full) -> Measurement:
        if plan.is_empty:
            text, n = full.text, full.num_generated
        else:
            text, n = evaluator.generate(example, plan)
        value, full_value = self.score_text(evaluator, example, text, full)
        return Measurement(float(value), float(full_value), text, n)

    def score_text(self, evaluator, example, text: str, full) -> tuple[float, float]:
        """``(quality of text, quality of the full output)`` on this signal's scale."""
        raise NotImplementedError


class ReferenceMetric(_GeneratedOutputSignal):
    """The task metric of the plan's generated output against the gold target (see module docstring)."""

    name = "reference"
    #: ROUGE-L against references is noisy (±0.02 between equally good summaries), so 0.02.
    default_tau = 0.02

    def score_text(self, evaluator, example, text, full):
        return evaluator.task.score(text, example), full.target_score


class Fidelity(_GeneratedOutputSignal):
    """The task metric of the plan's generated output against the full output (see module docstring)."""

    name = "fidelity"
    default_tau = 0.10

    def score_text(self, evaluator, example, text, full):
        if text == full.text:  # identical output (the empty plan included): 1 even where the metric sees no words
            return 1.0, 1.0
        task = evaluator.task
        as_target = dataclasses.replace(example, reference=full.text, label=task.post_process(full.text))
        return task.score(text, as_target), 1.0


class Likelihood(QualitySignal):
    """Likelihood of the gold target under the plan relative to the full model (see module docstring)."""

    name = "likelihood"
    default_tau = 0.10
    needs_target_logprob = True

    def measure(self, evaluator, example, plan, full) -> Measurement:
        if plan.is_empty:
            return Measurement(1.0, 1.0)
        lp = evaluator.target_logprob(example, plan)
        return Measurement(float(min(1.0, np.exp(lp - full.target_logprob))), 1.0)

    def scored_target(self, evaluator, example, full) -> list[int]:
        return evaluator.target_ids(example)


#: Default tolerance of :class:`Probability` (mean-probability units, a fraction), measured by
#: ``benchmarks/choose_defaults.py`` on 150 train / 60 test XSum documents (README "Choosing the defaults"): the full
#: model's mean probability of its own output is 0.60 and single token-segment drops lose 0.01–0.05 of it, so at
#: 0.01 the same cheap plan keeps the constraint on some documents and not on others (dropping the last 1/8: 58 %),
#: the regime a contextual policy can exploit; the contextual probe's held-out advantage over the static front was
#: largest there (0.04 is loose: the static mixture then saves 27 % and the oracle only 9 points more).
PROBABILITY_DEFAULT_TAU = 0.01


class Probability(QualitySignal):
    """Mean probability the plan gives the full model's greedy output (see module docstring).

    ``quality = mean_t exp(log p_plan(y_t | x, y_<t))`` over the ``m`` tokens of the full output ``y`` (EOS
    included), a fraction in [0, 1]; ``quality_full`` = the same mean under the full model
    (:attr:`~skipenv.envs.evaluator.FullOutput.output_probability`, computed once per input and cached with the full
    output). The empty plan reports ``quality == quality_full`` exactly (the cached value, no forward pass).
    """

    name = "probability"
    default_tau = PROBABILITY_DEFAULT_TAU
    needs_output_probability = True

    def measure(self, evaluator, example, plan, full) -> Measurement:
        p_full = float(full.output_probability)
        if plan.is_empty:
            return Measurement(p_full, p_full)
        s = evaluator.score(example, full.tokens, plan)
        return Measurement(mean_probability(s.logprobs), p_full)

    def scored_target(self, evaluator, example, full) -> list[int]:
        return list(full.tokens)


class _LabelSignal(QualitySignal):
    """A signal of a verbalizer-scored classification task (``ClassificationTask(scoring="verbalizer")``): one
    forward pass under the plan gives the calibrated margin (:meth:`~skipenv.envs.evaluator.Evaluator.label_margin`),
    hence the plan's label; the full output is the full model's label (one token, so the cost is one prefill)."""

    label_signal = True

    def measure(self, evaluator, example, plan, full) -> Measurement:
        task = evaluator.task
        if plan.is_empty:
            return Measurement(self.full_value(full), self.full_value(full), full.text, 1)
        margin = evaluator.label_margin(example, plan)
        label = task.label_of_margin(margin)
        return Measurement(float(self.value(task, margin, label, full)), self.full_value(full), label, 1)

    def value(self, task, margin: float, label: str, full) -> float:
        raise NotImplementedError

    def full_value(self, full) -> float:
        raise NotImplementedError


class LabelAgreement(_LabelSignal):
    """Label agreement with the full model: 1.0 if the plan's calibrated label equals the full model's, else 0.0
    (``quality_full = 1``). Averaged over inputs it is the fraction of inputs whose label the plan keeps."""

    name = "label_agreement"
    #: with the per-input constraint a plan must keep the label (any tau < 1 means "keep it"); 0.0 states that
    default_tau = 0.0

    def value(self, task, margin, label, full):
        return float(label == full.text)

    def full_value(self, full):
        return 1.0


class LabelProbability(_LabelSignal):
    """The calibrated probability the plan gives the full model's label,
    ``ClassificationTask.label_probability(margin_plan, label_full)`` (a fraction in [0, 1]); ``quality_full`` = the
    full model's probability of its own label (cached with the full output, ``FullOutput.output_probability``). It
    moves smoothly with the plan, unlike the 0/1 label agreement."""

    name = "label_probability"
    #: measured by ``benchmarks/task_baselines.py`` (docs/tasks.md): see there for the fraction of labels kept
    default_tau = 0.05

    def value(self, task, margin, label, full):
        return task.label_probability(margin, full.text)

    def full_value(self, full):
        return float(full.output_probability)


def mean_probability(logprobs) -> float:
    """``mean_t exp(logprobs[t])`` (float64) of log-probabilities ``[m]`` in nats; 0.0 for ``m = 0``."""
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    return float(np.exp(lp).mean()) if lp.size else 0.0


#: name → signal class (a :class:`~skipenv.util.registry.Registry`: a second signal of one name is an error; a signal
#: added with ``QUALITY_SIGNALS.register(MySignal.name, MySignal)`` is accepted by ``quality=`` everywhere, and
#: :data:`QUALITY_MODES` / :data:`DEFAULT_TAU` include it, since they read this registry when used)
QUALITY_SIGNALS: Registry = Registry("quality signal", {
    cls.name: cls for cls in (Agreement, ReferenceMetric, Fidelity, Likelihood, Probability, LabelAgreement,
                              LabelProbability)})
#: the signals of verbalizer-scored classification tasks (the only ones such a task accepts)
LABEL_SIGNALS = (LabelAgreement.name, LabelProbability.name)
#: accepted alternative names
QUALITY_ALIASES = {"rouge": "reference"}


class _SignalNames(tuple):
    """:data:`QUALITY_MODES`: the names in :data:`QUALITY_SIGNALS` *now* (a tuple for readers: iteration, ``in``,
    ``len``, indexing, ``==`` with a tuple), so a signal registered after import is listed too."""

    def __new__(cls):
        return super().__new__(cls)

    def _now(self) -> tuple:
        return tuple(QUALITY_SIGNALS)

    def __iter__(self):
        return iter(self._now())

    def __len__(self):
        return len(self._now())

    def __getitem__(self, i):
        return self._now()[i]

    def __contains__(self, name):
        return name in QUALITY_SIGNALS

    def __eq__(self, other):
        return self._now() == (tuple(other) if isinstance(other, (tuple, list)) else other)

    def __hash__(self):
        return hash(self._now())

    def __repr__(self):
        return repr(self._now())

    def __add__(self, other):
        return self._now() + tuple(other)

    def __reduce__(self):  # copy / pickle: a plain tuple of today's names
        return tuple, (self._now(),)


class _DefaultTaus(dict):
    """:data:`DEFAULT_TAU`: name (or alias) → the signal's ``default_tau``, read from :data:`QUALITY_SIGNALS` when
    used (a read-only mapping; a signal registered after import is included)."""

    def _now(self) -> dict:
        return {**{n: c.default_tau for n, c in QUALITY_SIGNALS.items()},
                **{a: QUALITY_SIGNALS[n].default_tau for a, n in QUALITY_ALIASES.items() if n in QUALITY_SIGNALS}}

    def __getitem__(self, name):
        try:
            return self._now()[name]
        except KeyError:
            raise KeyError(f"unknown quality {name!r}; known: {list(self._now())}") from None

    def get(self, name, default=None):
        return self._now().get(name, default)

    def __contains__(self, name):
        return name in self._now()

    def __iter__(self):
        return iter(self._now())

    def __len__(self):
        return len(self._now())

    def keys(self):
        return self._now().keys()

    def values(self):
        return self._now().values()

    def items(self):
        return self._now().items()

    def __eq__(self, other):
        return self._now() == other

    __hash__ = None

    def __repr__(self):
        return repr(self._now())

    def __reduce__(self):  # copy / pickle: a plain dict of today's values
        return dict, (self._now(),)

    def _read_only(self, *args, **kwargs):
        raise TypeError("DEFAULT_TAU is read from QUALITY_SIGNALS; register a signal (QUALITY_SIGNALS.register) "
                        "instead of editing it")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _read_only


#: the quality names ``quality=`` accepts (aliases aside), read from :data:`QUALITY_SIGNALS` when used
QUALITY_MODES: tuple[str, ...] = _SignalNames()
#: default tolerance per quality name (aliases included), read from :data:`QUALITY_SIGNALS` when used
DEFAULT_TAU: dict[str, float] = _DefaultTaus()


def get_signal(quality) -> QualitySignal:
    """A :class:`QualitySignal` from a name (or alias) or an instance (returned as is).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(quality, QualitySignal):
        return quality
    if isinstance(quality, type) and issubclass(quality, QualitySignal):
        return quality()
    name = QUALITY_ALIASES.get(quality, quality) if isinstance(quality, str) else quality
    if not isinstance(name, str) or name not in QUALITY_SIGNALS:
        raise ValueError(f"unknown quality {quality!r}; choose one of {tuple(QUALITY_SIGNALS)} (alias "
                         f"{', '.join(f'{a!r} = {n!r}' for a, n in QUALITY_ALIASES.items())}) or pass a "
                         f"QualitySignal instance")
    return QUALITY_SIGNALS[name]()
