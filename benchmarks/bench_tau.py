"""Measurements behind the default tolerance ``tau``: for a ladder of static plans on validation documents of the
embedded XSum (SmolLM2-135M-Instruct), the mean agreement with the full model, the mean ROUGE-L against the
reference, FLOPs saved, and the fraction of documents on which the constraint holds for several ``tau``.

    python benchmarks/bench_tau.py --docs 12
"""

from __future__ import annotations

import argparse

import pandas as pd


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=12)
    args = p.parse_args(argv)

    import gymnasium as gym
    from tqdm import tqdm

    import skipenv
    from skipenv.envs import Evaluator, LexicographicReward

    env = gym.make("SwitchDec-XSum-v0", split="validation", num_examples=args.docs).unwrapped
    reference = Evaluator(env.generator, env.task, quality="reference")
    spec = env.plan_spec
    S = skipenv.SkipPlan.from_skips
    plans = {
        "skip nothing": spec.empty_plan(),
        "lead 7/8 segments": S(spec, tokens=[7]),
        "lead 6/8": S(spec, tokens=[6, 7]),
        "lead 4/8": S(spec, tokens=[4, 5, 6, 7]),
        "attention 6": S(spec, attention=[6]),
        "attention 5-8": S(spec, attention=[5, 6, 7, 8]),
        "attention 5-8, 25-28": S(spec, attention=[5, 6, 7, 8, 25, 26, 27, 28]),
        "ffn 20": S(spec, ffn=[20]),
        "every other attention": S(spec, attention=range(1, 30, 2)),
    }
    agree_taus, rouge_taus = (0.05, 0.1, 0.2), (0.0, 0.02, 0.05)
    rows = []
    for name, plan in tqdm(plans.items(), desc="plans"):
        for ex in env.examples:
            # one outcome per (plan, document) and signal; every tau reuses it (no forward pass per tau)
            a, r = env.outcome(plan, ex), reference.outcome(ex, plan)
            row = {"plan": name, "agreement": a.quality, "rougeL": r.quality, "flops_saved": a.flops_saved}
            row.update({f"agree ok tau={t}": LexicographicReward(t).info(a)["constraint_satisfied"] for t in agree_taus})
            row.update({f"rouge ok tau={t}": LexicographicReward(t).info(r)["constraint_satisfied"] for t in rouge_taus})
            rows.append(row)
    df = pd.DataFrame(rows)
    table = df.groupby("plan", sort=False).mean(numeric_only=True)
    pd.set_option("display.width", 200)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    full = df[df.plan == "skip nothing"]
    print(f"\nfull model: ROUGE-L {full.rougeL.mean():.3f} ± {full.rougeL.std(ddof=0):.3f} (std over documents)")


if __name__ == "__main__":
    main()
