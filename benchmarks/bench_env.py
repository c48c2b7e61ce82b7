"""Episodes per second of SwitchDec-XSum-v0 (default: embedded SmolLM2, CPU, float32): prefix reuse on vs off, per
plan mix; the native vector env vs sequential envs; the reuse store's memory. Also the cold / warm cache table
(--caches).

    python benchmarks/bench_env.py --docs 4 --episodes 3
    python benchmarks/bench_env.py --device cuda --dtype bfloat16 --model bart-large-random

``--device`` (cpu, cuda, cuda:N), ``--dtype`` (float32, bfloat16, float16) and ``--model`` (the embedded SmolLM2
short name, any name or folder the env's ``model=`` takes, or ``bart-large-random``) apply to this default run.
``bart-large-random`` is a random-weight BART built from a ``BartConfig`` with BART-large's sizes (d_model 1024,
12 encoder + 12 decoder layers, 16 heads, FFN 4096; no download), paired with the in-memory byte-level BPE tokenizer
of the repo's BART tests (:func:`skipenv.testing.toy_bpe_tokenizer`, 347 tokens: the model's output embedding is
1024 x 347, not BART-large's 1024 x 50,265). For an encoder-decoder model "reuse" is the full model's encoder
output (used when a plan skips no encoder sublayer and no token); half-precision stores and the vector env's
``batch_plans`` (decoder-only) do not apply and are printed as "n/a (why)" rows.

GPU report (issue 11), one command, sized for about 5 minutes on one GPU (an estimate, not yet timed): the reuse
table and the vector env batched vs row by row for SmolLM2 and bart-large-random, small sizes (2 documents, 2 plans
per mix, 2 vector steps), with the device name and dtype in each table's header (CUDA synchronised around every
timing):

    python benchmarks/bench_env.py --gpu-report --device cuda --dtype bfloat16

After those two models it runs the same small tables for a tiny random-weight model of each Llama-contract family
(issue 24: ``tiny-random-qwen2``, ``-qwen3``, ``-mistral``, ``-gemma3``, ``-phi3``; :data:`skipenv.testing.TINY_CONFIGS`,
hidden 32, 4 layers, sliding windows of 8 tokens where the family has them, with the embedded SmolLM2 tokenizer):
they check on the device that the reuse and batched paths of every family run and agree with the from-scratch path
in the device's kernels and dtype (the precision table), not the speed of real checkpoints (see ``docs/models.md``
for those). ``--families qwen2,gemma3`` picks some (``--families none``: none). Any of these names is also a
``--model`` value.

It needs the embedded assets (SmolLM2 and XSum in ``$SKIPENV_CACHE``, ``skipenv download``) on that machine; a model
whose assets are missing is printed as an "n/a" line with the fix and the other model still runs.

Default run, side by side on the same warm references (full outputs and prefix states computed before timing), XSum
train documents, quality="agreement", outcome cache off: for each document and plan mix, ``--episodes`` plans are
drawn and each is timed with reuse off (every plan from scratch: the old path) and on, alternately. Mixes: (a) "PPO
initial" (each action bit skipped with probability 0.02, as SB3's policy starts in ``skipenv.policies.sb3.make_sb3``), (b)
"lead-N" (drop the last 1..7 of 8 segments), (c) one attention or FFN sublayer, (d) uniform random bits. Reuse on is
timed with the model's dtype store (the default, exact) and, for a float32 decoder-only model, float16 and bfloat16
stores (half the bytes); their log-probabilities, argmax and agreement are compared with the from-scratch path of
the same plans. The unit is one bare forward pass of the full model over prompt + full output (what a warm step cost
before reuse). Then the vector env (N = 8, one step = 8 episodes, mix (a)) row by row and batched
(``batch_plans=True``) against 8 single envs stepped one after another, and the store's bytes per document and peak
while ``--fill`` documents pass through it at the default cap (2 GiB).

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
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N (the reuse benchmark / --gpu-report)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16 (the model's weights)")
    p.add_argument("--model", default=None,
                   help="the generator: the embedded SmolLM2 (default), a name or folder the env's model= takes, "
                        "or bart-large-random (random-weight BART-large sizes, no download)")
    p.add_argument("--gpu-report", action="store_true",
                   help="the reuse table and the vector env, batched vs row by row, for SmolLM2 and "
                        "bart-large-random at small sizes, on --device / --dtype (about 5 minutes on one GPU)")
    p.add_argument("--families", default=",".join(TINY_FAMILIES),
                   help="--gpu-report: the tiny random family models to run after SmolLM2 and bart-large-random "
                        f"(comma-separated of {', '.join(TINY_FAMILIES)}; 'none': none)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny random models and sizes (tests)
    args = p.parse_args(argv)
    args.device, args.dtype = _check_device_dtype(args.device, args.dtype)
    args.families = _check_families(args.families)
    if args.gpu_report:
        return gpu_report(args)
    if (args.forward_costs or args.soak or args.caches) and (
            args.device.type != "cpu" or args.dtype != torch.float32 or args.model is not None):
        raise SystemExit("bench_env.py: --device / --dtype / --model apply to the reuse benchmark and --gpu-report "
                         "only; drop them with --forward-costs, --soak or --caches")
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


#: the ``--model`` value of the random-weight BART with BART-large's sizes
BART_LARGE_RANDOM = "bart-large-random"
#: BART-large's sizes (``facebook/bart-large`` config.json: d_model 1024, 12 + 12 layers, 16 heads, FFN 4096)
BART_LARGE_SIZES = dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                        max_position_embeddings=1024)


#: the Llama-contract families of issue 24 whose tiny random models the GPU report covers (``--model
#: tiny-random-<family>``: :func:`skipenv.testing.tiny_generator` with the embedded SmolLM2 tokenizer)
TINY_FAMILIES = ("qwen2", "qwen3", "mistral", "gemma3", "phi3")
TINY_FAMILY_PREFIX = "tiny-random-"


def _check_families(value: str) -> tuple[str, ...]:
    """``--families`` → family names, or exit at once naming the unknown ones and the choices."""
    if value.strip().lower() == "none":
        return ()
    names = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in TINY_FAMILIES]
    if unknown:
        raise SystemExit(f"bench_env.py: --families: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(TINY_FAMILIES)} (comma-separated) or 'none'")
    return names


def _check_device_dtype(device: str, dtype: str):
    """``--device`` / ``--dtype`` → ``(torch.device, torch.dtype)``, or exit at once with a one-line message that
    names the flag and the fix (:func:`skipenv.loading.resolve_device` / :func:`~skipenv.loading.resolve_dtype`)."""
    from skipenv.loading import resolve_device, resolve_dtype

    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as err:
        why = "CUDA is not available here" if "CUDA" in str(err) else str(err).split(";")[0]
        raise SystemExit(f"bench_env.py: --device {device}: {why} (torch {torch.__version__}); use --device cpu, "
                         f"or run on a machine with a GPU and a matching torch build") from None
    try:
        dt = resolve_dtype(dtype)
    except ValueError:
        raise SystemExit(f"bench_env.py: --dtype {dtype}: unknown dtype; use --dtype float32, bfloat16 or "
                         f"float16") from None
    return dev, dt


def _now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work has finished (``torch.cuda.synchronize`` on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _random_bart(tokenizer, sizes: dict):
    """A random-weight ``BartForConditionalGeneration`` of ``sizes`` (seed 0, eval mode) whose vocabulary and
    special tokens are ``tokenizer``'s (``<s>``=0, ``<pad>``=1, ``</s>``=2 for the toy BPE tokenizer)."""
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                     decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                     **sizes)
    torch.manual_seed(0)
    return BartForConditionalGeneration(cfg).eval()


