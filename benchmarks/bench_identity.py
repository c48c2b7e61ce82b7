"""What the model-identity check and the non-finite check cost per SmolLM2 episode (issue 20; docs/guarantees.md).

Prints two tables:

1. the identity mechanism on the embedded SmolLM2-135M: one check of the watch (nothing changed: the common case),
   its sampled-element part alone, and the full digest (what a check costs after a weight edit);
2. real episodes of the one-shot env (XSum train documents, prefix reuse on, full outputs prefetched), per quality
   signal and plan mix: mean wall-clock seconds per episode, and the time spent in the identity checks
   (``skipenv.envs.cache._identity``, which every fingerprint / identity-token lookup calls) and in the logits' ``isfinite`` checks
   (``SkippableGenerator._check_finite``) during those episodes, per episode and as a share of it. Episodes that
   are outcome-cache hits (the same document and plan again) are timed separately: they run no forward pass.

    OMP_NUM_THREADS=1 python benchmarks/bench_identity.py --docs 2 --plans 4

The check's timers wrap the real functions (``time.perf_counter`` around each call), so the shares are measured,
not estimated from a count. Writes nothing outside a temporary cache folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skipenv, not another install


def _timed(owner, name: str, totals: dict, key: str):
    """Wrap ``owner.name`` so each call adds its seconds to ``totals[key]``; returns the original."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t0
            totals[key + "_calls"] += 1

    setattr(owner, name, wrapper)
    return original


def mechanism_table(g, calls: int) -> None:
    import torch

    from skipenv.envs import cache

    model = g.model
    t0 = time.perf_counter()
    cache._FINGERPRINTS.pop(model, None)
    cache.model_fingerprint(g)
    first = time.perf_counter() - t0
    watch = cache._FINGERPRINTS[model][0]

    def median_ms(f):
        f()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)

    check = median_ms(lambda: cache.model_fingerprint(g))
    sample = median_ms(lambda: [watch._same(watch._read(vs), b) for vs, b in zip(watch.views, watch.sample)])
    n_tensors = len(watch.tensors)
    n_slots = len(watch.slot_keys)
    print(f"\nidentity mechanism, embedded SmolLM2-135M ({n_tensors} tensors, {n_slots} module slots, "
          f"{sum(t.numel() for t in watch.tensors) / 1e6:.1f} M values, {torch.get_num_threads()} thread(s)); "
          f"median of {calls} calls\n")
    print("| what | time |")
    print("|---|---|")
    print(f"| one check, nothing changed (`model_fingerprint`) | {check:.3f} ms |")
    print(f"| of which the {cache.SAMPLED_ELEMENTS} sampled elements per tensor | {sample:.3f} ms |")
    print(f"| full digest (first call, or the first call after a weight edit) | {first:.2f} s |")


def episode_table(g, docs: int, plans_per_mix: int, repeats: int) -> None:
    from skipenv.envs import Evaluator, SwitchDecEnv
    from skipenv.envs import cache
    from skipenv.generators.base import SkippableGenerator
    from skipenv.plan import SkipPlan
    from skipenv.tasks import make_task

    task = make_task("xsum")
    spec = g.plan_spec(8)
    rng = np.random.default_rng(0)
    L = g.num_decoder_layers
    mixes = {
        "(a) PPO initial (each bit w.p. 0.02)": [(rng.random(spec.action_size) < 0.02).astype(np.int8)
                                                 for _ in range(plans_per_mix)],
        "(c) one late attention or FFN sublayer": [
            SkipPlan.from_skips(spec, **{("attention" if i % 2 else "ffn"): [L - 1 - i]}).to_action()
            for i in range(plans_per_mix)],
    }
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for quality in ("agreement", "probability"):
            ev = Evaluator(g, task, quality=quality, cache_root=root)
            env = SwitchDecEnv("xsum", evaluator=ev, split="train", num_examples=docs)
            env.unwrapped.prefetch(progress=False)
            for ex in env.unwrapped.examples:  # the full model's cached values of this signal
                ev.full_output(ex)
            for mix, actions in mixes.items():
                for phase in ("forward passes", "outcome-cache hits"):
                    totals = {k: 0.0 for k in ("identity", "identity_calls", "finite", "finite_calls")}
                    ident = _timed(cache, "_identity", totals, "identity")  # every identity check goes here
                    cf = _timed(SkippableGenerator, "_check_finite", totals, "finite")
                    n, t0 = 0, time.perf_counter()
                    try:
                        for _ in range(1 if phase == "forward passes" else repeats):
                            for i in range(docs):
                                for a in actions:
                                    env.reset(options={"index": i})
                                    env.step(a)
                                    n += 1
                    finally:
                        cache._identity = ident
                        SkippableGenerator._check_finite = cf
                    wall = (time.perf_counter() - t0) / n
                    rows.append((quality, mix, phase, n, wall, totals["identity"] / n, totals["identity_calls"] / n,
                                 totals["finite"] / n, totals["finite_calls"] / n))
                ev.outcomes.clear()  # the next mix starts from forward passes again
    print(f"\nper episode, SwitchDecEnv on {docs} XSum train documents, reuse on, full outputs prefetched "
          f"(wall-clock; identity = every identity check, trusted ones inside a scope included; finite = every logits check)\n")
    print("| quality | plan mix | episodes | n | s / episode | identity ms / episode (calls) | identity share "
          "| finite ms / episode (calls) | finite share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for q, mix, phase, n, wall, ident, ident_calls, fin, fin_calls in rows:
        print(f"| {q} | {mix} | {phase} | {n} | {wall:.3f} | {1e3 * ident:.2f} ({ident_calls:.1f}) | "
              f"{100 * ident / wall:.2f} % | {1e3 * fin:.2f} ({fin_calls:.1f}) | {100 * fin / wall:.2f} % |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2, help="XSum train documents (default 2)")
    parser.add_argument("--plans", type=int, default=4, help="plans per mix (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the cached pairs (default 5)")
    parser.add_argument("--calls", type=int, default=300, help="calls timed per mechanism row (default 300)")
    args = parser.parse_args(argv)
    for name in ("docs", "plans", "repeats", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import os

    import torch

    import skipenv

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    g = skipenv.load_generator("smollm2-135m-instruct")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    mechanism_table(g, args.calls)
    episode_table(g, args.docs, args.plans, args.repeats)


if __name__ == "__main__":
    main()
