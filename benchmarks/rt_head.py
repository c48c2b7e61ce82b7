"""RT-v2 candidates (issue 23): a logistic head on frozen features drawn under many skip plans, against the
verbalizer margin, for the embedded SmolLM2 on Rotten Tomatoes with v0's zero-shot prompt.

Features = the final (normed) hidden state at the last prompt position (the LM head's input where the answer is
predicted), extracted under every plan of a plan set, batched per plan (one forward pass over a batch of reviews,
left-padded). Cached per (split, plan) under ``--cache`` (default ``/tmp/rt``) so that a rerun resumes.

    OMP_NUM_THREADS=1 python benchmarks/rt_head.py --train 300 --heldout 100 --test 120

Splits: the head is fitted on the first ``--train`` reviews of the train split, its C and its training-plan set are
chosen on the next ``--heldout`` train reviews, and the test split's first ``--test`` reviews give the final numbers
(printed once, at the end). Prints per candidate: full-model accuracy, and per evaluation plan its FLOPs saved and
the fraction of reviews whose label equals the candidate's full-model label.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

import skipenv
from skipenv.loading import load_generator
from skipenv.tasks import make_task

S = skipenv.SkipPlan.from_skips


def training_plans(spec, n_layers: int, count: int, seed: int = 0) -> dict[str, "skipenv.SkipPlan"]:
    """``count`` plans of the families a policy tries (seeded): single / a few attention or FFN skips, contiguous
    blocks, token-segment drops, random mixtures."""
    rng = random.Random(seed)
    out = {}
    while len(out) < count:
        fam = rng.randrange(7)
        att, ffn, tok = [], [], []
        if fam == 0:
            att = [rng.randrange(n_layers)]
        elif fam == 1:
            ffn = [rng.randrange(n_layers)]
        elif fam == 2:
            att = rng.sample(range(n_layers), rng.randint(2, 6))
        elif fam == 3:
            ffn = rng.sample(range(n_layers), rng.randint(2, 4))
        elif fam == 4:
            k = rng.randint(2, 12); s = rng.randrange(n_layers - k + 1); att = list(range(s, s + k))
        elif fam == 5:
            tok = rng.sample(range(spec.token_segments), rng.randint(1, 4))
        else:
            att = [i for i in range(n_layers) if rng.random() < 0.12]
            ffn = [i for i in range(n_layers) if rng.random() < 0.05]
            tok = [i for i in range(spec.token_segments) if rng.random() < 0.15]
        name = f"a{sorted(att)}f{sorted(ffn)}t{sorted(tok)}".replace(" ", "")
        out[name] = S(spec, attention=att, ffn=ffn, tokens=tok)
    return out


def eval_plans(spec, L: int) -> dict[str, "skipenv.SkipPlan"]:
    """Named plans of the issue's collapse cases, profile-style single skips and plans saving >= 10 % FLOPs."""
    return {
        "full": S(spec),
        "att 28-29": S(spec, attention=[28, 29]),
        "ffn 28-29": S(spec, ffn=[28, 29]),
        "att 10-19": S(spec, attention=range(10, 20)),
        "att 2-13": S(spec, attention=range(2, 14)),
        "att 16-27": S(spec, attention=range(16, 28)),
        "ffn 25-28": S(spec, ffn=range(25, 29)),
        "ffn 22-28": S(spec, ffn=range(22, 29)),
        "drop last 1/2": S(spec, tokens=range(4, 8)),
        "drop first 1/4": S(spec, tokens=range(0, 2)),
        "att 20-27 + drop 1/8": S(spec, attention=range(20, 28), tokens=[7]),
        "att odd 1-29": S(spec, attention=range(1, 30, 2)),
    }


class Extractor:
    """Final normed hidden state ``[B, d]`` at the last prompt position and the verbalizer margin ``[B]``."""

    def __init__(self, gen, task):
        self.gen, self.task = gen, task
        self.pos, self.neg = task.verbalizer_ids(gen.tokenizer)
        self.head = gen.model.get_output_embeddings()

    def __call__(self, prompts, plan, batch=32):
        feats, margins = [], []
        for i in range(0, len(prompts), batch):
            chunk = prompts[i: i + batch]
            got = {}

            def hook(module, args, output):
                got["h"] = args[0][:, -2].detach().float().clone()
                got["z"] = output[:, -2].detach().float().clone()

            handle = self.head.register_forward_hook(hook)
            try:
                self.gen.score(chunk, [[self.pos]] * len(chunk), plan, reuse=False)
            finally:
                handle.remove()
            lp = torch.log_softmax(got["z"], -1)
            feats.append(got["h"].numpy()); margins.append((lp[:, self.pos] - lp[:, self.neg]).numpy())
        return np.concatenate(feats), np.concatenate(margins)