def load_bench_generator(model: str | None, device: torch.device, dtype: torch.dtype, tiny: bool = False):
    """The generator of one benchmark run and its label.

    ``model``: ``None`` (the embedded SmolLM2), a name or folder the env's ``model=`` takes (loaded once per
    process by :func:`skipenv.envs.shared_generator`), or :data:`BART_LARGE_RANDOM`. With ``tiny`` (the tests): a
    tiny random Llama with the embedded tokenizer instead of the named model, and a tiny random BART (d_model 32)
    instead of BART-large's sizes.

    Returns:
        ``(generator, label, random_weights)``.
    """
    from skipenv.envs import shared_generator
    from skipenv.generators import wrap
    from skipenv.loading import DEFAULT_MODEL

    if model == BART_LARGE_RANDOM:
        from skipenv.testing import TINY_CONFIGS, toy_bpe_tokenizer

        tok = toy_bpe_tokenizer()
        sizes = TINY_CONFIGS["bart"] if tiny else BART_LARGE_SIZES
        net = _random_bart(tok, sizes).to(device=device, dtype=dtype)
        label = (f"{BART_LARGE_RANDOM}{' (tiny: d_model 32)' if tiny else ''}: random BART, d_model "
                 f"{sizes['d_model']}, {sizes['encoder_layers']}+{sizes['decoder_layers']} layers, "
                 f"vocabulary {len(tok)} (toy BPE tokenizer)")
        return wrap(net, tok), label, True
    if model is not None and model.startswith(TINY_FAMILY_PREFIX):
        from transformers import AutoTokenizer

        from skipenv.assets import embedded_model_dir
        from skipenv.testing import TINY_CONFIGS, tiny_generator

        family = model[len(TINY_FAMILY_PREFIX):]
        if family not in TINY_FAMILIES:
            raise SystemExit(f"bench_env.py: --model {model}: unknown family; choose from "
                             f"{', '.join(TINY_FAMILY_PREFIX + f for f in TINY_FAMILIES)}")
        gen = tiny_generator(family, AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False))))
        gen.model.to(device=device, dtype=dtype)
        windows = [w for w in gen.flops_model.decoder.sliding_windows if w is not None]
        cfg = TINY_CONFIGS[family]
        label = (f"{model}: random {type(gen.model).__name__}, hidden {cfg['hidden_size']}, "
                 f"{cfg['num_hidden_layers']} layers, {len(windows)} with a sliding window of "
                 f"{windows[0] if windows else '-'} (embedded SmolLM2 tokenizer)")
        return gen, label, True
    if tiny:
        from transformers import AutoTokenizer

        from skipenv.assets import embedded_model_dir
        from skipenv.testing import tiny_generator

        gen = tiny_generator("llama", AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False))))
        gen.model.to(device=device, dtype=dtype)
        return gen, "tiny random Llama (embedded SmolLM2 tokenizer)", True
    name = model or DEFAULT_MODEL
    return shared_generator(name, str(device), str(dtype).removeprefix("torch.")), name, False


