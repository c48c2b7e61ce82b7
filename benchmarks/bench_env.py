"""Episodes per second of SwitchDec-XSum-v0 (embedded SmolLM2, CPU) with quality="agreement" and quality="rouge",
cold and warm caches, next to the time of one bare forward pass of the full model over the same inputs (the floor).

    python benchmarks/bench_env.py --episodes 6

"cold" = first episode on each document: the full-model reference (one greedy generation) is computed, plus the
observation; "warm" = references and observations cached (disk / memory), new random plans (no LRU hits);
"lru" = the same (document, plan) again. The ratio column divides the per-episode time by the bare forward pass.

    python benchmarks/bench_env.py --soak 5000

Soak: N episodes with random plans on a tiny random-weight Llama (embedded tokenizer, 8 XSum documents) with a small
outcome LRU (256 entries) that cycles; prints the resident memory every N/10 episodes (it should stay flat).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=6, help="documents (episodes per setting)")
    p.add_argument("--max-input-tokens", type=int, default=512)
    p.add_argument("--soak", type=int, default=0, help="run the memory soak for this many episodes instead")
    args = p.parse_args(argv)
    if args.soak:
        return soak(args.soak)


    import skipenv
    from skipenv.envs import Evaluator, shared_generator
    from skipenv.loading import DEFAULT_MODEL
    from skipenv.tasks import make_task

    rows = []
    rng = np.random.default_rng(0)
    bare = []
    with tempfile.TemporaryDirectory() as tmp:
        for quality in ("agreement", "rouge"):
            # cold: a fresh disk cache for the full-model outputs (the evaluator's cache_root)
            task = make_task("xsum", max_input_tokens=args.max_input_tokens)
            evaluator = Evaluator(shared_generator(DEFAULT_MODEL), task, quality=quality,
                                  cache_root=tmp + "/" + quality)
            env = skipenv.make("SwitchDec-XSum-v0", evaluator=evaluator, split="test",
                               num_examples=args.episodes).unwrapped
            plans = [(rng.random(env.action_space.n) < 0.15).astype(np.int8) for _ in range(args.episodes)]
            timings = {"cold": [], "warm": [], "lru": []}
            for phase in ("cold", "warm", "lru"):
                if phase == "warm":
                    plans = [(rng.random(env.action_space.n) < 0.15).astype(np.int8) for _ in range(args.episodes)]
                for i in range(args.episodes):
                    t0 = time.perf_counter()
                    env.reset(options={"index": i})
                    env.step(plans[i])
                    timings[phase].append(time.perf_counter() - t0)
            if not bare:
                gen = env.generator
                for i in range(args.episodes):
                    ids = torch.tensor([env.prompt(env.examples[i]).input_ids])
                    with torch.inference_mode():
                        t0 = time.perf_counter()
                        gen.model(input_ids=ids, logits_to_keep=1)
                        bare.append(time.perf_counter() - t0)
            floor = statistics.median(bare)
            for phase, ts in timings.items():
                med = statistics.median(ts)
                rows.append((quality, phase, med, 1.0 / med, med / floor))
    print(f"bare forward pass of the full model over the prompt (median of {len(bare)}): {statistics.median(bare):.3f} s\n")
    print(f"{'quality':<10} {'cache':<6} {'s/episode':>10} {'episodes/s':>11} {'x bare forward':>15}")
    for q, ph, med, eps, ratio in rows:
        print(f"{q:<10} {ph:<6} {med:>10.3f} {eps:>11.2f} {ratio:>15.2f}")
    print("\nagreement = one teacher-forced forward pass per step (prompt + full-model summary) under the plan;"
          "\nrouge = one greedy generation under the plan per step. cold adds the full model's reference generation.")


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(episodes: int) -> None:
    from transformers import AutoTokenizer

    from skipenv.assets import embedded_model_dir
    from skipenv.envs import SwitchDecEnv
    from skipenv.testing import tiny_generator

    torch.set_num_threads(1)
    gen = tiny_generator("llama", AutoTokenizer.from_pretrained(embedded_model_dir()))
    env = SwitchDecEnv("xsum", generator=gen, num_examples=8, max_new_tokens=6, max_input_tokens=96,
                       disk_cache=False, lru_size=256)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    print(f"{'episodes':>9} {'RSS MiB':>8} {'LRU entries':>12} {'s/episode':>10}")
    t0, every = time.perf_counter(), max(episodes // 10, 1)
    for i in range(1, episodes + 1):
        env.reset()
        env.step((rng.random(env.action_space.n) < 0.2).astype(np.int8))
        if i % every == 0:
            print(f"{i:>9} {_rss_mb():>8.1f} {len(env.evaluator.outcomes):>12} {(time.perf_counter() - t0) / i:>10.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
