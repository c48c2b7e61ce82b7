"""Measured wall-clock speed-up of a skip policy vs the full model on XSum test documents, next to its
FLOPs-predicted speed-up, and the ROUGE-L of both outputs against the reference summaries.

Each document goes through :class:`skipenv.policies.deploy.PolicyGenerator` with ``compare=True``: the policy's run
(observation = first layer over the full input, policy forward, greedy generation under the plan) and then the full
model's greedy generation, one document at a time. One document is run first as a warm-up and not counted.

- predicted speed-up = Σ full-model FLOPs / Σ policy-run FLOPs (analytic, observation included);
- measured speed-up = Σ full-model seconds / Σ policy-run seconds;
- ROUGE-L F of each output against the dataset reference (the task metric).

Usage::

    python benchmarks/bench_policy_generate.py --policies lead:4 skip-nothing --docs 8
    python benchmarks/bench_policy_generate.py --policies runs/ppo-xsum/policy.zip lead:4
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pandas as pd


def run(policy: str, docs, env_kwargs: dict, device: str = "cpu") -> dict:
    from skipenv.policies.deploy import PolicyGenerator

    pg = PolicyGenerator(policy, env_kwargs=env_kwargs, device=device)
    pg.generate(docs[0].document, compare=True, id=docs[0].id)  # warm-up (not counted)
    rows = []
    for ex in docs[1:]:
        r = pg.generate(ex.document, compare=True, id=ex.id)
        rows.append({"flops": r.flops, "flops_full": r.flops_full, "time_s": r.time_s, "full_time_s": r.full_time_s,
                     "rouge_l": pg.task.score(r.text, ex), "rouge_l_full": pg.task.score(r.full_text, ex),
                     "same_output": r.text == r.full_text})
    df = pd.DataFrame(rows)
    return {"policy": pg.policy_name, "docs": len(df),
            "flops_saved": 1 - df["flops"].sum() / df["flops_full"].sum(),
            "predicted_speedup": df["flops_full"].sum() / df["flops"].sum(),
            "measured_speedup": df["full_time_s"].sum() / df["time_s"].sum(),
            "s_per_doc": df["time_s"].mean(), "full_s_per_doc": df["full_time_s"].mean(),
            "rouge_l": df["rouge_l"].mean(), "rouge_l_full": df["rouge_l_full"].mean(),
            "same_output": df["same_output"].mean()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", nargs="+", default=["lead:4"], help="policy specs or policy.zip / policy.pt files")
    p.add_argument("--docs", type=int, default=8, help="XSum test documents (the first is a warm-up)")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="gym.make kwargs of the policy's env, as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from skipenv.tasks import make_task

    kw = {"max_input_tokens": args.env_kwargs.get("max_input_tokens")} if "max_input_tokens" in args.env_kwargs else {}
    docs = make_task("xsum", **kw).examples("test")[: args.docs + 1]
    t0 = time.perf_counter()
    rows = [run(spec, docs, args.env_kwargs, args.device) for spec in args.policies]
    df = pd.DataFrame(rows)
    print(f"XSum test, {len(docs) - 1} documents (+1 warm-up), {args.threads} thread(s), "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    from skipenv.evaluation.stats import markdown_table

    print()
    print(markdown_table(df))


if __name__ == "__main__":
    main()
