"""Wall-clock cost of skip plans vs their analytic FLOPs, for a SmolLM2-sized generator on the CPU.

For each plan (nothing skipped; 25 % / 50 % of the attention + FFN sublayers skipped at random; 50 % of the document
token segments skipped) it times

- the prefill of a ~400-token prompt (one forward with logits on the last position: ``generate(max_new_tokens=1)``);
- a greedy generation of 32 tokens with the KV cache (EOS disabled, so every plan generates exactly 32 tokens),

and prints the best and median times over interleaved rounds next to the analytic FLOPs ratio (plan / full model)
and the measured speed-up (full-model time / plan time). A FLOPs ratio of 0.5 "predicts" a speed-up of 2.0.

Model: the embedded SmolLM2-135M-Instruct via :func:`skipenv.loading.load_generator` when it loads, else a
random-weight ``LlamaForCausalLM`` with SmolLM2's config (same shapes, same cost). Prompt: an embedded XSum article
in the chat template when the task data loads, else random token ids of the requested length.

Usage::

    python benchmarks/bench_generator.py                 # ~1.5-2 min on an idle 2-core CPU (longer if busy)
    python benchmarks/bench_generator.py --repeats 5 --model random --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from skipenv import PromptInput, SkipPlan
from skipenv.generators import SkippableGenerator, wrap

SMOLLM2_CONFIG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)


class _IdTokenizer:
    eos_token_id = 2
    pad_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def load(model: str) -> tuple[SkippableGenerator, str]:
    """The generator and a one-line description of where it came from."""
    if model in ("auto", "embedded"):
        try:
            from skipenv.loading import load_generator

            return load_generator(), "embedded SmolLM2-135M-Instruct (skipenv.loading.load_generator)"
        except Exception as e:  # noqa: BLE001 - any failure falls back to the random-weight twin
            if model == "embedded":
                raise
            print(f"[embedded model unavailable: {type(e).__name__}: {e}; using random weights]", file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).eval().requires_grad_(False)
    return wrap(m, _IdTokenizer()), "random-weight LlamaForCausalLM with SmolLM2-135M's config"


def make_prompt(g: SkippableGenerator, target_len: int, new_tokens: int, seed: int) -> tuple[PromptInput, str]:
    """An XSum prompt of about ``target_len`` tokens (closest of the first test articles), else random ids."""
    try:
        from skipenv.tasks import make_task

        if type(g.tokenizer).__name__ == "_IdTokenizer":
            raise RuntimeError("no real tokenizer")
        task = make_task("xsum")
        best = None
        for ex in task.examples("test")[:60]:
            inp = task.format(ex, g.tokenizer, encoder_decoder=False, max_input_tokens=target_len)
            if best is None or abs(len(inp) - target_len) < abs(len(best) - target_len):
                best = inp
        if best is not None:
            return best, f"XSum article {best.example_id} in the chat template"
    except Exception as e:  # noqa: BLE001
        print(f"[XSum prompt unavailable: {type(e).__name__}: {e}; using random ids]", file=sys.stderr)
    rng = np.random.default_rng(seed)
    ids = tuple(int(i) for i in rng.integers(3, g.config.vocab_size, target_len))
    return PromptInput(ids, (20, target_len - 10), "random"), "random token ids (template 20 + 10 tokens)"


def plans(g: SkippableGenerator, segments: int, seed: int) -> dict[str, SkipPlan]:
    spec = g.plan_spec(segments)
    n_sub = 2 * (spec.num_encoder_layers + spec.num_decoder_layers)
    rng = np.random.default_rng(seed)

    def sublayers(frac: float) -> SkipPlan:
        a = np.zeros(spec.action_size, dtype=np.int8)
        a[rng.choice(n_sub, size=round(frac * n_sub), replace=False)] = 1
        return SkipPlan.from_action(a, spec)

    tok = np.zeros(spec.action_size, dtype=np.int8)
    tok[n_sub + rng.choice(segments, size=segments // 2, replace=False)] = 1
    return {
        "full (0%)": spec.empty_plan(),
        "25% sublayers": sublayers(0.25),
        "50% sublayers": sublayers(0.50),
        "50% tokens": SkipPlan.from_action(tok, spec),
    }


def time_rounds(jobs: dict, repeats: int, warmup: int) -> dict:
    """Wall-clock seconds of each job, measured in interleaved rounds (job A, B, C, A, B, C, ...) so that load
    drifting on a shared machine affects every job alike; the first ``warmup`` rounds are not recorded."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(warmup + repeats):
        for key, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
    return times


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A GitHub-markdown table (no dependency on ``tabulate``)."""
    cells = [[fmt.format(r[key]) for key, _, fmt in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(heads), sep, *(line(c) for c in cells)])


def note(rows: list[dict], ref_prefill: int, ref_gen: int, m: int) -> str:
    """Where the measured speed-up departs from the FLOPs ratio, and why (with this run's numbers)."""
    full = rows[0]
    decode_s = max(full["t_gen"] - full["t_pre"], 1e-9)
    pre_rate = ref_prefill / full["t_pre"] / 1e9
    dec_rate = (ref_gen - ref_prefill) / decode_s / 1e9
    share_flops = ref_prefill / ref_gen
    share_time = full["t_pre"] / full["t_gen"]
    off = [f"{r['plan']} {phase} (measured {r[s]:.2f} vs predicted {r[p]:.2f})"
           for r in rows[1:] for phase, s, p in (("prefill", "s_pre", "p_pre"), (f"gen{m}", "s_gen", "p_gen"))
           if abs(r[s] / r[p] - 1) > 0.2]
    off_line = ("Off by more than 20% in this run: " + "; ".join(off) + ".") if off else \
        "In this run every measured speed-up is within 20% of the FLOPs prediction."
    return f"""\
Where the speed-up does not track the FLOPs, and why:
- Prefill vs decoding. The full model runs the prefill at {pre_rate:.0f} GFLOP/s but the {m - 1} one-token decoding
  calls at {dec_rate:.1f} GFLOP/s: the prefill is {share_flops:.0%} of the generation's FLOPs but {share_time:.0%} of its
  time. Decoding at batch 1 is bound by reading the weights and by fixed per-call costs (Python, dispatch, mask
  and cache bookkeeping), not by arithmetic. So a plan's FLOPs ratio over a whole generation is dominated by its
  prefill savings, while its wall-clock is dominated by decoding.
- Token skipping therefore speeds up the prefill about in proportion to the tokens removed (projections and FFN
  scale with the prompt length), but a whole generation much less than its FLOPs ratio suggests: the decoding
  steps, which dominate the time, only attend over fewer keys.
- Sublayer skipping saves in both phases. Two effects pull decoding away from the FLOPs prediction: the per-step
  costs no plan removes (embedding, final norm, LM head of 2·d·V FLOPs per token, the generation loop) pull the
  speed-up below it; the per-call overhead of each skipped sublayer (several small kernels, a cache update), which
  FLOPs do not see, pushes it above it. Which one wins depends on the machine. In the prefill large matmuls
  dominate and the speed-up follows the FLOPs ratio more closely.
- Timings on a shared or busy machine are noisy: compare best and median (and the load average above) and rerun
  with more --repeats; the rounds are interleaved so slow drifts in load affect all plans alike.
{off_line}
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (best and median are reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--prompt-tokens", type=int, default=400)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--segments", type=int, default=8, help="document token segments of the plan")
    p.add_argument("--model", choices=["auto", "embedded", "random"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    g, source = load(args.model)
    g.eos_token_id = None  # every plan generates exactly --new-tokens tokens (same decoding work)
    inp, prompt_source = make_prompt(g, args.prompt_tokens, args.new_tokens, args.seed)
    all_plans = plans(g, args.segments, args.seed)
    full = all_plans["full (0%)"]
    m = args.new_tokens
    ref_prefill = g.flops_model.prefill(full, len(inp)).total
    ref_gen = g.flops(full, inp, m).total

    jobs = {}
    for name, plan in all_plans.items():
        jobs[(name, "pre")] = lambda plan=plan: g.generate([inp], plan, max_new_tokens=1)
        jobs[(name, "gen")] = lambda plan=plan: g.generate([inp], plan, max_new_tokens=m)
    load_before = os.getloadavg()[0]
    times = time_rounds(jobs, args.repeats, args.warmup)
    load_after = os.getloadavg()[0]
    rows = []
    for name, plan in all_plans.items():
        n = len(inp.kept_positions(plan.tokens))
        pre, gen = times[(name, "pre")], times[(name, "gen")]
        rows.append(dict(plan=name, skipped=f"{sum(plan.sublayer_flags())}/{len(plan.sublayer_flags())}"
                         + f" +{sum(plan.tokens)}/{len(plan.tokens)} seg", n=n,
                         t_pre=min(pre), med_pre=statistics.median(pre),
                         f_pre=g.flops_model.prefill(plan, n).total / ref_prefill,
                         t_gen=min(gen), med_gen=statistics.median(gen),
                         f_gen=g.flops(plan, inp, m).total / ref_gen))
    for r in rows:
        r["s_pre"] = rows[0]["t_pre"] / r["t_pre"]
        r["s_gen"] = rows[0]["t_gen"] / r["t_gen"]
        r["p_pre"] = 1 / r["f_pre"]
        r["p_gen"] = 1 / r["f_gen"]

    print(f"model: {source}; attention: {g.config._attn_implementation}; threads: {torch.get_num_threads()}; "
          f"CPUs: {os.cpu_count()}; 1-min load average before / after timing: {load_before:.1f} / {load_after:.1f}")
    if max(load_before, load_after) > (os.cpu_count() or 1):
        print(f"WARNING: the machine was busy (load average above its {os.cpu_count()} CPUs): timings are unreliable, "
              "especially with several threads; rerun when idle, or with --threads 1 and more --repeats")
    print(f"prompt: {prompt_source}, {len(inp)} tokens ({inp.num_document_tokens} document); "
          f"generation: {m} greedy tokens with the KV cache; {args.repeats} interleaved rounds (+{args.warmup} "
          f"warm-up); times are the best round (noise only ever adds time; speed-ups use them) and the median")
    print(f"full-model FLOPs: prefill {ref_prefill / 1e9:.1f} GFLOPs, "
          f"{m}-token generation {ref_gen / 1e9:.1f} GFLOPs\n")
    print(table(rows, [
        ("plan", "plan", "{}"), ("skipped", "skipped (sublayers + segments)", "{}"), ("n", "prompt tok", "{}"),
        ("t_pre", "prefill s (best)", "{:.3f}"), ("med_pre", "(median)", "{:.3f}"),
        ("f_pre", "prefill FLOPs ratio", "{:.3f}"),
        ("p_pre", "FLOPs-predicted speed-up", "{:.2f}"), ("s_pre", "measured speed-up", "{:.2f}"),
        ("t_gen", f"gen{m} s (best)", "{:.3f}"), ("med_gen", "(median)", "{:.3f}"),
        ("f_gen", f"gen{m} FLOPs ratio", "{:.3f}"),
        ("p_gen", "FLOPs-predicted speed-up", "{:.2f}"), ("s_gen", "measured speed-up", "{:.2f}"),
    ]))
    print()
    print(note(rows, ref_prefill, ref_gen, m))
    print(f"(total benchmark time {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
