"""Is each embedded task usable? The full model's task score next to a trivial baseline's, per split, and for the
verbalizer-scored Rotten Tomatoes task the fraction of test reviews whose label a skip plan keeps (issue 23).

Baselines (no model): XSum — the document's first sentence as the summary (ROUGE-L F); Rotten Tomatoes — the
majority label of the train split (accuracy); DisflQA — the best of three extractive heuristics (SQuAD F1): the
passage sentence with the most question-word overlap, its first 3 words, and its longest run of capitalised words /
numbers.

    OMP_NUM_THREADS=1 python benchmarks/task_baselines.py --task rt --docs 30
    OMP_NUM_THREADS=1 python benchmarks/task_baselines.py --task xsum --docs 20
    OMP_NUM_THREADS=1 python benchmarks/task_baselines.py --task disflqa --docs 20
    OMP_NUM_THREADS=1 python benchmarks/task_baselines.py --task disflqa-v1 --docs 16

``--task rt --fit-threshold`` also prints the train accuracy-maximising margin threshold (the value of
``skipenv.tasks.RT_SCORED_THRESHOLD``). Full outputs are kept in the skipenv disk cache, so a rerun is cheap.
"""

from __future__ import annotations

import argparse
import re
import string

import numpy as np

_WORD = re.compile(r"\w+")
_STOP = {"the", "a", "an", "of", "in", "on", "to", "is", "was", "what", "which", "who", "when", "where", "how",
         "did", "does", "do", "and", "or", "for", "by", "with", "as", "at", "that", "this", "are", "were", "be",
         "uh", "um", "no", "sorry", "i", "mean", "rather"}


def sentences(text: str) -> list[str]:
    """Split a passage into sentences at ``.``, ``!`` or ``?`` followed by whitespace."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def overlap_sentence(passage: str, question: str) -> str:
    """The passage sentence sharing the most non-stop words with the question (first one on ties)."""
    q = {w.lower() for w in _WORD.findall(question)} - _STOP
    sents = sentences(passage) or [passage]
    return max(sents, key=lambda s: len(q & {w.lower() for w in _WORD.findall(s)}))


def first_words(text: str, n: int = 3) -> str:
    """The first ``n`` words of ``text``."""
    return " ".join(text.split()[:n])


def capitalised_run(sentence: str, question: str) -> str:
    """The longest run of capitalised words or numbers in ``sentence`` not in the question (else its first 3 words)."""
    q = {w.lower() for w in _WORD.findall(question)}
    best, run = [], []
    for w in sentence.split():
        core = w.strip(string.punctuation)
        if core and (core[0].isupper() or core[0].isdigit()) and core.lower() not in q:
            run.append(core)
            best = max(best, run, key=len)
        else:
            run = []
    return " ".join(best) if best else first_words(sentence)


def sample(task, split: str, n: int) -> list:
    exs = task.examples(split)
    return exs[:n]


def run_xsum(n: int) -> None:
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    from skipenv.tasks import first_sentences

    print(f"XSum, ROUGE-L F, first {n} documents per split")
    print("| split | n | full model | first sentence of the document | margin |\n|---|---|---|---|---|")
    for split in ("train", "test"):
        env = gym.make("SwitchDec-XSum-v0", split=split, num_examples=n).unwrapped
        ev = env.evaluator
        full = [ev.full_output(ex).target_score for ex in env.examples]
        lead = [env.task.score(first_sentences(ex.document, 1), ex) for ex in env.examples]
        print(f"| {split} | {n} | {np.mean(full):.3f} | {np.mean(lead):.3f} | {np.mean(full) - np.mean(lead):+.3f} |")


def run_disflqa(n: int) -> None:
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    print(f"DisflQA, SQuAD F1, first {n} rows per split (rows whose answer is not in the passage are dropped "
          f"and counted at load)")
    print("| split | n | full model (v0 prompt) | overlap sentence | its first 3 words | capitalised run | best "
          "heuristic |\n|---|---|---|---|---|---|---|")
    for split in ("train", "test"):
        env = gym.make("SwitchDec-DisflQA-v0", split=split, num_examples=n).unwrapped
        task, ev = env.task, env.evaluator
        h = {"overlap": [], "first3": [], "caps": []}
        for ex in env.examples:
            s = overlap_sentence(ex.document, ex.question)
            h["overlap"].append(task.score(s, ex))
            h["first3"].append(task.score(first_words(s), ex))
            h["caps"].append(task.score(capitalised_run(s, ex.question), ex))
        full = [ev.full_output(ex).target_score for ex in env.examples]
        means = {k: float(np.mean(v)) for k, v in h.items()}
        print(f"| {split} | {n} | {np.mean(full):.3f} | {means['overlap']:.3f} | {means['first3']:.3f} | "
              f"{means['caps']:.3f} | {max(means.values()):.3f} |")
    print(f"load stats: {task.load_stats}")


def run_disflqa_v1(n: int) -> None:
    """SwitchDec-DisflQA-v1's full model (3 shots, passage-constrained decoding) against the heuristics, on the first
    ``n`` rows per split that are not among its shots."""
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    from skipenv.tasks import DISFLQA_SHOT_IDS

    print(f"DisflQA, SQuAD F1, SwitchDec-DisflQA-v1 (task disflqa_span), first {n} rows per split (the 3 shot rows "
          f"of the train split left out)")
    print("| split | n | full model (v1: span decoding) | overlap sentence | its first 3 words | capitalised run | "
          "best heuristic | margin |\n|---|---|---|---|---|---|---|---|")
    for split in ("train", "test"):
        env = gym.make("SwitchDec-DisflQA-v1", split=split, num_examples=n + len(DISFLQA_SHOT_IDS)).unwrapped
        task, ev = env.task, env.evaluator
        rows = [ex for ex in env.examples if ex.id not in DISFLQA_SHOT_IDS][:n]
        h = {"overlap": [], "first3": [], "caps": []}
        for ex in rows:
            s = overlap_sentence(ex.document, ex.question)
            h["overlap"].append(task.score(s, ex))
            h["first3"].append(task.score(first_words(s), ex))
            h["caps"].append(task.score(capitalised_run(s, ex.question), ex))
        full = [ev.full_output(ex).target_score for ex in rows]
        means = {k: float(np.mean(v)) for k, v in h.items()}
        best = max(means.values())
        print(f"| {split} | {len(rows)} | {np.mean(full):.3f} | {means['overlap']:.3f} | {means['first3']:.3f} | "
              f"{means['caps']:.3f} | {best:.3f} | {np.mean(full) - best:+.3f} |", flush=True)


def best_threshold(margins: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold maximising accuracy of ``margin > threshold`` (midpoints between sorted margins)."""
    m = np.sort(margins)
    cands = np.concatenate([[m[0] - 1.0], (m[1:] + m[:-1]) / 2, [m[-1] + 1.0]])
    accs = [((margins > t) == positive).mean() for t in cands]
    i = int(np.argmax(accs))
    return float(cands[i]), float(accs[i])


