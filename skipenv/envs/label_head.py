"""Fitting a :class:`~skipenv.tasks.heads.LabelHead` for a model: features drawn under many skip plans.

A head fitted on the full model's features alone collapses under skipping (issue 23: with the top two attention
sublayers skipped it answers "positive" for every review); fitted on features drawn under the plans a policy tries
— single and a few attention / FFN skips, contiguous blocks, token-segment drops, random mixtures
(:func:`training_plans`) — it keeps the label under them (docs/tasks.md, RT-v2).

    >>> from skipenv.envs.label_head import fit_label_head, training_plans
    >>> evaluator = Evaluator(generator, make_task("rotten_tomatoes", scoring="verbalizer"), quality="label_agreement")
    >>> plans = training_plans(evaluator.spec, 12)
    >>> head = fit_label_head(evaluator, task.examples("train")[:200], plans, per_plan=40)
    >>> head.save("my_head.json"); make_task("rotten_tomatoes_head", head="my_head.json")
"""

from __future__ import annotations

import random

import numpy as np

from ..plan import SkipPlan
from ..tasks.heads import LabelHead, fit_logistic_head

__all__ = ["training_plans", "fit_label_head", "DEFAULT_HEAD_C"]

#: regularisation of the shipped RT head (scikit-learn ``C`` on standardised features), chosen on held-out train
#: reviews by ``benchmarks/rt_head.py`` (docs/tasks.md)
DEFAULT_HEAD_C = 0.1


def training_plans(spec, count: int, seed: int = 0) -> dict[str, SkipPlan]:
    """``count`` distinct seeded plans of seven families, drawn in turn at random: one attention skip; one FFN skip;
    2-6 attention skips; 2-4 FFN skips; a contiguous block of 2-12 attention sublayers; 1-4 dropped token segments;
    a random mixture (each attention skipped with probability 0.12, each FFN 0.05, each segment 0.15).

    Args:
        spec: the :class:`~skipenv.plan.PlanSpec` (decoder-only: ``num_decoder_layers`` layers).
        count: number of plans (>= 1).
        seed: seed of :class:`random.Random`.

    Returns:
        name (the skipped indices) → plan, in drawing order.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    n_layers = spec.num_decoder_layers
    rng = random.Random(seed)
    out: dict[str, SkipPlan] = {}
    while len(out) < count:
        fam = rng.randrange(7)
        att, ffn, tok = [], [], []
        if fam == 0:
            att = [rng.randrange(n_layers)]
        elif fam == 1:
            ffn = [rng.randrange(n_layers)]
        elif fam == 2:
            att = rng.sample(range(n_layers), min(n_layers, rng.randint(2, 6)))
        elif fam == 3:
            ffn = rng.sample(range(n_layers), min(n_layers, rng.randint(2, 4)))
        elif fam == 4:
            k = min(n_layers, rng.randint(2, 12))
            s = rng.randrange(n_layers - k + 1)
            att = list(range(s, s + k))
        elif fam == 5:
            tok = rng.sample(range(spec.token_segments), min(spec.token_segments, rng.randint(1, 4)))
        else:
            att = [i for i in range(n_layers) if rng.random() < 0.12]
            ffn = [i for i in range(n_layers) if rng.random() < 0.05]
            tok = [i for i in range(spec.token_segments) if rng.random() < 0.15]
        name = f"a{sorted(att)}f{sorted(ffn)}t{sorted(tok)}".replace(" ", "")
        out[name] = SkipPlan.from_skips(spec, attention=att, ffn=ffn, tokens=tok)
    return out


def fit_label_head(evaluator, examples, plans, *, per_plan: int | None = None, C: float = DEFAULT_HEAD_C,
                   seed: int = 0, show_progress: bool | None = None) -> LabelHead:
    """Fit a logistic head on the final hidden states (:meth:`Evaluator.label_features`) of ``examples`` under the
    full model and under ``plans``, with the gold labels (1 = ``"positive"``).

    Every example is read under the full model; each plan on ``per_plan`` examples drawn without replacement by
    ``numpy.random.default_rng(seed)`` (all of them when ``None``). The head records the evaluator's model
    fingerprint, so it is refused for any other model.

    Args:
        evaluator: an :class:`~skipenv.envs.evaluator.Evaluator` on a decoder-only generator and a classification
            task that formats inputs as the head's task will (the scoring does not matter: for
            ``rotten_tomatoes_head``, ``make_task("rotten_tomatoes", scoring="verbalizer")``, v0's prompt).
        examples: labelled train examples (both labels present).
        plans: a mapping name → plan or a sequence of plans (e.g. :func:`training_plans`).
        per_plan: examples per plan.
        C: as :func:`~skipenv.tasks.heads.fit_logistic_head`.
        seed: seed of the example draw.
        show_progress: a progress bar (default: on a terminal).

    Raises:
        ValueError: no examples, an example without a label, or one class only.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("fit_label_head needs labelled examples")
    missing = [e.id for e in examples if e.label not in ("positive", "negative")]
    if missing:
        raise ValueError(f"fit_label_head needs labelled examples; {len(missing)} have no label (first: "
                         f"{missing[0]!r})")
    plans = list(plans.values()) if isinstance(plans, dict) else list(plans)
    rng = np.random.default_rng(seed)
    jobs = [(i, None) for i in range(len(examples))]
    for plan in plans:
        k = len(examples) if per_plan is None else min(int(per_plan), len(examples))
        jobs += [(int(i), plan) for i in np.sort(rng.choice(len(examples), size=k, replace=False))]
    from tqdm.auto import tqdm

    from ..util.progress import is_terminal

    X, y = [], []
    for i, plan in tqdm(jobs, desc="label head features", unit="pass",
                        disable=not (is_terminal() if show_progress is None else show_progress)):
        X.append(evaluator.label_features(examples[i], plan))
        y.append(examples[i].label == "positive")
    return fit_logistic_head(np.stack(X), np.array(y), evaluator.fingerprint, C=C,
                             info={"examples": len(examples), "plans": len(plans), "per_plan": per_plan,
                                   "seed": seed})
