"""RT-v2 candidates (issue 23): a logistic head on frozen features drawn under many skip plans, against the
verbalizer margin, for the embedded SmolLM2 on Rotten Tomatoes with v0's zero-shot prompt.

Features = the final (normed) hidden state at the last prompt position (the LM head's input where the answer is
predicted), extracted under every plan of a plan set, batched per plan (one forward pass over a batch of reviews,
left-padded). Cached per (split, plan) under ``--cache`` (default ``/tmp/rt``) so that a rerun resumes.

    OMP_NUM_THREADS=1 python benchmarks/rt_head.py --train 200 --plans 20 --per-plan 40 --test 100 \
        --write-head skipenv/tasks/data/rt_head_smollm2.json

Splits: the head is fitted on the first ``--train`` reviews of the train split (the full model on all of them, each
of ``--plans`` training plans, :func:`skipenv.envs.label_head.training_plans`, on ``--per-plan`` of them); its C is
chosen by 5-fold cross-validation over train reviews; the test split's first ``--test`` reviews give the final
numbers (printed once, at the end). Prints a Markdown table: per candidate the full model's accuracy, and per
evaluation plan its FLOPs saved and the fraction of reviews whose label equals the candidate's full-model label.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import skipenv
from skipenv.envs.label_head import training_plans
from skipenv.loading import load_generator
from skipenv.tasks import make_task

S = skipenv.SkipPlan.from_skips


def eval_plans(spec, L: int) -> dict[str, "skipenv.SkipPlan"]:
    """Named plans of the issue's collapse cases, profile-style single skips and plans saving >= 10 % FLOPs."""
    return {
        "full": S(spec),
        "att 28-29": S(spec, attention=[28, 29]),
        "att 10-19": S(spec, attention=range(10, 20)),
        "ffn 22-28": S(spec, ffn=range(22, 29)),
        "drop last 1/2": S(spec, tokens=range(4, 8)),
        "att odd 1-29": S(spec, attention=range(1, 30, 2)),
        # added after the first table (docs/tasks.md says so): other token-drop plans saving >= 10 %
        "drop segments 1,3,5,7": S(spec, tokens=[1, 3, 5, 7]),
        "drop first 1/2": S(spec, tokens=range(0, 4)),
        "drop last 1/2 + att 28-29": S(spec, attention=[28, 29], tokens=range(4, 8)),
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
    ap.add_argument("--write-head", default=None, help="write the head fitted under plans (JSON) here")
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
    tr = tr_all[: args.train]
    te = task.examples("test")[: args.test]
    P = lambda exs: [task.format(e, gen.tokenizer, encoder_decoder=False) for e in exs]
    ptr, pte = P(tr), P(te)
    y = lambda exs: np.array([e.label == "positive" for e in exs])
    ytr, yte = y(tr), y(te)
    t0 = time.time()
    # training features: full model on every train review, each training plan on a seeded subset
    Htr, Mtr = cached(cache, f"train{args.train}_full", lambda: ex(ptr, None))
    rows_h, rows_y, rows_plan, rows_idx = [Htr], [ytr], [np.zeros(len(tr), int)], []
    rng = np.random.default_rng(0)
    for j, (name, plan) in enumerate(training_plans(spec, args.plans).items()):
        idx = np.sort(rng.choice(len(tr), size=min(args.per_plan, len(tr)), replace=False))
        h, _ = cached(cache, f"train{args.train}_p{j}_{args.per_plan}", lambda: ex([ptr[i] for i in idx], plan))
        rows_h.append(h); rows_y.append(ytr[idx]); rows_plan.append(np.full(len(idx), j + 1)); rows_idx.append(idx)
        print(f"[{time.time() - t0:.0f}s] train plan {j}: {name}", flush=True)
    Xall, Yall, Pall = np.concatenate(rows_h), np.concatenate(rows_y), np.concatenate(rows_plan)
    evp = eval_plans(spec, L)
    feats = {}
    for name, plan in evp.items():
        key = f"test{len(pte)}_{name.replace(' ', '_').replace('/', '-')}"
        feats[name] = cached(cache, key, lambda: ex(pte, None if name == "full" else plan))
        print(f"[{time.time() - t0:.0f}s] test plan {name}", flush=True)
    saved = {n: 1 - np.mean([gen.flops(p, q, 1).total / gen.flops(None, q, 1).total for q in pte])
             for n, p in evp.items()}

    from sklearn.model_selection import GroupKFold

    from skipenv.tasks.heads import fit_logistic_head

    groups = np.concatenate([np.arange(len(tr))] + [idx_ for idx_ in rows_idx])
    fp = "benchmark"

    def cv_accuracy(mask, C):
        """5-fold CV accuracy over train reviews (all rows of a review in one fold), on every row (plans too)."""
        accs = []
        for a, b in GroupKFold(5).split(Xall, Yall, groups):
            a = a[mask[a]]
            head = fit_logistic_head(Xall[a], Yall[a], fp, C=C)
            accs.append(np.mean((head.logit(Xall[b]) > 0) == Yall[b]))
        return float(np.mean(accs))

    # (b) verbalizer margin, threshold fitted on the train reviews (full model)
    srt = np.sort(Mtr); cands = np.concatenate([[srt[0] - 1], (srt[1:] + srt[:-1]) / 2])
    th = float(cands[int(np.argmax([((Mtr > t) == ytr).mean() for t in cands]))])
    cols = {f"verbalizer (th {th:.2f})": {n: feats[n][1] > th for n in evp}}
    chosen = {}
    for variant, mask in (("head, full-model features", Pall == 0), ("head, features under plans", Pall >= 0)):
        cv = {C: cv_accuracy(mask, C) for C in (0.01, 0.1, 1.0)}
        C = max(cv, key=cv.get)
        head = fit_logistic_head(Xall[mask], Yall[mask], fp, C=C)
        chosen[variant] = (C, head)
        print(f"{variant}: CV accuracy (train rows, plans included) {({k: round(v, 3) for k, v in cv.items()})}"
              f" -> C = {C}", flush=True)
        cols[f"{variant} (C={C})"] = {n: head.logit(feats[n][0]) > 0 for n in evp}
    print(f"\ntest split, first {len(te)} reviews; majority label of train ('positive') "
          f"{np.mean(yte == (ytr.mean() >= 0.5)):.3f}")
    print("| plan | FLOPs saved | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    print("| full model: accuracy | 0 | " + " | ".join(f"{np.mean(c['full'] == yte):.3f}" for c in cols.values())
          + " |")
    for n in evp:
        if n != "full":
            print(f"| {n}: label kept | {saved[n]:.3f} | " + " | ".join(
                f"{np.mean(c[n] == c['full']):.3f}" for c in cols.values()) + " |")
    n = "drop last 1/2"
    print(f"| {n}: accuracy under the plan | | " + " | ".join(f"{np.mean(c[n] == yte):.3f}" for c in cols.values())
          + " |")
    if args.write_head:
        C, head = chosen["head, features under plans"]
        from skipenv.envs.cache import model_fingerprint
        from skipenv.tasks.heads import LabelHead

        head = LabelHead(head.weight, head.bias, model_fingerprint(gen), {
            "fitted_by": "benchmarks/rt_head.py", "task": "rotten_tomatoes (v0 prompt)",
            "train_reviews": f"first {len(tr)} of the train split", "plans": args.plans, "per_plan": args.per_plan,
            "C": C, "rows": int(len(Yall)), "feature": "final normed hidden state, last prompt position"})
        head.save(args.write_head)
        print(f"wrote {args.write_head} (fingerprint {head.fingerprint})")
    print(f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