def run_rt(n: int, fit: bool) -> None:
    import gymnasium as gym

    import skipenv

    print(f"Rotten Tomatoes, verbalizer scoring (task rotten_tomatoes_scored), first {n} reviews per split")
    envs = {s: gym.make("SwitchDec-RottenTomatoes-v1", split=s, num_examples=n).unwrapped for s in ("train", "test")}
    train_labels = [ex.label for ex in envs["train"].task.examples("train")]
    majority = max(("positive", "negative"), key=train_labels.count)
    th = envs["train"].task.threshold
    if fit:  # margins are not cached: one extra forward pass per review and verbalizer
        margins = np.array([envs["train"].evaluator.label_margin(ex, None) for ex in envs["train"].examples])
        t, a = best_threshold(margins, np.array([ex.label == "positive" for ex in envs["train"].examples]))
        print(f"train accuracy-maximising threshold: {t:.3f} nats (train accuracy {a:.3f}); registered: {th}")
    print(f"| split | n | full model (threshold {th}) | majority label of train ({majority}) | margin |\n"
          f"|---|---|---|---|---|")
    for s in envs:  # the full model's label is cached on disk with the full output
        acc = float(np.mean([envs[s].evaluator.full_output(ex).target_score for ex in envs[s].examples]))
        maj = float(np.mean([ex.label == majority for ex in envs[s].examples]))
        print(f"| {s} | {n} | {acc:.3f} | {maj:.3f} | {acc - maj:+.3f} |", flush=True)
    env = envs["test"]
    spec = env.plan_spec
    S = skipenv.SkipPlan.from_skips
    L = env.generator.config.num_hidden_layers
    plans = {  # three plans only: each costs two forward passes per review on a shared 2-core machine
        "drop last 1/2 of the review": S(spec, tokens=[4, 5, 6, 7]),
        f"FFN {L - 5}-{L - 2}": S(spec, ffn=range(L - 5, L - 1)),
        f"FFN {L - 8}-{L - 2}": S(spec, ffn=range(L - 8, L - 1)),
    }
    print(f"\nlabel kept under skip plans, {n} test reviews (FLOPs saved include the observation's first layer)")
    print("| plan | FLOPs saved | label kept | mean p(full label) plan / full | accuracy |\n|---|---|---|---|---|")
    for name, plan in plans.items():
        outs = [env.outcome(plan, ex) for ex in env.examples]
        kept = [o.text == env.evaluator.full_output(ex).text for o, ex in zip(outs, env.examples)]  # label agreement
        acc = np.mean([env.task.score(o.text, ex) for o, ex in zip(outs, env.examples)])
        print(f"| {name} | {np.mean([o.flops_saved for o in outs]):.3f} | {np.mean(kept):.3f} | "
              f"{np.mean([o.quality for o in outs]):.3f} / {np.mean([o.quality_full for o in outs]):.3f} | "
              f"{acc:.3f} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("rt", "xsum", "disflqa", "disflqa-v1"), required=True)
    p.add_argument("--docs", type=int, default=20, help="inputs per split (the first ones, file order)")
    p.add_argument("--fit-threshold", action="store_true", help="rt: print the train-fitted margin threshold")
    args = p.parse_args(argv)
    {"rt": lambda: run_rt(args.docs, args.fit_threshold), "xsum": lambda: run_xsum(args.docs),
     "disflqa": lambda: run_disflqa(args.docs), "disflqa-v1": lambda: run_disflqa_v1(args.docs)}[args.task]()


if __name__ == "__main__":
    main()
