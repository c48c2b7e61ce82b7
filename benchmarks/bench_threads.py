"""PyTorch CPU threads per env process: torch's default vs skipenv's default (:mod:`skipenv.util.threads`).

Runs ``--workers`` worker processes (started like stable-baselines3's ``SubprocVecEnv`` workers) that each load the
generator through :func:`skipenv.loading.load_model_and_tokenizer` and then, after a common start, run
``--repeats`` teacher-forced scoring passes (the work of one agreement-quality env step) over a ``--tokens``-token
prompt + 32-token target. Two settings:

- ``torch default``: every worker keeps torch's default thread count (one per core: what happened before
  skipenv set a default; reproduced here with ``SKIPENV_NUM_THREADS`` = that count);
- ``skipenv default``: :func:`skipenv.util.threads.configure_torch_threads` (1 thread per worker process).

and, for reference, one worker process alone with both settings (a single *in-process* env keeps all cores: the
``torch default`` row). ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are removed from
the environment of the workers (they would override both settings). Prints wall seconds and scoring passes per second
(all workers together).

Measured (embedded SmolLM2, 2 cores shared with other jobs, load average ~6; 6 passes of 200 + 32 tokens per worker):

| processes | setting | threads / process | wall s | passes / s |
|---|---|---|---|---|
| 1 | torch default | 2 | 70.89 | 0.08 |
| 1 | skipenv default | 1 | 10.21 | 0.59 |
| 2 | torch default | 2 | 209.81 | 0.06 |
| 2 | skipenv default | 1 | 32.77 | 0.37 |

Two workers: 6.4x faster with one thread each. On a busy machine even a single process is faster with one thread
(first two rows): set ``SKIPENV_NUM_THREADS=1`` (or ``OMP_NUM_THREADS=1``) there.

Usage::

    python benchmarks/bench_threads.py                       # embedded SmolLM2, 2 workers, 1-5 min on 2 cores
    python benchmarks/bench_threads.py --model random --workers 4 --repeats 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _worker(model: str, tokens: int, repeats: int, barrier, queue) -> None:
    import numpy as np
    import torch

    from skipenv import PromptInput
    from skipenv.generators import wrap
    from skipenv.loading import load_model_and_tokenizer

    if model == "random":
        from transformers import LlamaConfig, LlamaForCausalLM

        from skipenv.util.threads import configure_torch_threads
        from skipenv.testing import ToyTokenizer

        configure_torch_threads()
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
        torch.manual_seed(0)
        g = wrap(LlamaForCausalLM(cfg).eval(), ToyTokenizer(vocab_size=49152, eos_token_id=2, pad_token_id=2))
    else:
        g = wrap(*load_model_and_tokenizer())
    ids = tuple(int(x) for x in np.random.default_rng(0).integers(100, 20000, tokens))
    inp, target = PromptInput(ids, (0, tokens), "bench"), list(range(200, 232))
    g.score([inp], [target])  # warm-up
    barrier.wait()
    start = time.perf_counter()
    for _ in range(repeats):
        g.score([inp], [target])
    queue.put((time.perf_counter() - start, torch.get_num_threads()))


def run(setting: str, workers: int, args) -> tuple[float, int]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SKIPENV_NUM_THREADS"):
        os.environ.pop(var, None)
    if setting == "torch default":  # one thread per core, as torch picks on a machine without SMT
        os.environ["SKIPENV_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    try:
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(args.model, args.tokens, args.repeats, barrier, queue))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    finally:
        os.environ.clear()
        os.environ.update(env)
    return max(t for t, _ in results), results[0][1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["embedded", "random"], default="embedded")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--tokens", type=int, default=200)
    args = p.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}; model: {args.model}; prompt {args.tokens} + 32 tokens; "
          f"{args.repeats} scoring passes per worker")
    print(f"| processes | setting | threads / process | wall s | passes / s |")
    print(f"|---|---|---|---|---|")
    for workers in (1, args.workers):
        for setting in ("torch default", "skipenv default"):
            wall, n = run(setting, workers, args)
            print(f"| {workers} | {setting} | {n} | {wall:.2f} | {workers * args.repeats / wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
