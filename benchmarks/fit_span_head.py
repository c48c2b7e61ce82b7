"""Fit the span head of ``SwitchDec-DisflQA-v2`` (task ``disflqa_head``) on DisflQA train rows and write it where
the package ships it (``skipenv/tasks/data/disflqa_span_head_smollm2.npz``), then print its SQuAD F1 on rows it
was not fitted on next to the best cheap heuristic (issue 23; docs/tasks.md, "SwitchDec-DisflQA-v2").

    OMP_NUM_THREADS=1 python benchmarks/fit_span_head.py --train 150 --plans 1 --out skipenv/tasks/data/disflqa_span_head_smollm2.npz
    OMP_NUM_THREADS=1 python benchmarks/fit_span_head.py --evaluate 69 --split test

``--evaluate N`` scores the shipped head through ``SwitchDec-DisflQA-v2`` (its full model's span, SQuAD F1 against
the gold answers) on the first N rows of ``--split`` next to the cheap heuristics of
``benchmarks/task_baselines.py`` on the same rows.

The states come from one forward pass per (row, plan): the full model and ``--plans`` random plans per row
(``skipenv.envs.span_head.random_plan``: sublayer skips, dropped token segments, or both), so the head also reads
states that skipping perturbs. Only train rows are used for fitting.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=150, help="first N train rows (file order) to fit on")
    ap.add_argument("--plans", type=int, default=1, help="random plans per row besides the full model")
    ap.add_argument("--components", type=int, default=16, help="principal directions of the states kept")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--cap", type=int, default=8, help="longest answer span, passage tokens")
    ap.add_argument("--out", help="where to write the head (.npz)")
    ap.add_argument("--evaluate", type=int, default=0, help="score the shipped head on the first N rows instead")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    if args.evaluate:
        return evaluate(args.evaluate, args.split)
    if not args.out:
        ap.error("--out is required to fit")

    import torch

    from skipenv.envs.span_head import fit_span_head
    from skipenv.loading import load_generator
    from skipenv.tasks import make_task

    torch.set_num_threads(1)
    gen = load_generator()
    task = make_task("disflqa_head")
    rows = task.examples("train")[: args.train]
    t0 = time.perf_counter()
    head = fit_span_head(gen, task, rows, plans_per_example=args.plans, l2=args.l2, components=args.components,
                         max_answer_tokens=args.cap, progress=True)
    head.save(args.out)
    print(f"wrote {args.out}: {head.weight.shape} weight, fingerprint {head.fingerprint}, digest {head.digest()}, "
          f"{time.perf_counter() - t0:.0f} s")


def evaluate(n: int, split: str) -> None:
    import numpy as np
    import torch

    import skipenv
    from task_baselines import capitalised_run, first_words, overlap_sentence

    torch.set_num_threads(1)
    env = skipenv.make("SwitchDec-DisflQA-v2", split=split, num_examples=n).unwrapped
    task, ev = env.task, env.evaluator
    t0 = time.perf_counter()
    full = [ev.full_output(ex).target_score for ex in env.examples]
    secs = time.perf_counter() - t0
    h = {"overlap": [], "first3": [], "caps": []}
    for ex in env.examples:
        s = overlap_sentence(ex.document, ex.question)
        h["overlap"].append(task.score(s, ex))
        h["first3"].append(task.score(first_words(s), ex))
        h["caps"].append(task.score(capitalised_run(s, ex.question), ex))
    means = {k: float(np.mean(v)) for k, v in h.items()}
    best = max(means.values())
    print("| split | n | full model (v2: span head) | overlap sentence | its first 3 words | capitalised run | "
          "best heuristic | margin | ratio |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {split} | {len(full)} | {np.mean(full):.3f} | {means['overlap']:.3f} | {means['first3']:.3f} | "
          f"{means['caps']:.3f} | {best:.3f} | {np.mean(full) - best:+.3f} | {np.mean(full) / best:.2f}x |")
    print(f"({secs:.0f} s for the full model's spans, disk cache included)")


if __name__ == "__main__":
    main()