def cached(cache: Path, key: str, fn):
    path = cache / f"{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["h"], z["m"]
    h, m = fn()
    np.savez(path, h=h, m=m)
    return h, m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--plans", type=int, default=36, help="training plans (each on --per-plan train reviews)")
    ap.add_argument("--per-plan", type=int, default=60)
    ap.add_argument("--cache", default="/tmp/rt")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cache = Path(args.cache); cache.mkdir(parents=True, exist_ok=True)
    gen = load_generator()
    task = make_task("rotten_tomatoes")
    spec = gen.plan_spec(8); L = spec.num_decoder_layers
    ex = Extractor(gen, task)
    tr_all = task.examples("train")
    tr, ho = tr_all[: args.train], tr_all[args.train: args.train + args.heldout]
    te = task.examples("test")[: args.test]
    P = lambda exs: [task.format(e, gen.tokenizer, encoder_decoder=False) for e in exs]
    ptr, pho, pte = P(tr), P(ho), P(te)
    y = lambda exs: np.array([e.label == "positive" for e in exs])
    ytr, yho, yte = y(tr), y(ho), y(te)
    t0 = time.time()
    # training features: full model on every train review, each training plan on a seeded subset
    Htr, Mtr = cached(cache, f"train{args.train}_full", lambda: ex(ptr, None))
    rows_h, rows_y, rows_plan = [Htr], [ytr], [np.zeros(len(tr), int)]
    rng = np.random.default_rng(0)
    for j, (name, plan) in enumerate(training_plans(spec, L, args.plans).items()):
        idx = np.sort(rng.choice(len(tr), size=min(args.per_plan, len(tr)), replace=False))
        h, _ = cached(cache, f"train{args.train}_p{j}_{args.per_plan}", lambda: ex([ptr[i] for i in idx], plan))
        rows_h.append(h); rows_y.append(ytr[idx]); rows_plan.append(np.full(len(idx), j + 1))
        print(f"[{time.time() - t0:.0f}s] train plan {j}: {name}", flush=True)
    Xall, Yall, Pall = np.concatenate(rows_h), np.concatenate(rows_y), np.concatenate(rows_plan)
    evp = eval_plans(spec, L)
    feats = {}
    for split, prompts in (("heldout", pho), ("test", pte)):
        for name, plan in evp.items():
            key = f"{split}{len(prompts)}_{name.replace(' ', '_').replace('/', '-')}"
            feats[split, name] = cached(cache, key, lambda: ex(prompts, None if name == "full" else plan))
        print(f"[{time.time() - t0:.0f}s] {split} features done", flush=True)
    saved = {n: 1 - np.mean([gen.flops(p, q, 1).total / gen.flops(None, q, 1).total for q in pte])
             for n, p in evp.items()}

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def report(label, split, labels_of):
        yy = yho if split == "heldout" else yte
        full = labels_of(split, "full")
        line = [f"{label:<34} acc {np.mean(full == yy):.3f}"]
        kept = {n: float(np.mean(labels_of(split, n) == full)) for n in evp if n != "full"}
        line.append(f"mean kept {np.mean(list(kept.values())):.3f}")
        print(" | ".join(line), flush=True)
        return float(np.mean(full == yy)), kept

    results = {}
    for split in ("heldout", "test"):
        print(f"\n== {split} (n = {len(pho if split == 'heldout' else pte)}) ==")
        # (b) verbalizer margin, threshold fitted on the train reviews (full model)
        s = np.sort(Mtr); cands = np.concatenate([[s[0] - 1], (s[1:] + s[:-1]) / 2])
        th = float(cands[int(np.argmax([((Mtr > t) == ytr).mean() for t in cands]))])
        results[split, "verbalizer"] = report(f"verbalizer margin (th {th:.2f})", split,
                                              lambda sp, n: feats[sp, n][1] > th)
        for variant, mask in (("head, full-model features", Pall == 0), ("head, features under plans", Pall >= 0)):
            for C in (0.01, 0.1, 1.0):
                sc = StandardScaler().fit(Xall[mask])
                clf = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(Xall[mask]), Yall[mask])
                results[split, variant, C] = report(f"{variant} C={C}", split,
                                                    lambda sp, n: clf.predict(sc.transform(feats[sp, n][0])))
    print("\nFLOPs saved (test prompts, prefill + one output position) and label kept on test, per plan:")
    best = max((k for k in results if k[0] == "heldout" and len(k) == 3), key=lambda k: results[k][0] + np.mean(
        list(results[k][1].values())))
    print(f"chosen on heldout: {best[1:]}")
    for n in evp:
        if n == "full":
            continue
        print(f"  {n:<24} saved {saved[n]:.3f}  verbalizer kept {results['test', 'verbalizer'][1][n]:.3f}  "
              f"chosen head kept {results[('test',) + best[1:]][1][n]:.3f}")
    print(f"test accuracy: chosen head {results[('test',) + best[1:]][0]:.3f}, majority (positive) "
          f"{max(yte.mean(), 1 - yte.mean()):.3f}; {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
