"""Episodes per second of SwitchDec-XSum-v0 (embedded SmolLM2, CPU): prefix reuse on vs off, per plan mix; the
native vector env vs sequential envs; the reuse store's memory. Also the cold / warm cache table (--caches).

    python benchmarks/bench_env.py --docs 4 --episodes 3

Default run, side by side on the same warm references (full outputs and prefix states computed before timing), XSum
train documents, quality="agreement", outcome cache off: for each document and plan mix, ``--episodes`` plans are
drawn and each is timed with reuse off (every plan from scratch: the old path) and on, alternately. Mixes: (a) "PPO
initial" (each action bit skipped with probability 0.02, as SB3's policy starts in ``skipenv.sb3.make_sb3``), (b)
"lead-N" (drop the last 1..7 of 8 segments), (c) one attention or FFN sublayer, (d) uniform random bits. Reuse on is
timed with three stores: float32 (the default, exact), float16 and bfloat16 (half the bytes); their log-probabilities,
argmax and agreement are compared with the from-scratch path of the same plans. The unit is one bare forward pass of
the full model over prompt + full output (what a warm step cost before reuse). Then the vector env (N = 8, one step =
8 episodes, mix (a)) row by row and batched (``batch_plans=True``) against 8 single envs stepped one after another,
and the store's bytes per document and peak while ``--fill`` documents pass through it at the default cap (2 GiB).

    python benchmarks/bench_env.py --caches --episodes 6

"cold" = first episode on each document: the full-model reference (one greedy generation) is computed, plus the
observation; "warm" = references and observations cached (disk / memory), new random plans (no LRU hits);
"lru" = the same (document, plan) again. The ratio column divides the per-episode time by the bare forward pass.

    python benchmarks/bench_env.py --forward-costs

Seconds of one forward pass for B rows x T tokens (the fixed cost of a call against the cost per token).

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
    p.add_argument("--caches", action="store_true", help="the cold / warm / LRU cache table instead")
    p.add_argument("--docs", type=int, default=4, help="documents of the reuse comparison")
    p.add_argument("--vector-steps", type=int, default=3, help="vector-env steps (of 8 episodes)")
    p.add_argument("--fill", type=int, default=30, help="documents pushed through the prefix store (0: skip)")
    p.add_argument("--forward-costs", action="store_true",
                   help="time one forward pass of B rows x T tokens instead (the fixed cost per call)")
    args = p.parse_args(argv)
    if args.forward_costs:
        return forward_costs()
    if args.soak:
        return soak(args.soak)
    if not args.caches:
        return reuse_benchmark(args)


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


def _plan_mixes(spec, rng):
    """name → a function drawing one plan of that mix."""
    from skipenv import SkipPlan

    L, K = spec.num_decoder_layers, spec.token_segments
    no = (False,) * L
    size = len(spec.empty_plan().to_action())

    def bits(p):
        return lambda: SkipPlan.from_action((rng.random(size) < p).astype(np.int8), spec)

    def lead():
        k = int(rng.integers(1, K))
        return SkipPlan(spec, (), (), no, no, (False,) * (K - k) + (True,) * k)

    def single():
        i, attn = int(rng.integers(L)), bool(rng.integers(2))
        one = tuple(j == i for j in range(L))
        return SkipPlan(spec, (), (), one if attn else no, no if attn else one, (False,) * K)

    return {"(a) PPO initial (p=0.02)": bits(0.02), "(b) lead-N": lead, "(c) one sublayer": single,
            "(d) uniform random": bits(0.5)}


def reuse_benchmark(args) -> None:
    import skipenv
    from skipenv import metrics
    from skipenv.envs import Evaluator, shared_generator
    from skipenv.envs.registration import sharing
    from skipenv.generators.reuse import DEFAULT_MAX_BYTES, PrefixStore
    from skipenv.loading import DEFAULT_MODEL
    from skipenv.tasks import make_task

    rng = np.random.default_rng(0)
    gen = shared_generator(DEFAULT_MODEL)
    # one store per precision of the kept states (float32 = the model's dtype: the default, exact)
    stores = {"float32": PrefixStore(), "float16": PrefixStore(dtype=torch.float16),
              "bfloat16": PrefixStore(dtype=torch.bfloat16)}
    gen.prefix_store = stores["float32"]
    task = make_task("xsum", max_input_tokens=args.max_input_tokens)
    old = Evaluator(gen, task, lru_size=0, reuse=False)
    new = Evaluator(gen, task, lru_size=0, reuse=True)
    scored: list = []  # the ScoreOutput of each timed outcome (agreement scores the full output)

    def recording(ev):
        def score(*a, **k):
            out = Evaluator.score(ev, *a, **k)
            scored.append(out)
            return out
        return score

    old.score, new.score = recording(old), recording(new)
    examples = list(task.examples("train"))[: args.docs]
    sequences = {}
    for ex in examples:  # warm: full outputs (disk cache), observations, prefix states of every store
        full = old.full_output(ex)
        new.full_output(ex)
        old.observation_features(ex), new.observation_features(ex)
        for store in stores.values():
            gen.prefix_store = store
            for _ in range(store.admit_after):  # the prefix state (input + full output)
                Evaluator.score(new, ex, full.tokens, None)
        sequences[ex.id] = torch.tensor([list(old.prompt(ex).input_ids) + list(full.tokens)])

    def bare_forward(ex) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            gen.model(input_ids=sequences[ex.id], logits_to_keep=1)
            return time.perf_counter() - t0

    mixes = _plan_mixes(old.spec, rng)
    settings = [("off", old, None)] + [(k, new, store) for k, store in stores.items()]
    rows, bare = [], []
    errors = {k: [0.0, 0, 0, 0, 0] for k in stores}  # max |Δ logp|, argmax flips, positions, agreement changes, plans
    for name, draw in mixes.items():
        times = {k: [] for k, _, _ in settings}
        t_bare = []
        for ex in examples:
            full = list(old.full_output(ex).tokens)
            for _ in range(args.episodes):
                plan = draw()
                result = {}
                for k, ev, store in settings:
                    if store is not None:
                        gen.prefix_store = store
                    scored.clear()
                    t0 = time.perf_counter()
                    o = ev.outcome(ex, plan)
                    times[k].append(time.perf_counter() - t0)
                    result[k] = (o.quality, scored[0] if scored else None)
                gen.prefix_store = stores["float32"]
                t_bare.append(bare_forward(ex))  # the unit, next to each episode (the machine's load varies)
                ref = result["off"][1]
                for k in stores:
                    got, e = result[k][1], errors[k]
                    if ref is None or got is None:
                        continue  # the empty plan: nothing scored
                    e[0] = max(e[0], (got.logprobs - ref.logprobs).abs().max().item())
                    e[1] += int((got.argmax != ref.argmax).sum())
                    e[2] += len(full)
                    e[3] += int(result[k][0] != result["off"][0])
                    e[4] += 1
        means = {k: statistics.mean(v) for k, v in times.items()}
        u = statistics.mean(t_bare)
        bare += t_bare  # means: the mix's throughput (empty plans cost ~0)
        paired = statistics.median(x / y for x, y in zip(times["off"], times["float32"]) if y > 1e-3)
        rows.append((name, means, paired, u))
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f} s/episode" for k, v in means.items())
              + f", bare forward {u:.3f} s", flush=True)
    unit = statistics.mean(bare)
    prompt_tokens = statistics.mean(len(old.prompt(ex)) for ex in examples)
    print(f"\nbare forward pass of the full model over prompt + full output (mean of {len(bare)}, "
          f"{prompt_tokens:.0f} prompt tokens on average): {unit:.3f} s = the unit\n")
    print("| plan mix | episodes / s, reuse off | reuse on (float32 store) | speed-up | median paired speed-up | "
          "episodes per bare forward, off | on | float16 store | bfloat16 store |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, means, paired, u in rows:
        off, on = means["off"], means["float32"]
        print(f"| {name} | {1 / off:.2f} | {1 / on:.2f} | {off / on:.2f}× | {paired:.2f}× | {u / off:.2f} | "
              f"{u / on:.2f} | {1 / means['float16']:.2f} | {1 / means['bfloat16']:.2f} |")
    print("\nprecision of the kept states against the from-scratch path (agreement scoring of the same plans):\n")
    print("| store | bytes per token | max abs. log-prob. difference (nats) | argmax changed | agreement changed |")
    print("|---|---|---|---|---|")
    for k, store in stores.items():
        kept = list(store._states.values())
        per_token = store.nbytes / max(sum(len(st.ids) for st in kept), 1)
        m, flips, positions, changed, plans = errors[k]
        print(f"| {k} | {per_token:,.0f} | {m:.1e} | {flips} of {positions} | {changed} of {plans} |")

    # vector env, N = 8: row by row and batched (batch_plans=True), vs 8 single envs stepped one after another
    # (all with the float32 store; fresh outcome caches; the same actions)
    gen.prefix_store = stores["float32"]
    n = 8
    kw = dict(split="train", num_examples=args.docs, max_input_tokens=args.max_input_tokens, lru_size=0)
    with sharing(generator=gen):
        vec = gym_make_vec(n, kw)
        batched = gym_make_vec(n, dict(kw, batch_plans=True))
        singles = [skipenv.make("SwitchDec-XSum-v0", **kw).unwrapped for _ in range(n)]
    draw = mixes["(a) PPO initial (p=0.02)"]
    vec.reset(seed=0)
    batched.reset(seed=0)
    for i, env in enumerate(singles):
        env.reset(seed=i)
    t = {"vector env, row by row": 0.0, "vector env, batched": 0.0, "8 single envs in sequence": 0.0}
    for step in range(args.vector_steps):
        actions = np.stack([vec.envs[0].plan_to_action(draw()) for _ in range(n)])

        def run_singles():
            for env, a in zip(singles, actions):
                env.step(a)
                env.reset()

        runs = [("vector env, row by row", lambda: vec.step(actions)),
                ("vector env, batched", lambda: batched.step(actions)),
                ("8 single envs in sequence", run_singles)]
        for k, fn in runs[step % 3:] + runs[: step % 3]:  # rotate the order (the machine's load drifts)
            t0 = time.perf_counter()
            fn()
            t[k] += time.perf_counter() - t0
    episodes = n * args.vector_steps
    base = t["8 single envs in sequence"]
    print(f"\nvector env, N = {n}, mix (a), {args.vector_steps} steps:\n")
    print("| | episodes / s | vs 8 single envs |")
    print("|---|---|---|")
    for k, v in t.items():
        print(f"| {k} | {episodes / v:.2f} | {base / v:.2f}× |")

    # the prefix store: bytes per document, peak at the default cap
    store = PrefixStore(DEFAULT_MAX_BYTES, admit_after=1)
    gen.prefix_store = store
    per_doc = []
    docs = list(task.examples("train"))[: args.fill]
    t0 = time.perf_counter()
    for ex in docs:
        Evaluator.score(new, ex, [gen.eos_token_id], None)
        state = store.get(new.prompt(ex).input_ids)
        if state is not None:
            per_doc.append(state.nbytes / len(state.ids))  # the state covers input + 1 token
    if docs:
        print(f"\nprefix store (float32): {statistics.mean(per_doc):,.0f} bytes per token "
              f"({statistics.mean(per_doc) * 400 / 2**20:.1f} MiB for a 400-token prompt); after {len(docs)} "
              f"documents: {len(store)} kept, peak {store.peak_bytes / 2**20:.0f} MiB of the "
              f"{DEFAULT_MAX_BYTES / 2**20:.0f} MiB cap; RSS {_rss_mb():.0f} MiB "
              f"({(time.perf_counter() - t0) / len(docs):.2f} s per document to fill)")


def forward_costs() -> None:
    """Seconds of one forward pass of the full SmolLM2 (logits of the last position only) for B rows x T tokens:
    the fixed cost per call against the cost per token (what ``skipenv.generators.batched.DEFAULT_FIXED_TOKENS``
    is set from). Best of 3."""
    from skipenv.envs import shared_generator
    from skipenv.loading import DEFAULT_MODEL

    model = shared_generator(DEFAULT_MODEL).model
    print("| rows x tokens | tokens | s per call (best of 3) | ms per token |")
    print("|---|---|---|---|")
    for b, t in [(1, 1), (1, 8), (1, 32), (1, 64), (8, 8), (1, 128), (8, 16), (1, 256), (8, 32), (1, 400), (8, 50)]:
        ids = torch.randint(10, 1000, (b, t))
        best = float("inf")
        with torch.inference_mode():
            for _ in range(3):
                t0 = time.perf_counter()
                model(input_ids=ids, logits_to_keep=1)
                best = min(best, time.perf_counter() - t0)
        print(f"| {b} x {t} | {b * t} | {best:.3f} | {1000 * best / (b * t):.1f} |", flush=True)


def gym_make_vec(n, kw):
    import gymnasium as gym

    return gym.make_vec("SwitchDec-XSum-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw).unwrapped


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