def _plan_mixes(spec, rng):
    """name → a function drawing one plan of that mix (encoder flags, if any, all off except in the random-bit
    mixes; "one sublayer" picks a decoder sublayer)."""
    from skipenv import SkipPlan

    E, L, K = spec.num_encoder_layers, spec.num_decoder_layers, spec.token_segments
    no, enc = (False,) * L, (False,) * E
    size = len(spec.empty_plan().to_action())

    def bits(p):
        return lambda: SkipPlan.from_action((rng.random(size) < p).astype(np.int8), spec)

    def lead():
        k = int(rng.integers(1, K))
        return SkipPlan(spec, enc, enc, no, no, (False,) * (K - k) + (True,) * k)

    def single():
        i, attn = int(rng.integers(L)), bool(rng.integers(2))
        one = tuple(j == i for j in range(L))
        return SkipPlan(spec, enc, enc, one if attn else no, no if attn else one, (False,) * K)

    return {"(a) PPO initial (p=0.02)": bits(0.02), "(b) lead-N": lead, "(c) one sublayer": single,
            "(d) uniform random": bits(0.5)}


def gpu_report(args) -> None:
    """The reuse table and the vector env (batched vs row by row) for the embedded SmolLM2,
    :data:`BART_LARGE_RANDOM` and the tiny random model of each family in ``args.families`` (issue 24) on
    ``args.device`` / ``args.dtype``, at small sizes (issue 11's GPU row)."""
    import copy

    from skipenv.assets import AssetUnavailableError
    from skipenv.loading import DEFAULT_MODEL, ModelUnavailableError
    from skipenv.tasks.sources import DatasetUnavailableError

    small = dict(docs=2, episodes=2, vector_steps=2, fill=0)
    families = tuple(TINY_FAMILY_PREFIX + f for f in getattr(args, "families", TINY_FAMILIES))
    for model in (None, BART_LARGE_RANDOM, *families):
        run = copy.copy(args)
        run.model = model
        for k, v in small.items():
            setattr(run, k, v)
        try:
            reuse_benchmark(run)
        except (AssetUnavailableError, ModelUnavailableError, DatasetUnavailableError) as err:
            # e.g. a GPU machine without the embedded assets: report the other model all the same
            why = str(err).strip().splitlines()[0]
            print(f"## {model or DEFAULT_MODEL}: n/a ({type(err).__name__}: {why}; run `skipenv download` on a "
                  f"machine with network, or point $SKIPENV_CACHE at a copy of its cache)")
        print(flush=True)


def reuse_benchmark(args) -> None:
    """The default run (module docstring) for ``args.model`` on ``args.device`` / ``args.dtype``."""
    import skipenv
    from skipenv.envs import Evaluator
    from skipenv.envs.registration import sharing
    from skipenv.generators.reuse import DEFAULT_MAX_BYTES, PrefixStore
    from skipenv.tasks import make_task

    device = getattr(args, "device", torch.device("cpu"))
    dtype = getattr(args, "dtype", torch.float32)
    tiny = getattr(args, "tiny", False)
    if tiny:
        args.docs, args.episodes, args.vector_steps, args.fill = 1, 1, 1, min(args.fill, 1)
        args.max_input_tokens = min(args.max_input_tokens, 64)
    rng = np.random.default_rng(0)
    gen, label, random_weights = load_bench_generator(getattr(args, "model", None), device, dtype, tiny)
    enc_dec = gen.num_encoder_layers > 0
    model_dtype = str(dtype).removeprefix("torch.")
    print(f"## {label}: device {_device_name(device)}, dtype {model_dtype}\n", flush=True)
    if enc_dec:
        print("reuse = the full model's encoder output (skipenv.generators.encoder_decoder), used when a plan skips no "
              "encoder sublayer and no token; decoding always runs.\n")
    else:
        print("reuse = the full model's keys / values and residual stream over prompt + full output "
              "(skipenv.generators.reuse).\n")
    # one store per precision of the kept states: the model's dtype (the default, exact) and, for a float32
    # decoder-only model, float16 and bfloat16 (half the bytes)
    exact = f"{model_dtype} store"
    stores = {exact: PrefixStore()}
    half = ["float16", "bfloat16"] if dtype == torch.float32 else []
    for k in half:
        if not enc_dec:
            stores[f"{k} store"] = PrefixStore(dtype=getattr(torch, k))
    gen.prefix_store = stores[exact]
    task = make_task("xsum", max_input_tokens=args.max_input_tokens)
    cache = dict(lru_size=0, disk_cache=not random_weights)
    old = Evaluator(gen, task, reuse=False, **cache)
    new = Evaluator(gen, task, reuse=True, **cache)
    scored: list = []  # the ScoreOutput of each timed outcome (agreement scores the full output)

    def recording(ev):
        def score(*a, **k):
            out = Evaluator.score(ev, *a, **k)
            scored.append(out)
            return out
        return score

    old.score, new.score = recording(old), recording(new)
    examples = list(task.examples("train"))[: args.docs]
    prompts, outputs = {}, {}
    for ex in examples:  # warm: full outputs (disk cache), observations, prefix states of every store
        full = old.full_output(ex)
        new.full_output(ex)
        old.observation_features(ex), new.observation_features(ex)
        for store in stores.values():
            gen.prefix_store = store
            for _ in range(store.admit_after):  # the prefix state (input + full output)
                Evaluator.score(new, ex, full.tokens, None)
        prompts[ex.id] = torch.tensor([list(old.prompt(ex).input_ids)], device=gen.device)
        outputs[ex.id] = torch.tensor([list(full.tokens)], dtype=torch.long, device=gen.device)

    def bare_forward(ex) -> float:
        """One forward pass of the full model over prompt + full output (encoder-decoder: the encoder over the
        prompt, the decoder over start token + full output), in seconds."""
        with torch.inference_mode():
            if enc_dec:
                start = torch.full((1, 1), gen.decoder_start_token_id, device=gen.device)
                dec = torch.cat([start, outputs[ex.id]], 1)
                t0 = _now(device)
                gen.model(input_ids=prompts[ex.id], decoder_input_ids=dec)
            else:
                seq = torch.cat([prompts[ex.id], outputs[ex.id]], 1)
                t0 = _now(device)
                gen.model(input_ids=seq, logits_to_keep=1)
            return _now(device) - t0

    mixes = _plan_mixes(old.spec, rng)
    settings = [("off", old, None)] + [(k, new, store) for k, store in stores.items()]
    rows, bare = [], []
    errors = {k: [0.0, 0, 0, 0, 0] for k in stores}  # max |Δ logp|, argmax flips, positions, agreement changes, plans
    for name, draw in mixes.items():
        times = {k: [] for k, _, _ in settings}
        t_bare = []
        for ex in examples:
            n_out = outputs[ex.id].shape[1]
            for _ in range(args.episodes):
                plan = draw()
                result = {}
                for k, ev, store in settings:
                    if store is not None:
                        gen.prefix_store = store
                    scored.clear()
                    t0 = _now(device)
                    o = ev.outcome(ex, plan)
                    times[k].append(_now(device) - t0)
                    result[k] = (o.quality, scored[0] if scored else None)
                gen.prefix_store = stores[exact]
                t_bare.append(bare_forward(ex))  # the unit, next to each episode (the machine's load varies)
                ref = result["off"][1]
                for k in stores:
                    got, e = result[k][1], errors[k]
                    if ref is None or got is None:
                        continue  # the empty plan: nothing scored
                    e[0] = max(e[0], (got.logprobs.float() - ref.logprobs.float()).abs().max().item())
                    e[1] += int((got.argmax != ref.argmax).sum())
                    e[2] += n_out
                    e[3] += int(result[k][0] != result["off"][0])
                    e[4] += 1
        means = {k: statistics.mean(v) for k, v in times.items()}
        u = statistics.mean(t_bare)
        bare += t_bare  # means: the mix's throughput (empty plans cost ~0)
        ratios = [x / y for x, y in zip(times["off"], times[exact]) if y > 1e-4]
        paired = statistics.median(ratios) if ratios else float("nan")
        rows.append((name, means, paired, u))
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f} s/episode" for k, v in means.items())
              + f", bare forward {u:.3f} s", flush=True)
    unit = statistics.mean(bare)
    prompt_tokens = statistics.mean(prompts[ex.id].shape[1] for ex in examples)
    print(f"\nbare forward pass of the full model over prompt + full output (mean of {len(bare)}, "
          f"{prompt_tokens:.0f} prompt tokens on average): {unit:.3f} s = the unit\n")
    extra = [k for k in stores if k != exact]
    why_half = ("n/a (encoder outputs are kept in the model's dtype)" if enc_dec
                else f"n/a (the model is {model_dtype})")
    print(f"| plan mix | episodes / s, reuse off | reuse on ({exact}) | speed-up | median paired speed-up | "
          "episodes per bare forward, off | on | float16 store | bfloat16 store |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, means, paired, u in rows:
        off, on = means["off"], means[exact]
        halves = [f"{1 / means[f'{k} store']:.2f}" if f"{k} store" in extra
                  else "(the model's dtype: see reuse on)" if f"{k} store" == exact else why_half
                  for k in ("float16", "bfloat16")]
        print(f"| {name} | {1 / off:.2f} | {1 / on:.2f} | {off / on:.2f}× | {paired:.2f}× | {u / off:.2f} | "
              f"{u / on:.2f} | {halves[0]} | {halves[1]} |")
    print("\nprecision of the kept states against the from-scratch path (agreement scoring of the same plans):\n")
    print("| store | bytes per token | max abs. log-prob. difference (nats) | argmax changed | agreement changed |")
    print("|---|---|---|---|---|")
    for k, store in stores.items():
        kept = list(store._states.values())
        per_token = store.nbytes / max(sum(len(st.ids) for st in kept), 1)
        m, flips, positions, changed, plans = errors[k]
        print(f"| {k} | {per_token:,.0f} | {m:.1e} | {flips} of {positions} | {changed} of {plans} |")
    if not extra:
        print(f"| float16 / bfloat16 store | {why_half} | | | |")

    # vector env, N = 8: row by row and batched (batch_plans=True), vs 8 single envs stepped one after another
    # (all with the exact store; fresh outcome caches; the same actions)
    gen.prefix_store = stores[exact]
    n = 8
    kw = dict(split="train", num_examples=args.docs, max_input_tokens=args.max_input_tokens, **cache)
    batch_na = "n/a (batch_plans batches decoder-only models only; an encoder-decoder step runs row by row)"
    with sharing(generator=gen):
        vec = gym_make_vec(n, kw)
        batched = None if enc_dec else gym_make_vec(n, dict(kw, batch_plans=True))
        # generator= explicitly: skipenv.make opens its own sharing block, which hides this one
        singles = [skipenv.make("SwitchDec-XSum-v0", generator=gen, **kw).unwrapped for _ in range(n)]
    draw = mixes["(a) PPO initial (p=0.02)"]
    vec.reset(seed=0)
    if batched is not None:
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
                ("vector env, batched", None if batched is None else lambda: batched.step(actions)),
                ("8 single envs in sequence", run_singles)]
        for k, fn in runs[step % 3:] + runs[: step % 3]:  # rotate the order (the machine's load drifts)
            if fn is None:
                continue
            t0 = _now(device)
            fn()
            t[k] += _now(device) - t0
    episodes = n * args.vector_steps
    base = t["8 single envs in sequence"]
    print(f"\nvector env, N = {n}, mix (a), {args.vector_steps} steps; {label}, device {_device_name(device)}, "
          f"dtype {model_dtype}:\n")
    print("| | episodes / s | vs 8 single envs |")
    print("|---|---|---|")
    for k, v in t.items():
        if k == "vector env, batched" and batched is None:
            print(f"| {k} | {batch_na} | |")
            continue
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
    if per_doc:
        print(f"\nprefix store ({model_dtype}): {statistics.mean(per_doc):,.0f} bytes per token "
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
